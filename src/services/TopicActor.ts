/**
 * TopicActor: the single owner of one topic's live state — its head, a ring buffer of recent
 * entries, and its live subscribers — run as one fiber fed by a bounded mailbox.
 *
 * Invariants:
 * - Entries come from this node's commits directly (`Entries`) or are read from the journal once
 *   per topic on a notification (not per subscriber); each frame is encoded once per subprotocol
 *   in use; every subscriber gets the same bytes.
 * - Per subscriber, seqs are delivered strictly increasing with no gap: a subscriber joins with
 *   the last seq it was sent (by its own replay), the actor sends ring entries after it, then
 *   `CaughtUp`, then live entries, filtering by the subscriber's `lastSent`.
 * - Delivery never blocks: a subscriber whose connection is over its bound is dropped here and
 *   evicts itself (`slow_consumer`).
 * - Notifications coalesce into at most one pending `Notify` (the highest seq), so the mailbox
 *   stays bounded no matter how fast commits arrive.
 * - A fiber runs only while the mailbox has work: once it is empty (and the topic has
 *   subscribers) the fiber ends and leaves a taker on the mailbox that starts the next one when a
 *   message arrives (`Queue.Taker`, so any producer's offer wakes it). The check and the taker's
 *   registration happen in one step, so at most one fiber owns the state at any time. Without
 *   subscribers the fiber waits up to `idleTtlMs` for a message, then asks to retire.
 */
import { create } from "@bufbuild/protobuf"
import { Cause, Deferred, Effect, Exit, Fiber, Queue, Schedule, type Scope } from "effect"
import { CaughtUpSchema, ServerFrameSchema } from "../gen/openagents/sync/v1/frames_pb.ts"
import {
  chunkUpdates,
  type EncodedFrame,
  encodedFrameBytes,
  encodeServerFrame,
  type Subprotocol
} from "../domain/Protocol.ts"
import type { SqlError } from "effect/sql/SqlError"
import type { Journal, StoredEntry } from "./Journal.ts"

/** What a connection exposes to the actors of the topics it subscribes to. */
export interface Subscriber {
  readonly connectionId: string
  readonly subprotocol: Subprotocol
  /** Non-blocking; false ⇒ the connection is over its bound and evicts itself. `bytes` is the frame's size. */
  readonly offer: (frame: EncodedFrame, bytes: number) => boolean
  /** The topic's journal epoch changed under this subscription: it is over (stale_cursor). */
  readonly onEpochChanged: (topic: string) => void
  /**
   * The topic's actor died of a defect (a bug): this subscription gets nothing more from it. The
   * connection ends with a retryable `internal` error, so the client reconnects and resumes from
   * its cursor (a fresh actor serves the topic), instead of waiting on a silent subscription.
   */
  readonly onActorFailed: (topic: string) => void
}

export type JoinResult =
  | { readonly _tag: "Joined"; readonly caughtUpSeq: number }
  /** The ring no longer covers the subscriber's position: replay more from the journal first. */
  | { readonly _tag: "Behind"; readonly ringStartSeq: number }
  | { readonly _tag: "EpochChanged" }

export type ActorMessage =
  | { readonly _tag: "Notify" }
  | {
    readonly _tag: "Join"
    readonly subscriber: Subscriber
    readonly epoch: string
    readonly lastSeq: number
    readonly minHeadSeq: number
    readonly reply: Deferred.Deferred<JoinResult, SqlError>
  }
  | { readonly _tag: "Leave"; readonly subscriber: Subscriber; readonly evicted: boolean }
  | { readonly _tag: "Resync"; readonly epoch: string | undefined }
  /** Entries a local transaction committed (seq order); a gap before them is read from the journal. */
  | { readonly _tag: "Entries"; readonly epoch: string; readonly entries: ReadonlyArray<StoredEntry> }

export interface ActorSettings {
  readonly ringCapacity: number
  readonly maxFrameBytes: number
  readonly maxItemsPerFrame: number
  readonly readBatch: number
}

export interface TopicStats {
  subscribers: number
  deliveredFrames: number
  deliveredBytes: number
  evictions: number
  headSeq: number
}

interface LiveSubscriber {
  readonly subscriber: Subscriber
  lastSent: number
}

/** Handle the hub keeps for a running actor. */
export interface TopicActorHandle {
  readonly topic: string
  readonly mailbox: Queue.Queue<ActorMessage>
  readonly stats: TopicStats
  /** Highest notified seq not yet read; coalesces notifications. */
  pendingNotifySeq: number
  notifyQueued: boolean
  /** A Resync could not be enqueued (mailbox full): the next Notify performs it. */
  resyncPending: boolean
  /** Subscriptions holding this actor (joined or joining). */
  refCount: number
}

