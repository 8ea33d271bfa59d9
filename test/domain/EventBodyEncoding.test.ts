/**
 * The direct event-body encoder (domain/EventBodyEncoding.ts) must produce exactly `toBinary` and
 * the proto3 JSON of the same `RunEvent` / `WorkerEvent` message: the journal stores its bytes and
 * clients decode them with the generated code. Checked over random payloads built to hit every
 * branch — nesting, arrays, every JSON scalar, -0 and non-integer numbers, non-ASCII and astral
 * strings, strings and structs long enough for multi-byte length prefixes, integer-like keys —
 * scalars left at their defaults, and seqs and times from zero to their limits.
 */
import { create, toBinary, toJson } from "@bufbuild/protobuf"
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { assert, describe, it } from "@effect/vitest"
import { encodeEventBody, timestampJson } from "../../src/domain/EventBodyEncoding.ts"
import type { JsonObject, JsonValue } from "../../src/domain/Json.ts"
import { RunEventSchema, WorkerEventSchema } from "../../src/gen/openagents/sync/v1/documents_pb.ts"
import { seeded } from "../client/support/Fakes.ts"

const randomValue = (rand: () => number, depth: number): JsonValue => {
  const r = rand()
  const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(rand() * xs.length)]!
  if (depth > 0 && r < 0.15) return randomObject(rand, depth - 1)
  if (depth > 0 && r < 0.25) return Array.from({ length: Math.floor(rand() * 5) }, () => randomValue(rand, depth - 1))
  if (r < 0.35) return null
  if (r < 0.45) return rand() < 0.5
  if (r < 0.7) {
    return pick([0, -0, 1, -1, 0.5, 1e21, -3.25e-7, Number.MAX_SAFE_INTEGER, 2 ** 53 + 2, 5e-324, Math.floor(rand() * 1e9)])
  }
  return pick(["", "a", "ü", "€uro", "😀 astral", "x".repeat(Math.floor(rand() * 300)), "q\"\\\n\t", "\u2028"])
}

const randomObject = (rand: () => number, depth: number): JsonObject => {
  const o: Record<string, JsonValue> = {}
  const n = Math.floor(rand() * 6)
  for (let i = 0; i < n; i++) {
    const key = ["a", "b", "2", "10", "", "ключ", "k".repeat(200), `k${i}`][Math.floor(rand() * 8)]!
    o[key] = randomValue(rand, depth)
  }
  return o
}

const LIMIT_MS = 253_402_300_799_999

describe("EventBodyEncoding", () => {
  it("random events: the bytes of toBinary and the JSON of toJson", () => {
    const rand = seeded(42)
    for (let i = 0; i < 3000; i++) {
      const payload = i % 50 === 0 ? { big: "x".repeat(70_000), nested: randomObject(rand, 3) } : randomObject(rand, 3)
      const seq = [0, 1, 127, 128, 16_383, 16_384, 2 ** 31, Number.MAX_SAFE_INTEGER, Math.floor(rand() * 1e6) + 1][i % 9]!
      const occurredAtMs = [0, 999, 1000, 1_733_456_789_012, 1_733_456_789_000, LIMIT_MS, Math.floor(rand() * LIMIT_MS)][i % 7]!
      const id = ["r1", "worker-ü", "x".repeat(140), ""][i % 4]!
      const type = ["run.step", "worker.heartbeat", "t", "", "run.step"][i % 5]!
      const values = { id, seq, type, payload, occurredAtMs }
      for (const [idField, schema] of [["run_id", RunEventSchema], ["worker_id", WorkerEventSchema]] as const) {
        const message = create(schema, {
          ...(idField === "run_id" ? { runId: id } : { workerId: id }),
          seq: BigInt(seq),
          type,
          payload,
          occurredAt: timestampFromMs(occurredAtMs)
        } as never)
        const encoded = encodeEventBody(idField, values)
        assert.isDefined(encoded)
        assert.strictEqual(
          Buffer.from(encoded!.pb).toString("hex"),
          Buffer.from(toBinary(schema, message as never)).toString("hex"),
          `event ${i}`
        )
        assert.strictEqual(encoded!.json, JSON.stringify(toJson(schema, message as never, { useProtoFieldName: true })), `event ${i}`)
      }
    }
  })

  it("timestamps render as protobuf-es renders them", () => {
    const rand = seeded(9)
    const day = 86_400_000
    const times = [0, 1, 999, 1000, 59_999, 3_599_999, day - 1, day, 951_782_400_000, 1_733_456_789_012, LIMIT_MS]
    // Random times, and runs of nearby ones (the per-day cache: same day, next day, back again).
    for (let i = 0; i < 2000; i++) {
      const t = Math.floor(rand() * LIMIT_MS)
      times.push(t, Math.min(LIMIT_MS, t + Math.floor(rand() * 2 * day)), t, Math.max(0, t - Math.floor(rand() * 1000)))
    }
    for (const ms of times) {
      const json = toJson(RunEventSchema, create(RunEventSchema, { occurredAt: timestampFromMs(ms) }), { useProtoFieldName: true })
      assert.strictEqual(timestampJson(ms), (json as { occurred_at: string }).occurred_at, String(ms))
    }
  })

  it("leaves what it does not cover to the generic encoder", () => {
    const base = { id: "r", seq: 1, type: "t", payload: {}, occurredAtMs: 0 }
    assert.isUndefined(encodeEventBody("run_id", { ...base, payload: JSON.parse("{\"__proto__\":{\"a\":1}}") }))
    assert.isUndefined(encodeEventBody("run_id", { ...base, payload: { list: [JSON.parse("{\"__proto__\":1}")] } }))
    assert.isUndefined(encodeEventBody("run_id", { ...base, occurredAtMs: -1 }))
    assert.isUndefined(encodeEventBody("run_id", { ...base, occurredAtMs: LIMIT_MS + 1 }))
  })
})
