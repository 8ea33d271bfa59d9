/**
 * TopicActor on its own (a fake journal, no Postgres): the mailbox's bounds and the parking
 * mechanics of the class-based actor.
 * - While the actor is busy, hand-overs fill the bounded mailbox and are then refused (the hub
 *   falls back to a notification), but a leave is still taken — and handled: the subscriber gets
 *   nothing after it.
 * - A parked actor (subscribers, empty mailbox, no fiber) is woken by any message, and several
 *   actors woken in one turn all run.
 * - A message that arrives between a fiber parking and that fiber exiting (it yielded to the
 *   scheduler in between) wakes the next fiber, and the exiting one is not taken for a stopped
 *   actor (found in review: the hub forgot a live actor, its subscribers went silent).
 * - A notification refused by a full mailbox is not lost: it is queued in the first slot the actor
 *   frees (before, it waited for the next notification or the feed's reconciler) — behind a
 *   Resync queued earlier, never ahead of it (found in review: it read the rebuilt history and
 *   sent it labelled with the old epoch).
 * - A resync refused by a full mailbox is deferred to the first freed slot, never lost.
 * - Whatever the order of messages, rows read in another epoch are never delivered as ours.
 * - Without subscribers an actor parks like any other and retires at its deadline in the node's
 *   timer heap; a message before the deadline keeps it, and a subscription that raced in keeps it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Deferred, Effect, Exit, Scheduler, Scope } from "effect"
import { TestClock } from "effect/testing"
import { PROTO_SUBPROTOCOL, decodeServerFrame, type EncodedFrame } from "../../src/domain/Protocol.ts"
import { encodeUpdate } from "../../src/domain/UpdateEncoding.ts"
import type { Journal, StoredEntry } from "../../src/services/Journal.ts"
import { Timers } from "../../src/services/Timers.ts"
import { type ActorEnv, type JoinResult, type Subscriber, TopicActor } from "../../src/services/TopicActor.ts"

const EPOCH = "epoch-1"

const entry = (seq: number, docKey = `d${seq}`): StoredEntry => ({
  seq,
  ...encodeUpdate(
    { seq, kind: "run.step", docKey, docVersion: seq, schemaVersion: 1, occurredAtMs: 0, committedAtMs: 0 },
    undefined
  )
})

/** An in-memory journal of one or more topics; `hold` makes reads wait until released. */
const fakeJournal = () => {
  const topics = new Map<string, Array<StoredEntry>>()
  let gate: Deferred.Deferred<void> | undefined
  let reads = 0
  let epoch = EPOCH
  const rows = (topic: string) => topics.get(topic) ?? []
  const read = (topic: string, afterSeq: number, limit: number) =>
    Effect.gen(function*() {
      reads++
      // What a statement sees is fixed when it starts (its snapshot), not when it returns.
      const seen = { epoch, rows: rows(topic).filter((e) => e.seq > afterSeq).slice(0, limit) }
      if (gate !== undefined) yield* Deferred.await(gate)
      return seen
    })
  const journal = {
    read,
    position: (topic: string) => Effect.sync(() => ({ epoch, floorSeq: 1, headSeq: rows(topic).length })),
    epoch: Effect.sync(() => epoch)
  } as unknown as Journal["Service"]
  return {
    journal,
    append: (topic: string, seq: number, docKey?: string) => {
      const list = topics.get(topic) ?? []
      list.push(entry(seq, docKey))
      topics.set(topic, list)
    },
    /** A rebuild: a new epoch whose history replaces the topic's. */
    rebuild: (newEpoch: string, topic: string, docKeys: ReadonlyArray<string>) => {
      epoch = newEpoch
      topics.set(topic, docKeys.map((d, i) => entry(i + 1, d)))
    },
    hold: Effect.gen(function*() {
      gate = yield* Deferred.make<void>()
    }),
    release: Effect.suspend(() => {
      const g = gate
      gate = undefined
      return g === undefined ? Effect.void : Deferred.succeed(g, undefined).pipe(Effect.asVoid)
    }),
    get reads() {
      return reads
    }
  }
}

