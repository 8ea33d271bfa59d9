/**
 * JSON values as they come out of Postgres `jsonb` (canonical key order), and a canonical
 * stringify (sorted keys) used for request hashing.
 */
import type { JsonObject, JsonValue } from "@bufbuild/protobuf"

export type { JsonObject, JsonValue }

export const isJsonObject = (u: unknown): u is JsonObject =>
  typeof u === "object" && u !== null && !Array.isArray(u)

/** Stable JSON: object keys sorted recursively. */
export const canonicalJson = (value: unknown): string =>
  JSON.stringify(value, (_key, v: unknown) =>
    isJsonObject(v)
      ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
      : v)
