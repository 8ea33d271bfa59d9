/**
 * Local delivery: a commit hands its entries to this node's topic actors directly, so live
 * subscribers get them without the journal being read back. These tests run WITHOUT the journal
 * listener (no `JournalFeedLive`): every entry a subscriber receives here came either from the
 * commit hand-over or from the actor's own journal read when the hand-over could not be used
 * (a gap before the handed-over entries, entries stamped with another journal epoch).
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect, Exit, References, Result } from "effect"
import { SqlClient } from "effect/sql"
import { decodeServerFrame, type EncodedFrame, PROTO_SUBPROTOCOL } from "../../src/domain/Protocol.ts"
import { Journal, type JournalDraft, PendingDelivery } from "../../src/services/Journal.ts"
import { RunCommands } from "../../src/services/RunCommands.ts"
import type { Subscriber } from "../../src/services/TopicActor.ts"
import { TopicHub } from "../../src/services/TopicHub.ts"
import { testServices } from "../support/TestApp.ts"

/** A subscriber that records the seqs of the entries it is sent. */
const recorder = () => {
  const seqs: Array<number> = []
  const frames: Array<Array<number>> = []
  const failures: Array<string> = []
  const subscriber: Subscriber = {
    connectionId: "c1",
    subprotocol: PROTO_SUBPROTOCOL,
    offer: (frame: EncodedFrame) => {
      const decoded = decodeServerFrame(PROTO_SUBPROTOCOL, frame)
      if (Result.isSuccess(decoded) && decoded.success.frame.case === "updates") {
        const items = decoded.success.frame.value.items.map((item) => Number(item.seq))
        frames.push(items)
        seqs.push(...items)
      }
      return true
    },
    onEpochChanged: () => {},
    onActorFailed: () => void failures.push("failed")
  }
  return { seqs, frames, subscriber, failures }
}

const waitFor = (what: string, cond: () => boolean) =>
  Effect.gen(function*() {
    for (let i = 0; i < 500; i++) {
      if (cond()) return
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 5)))
    }
    assert.fail(`timed out waiting for ${what}`)
  })

const draft = (n: number): JournalDraft => ({
  topic: "run/ld",
  kind: "run.event",
  docKey: `run_event:ld:x${n}`,
  docVersion: 1,
  occurredAtMs: 1,
  body: { case: undefined }
})

