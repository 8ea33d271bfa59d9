/**
 * The topic state module: idempotent apply by (doc_key, doc_version), strictly increasing seqs,
 * gaps and epoch mismatches rejected without side effects, snapshot reset, events as immutable
 * documents (and `retainEvents: false`).
 */
import { assert, describe, it } from "@effect/vitest"
import { TopicState } from "../../src/client/state.ts"
import { runEventUpdate, runSummaryUpdate } from "./support/Fakes.ts"

const statusOf = (s: TopicState, key = "run_summary:r1") => {
  const d = s.get(key)?.document
  return d?.case === "runSummary" ? d.value.status : undefined
}

describe("TopicState", () => {
  it("applies in order, adopts the epoch of a fresh cursor, and advances the watermark", () => {
    const s = new TopicState("run/r1")
    s.adoptEpoch("e1")
    assert.deepStrictEqual(s.watermark, { epoch: "e1", afterSeq: 0 })
    assert.strictEqual(s.apply("e1", runEventUpdate(1, 1))._tag, "Applied")
    assert.strictEqual(s.apply("e1", runSummaryUpdate(2, 1, "r1", "created"))._tag, "Applied")
    assert.strictEqual(s.apply("e1", runSummaryUpdate(3, 2, "r1", "running"))._tag, "Applied")
    assert.deepStrictEqual(s.watermark, { epoch: "e1", afterSeq: 3 })
    assert.strictEqual(statusOf(s), "running")
    assert.strictEqual(s.get("run_summary:r1")?.docVersion, 2)
    assert.strictEqual(s.get("run_summary:r1")?.seq, 3)
    assert.strictEqual(s.size, 2)
  })

  it("ignores duplicates (seq ≤ watermark) without touching anything", () => {
    const s = new TopicState("run/r1", { epoch: "e1", afterSeq: 0 })
    s.apply("e1", runSummaryUpdate(1, 1, "r1", "created"))
    s.apply("e1", runSummaryUpdate(2, 2, "r1", "running"))
    const before = s.documents()
    for (const u of [runSummaryUpdate(1, 1, "r1", "created"), runSummaryUpdate(2, 2, "r1", "WRONG"), runSummaryUpdate(2, 9, "r1", "WRONG")]) {
      assert.deepStrictEqual(s.apply("e1", u), { _tag: "Duplicate" })
    }
    assert.deepStrictEqual(s.documents(), before)
    assert.deepStrictEqual(s.watermark, { epoch: "e1", afterSeq: 2 })
    assert.strictEqual(statusOf(s), "running")
  })

  it("ignores older and equal doc_versions but still advances the watermark", () => {
    const s = new TopicState("run/r1", { epoch: "e1", afterSeq: 0 })
    s.apply("e1", runSummaryUpdate(1, 5, "r1", "completed"))
    assert.deepStrictEqual(s.apply("e1", runSummaryUpdate(2, 4, "r1", "running")), { _tag: "OlderVersion", held: 5 })
    assert.deepStrictEqual(s.apply("e1", runSummaryUpdate(3, 5, "r1", "other")), { _tag: "OlderVersion", held: 5 })
    assert.strictEqual(statusOf(s), "completed")
    assert.deepStrictEqual(s.watermark, { epoch: "e1", afterSeq: 3 })
    assert.strictEqual(s.apply("e1", runSummaryUpdate(4, 6, "r1", "failed"))._tag, "Applied")
    assert.strictEqual(statusOf(s), "failed")
  })

  it("rejects a gap and an epoch mismatch with no side effect", () => {
    const s = new TopicState("run/r1", { epoch: "e1", afterSeq: 4 })
    assert.deepStrictEqual(s.apply("e1", runSummaryUpdate(6, 1)), { _tag: "Gap", expected: 5, got: 6 })
    assert.deepStrictEqual(s.apply("e2", runSummaryUpdate(5, 1)), { _tag: "EpochMismatch", expected: "e1", got: "e2" })
    assert.strictEqual(s.size, 0)
    assert.deepStrictEqual(s.watermark, { epoch: "e1", afterSeq: 4 })
    assert.strictEqual(s.apply("e1", runSummaryUpdate(5, 1))._tag, "Applied")
  })

  it("converges to the same documents whatever the duplication of a history (at-least-once delivery)", () => {
    const history = [
      runEventUpdate(1, 1),
      runSummaryUpdate(2, 1, "r1", "created"),
      runEventUpdate(3, 2),
      runSummaryUpdate(4, 2, "r1", "running"),
      runSummaryUpdate(5, 1, "r2", "created"),
      runSummaryUpdate(6, 3, "r1", "completed")
    ]
    const once = new TopicState("user/u1/runs", { epoch: "e", afterSeq: 0 })
    for (const u of history) once.apply("e", u)
    // Redeliver prefixes again and again, as resumed connections may.
    const many = new TopicState("user/u1/runs", { epoch: "e", afterSeq: 0 })
    for (let n = 1; n <= history.length; n++) {
      for (const u of history.slice(0, n)) many.apply("e", u)
      for (const u of history.slice(0, n).reverse()) many.apply("e", u)
    }
    assert.deepStrictEqual(many.documents(), once.documents())
    assert.deepStrictEqual(many.watermark, once.watermark)
  })

  it("keeps events as immutable documents with doc_version 1, unless retainEvents is false", () => {
    const kept = new TopicState("run/r1", { epoch: "e", afterSeq: 0 })
    kept.apply("e", runEventUpdate(1, 1))
    kept.apply("e", runEventUpdate(2, 2))
    assert.deepStrictEqual([...kept.documents().keys()], ["run_event:r1:1", "run_event:r1:2"])
    assert.strictEqual(kept.get("run_event:r1:1")?.docVersion, 1)

    const dropped = new TopicState("run/r1", { epoch: "e", afterSeq: 0 }, { retainEvents: false })
    const outcome = dropped.apply("e", runEventUpdate(1, 1))
    assert.strictEqual(outcome._tag, "Applied", "still reported as a change")
    dropped.apply("e", runSummaryUpdate(2, 1))
    assert.deepStrictEqual([...dropped.documents().keys()], ["run_summary:r1"])
    assert.deepStrictEqual(dropped.watermark, { epoch: "e", afterSeq: 2 })
  })

  it("reset replaces every document and the watermark (snapshot bootstrap)", () => {
    const s = new TopicState("run/r1", { epoch: "e1", afterSeq: 0 })
    s.apply("e1", runEventUpdate(1, 1))
    s.apply("e1", runSummaryUpdate(2, 1, "r1", "created"))
    const doc = { docKey: "run_summary:r1", docVersion: 7, kind: "run.summary", document: runSummaryUpdate(1, 7, "r1", "completed").body }
    s.reset({ epoch: "e2", afterSeq: 40 }, [doc])
    assert.deepStrictEqual([...s.documents().keys()], ["run_summary:r1"])
    assert.strictEqual(statusOf(s), "completed")
    assert.deepStrictEqual(s.watermark, { epoch: "e2", afterSeq: 40 })
    assert.deepStrictEqual(s.apply("e2", runSummaryUpdate(41, 7, "r1", "x")), { _tag: "OlderVersion", held: 7 })
    assert.strictEqual(s.apply("e2", runSummaryUpdate(42, 8, "r1", "failed"))._tag, "Applied")
    assert.strictEqual(statusOf(s), "failed")
  })

  it("documents() is a copy", () => {
    const s = new TopicState("run/r1", { epoch: "e", afterSeq: 0 })
    s.apply("e", runSummaryUpdate(1, 1))
    const copy = s.documents()
    s.apply("e", runSummaryUpdate(2, 2, "r1", "completed"))
    assert.strictEqual(copy.get("run_summary:r1")?.docVersion, 1)
  })
})