/** A subscriber that records the seqs of the Updates it is offered. */
const recorder = (id: string) => {
  const seqs: Array<number> = []
  /** Every update as `epoch:seq:docKey`, and "EPOCH_CHANGED" when told. */
  const events: Array<string> = []
  let caughtUp = 0
  const subscriber: Subscriber = {
    connectionId: id,
    subprotocol: PROTO_SUBPROTOCOL,
    offer: (frame: EncodedFrame) => {
      const decoded = decodeServerFrame(PROTO_SUBPROTOCOL, frame)
      if (decoded._tag === "Success") {
        const f = decoded.success.frame
        if (f.case === "updates") {
          for (const u of f.value.items) {
            seqs.push(Number(u.seq))
            events.push(`${f.value.epoch}:${u.seq}:${u.docKey}`)
          }
        }
        if (f.case === "caughtUp") caughtUp++
      }
      return true
    },
    onEpochChanged: () => void events.push("EPOCH_CHANGED"),
    onActorFailed: () => {}
  }
  return { subscriber, seqs, events, get caughtUp() { return caughtUp } }
}

/** Real-time wait (setImmediate wake-ups are not clock time) until `check` holds. */
const eventually = (check: () => boolean, what: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 400; i++) {
      if (check()) return
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, 5)))
    }
    assert.fail(`timed out waiting until ${what}`)
  })

/** Makes the actor busy: entry `seq` is committed and notified, and the actor's read of it waits until `release`. */
const busyReading = (fake: ReturnType<typeof fakeJournal>, actor: TopicActor, seq: number, docKey?: string) =>
  Effect.gen(function*() {
    fake.append(actor.topic, seq, docKey)
    yield* fake.hold
    const before = fake.reads
    actor.notify(seq)
    yield* eventually(() => fake.reads > before, "the actor is reading")
  })

const setup = (capacity: number, scheduler?: Scheduler.Scheduler, idleTtlMs = 60_000) =>
  Effect.gen(function*() {
    const fake = fakeJournal()
    const scope = yield* Scope.make()
    const stopped: Array<string> = []
    const retired: Array<string> = []
    const context = yield* Effect.context<never>()
    const timers = yield* Timers.forClock
    const env: ActorEnv = {
      journal: fake.journal,
      settings: { ringCapacity: 100, maxFrameBytes: 1 << 20, maxItemsPerFrame: 512, readBatch: 1000 },
      idleTtlMs,
      timers,
      scope,
      context: scheduler === undefined ? context : Context.add(context, Scheduler.Scheduler, scheduler),
      tryRetire: (actor) => {
        if (actor.refCount > 0) return false
        retired.push(actor.topic)
        return true
      },
      onStopped: (actor) => void stopped.push(actor.topic)
    }
    const start = (topic: string) => {
      const actor = new TopicActor(topic, env, capacity)
      actor.refCount = 1
      actor.launch()
      return actor
    }
    const join = (actor: TopicActor, subscriber: Subscriber, lastSeq: number) =>
      Effect.gen(function*() {
        const reply = yield* Deferred.make<JoinResult, never>()
        assert.isTrue(actor.offerControl({ _tag: "Join", subscriber, epoch: EPOCH, lastSeq, minHeadSeq: 0, reply: reply as never }))
        return yield* Deferred.await(reply)
      })
    return { fake, start, join, stopped, retired, timers, close: Scope.close(scope, Exit.void) }
  })

/** One actor on topic "t" with one joined subscriber `a`. */
const joinedActor = (capacity: number) =>
  Effect.gen(function*() {
    const env = yield* setup(capacity)
    const actor = env.start("t")
    const a = recorder("a")
    yield* env.join(actor, a.subscriber, 0)
    return { ...env, actor, a }
  })

/**
 * A joined actor with a mailbox of two, busy reading entry 1 ("old1") of the old epoch; `handOverOld1`
 * offers the hand-over of that same entry (one the actor will already have).
 */
const busyActorOfTwo = Effect.gen(function*() {
  const joined = yield* joinedActor(2)
  yield* busyReading(joined.fake, joined.actor, 1, "old1")
  const handOverOld1 = () => joined.actor.offer({ _tag: "Entries", epoch: EPOCH, entries: [entry(1, "old1")] })
  return { ...joined, handOverOld1 }
})