layer(testServices(), { timeout: "120 seconds" })("local delivery", (it) => {
  describe("commit hand-over", () => {
    it.effect("entries reach a live subscriber with no listener running; a gap or another epoch falls back to a journal read", () =>
      Effect.gen(function*() {
        const runs = yield* RunCommands
        const hub = yield* TopicHub
        const journal = yield* Journal
        const sql = yield* SqlClient.SqlClient
        yield* runs.appendEvent("ld", { type: "run.created", owner_user_id: "u" }, undefined) // seqs 1, 2
        const epoch = yield* journal.epoch
        const lease = yield* hub.acquire("run/ld")
        const { frames, seqs, subscriber } = recorder()
        const joined = yield* lease.join(subscriber, epoch, 2, 2)
        assert.deepStrictEqual(joined, { _tag: "Joined", caughtUpSeq: 2 })

        // 1. a command's entries arrive through the hand-over (nothing else could deliver them)
        yield* runs.appendEvent("ld", { type: "run.started" }, undefined) // seqs 3, 4
        yield* waitFor("seqs 3, 4", () => seqs.length === 2)
        assert.deepStrictEqual(seqs, [3, 4])

        // 2. entries committed without a hand-over (seqs 5, 6), then a hand-over of seq 7:
        //    the actor sees the gap and reads 5 and 6 from the journal first
        yield* sql.withTransaction(journal.appendAll([draft(5), draft(6)], 1))
        const pending: PendingDelivery["Service"] = { epoch: "", committedAtMs: 0, topics: new Map() }
        yield* sql.withTransaction(journal.appendAll([draft(7)], 1).pipe(Effect.provideService(PendingDelivery, pending)))
        assert.deepStrictEqual(pending.topics.get("run/ld")?.map((e) => e.seq), [7])
        hub.deliverCommitted(pending)
        yield* waitFor("seqs 5..7", () => seqs.length === 5)
        assert.deepStrictEqual(seqs, [3, 4, 5, 6, 7])

        // 3. a hand-over already covered by a journal read is dropped, not delivered twice
        hub.deliverCommitted(pending)
        // 4. a resync (listener reconnect) between the transaction and its hand-over: still
        //    delivered exactly once
        const pending8: PendingDelivery["Service"] = { epoch: "", committedAtMs: 0, topics: new Map() }
        yield* sql.withTransaction(journal.appendAll([draft(8)], 1).pipe(Effect.provideService(PendingDelivery, pending8)))
        yield* hub.resyncAll(undefined)
        hub.deliverCommitted(pending8)
        yield* waitFor("seq 8", () => seqs.length === 6)
        assert.deepStrictEqual(seqs, [3, 4, 5, 6, 7, 8])

        // 5. a rolled-back transaction hands nothing over
        const failed = yield* runs.appendEvent("ld", { type: "run.bogus" }, undefined).pipe(Effect.flip)
        assert.strictEqual(failed.code, "invalid_request")
        yield* runs.appendEvent("ld", { type: "run.step" }, undefined) // seqs 9, 10
        yield* waitFor("seqs 9, 10", () => seqs.length === 8)
        assert.deepStrictEqual(seqs, [3, 4, 5, 6, 7, 8, 9, 10])

        // 6. hand-overs that queue up while the actor is busy go out as one frame
        const queued: Array<PendingDelivery["Service"]> = []
        for (const n of [11, 12, 13]) {
          const p: PendingDelivery["Service"] = { epoch: "", committedAtMs: 0, topics: new Map() }
          yield* sql.withTransaction(journal.appendAll([draft(n)], 1).pipe(Effect.provideService(PendingDelivery, p)))
          queued.push(p)
        }
        const framesBefore = frames.length
        yield* Effect.sync(() => queued.forEach((p) => hub.deliverCommitted(p))) // the actor cannot run in between
        yield* waitFor("seqs 11..13", () => seqs.length === 11)
        assert.deepStrictEqual(frames.slice(framesBefore), [[11, 12, 13]])
        assert.strictEqual(queued[0]!.epoch, epoch) // stamped inside the transaction

        // 7. a hand-over stamped with another epoch is never delivered: the actor re-reads instead
        const foreign: PendingDelivery["Service"] = { epoch: "", committedAtMs: 0, topics: new Map() }
        yield* sql.withTransaction(journal.appendAll([draft(14)], 1).pipe(Effect.provideService(PendingDelivery, foreign)))
        hub.deliverCommitted({ epoch: "some-other-epoch", topics: foreign.topics })
        yield* waitFor("seq 14 (read from the journal in our epoch)", () => seqs.length === 12)
        assert.deepStrictEqual(seqs.slice(-1), [14])
        yield* lease.release(subscriber)
      }))
  })
  describe("actor failure", () => {
    /** A run created (its topic holds seqs 1, 2), with the services the tests drive. */
    const createdRun = (runId: string) =>
      Effect.gen(function*() {
        const runs = yield* RunCommands
        yield* runs.appendEvent(runId, { type: "run.created", owner_user_id: "u" }, undefined)
        return { runs, hub: yield* TopicHub, epoch: yield* (yield* Journal).epoch }
      })

    it.effect("an actor that dies of a defect tells its subscribers, fails joins instead of hanging, and the next subscriber gets a fresh actor", () =>
      Effect.gen(function*() {
        const { runs, hub, epoch } = yield* createdRun("af") // seqs 1, 2
        // A subscriber whose callback throws (a bug) kills the actor that calls it: here on the
        // first frame after its CaughtUp.
        let offers = 0
        const broken: Subscriber = {
          ...recorder().subscriber,
          connectionId: "broken",
          offer: () => {
            if (offers++ > 0) throw new Error("bug in a subscriber")
            return true
          }
        }
        const watcher = recorder()
        const brokenLease = yield* hub.acquire("run/af")
        const watcherLease = yield* hub.acquire("run/af")
        const spareLease = yield* hub.acquire("run/af") // held, never joined: its join comes too late
        assert.deepStrictEqual(yield* brokenLease.join(broken, epoch, 2, 2), { _tag: "Joined", caughtUpSeq: 2 })
        assert.deepStrictEqual(yield* watcherLease.join(watcher.subscriber, epoch, 2, 2), { _tag: "Joined", caughtUpSeq: 2 })

        yield* runs.appendEvent("af", { type: "run.started" }, undefined) // seqs 3, 4: the actor dies delivering them
        yield* waitFor("the watcher to hear of the failure", () => watcher.failures.length > 0)
        assert.deepStrictEqual(watcher.failures, ["failed"])

        // A join on the failed actor dies at once (its connection ends with `internal`).
        const late = yield* Effect.exit(spareLease.join(recorder().subscriber, epoch, 4, 4))
        assert.isTrue(Exit.hasDies(late))
        // Releasing leases of the failed actor does not block.
        yield* brokenLease.release(broken)
        yield* watcherLease.release(watcher.subscriber)
        yield* spareLease.release(recorder().subscriber)

        // A new subscription gets a fresh actor that delivers.
        const fresh = recorder()
        const freshLease = yield* hub.acquire("run/af")
        assert.deepStrictEqual(yield* freshLease.join(fresh.subscriber, epoch, 4, 4), { _tag: "Joined", caughtUpSeq: 4 })
        yield* runs.appendEvent("af", { type: "run.step" }, undefined) // seqs 5, 6
        yield* waitFor("seqs 5, 6 on the fresh actor", () => fresh.seqs.length === 2)
        assert.deepStrictEqual(fresh.seqs, [5, 6])
        assert.deepStrictEqual(fresh.failures, [])
        yield* freshLease.release(fresh.subscriber)
      }).pipe(Effect.provideService(References.MinimumLogLevel, "None")))

    it.effect("a defect while the actor answers a join: that join dies instead of hanging", () =>
      Effect.gen(function*() {
        const { hub, epoch } = yield* createdRun("af2") // seqs 1, 2
        const watcher = recorder()
        const watcherLease = yield* hub.acquire("run/af2")
        yield* watcherLease.join(watcher.subscriber, epoch, 2, 2)
        const broken: Subscriber = {
          ...recorder().subscriber,
          offer: () => {
            throw new Error("bug in a subscriber")
          }
        }
        const brokenLease = yield* hub.acquire("run/af2")
        const joined = yield* Effect.exit(brokenLease.join(broken, epoch, 2, 2)) // its CaughtUp throws
        assert.isTrue(Exit.hasDies(joined))
        assert.deepStrictEqual(watcher.failures, ["failed"])
      }).pipe(Effect.provideService(References.MinimumLogLevel, "None")))
  })
})