/** Records a notification; enqueues at most one `Notify` at a time. */
export const notifyActor = (handle: TopicActorHandle, seq: number) => {
  if (seq > handle.pendingNotifySeq) handle.pendingNotifySeq = seq
  if (!handle.notifyQueued) {
    handle.notifyQueued = Queue.offerUnsafe(handle.mailbox, { _tag: "Notify" })
  }
}

/**
 * Starts the actor of `handle.topic` in `scope` (its fibers run in the caller's context) and
 * returns at once. `onStopped` is called once when the actor is gone: retired, or its fiber ended
 * abnormally (interrupted with the scope, or a defect: then its subscribers and pending joins are
 * told as well, see `failed`).
 */
export const startTopicActor = (options: {
  readonly handle: TopicActorHandle
  readonly journal: Journal["Service"]
  readonly settings: ActorSettings
  readonly idleTtlMs: number
  /** Called (synchronously) when idle; returns true if the actor may stop (no subscriber raced in). */
  readonly tryRetire: () => boolean
  readonly scope: Scope.Scope
  readonly onStopped: () => void
}): Effect.Effect<void> =>
  Effect.gen(function*() {
    const { handle, journal, settings } = options
    const context = yield* Effect.context<never>()
    const topic = handle.topic
    const live = new Map<Subscriber, LiveSubscriber>()
    const ring: Array<StoredEntry> = []
    let initialized = false
    let epoch = ""
    let head = 0

    /** A message the Entries batching took from the mailbox but did not handle. */
    let carry: ActorMessage | undefined
    /** The message being handled (a defect while handling it must still answer a Join). */
    let handling: ActorMessage | undefined

    const ringStart = () => (ring.length > 0 ? ring[0]!.seq : head + 1)

    const pushRing = (entries: ReadonlyArray<StoredEntry>) => {
      for (const e of entries) ring.push(e)
      const excess = ring.length - settings.ringCapacity
      if (excess > 0) ring.splice(0, excess)
    }

    /** A frame with its size, measured once however many subscribers it goes to. */
    type Sized = { readonly frame: EncodedFrame; readonly bytes: number }
    const sized = (frames: ReadonlyArray<EncodedFrame>): Array<Sized> =>
      frames.map((frame) => ({ frame, bytes: encodedFrameBytes(frame) }))

    const send = (ls: LiveSubscriber, f: Sized) => {
      if (ls.subscriber.offer(f.frame, f.bytes)) {
        handle.stats.deliveredFrames++
        handle.stats.deliveredBytes += f.bytes
        return true
      }
      handle.stats.evictions++
      live.delete(ls.subscriber)
      handle.stats.subscribers = live.size
      return false
    }

    const framesFor = (subprotocol: Subprotocol, entries: ReadonlyArray<StoredEntry>, replay: boolean) =>
      sized(chunkUpdates(subprotocol, { topic, epoch, replay }, entries, {
        maxItems: settings.maxItemsPerFrame,
        maxFrameBytes: settings.maxFrameBytes
      }))

    /**
     * Sends entries to every live subscriber: one encoding per subprotocol for the common case.
     * (Socket-level delivery metrics are counted by each connection's writer, once.)
     */
    const deliver = (entries: ReadonlyArray<StoredEntry>) => {
      if (entries.length === 0 || live.size === 0) return
      const first = entries[0]!.seq
      const last = entries[entries.length - 1]!.seq
      const shared = new Map<Subprotocol, Array<Sized>>()
      for (const ls of [...live.values()]) {
        if (ls.lastSent >= last) continue
        let out: Array<Sized>
        if (ls.lastSent < first) {
          out = shared.get(ls.subscriber.subprotocol) ?? framesFor(ls.subscriber.subprotocol, entries, false)
          shared.set(ls.subscriber.subprotocol, out)
        } else {
          out = framesFor(ls.subscriber.subprotocol, entries.filter((e) => e.seq > ls.lastSent), false)
        }
        let ok = true
        for (const f of out) {
          if (!send(ls, f)) {
            ok = false
            break
          }
        }
        if (ok) ls.lastSent = last
      }
    }

    /** Reads the journal from `head` up to at least `target` (or until it is exhausted). */
    const readUpTo = (target: number) =>
      Effect.gen(function*() {
        while (head < target) {
          const rows = yield* journal.read(topic, head, settings.readBatch)
          if (rows.length === 0) break
          // A compacted gap (seq jumps past head + 1) cannot happen for entries newer than our
          // head while subscribers hold positions; take what is there.
          head = rows[rows.length - 1]!.seq
          pushRing(rows)
          deliver(rows)
        }
        handle.stats.headSeq = head
      })

    const resetForEpoch = (newEpoch: string) =>
      Effect.gen(function*() {
        epoch = newEpoch
        ring.length = 0
        for (const ls of live.values()) ls.subscriber.onEpochChanged(topic)
        live.clear()
        handle.stats.subscribers = 0
        const notified = handle.pendingNotifySeq
        head = (yield* journal.position(topic)).headSeq
        handle.stats.headSeq = head
        // A notified seq of the old epoch may lie beyond the new head: it would make every later
        // Notify read for entries that will not come. Lowered only if no notification came in
        // during the read (one that did may name entries the read did not see yet).
        if (handle.pendingNotifySeq === notified) handle.pendingNotifySeq = Math.min(notified, head)
      })

    /** Takes a local hand-over into the ring; `out` collects what is still to be delivered. */
    const acceptEntries = (entries: ReadonlyArray<StoredEntry>, out: Array<StoredEntry>) =>
      Effect.gen(function*() {
        const last = entries[entries.length - 1]!.seq
        if (last <= head) return // already read (its notification won the race)
        if (entries[0]!.seq > head + 1) {
          // Entries before these are not here yet (another transaction's hand-over is still on
          // its way): they are committed, so the journal has them.
          deliver(out.splice(0))
          yield* readUpTo(last)
          return
        }
        const fresh = entries[0]!.seq > head ? entries : entries.filter((e) => e.seq > head)
        head = last
        handle.stats.headSeq = head
        pushRing(fresh)
        for (const e of fresh) out.push(e)
      })

    const onJoin = (m: Extract<ActorMessage, { _tag: "Join" }>) =>
      Effect.gen(function*() {
        if (m.epoch !== epoch) {
          // Our epoch may be older than the subscriber's (a rebuild we have not heard of yet).
          const current = yield* journal.epoch
          if (current !== epoch) yield* resetForEpoch(current)
          if (m.epoch !== epoch) return yield* Deferred.succeed(m.reply, { _tag: "EpochChanged" } as const)
        }
        if (head < m.minHeadSeq) yield* readUpTo(m.minHeadSeq)
        if (m.lastSeq + 1 < ringStart()) {
          return yield* Deferred.succeed(m.reply, { _tag: "Behind", ringStartSeq: ringStart() } as const)
        }
        const ls: LiveSubscriber = { subscriber: m.subscriber, lastSent: m.lastSeq }
        const missing = ring.filter((e) => e.seq > m.lastSeq)
        let ok = true
        for (const f of framesFor(m.subscriber.subprotocol, missing, true)) {
          if (!send(ls, f)) {
            ok = false
            break
          }
        }
        const caughtUpSeq = Math.max(m.lastSeq, missing.length > 0 ? missing[missing.length - 1]!.seq : 0)
        if (ok) {
          ls.lastSent = caughtUpSeq
          const [caughtUp] = sized([encodeServerFrame(
            m.subscriber.subprotocol,
            create(ServerFrameSchema, {
              frame: { case: "caughtUp", value: create(CaughtUpSchema, { topic, seq: BigInt(caughtUpSeq) }) }
            })
          )])
          if (send(ls, caughtUp!)) live.set(m.subscriber, ls)
        }
        handle.stats.subscribers = live.size
        yield* Deferred.succeed(m.reply, { _tag: "Joined", caughtUpSeq } as const)
      })

    const handleMessage = (m: ActorMessage): Effect.Effect<void, SqlError> =>
      Effect.gen(function*() {
        switch (m._tag) {
          case "Notify": {
            handle.notifyQueued = false
            yield* readUpTo(handle.pendingNotifySeq)
            return
          }
          case "Entries": {
            // Adaptive batching: hand-overs that queued up while we were busy go out together, as
            // one frame per subscriber instead of one per commit. An idle actor sends at once.
            const out: Array<StoredEntry> = []
            let m2: ActorMessage | undefined = m
            while (m2 !== undefined && m2._tag === "Entries") {
              if (m2.epoch !== epoch) {
                // Written in another epoch than ours (a rebuild we have not heard of yet, or a
                // hand-over that arrived after we moved on): never deliver across epochs.
                deliver(out.splice(0))
                m2 = { _tag: "Resync", epoch: undefined }
                break
              }
              yield* acceptEntries(m2.entries, out)
              m2 = undefined
              if (out.length >= settings.maxItemsPerFrame) break
              const more = Queue.takeUnsafe(handle.mailbox)
              if (more !== undefined && more._tag === "Success") m2 = more.value
            }
            // A message taken past the run is handled next by the main loop (with its error handling).
            carry = m2
            deliver(out)
            return
          }
          case "Join":
            return yield* onJoin(m)
          case "Leave":
            if (m.evicted && live.has(m.subscriber)) handle.stats.evictions++
            live.delete(m.subscriber)
            handle.stats.subscribers = live.size
            return
          case "Resync": {
            const current = m.epoch ?? (yield* journal.epoch)
            if (current !== epoch) yield* resetForEpoch(current)
            else {
              // Same epoch (e.g. a rebuild that kept seqs, or a listener reconnect): re-read.
              ring.length = 0
              const position = yield* journal.position(topic)
              if (position.headSeq > head) yield* readUpTo(position.headSeq)
              else head = position.headSeq
            }
            return
          }
        }
      })

    // The first reads retry: an actor must never die with leases (and their pending joins) on it.
    const initialize = Effect.gen(function*() {
      const initial = yield* journal.position(topic).pipe(
        Effect.tapError((e) => Effect.logWarning(`topic ${topic}: reading its position failed; retrying`, e)),
        Effect.retry(Schedule.spaced("200 millis"))
      )
      epoch = initial.epoch
      head = initial.headSeq
      initialized = true
    })

    /** Mailbox empty, subscribers present: end this fiber; the next message starts another. */
    const park = (run: { parked: boolean }): boolean => {
      const state = handle.mailbox.state
      if (state._tag !== "Open" || Queue.sizeUnsafe(handle.mailbox) > 0) return false
      run.parked = true
      state.takers.add({ ready: () => Queue.sizeUnsafe(handle.mailbox) > 0, resume: () => launch() })
      return true
    }

    /** Handles messages until the mailbox is empty (parked) or the actor retires. */
    const run = (self: { parked: boolean }) => Effect.gen(function*() {
      if (!initialized) yield* initialize
      while (true) {
        const carried = carry
        carry = undefined
        let next: ActorMessage | undefined = carried
        if (next === undefined) {
          const taken = Queue.takeUnsafe(handle.mailbox)
          if (taken !== undefined && taken._tag === "Success") next = taken.value
          else if (taken !== undefined) return // the mailbox was shut down: the actor is over
          else if (handle.refCount > 0) {
            if (park(self)) return
            continue
          } else {
            next = yield* Effect.map(
              Effect.timeoutOption(Queue.take(handle.mailbox), options.idleTtlMs),
              (o) => (o._tag === "Some" ? o.value : undefined)
            )
          }
        }
        if (next === undefined) {
          if (options.tryRetire()) return
          continue
        }
        // Set before anything below can fail: a defect must still answer this message if it is a Join.
        handling = next
        if (handle.resyncPending) {
          handle.resyncPending = false
          yield* handleMessage({ _tag: "Resync", epoch: undefined }).pipe(
            Effect.catch(() => Effect.sync(() => void (handle.resyncPending = true)))
          )
        }
        const m = next
        yield* handleMessage(m).pipe(
          Effect.catchTag("SqlError", (e) =>
            Effect.gen(function*() {
              yield* Effect.logWarning(`topic ${topic}: journal read failed; will retry`, e)
              if (m._tag === "Join") yield* Deferred.fail(m.reply, e).pipe(Effect.ignore)
              yield* Effect.sleep("200 millis")
              handle.notifyQueued = Queue.offerUnsafe(handle.mailbox, { _tag: "Notify" }) || handle.notifyQueued
            }))
        )
        handling = undefined
      }
    }).pipe(Effect.annotateLogs({ topic }))

    /**
     * The fiber died of a defect: nothing may wait on this actor. The hub forgets it (the next
     * subscriber starts a fresh one), queued joins die (their connections end with `internal`),
     * the mailbox is shut (later offers return false at once; a lease's join then dies too), and
     * every live subscriber is told.
     */
    const failed = (cause: Cause.Cause<unknown>) => {
      options.onStopped()
      const joins: Array<Deferred.Deferred<JoinResult, SqlError>> = []
      for (const m of [handling, carry]) if (m?._tag === "Join") joins.push(m.reply)
      handling = carry = undefined
      for (let t = Queue.takeUnsafe(handle.mailbox); t !== undefined && t._tag === "Success"; t = Queue.takeUnsafe(handle.mailbox)) {
        if (t.value._tag === "Join") joins.push(t.value.reply)
      }
      Queue.shutdownUnsafe(handle.mailbox)
      const subscribers = [...live.keys()]
      live.clear()
      handle.stats.subscribers = 0
      for (const subscriber of subscribers) {
        try {
          subscriber.onActorFailed(topic)
        } catch {
          // One broken subscriber must not keep the others (and the pending joins) from hearing.
        }
      }
      // Last: completing a reply may run its waiter at once.
      const defect = new Error(`topic ${topic}: its actor failed`)
      for (const reply of joins) Deferred.doneUnsafe(reply, Exit.die(defect))
      Effect.runForkWith(context)(
        Effect.logError(`topic ${topic}: actor failed; ${subscribers.length} subscriber(s) told to reconnect`, cause)
      )
    }

    const launch = () => {
      const self = { parked: false }
      const fiber = Fiber.runIn(Effect.runForkWith(context)(run(self)), options.scope)
      fiber.addObserver((exit) => {
        if (self.parked) return
        if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) failed(exit.cause)
        else options.onStopped()
      })
    }
    launch()
  })
