/**
 * The direct RunSummary encoder (domain/RunSummaryEncoding.ts) must produce exactly `toBinary` and
 * the proto3 JSON of the same message: the read model stores its bytes, the journal splices them
 * into Updates, and clients decode them with the generated code. Checked over random summaries —
 * every field left at its default or set, non-ASCII, escaped and long strings, counters from 0 to
 * 2^53 − 1, times from the epoch to 9999-12-31 with and without milliseconds — and the values it
 * leaves to the generic encoder (larger counters, sub-millisecond nanos, out-of-range times).
 */
import { create, toBinary, toJson } from "@bufbuild/protobuf"
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { assert, describe, it } from "@effect/vitest"
import { encodeRunSummary } from "../../src/domain/Documents.ts"
import { runSummaryBinary, runSummaryJsonText } from "../../src/domain/RunSummaryEncoding.ts"
import { RunSummarySchema } from "../../src/gen/openagents/sync/v1/documents_pb.ts"
import { seeded } from "../client/support/Fakes.ts"

const LIMIT_MS = 253_402_300_799_999

const expectedJson = (doc: ReturnType<typeof create<typeof RunSummarySchema>>) =>
  JSON.stringify(toJson(RunSummarySchema, doc, { useProtoFieldName: true }))

describe("RunSummaryEncoding", () => {
  it("random summaries: the bytes of toBinary and the JSON of toJson", () => {
    const rand = seeded(7)
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(rand() * xs.length)]!
    const text = () => pick(["", "r1", "user-ü", "€", "😀", "q\"\\\n\t\u2028", "x".repeat(Math.floor(rand() * 300))])
    const counter = () => BigInt(pick([0, 1, 127, 128, 16_384, 2 ** 31, Number.MAX_SAFE_INTEGER, Math.floor(rand() * 1e9)]))
    const time = () =>
      rand() < 0.25 ? undefined : timestampFromMs(pick([0, 1, 999, 1000, 1_733_456_789_012, LIMIT_MS, Math.floor(rand() * LIMIT_MS)]))
    for (let i = 0; i < 5000; i++) {
      const doc = create(RunSummarySchema, {
        runId: text(),
        ownerUserId: text(),
        status: pick(["", "created", "running", "completed", "failed", "canceled"]),
        eventCount: counter(),
        lastSeq: counter(),
        lastEventType: text(),
        ...(() => {
          const t = { createdAt: time(), updatedAt: time(), terminalAt: time() }
          return Object.fromEntries(Object.entries(t).filter(([, v]) => v !== undefined))
        })()
      })
      const pb = runSummaryBinary(doc)
      assert.isDefined(pb)
      assert.deepStrictEqual(Buffer.from(pb!).toString("hex"), Buffer.from(toBinary(RunSummarySchema, doc)).toString("hex"), `binary #${i}`)
      assert.strictEqual(runSummaryJsonText(doc), expectedJson(doc), `json #${i}`)
    }
  })

  it("values it does not cover go to the generic encoder, which encodeRunSummary then uses", () => {
    const base = { runId: "r1", ownerUserId: "u1", status: "running", eventCount: 3n, lastSeq: 3n }
    const uncovered = [
      create(RunSummarySchema, { ...base, eventCount: 2n ** 53n }),
      create(RunSummarySchema, { ...base, lastSeq: 2n ** 64n - 1n }),
      create(RunSummarySchema, { ...base, createdAt: { seconds: 1n, nanos: 1 } }),
      create(RunSummarySchema, { ...base, updatedAt: { seconds: -1n, nanos: 0 } }),
      create(RunSummarySchema, { ...base, terminalAt: { seconds: 253_402_300_800n, nanos: 0 } })
    ]
    for (const doc of uncovered) {
      assert.isUndefined(runSummaryBinary(doc))
      assert.isUndefined(runSummaryJsonText(doc))
      assert.deepStrictEqual(encodeRunSummary(doc), toBinary(RunSummarySchema, doc))
    }
    // The encoder's scratch state is clean afterwards.
    const doc = create(RunSummarySchema, { ...base, createdAt: timestampFromMs(5) })
    assert.deepStrictEqual(runSummaryBinary(doc), toBinary(RunSummarySchema, doc))
  })
})
