/**
 * Idempotency keys (SPEC §6, §10): scoped per entity, checked and stored inside the command's
 * transaction after the entity row is locked, so concurrent retries of one key serialise on that
 * lock. Same key + same request ⇒ the original response (status 200); same key + different
 * request ⇒ 409 `idempotency_key_reused`.
 */
import { Context, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { createHash } from "node:crypto"
import { ApiError, apiError } from "../domain/ApiError.ts"
import { canonicalJson, type JsonObject } from "../domain/Json.ts"

export type EntityKind = "run" | "worker"

export interface IdempotencyScope {
  readonly entityKind: EntityKind
  readonly entityId: string
  readonly key: string
  readonly requestHash: string
}

/** The 409 of a key used again with a different request (a command alone and a batch answer it alike). */
export const keyReused = (key: string) =>
  apiError("idempotency_key_reused", "this idempotency_key was used with a different request", { idempotency_key: key })

/** Hash of a command and its body, without the key itself. */
export const requestHash = (command: string, body: Record<string, unknown>) => {
  const { idempotency_key: _key, ...rest } = body
  return createHash("sha256").update(canonicalJson({ command, body: rest })).digest("hex")
}

export class Idempotency extends Context.Service<Idempotency, {
  /** The stored response for this key, or `undefined`; fails on a reused key. */
  readonly lookup: (scope: IdempotencyScope) => Effect.Effect<JsonObject | undefined, SqlError | ApiError>
  readonly store: (scope: IdempotencyScope, status: number, response: JsonObject) => Effect.Effect<void, SqlError>
  /**
   * Runs a command body under an idempotency key (call it with the entity row locked): a stored
   * response is returned with status 200 instead of running it; otherwise its result is stored.
   */
  readonly guard: <E, R>(
    scope: IdempotencyScope | undefined,
    body: Effect.Effect<{ readonly status: number; readonly body: JsonObject }, E, R>
  ) => Effect.Effect<{ readonly status: number; readonly body: JsonObject }, E | SqlError | ApiError, R>
}>()("khala/services/Idempotency") {
  static readonly layer = Layer.effect(
    Idempotency,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const lookup = (scope: IdempotencyScope) =>
          sql<{ request_hash: string; response: JsonObject }>`
            SELECT request_hash, response FROM runtime.idempotency_keys
            WHERE entity_kind = ${scope.entityKind} AND entity_id = ${scope.entityId}
              AND idempotency_key = ${scope.key}`.pipe(
            Effect.flatMap(([row]) => {
              if (!row) return Effect.succeed(undefined)
              if (row.request_hash !== scope.requestHash) {
                return Effect.fail(keyReused(scope.key))
              }
              return Effect.succeed(row.response)
            })
          )
      const store = (scope: IdempotencyScope, status: number, response: JsonObject) =>
          sql`
            INSERT INTO runtime.idempotency_keys (entity_kind, entity_id, idempotency_key, request_hash, status, response)
            VALUES (${scope.entityKind}, ${scope.entityId}, ${scope.key}, ${scope.requestHash}, ${status},
                    ${JSON.stringify(response)}::jsonb)`.pipe(Effect.asVoid)
      const guard = <E, R>(
        scope: IdempotencyScope | undefined,
        body: Effect.Effect<{ readonly status: number; readonly body: JsonObject }, E, R>
      ) =>
        scope === undefined ? body : Effect.gen(function*() {
          const stored = yield* lookup(scope)
          if (stored) return { status: 200, body: stored }
          const result = yield* body
          yield* store(scope, result.status, result.body)
          return result
        })
      return Idempotency.of({ lookup, store, guard })
    })
  )
}