/** `a` got entry 1 of the old epoch, then was told the epoch changed, and nothing of the new one. */
const toldOfNewEpochOnly = (a: ReturnType<typeof recorder>) =>
  Effect.gen(function*() {
    yield* eventually(() => a.events.includes("EPOCH_CHANGED"), "the subscriber is told")
    assert.deepStrictEqual(a.events, [`${EPOCH}:1:old1`, "EPOCH_CHANGED"])
  })

describe("TopicActor", () => {
  it.live("a full mailbox refuses hand-overs but still takes a leave, and handles it", () =>
    Effect.gen(function*() {
      const { fake, start, join, close } = yield* setup(4)
      const actor = start("t")
      const a = recorder("a")
      const b = recorder("b")
      assert.deepStrictEqual(yield* join(actor, a.subscriber, 0), { _tag: "Joined", caughtUpSeq: 0 })
      assert.deepStrictEqual(yield* join(actor, b.subscriber, 0), { _tag: "Joined", caughtUpSeq: 0 })

      // Busy: the actor reads for a notification and the read waits.
      yield* busyReading(fake, actor, 1)

      // Hand-overs of entries it is reading anyway fill the mailbox; the fifth is refused.
      const handOver = { _tag: "Entries", epoch: EPOCH, entries: [entry(1)] } as const
      const accepted = [1, 2, 3, 4, 5].map(() => actor.offer(handOver))
      assert.deepStrictEqual(accepted, [true, true, true, true, false])
      assert.strictEqual(actor.queueDepth, 4)
      // A leave is taken beyond the bound.
      actor.refCount--
      assert.isTrue(actor.offerControl({ _tag: "Leave", subscriber: b.subscriber, evicted: false }))
      assert.strictEqual(actor.queueDepth, 5)

      // A notification while busy and full is refused by the mailbox, and still read.
      fake.append("t", 2)
      actor.notify(2)
      assert.strictEqual(actor.queueDepth, 5)

      yield* fake.release
      yield* eventually(() => actor.stats.subscribers === 1 && a.seqs.length === 2, "everything was handled")
      assert.deepStrictEqual(a.seqs, [1, 2])
      // The leave was handled: b gets nothing later (what was read before it may have reached it).
      fake.append("t", 3)
      actor.notify(3)
      yield* eventually(() => a.seqs.length === 3, "entry 3 delivered")
      assert.deepStrictEqual(a.seqs, [1, 2, 3])
      assert.notInclude(b.seqs, 3)
      assert.strictEqual(actor.queueDepth, 0)
      yield* close
    }))

  it.live("parked actors are woken by any message, several in one turn", () =>
    Effect.gen(function*() {
      const { fake, start, join, close } = yield* setup(16)
      const topics = ["t1", "t2", "t3"]
      const subs = topics.map((t) => recorder(t))
      const actors = topics.map((t) => start(t))
      for (let i = 0; i < actors.length; i++) yield* join(actors[i]!, subs[i]!.subscriber, 0)
      // Joined and idle: every actor is parked (no fiber). Messages in one turn wake all of them.
      for (const t of topics) fake.append(t, 1)
      for (const actor of actors) actor.notify(1)
      for (let i = 0; i < actors.length; i++) {
        assert.isTrue(actors[i]!.offer({ _tag: "Entries", epoch: EPOCH, entries: [entry(2)] }))
        fake.append(topics[i]!, 2)
      }
      yield* eventually(() => subs.every((s) => s.seqs.length === 2), "every topic delivered 1 and 2")
      for (const s of subs) assert.deepStrictEqual(s.seqs, [1, 2])
      // Parked again; a later message wakes again.
      for (const t of topics) fake.append(t, 3)
      actors[1]!.notify(3)
      yield* eventually(() => subs[1]!.seqs.length === 3, "t2 delivered 3")
      assert.deepStrictEqual(subs[1]!.seqs, [1, 2, 3])
      assert.deepStrictEqual(subs[0]!.seqs, [1, 2])
      yield* close
    }))

  it.live("a parked actor delivers hand-overs without a fiber (overlaps and repeats once; a gap or another epoch through the fiber) and drops notifications of what it has", () =>
    Effect.gen(function*() {
      const { fake, actor, a, close } = yield* joinedActor(16)
      const reads = () => fake.reads
      const handOver = (epoch: string, ...seqs: Array<number>) =>
        actor.offer({ _tag: "Entries", epoch, entries: seqs.map((s) => entry(s)) })
      for (const seq of [1, 2, 3, 4, 5, 6]) fake.append("t", seq)
      const parked = () => (actor as unknown as { parked: boolean }).parked
      // Fibers started: the actor's `run` is what a fiber runs (counted on this actor only).
      const fiberRuns = { count: 0 }
      const run = (actor as unknown as { run: (...args: Array<unknown>) => unknown }).run
      ;(actor as unknown as { run: unknown }).run = function(this: unknown, ...args: Array<unknown>) {
        fiberRuns.count++
        return run.apply(this, args)
      }
      yield* eventually(parked, "the actor parked after the join")
      const before = reads()
      // Several hand-overs queued in one turn (one frame), a repeat and an overlap among them.
      assert.isTrue(handOver(EPOCH, 1, 2))
      assert.isTrue(handOver(EPOCH, 2))
      assert.isTrue(handOver(EPOCH, 2, 3, 4))
      yield* eventually(() => a.seqs.length === 4, "1…4 delivered")
      assert.strictEqual(reads(), before, "hand-overs that continue the head need no journal read")
      assert.strictEqual(fiberRuns.count, 0, "hand-overs that continue the head need no fiber")
      // A gap (6 before 5 was handed over): read from the journal, in order, once, by a fiber.
      yield* eventually(parked, "parked again")
      assert.isTrue(handOver(EPOCH, 6))
      yield* eventually(() => a.seqs.length === 6, "5 and 6 delivered")
      assert.isAbove(reads(), before)
      assert.strictEqual(fiberRuns.count, 1)
      assert.strictEqual(actor.headSeq, 6)
      // Notifications of what the parked actor already has are dropped (no wake-up, no read); a
      // newer one is read.
      yield* eventually(parked, "parked again")
      const afterGap = reads()
      actor.notify(6)
      actor.notify(3)
      assert.isTrue(parked())
      assert.strictEqual(actor.queueDepth, 0)
      fake.append("t", 7)
      actor.notify(7)
      yield* eventually(() => a.seqs.length === 7, "7 read and delivered")
      assert.isAbove(reads(), afterGap)
      // Entries of another epoch are never delivered as ours.
      fake.rebuild("epoch-2", "t", ["new1"])
      yield* eventually(parked, "parked again")
      assert.isTrue(handOver("epoch-2", 1))
      yield* eventually(() => a.events.includes("EPOCH_CHANGED"), "the subscriber is told")
      assert.deepStrictEqual(a.seqs, [1, 2, 3, 4, 5, 6, 7])
      yield* close
    }))

  it.live("a message between a fiber parking and its exit neither loses the actor nor its wake-up", () =>
    Effect.gen(function*() {
      /** Yields once, right after the actor parked, and injects a message while that fiber is suspended. */
      let arm: { actor: TopicActor; inject: () => void } | undefined
      class YieldAfterPark extends Scheduler.MixedScheduler {
        override shouldYield(fiber: Parameters<Scheduler.MixedScheduler["shouldYield"]>[0]) {
          if (arm !== undefined && (arm.actor as unknown as { parked: boolean }).parked) {
            const { inject } = arm
            arm = undefined
            setImmediate(inject)
            return true
          }
          return super.shouldYield(fiber)
        }
      }
      const { fake, start, join, stopped, close } = yield* setup(16, new YieldAfterPark())
      const actor = start("t")
      const a = recorder("a")
      // The join is handled, the fiber parks, yields, and a notification arrives before it exits.
      arm = { actor, inject: () => {
        fake.append("t", 1)
        actor.notify(1)
      } }
      yield* join(actor, a.subscriber, 0)
      yield* eventually(() => a.seqs.length === 1, "entry 1 delivered by the next fiber")
      assert.deepStrictEqual(stopped, [], "the exiting parked fiber was taken for a stopped actor")
      // Still served: a later notification is delivered too.
      fake.append("t", 2)
      actor.notify(2)
      yield* eventually(() => a.seqs.length === 2, "entry 2 delivered")
      assert.deepStrictEqual(a.seqs, [1, 2])
      assert.deepStrictEqual(stopped, [])
      yield* close
    }))

  it.live("a refused notification does not overtake a queued resync: nothing of the new epoch goes out under the old one", () =>
    Effect.gen(function*() {
      const { fake, actor, a, close, handOverOld1 } = yield* busyActorOfTwo
      // The mailbox fills: a hand-over, then the rebuild's Resync takes the last slot.
      assert.isTrue(handOverOld1())
      fake.rebuild("epoch-2", "t", ["new1", "new2", "new3"])
      actor.resync("epoch-2")
      assert.strictEqual(actor.queueDepth, 2)
      actor.notify(3) // the new epoch's notification: refused, the mailbox is full
      yield* fake.release
      yield* toldOfNewEpochOnly(a)
      yield* close
    }))

  it.live("a notification queued before a rebuild reads the rebuilt rows: the actor resets instead of sending them", () =>
    Effect.gen(function*() {
      const { fake, actor, a, close } = yield* joinedActor(16)
      fake.append("t", 1, "old1")
      actor.notify(1)
      yield* eventually(() => a.seqs.length === 1, "entry 1 delivered")
      // A rebuild commits; its notification arrives before the feed's resync does.
      fake.rebuild("epoch-2", "t", ["new1", "new2", "new3"])
      actor.notify(3)
      yield* toldOfNewEpochOnly(a)
      yield* close
    }))

  // Deadlines under the TestClock (the node's timer heap runs on it); wake-ups are real turns.
  it.effect("without subscribers an actor parks and retires exactly at its deadline; a message or a lease first keeps it", () =>
    Effect.gen(function*() {
      const { fake, start, join, stopped, retired, timers, close } = yield* setup(16, undefined, 60)
      const actor = start("t")
      const a = recorder("a")
      yield* join(actor, a.subscriber, 0)
      // The last subscriber leaves: the actor parks with a deadline in the heap, no fiber.
      actor.refCount--
      assert.isTrue(actor.offerControl({ _tag: "Leave", subscriber: a.subscriber, evicted: false }))
      yield* eventually(() => timers.size === 1, "parked with a retirement deadline")
      // A notification 1 ms before the deadline wakes it; it parks again with a new deadline.
      yield* TestClock.adjust(59)
      fake.append("t", 1)
      const reads = fake.reads
      actor.notify(1)
      yield* eventually(() => fake.reads > reads && timers.size === 1, "woken, read and parked again")
      yield* TestClock.adjust(59)
      assert.deepStrictEqual(retired, [], "the notification moved the deadline")
      // At the new deadline it retires (the hub is asked), and afterwards it takes nothing.
      yield* TestClock.adjust(1)
      yield* eventually(() => retired.includes("t"), "retired at its deadline")
      assert.isFalse(actor.offer({ _tag: "Notify" }))
      assert.deepStrictEqual(stopped, [], "retirement is the hub's tryRetire, not a stopped fiber")
      // A lease held at the deadline keeps a parked actor.
      const b = start("u")
      const rb = recorder("b")
      yield* join(b, rb.subscriber, 0)
      b.refCount-- // the subscription ends…
      b.offerControl({ _tag: "Leave", subscriber: rb.subscriber, evicted: false })
      yield* eventually(() => timers.size === 1, "parked with a retirement deadline")
      b.refCount++ // …and another is acquired (its Join not sent yet) before the deadline
      yield* TestClock.adjust(60)
      yield* eventually(() => timers.size === 0, "the deadline passed")
      assert.deepStrictEqual(retired, ["t"], "a lease held at the deadline keeps the actor")
      assert.isTrue(b.offer({ _tag: "Notify" }))
      yield* close
    }))

  it.live("a resync refused by a full mailbox is deferred, not lost: the subscriber learns of the new epoch", () =>
    Effect.gen(function*() {
      const { fake, actor, a, close, handOverOld1 } = yield* busyActorOfTwo
      // The mailbox fills with hand-overs it already has; the rebuild's resync is refused.
      assert.isTrue(handOverOld1())
      assert.isTrue(handOverOld1())
      fake.rebuild("epoch-2", "t", ["new1"]) // same head: no read would notice the new epoch
      actor.resync("epoch-2")
      assert.strictEqual(actor.queueDepth, 2)
      yield* fake.release
      yield* toldOfNewEpochOnly(a)
      yield* close
    }))
})
