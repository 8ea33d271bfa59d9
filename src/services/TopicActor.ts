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
 *   stays bounded no matter how fast commits arrive. Hand-overs (`Entries`) and resyncs are
 *   refused when it is full (a hand-over falls back to a notification; a refused notification or
 *   resync is queued in the first slot the actor frees, behind older messages); joins
 *   and leaves are always taken (at most one of each per lease, so they are bounded by the
 *   subscriptions holding the actor) — a leave is never lost.
 * - A fiber runs only while the mailbox has work: once it is empty (and the topic has
 *   subscribers) the fiber ends and the actor is marked parked; the next message schedules a new
 *   one (`wake`: one `setImmediate` for all actors woken in the same turn, so hand-overs offered
 *   together are handled together). The check and the parking happen in one synchronous step, so
 *   at most one fiber owns the state at any time. Without subscribers it parks the same way and
 *   leaves a retirement deadline `idleTtlMs` ahead in the node's timer heap (`Timers`): no fiber
 *   and no timer of its own waits for it (10,000 clients disconnecting at once used to leave
 *   10,000 fibers with their timers for the whole TTL, and slowed the node meanwhile).
 * - An idle topic costs one object (no closures, no fiber, no queue): a class with its own small
 *   mailbox, since an idle subscriber usually has a topic of its own.
 */
import { create } from "@bufbuild/protobuf"
import { Cause, type Context, Deferred, Effect, Exit, Fiber, Schedule, type Scope } from "effect"
import { CaughtUpSchema, ServerFrameSchema } from "../gen/openagents/sync/v1/frames_pb.ts"
import {
  chunkUpdates,
  type EncodedFrame,
  encodedFrameBytes,
  encodeServerFrame,
  type Subprotocol
} from "../domain/Protocol.ts"
import type { SqlError } from "effect/sql/SqlError"
import { SmallMap } from "../domain/SmallMap.ts"
import type { Journal, StoredEntry } from "./Journal.ts"
import type { TimerEntry, Timers } from "./Timers.ts"

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
  readonly subscribers: number
  readonly deliveredFrames: number
  readonly deliveredBytes: number
  readonly evictions: number
  readonly headSeq: number
}

interface LiveSubscriber {
  readonly subscriber: Subscriber
  lastSent: number
}

/** What every actor of a hub shares (one object per hub, not per topic). */
export interface ActorEnv {
  readonly journal: Journal["Service"]
  readonly settings: ActorSettings
  readonly idleTtlMs: number
  /** The node's deadline heap: an actor without subscribers waits for retirement in it. */
  readonly timers: Timers
  /** Fibers run in this scope (interrupted with it) and context. */
  readonly scope: Scope.Scope
  readonly context: Context.Context<never>
  /** Called (synchronously) at the retirement deadline; true if the actor may stop (no subscriber raced in). */
  readonly tryRetire: (actor: TopicActor) => boolean
  /**
   * Called once when the actor is gone: retired, or its fiber ended abnormally (interrupted with
   * the scope, or a defect: then its subscribers and pending joins are told as well, see `failed`).
   */
  readonly onStopped: (actor: TopicActor) => void
}

/** The journal epoch as one string shared by every actor (each read returns its own copy). */
let sharedEpoch = ""
const internEpoch = (epoch: string): string => (epoch === sharedEpoch ? sharedEpoch : (sharedEpoch = epoch))

/** Parked actors a message arrived for; started together on the next turn of the event loop. */
let woken: Array<TopicActor> = []
const launchWoken = () => {
  const list = woken
  woken = []
  for (const actor of list) {
    try {
      actor.launch()
    } catch (e) {
      // A bug: that actor fails (its subscribers are told); the others of the batch still start.
      actor.launchFailed(e)
    }
  }
}

/** A frame with its size, measured once however many subscribers it goes to. */
type Sized = { readonly frame: EncodedFrame; readonly bytes: number }
const sized = (frames: ReadonlyArray<EncodedFrame>): Array<Sized> =>
  frames.map((frame) => ({ frame, bytes: encodedFrameBytes(frame) }))

/** One topic's actor; the hub keeps it as the topic's handle. */
export class TopicActor {
  readonly topic: string
  private deliveredFrames = 0
  private deliveredBytes = 0
  private evictions = 0
  /** Subscriptions holding this actor (joined or joining). */
  refCount = 0
  private readonly env: ActorEnv
  private readonly capacity: number

  // ---- mailbox (owned by producers and the running fiber; all synchronous)
  private mailbox: Array<ActorMessage | undefined> = []
  private mailboxHead = 0
  private shut = false
  /** Highest notified seq not yet read; coalesces notifications. */
  private pendingNotifySeq = 0
  private notifyQueued = false
  /**
   * A `Notify` / `Resync` was refused (mailbox full): it is queued in the first slot the actor
   * frees, behind what was queued before it (never lost, never ahead of older messages).
   */
  private notifyRefused = false
  private resyncRefused = false
  /** No fiber runs: the next message schedules one. */
  private parked = false
  /** Parked without subscribers: when it retires unless a message comes first. */
  private retireAt: TimerEntry | undefined = undefined

  // ---- state (owned by the running fiber)
  private readonly live = new SmallMap<Subscriber, LiveSubscriber>()
  private ring: Array<StoredEntry> = []
  private initialized = false
  private epoch = ""
  private head = 0
  /** A message the Entries batching took from the mailbox but did not handle. */
  private carry: ActorMessage | undefined = undefined
  /** The message being handled (a defect while handling it must still answer a Join). */
  private handling: ActorMessage | undefined = undefined

  constructor(topic: string, env: ActorEnv, mailboxCapacity: number) {
    this.topic = topic
    this.env = env
    this.capacity = mailboxCapacity
  }

  /** The seq this actor has reached (read or handed over). */
  get headSeq(): number {
    return this.head
  }

  /** A snapshot for operators (`GET /internal/v1/khala/fanout/metrics`). */
  get stats(): TopicStats {
    return {
      subscribers: this.live.size,
      deliveredFrames: this.deliveredFrames,
      deliveredBytes: this.deliveredBytes,
      evictions: this.evictions,
      headSeq: this.head
    }
  }

  // ---- producers

  get queueDepth(): number {
    return this.mailbox.length - this.mailboxHead
  }

  /** A bounded message (hand-over, resync): false when the mailbox is full or shut. */
  offer(m: ActorMessage): boolean {
    if (this.shut || this.queueDepth >= this.capacity) return false
    this.enqueue(m)
    return true
  }

  /** A join or leave: taken unless the actor failed (bounded by the leases holding the actor). */
  offerControl(m: Extract<ActorMessage, { _tag: "Join" | "Leave" }>): boolean {
    if (this.shut) return false
    this.enqueue(m)
    return true
  }

  /**
   * Records a notification; enqueues at most one `Notify` at a time. A full mailbox does not lose
   * it: it is queued in the first slot the actor frees (so it never overtakes what came before).
   */
  notify(seq: number): void {
    // A parked actor already has everything up to its head (usually from the local hand-over,
    // which beats the notification): handling it would only wake a fiber to read nothing.
    if (this.parked && seq <= this.head && this.pendingNotifySeq <= this.head) return
    if (seq > this.pendingNotifySeq) this.pendingNotifySeq = seq
    this.queueNotify()
  }

  private queueNotify(): void {
    if (this.notifyQueued) return
    this.notifyQueued = this.offer({ _tag: "Notify" })
    // The mailbox is full, so a fiber runs (or is scheduled) and its next take re-queues it.
    if (!this.notifyQueued && !this.shut) this.notifyRefused = true
  }

  /** Re-reads the position (listener reconnect, epoch change); a full mailbox defers it, never loses it. */
  resync(epoch: string | undefined): void {
    // A deferred one reads the epoch itself when it runs.
    if (!this.offer({ _tag: "Resync", epoch }) && !this.shut) this.resyncRefused = true
  }

  private enqueue(m: ActorMessage) {
    this.mailbox.push(m)
    if (this.parked) {
      this.parked = false
      if (woken.push(this) === 1) setImmediate(launchWoken)
    }
  }

  private take(): ActorMessage | undefined {
    if (this.mailboxHead >= this.mailbox.length) return undefined
    const m = this.mailbox[this.mailboxHead]
    this.mailbox[this.mailboxHead++] = undefined
    if (this.mailboxHead === this.mailbox.length) {
      this.mailbox = []
      this.mailboxHead = 0
    } else if (this.mailboxHead >= 1024) {
      this.mailbox.splice(0, this.mailboxHead)
      this.mailboxHead = 0
    }
    // A slot is free: what a full mailbox refused is queued now, behind what came before it (a
    // Notify must not overtake a queued Resync).
    if (this.resyncRefused && !this.shut) {
      this.resyncRefused = false
      this.resync(undefined)
    }
    if (this.notifyRefused && !this.shut) {
      this.notifyRefused = false
      this.queueNotify()
    }
    return m
  }

  /** The retirement deadline passed with the actor still parked, unused and unsubscribed. */
  private retireIfIdle(): void {
    this.retireAt = undefined
    if (!this.parked || this.shut || this.queueDepth > 0) return
    // The hub forgets it unless a subscription raced in (that one's Join will wake it).
    if (this.env.tryRetire(this)) this.shut = true
  }

  // ---- delivery

  private ringStart(): number {
    return this.ring.length > 0 ? this.ring[0]!.seq : this.head + 1
  }

  private pushRing(entries: ReadonlyArray<StoredEntry>) {
    for (const e of entries) this.ring.push(e)
    const excess = this.ring.length - this.env.settings.ringCapacity
    if (excess > 0) this.ring.splice(0, excess)
  }

  private send(ls: LiveSubscriber, f: Sized): boolean {
    if (ls.subscriber.offer(f.frame, f.bytes)) {
      this.deliveredFrames++
      this.deliveredBytes += f.bytes
      return true
    }
    this.evictions++
    this.live.delete(ls.subscriber)
    return false
  }

  private framesFor(subprotocol: Subprotocol, entries: ReadonlyArray<StoredEntry>, replay: boolean) {
    const settings = this.env.settings
    return sized(chunkUpdates(subprotocol, { topic: this.topic, epoch: this.epoch, replay }, entries, {
      maxItems: settings.maxItemsPerFrame,
      maxFrameBytes: settings.maxFrameBytes
    }))
  }

  /**
   * Sends entries to every live subscriber: one encoding per subprotocol for the common case.
   * (Socket-level delivery metrics are counted by each connection's writer, once.)
   */
  private deliver(entries: ReadonlyArray<StoredEntry>) {
    if (entries.length === 0 || this.live.size === 0) return
    const first = entries[0]!.seq
    const last = entries[entries.length - 1]!.seq
    const shared = new Map<Subprotocol, Array<Sized>>()
    // A Map iterates safely while `send` deletes an evicted subscriber: no copy per delivery.
    for (const ls of this.live.values()) {
      if (ls.lastSent >= last) continue
      let out: Array<Sized>
      if (ls.lastSent < first) {
        out = shared.get(ls.subscriber.subprotocol) ?? this.framesFor(ls.subscriber.subprotocol, entries, false)
        shared.set(ls.subscriber.subprotocol, out)
      } else {
        out = this.framesFor(ls.subscriber.subprotocol, entries.filter((e) => e.seq > ls.lastSent), false)
      }
      let ok = true
      for (const f of out) {
        if (!this.send(ls, f)) {
          ok = false
          break
        }
      }
      if (ok) ls.lastSent = last
    }
  }

  /**
   * Reads the journal from `head` up to at least `target` (or until it is exhausted). Rows of
   * another epoch than ours (a rebuild committed and we have not handled its Resync yet) are
   * never delivered: the actor resets for that epoch instead.
   */
  private readUpTo(target: number): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      while (this.head < target) {
        const { epoch, rows } = yield* this.env.journal.read(this.topic, this.head, this.env.settings.readBatch)
        if (rows.length === 0) break
        if (epoch !== this.epoch) {
          yield* this.resetForEpoch(epoch)
          break
        }
        // A compacted gap (seq jumps past head + 1) cannot happen for entries newer than our
        // head while subscribers hold positions; take what is there.
        this.head = rows[rows.length - 1]!.seq
        this.pushRing(rows)
        this.deliver(rows)
      }
    })
  }

  private resetForEpoch(newEpoch: string): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      this.epoch = internEpoch(newEpoch)
      this.ring = []
      for (const ls of this.live.values()) ls.subscriber.onEpochChanged(this.topic)
      this.live.clear()
      const notified = this.pendingNotifySeq
      this.head = (yield* this.env.journal.position(this.topic)).headSeq
      // A notified seq of the old epoch may lie beyond the new head: it would make every later
      // Notify read for entries that will not come. Lowered only if no notification came in
      // during the read (one that did may name entries the read did not see yet).
      if (this.pendingNotifySeq === notified) this.pendingNotifySeq = Math.min(notified, this.head)
    })
  }

  /** Takes a local hand-over into the ring; `out` collects what is still to be delivered. */
  private acceptEntries(entries: ReadonlyArray<StoredEntry>, out: Array<StoredEntry>): Effect.Effect<void, SqlError> {
    const last = entries[entries.length - 1]!.seq
    if (last <= this.head) return Effect.void // already read (its notification won the race)
    if (entries[0]!.seq > this.head + 1) {
      // Entries before these are not here yet (another transaction's hand-over is still on
      // its way): they are committed, so the journal has them.
      this.deliver(out.splice(0))
      return this.readUpTo(last)
    }
    this.takeContinuing(entries, out)
    return Effect.void
  }

  /**
   * Takes hand-over entries that continue (or repeat) the head into the ring and `out` (what is
   * already here is skipped). The caller has checked that none lies beyond head + 1.
   */
  private takeContinuing(entries: ReadonlyArray<StoredEntry>, out: Array<StoredEntry>) {
    const last = entries[entries.length - 1]!.seq
    if (last <= this.head) return
    const fresh = entries[0]!.seq > this.head ? entries : entries.filter((e) => e.seq > this.head)
    this.head = last
    this.pushRing(fresh)
    for (const e of fresh) out.push(e)
  }

  /** The mailbox is empty: no fiber runs; without subscribers, the retirement deadline is set. */
  private park() {
    if (this.refCount === 0) {
      const timers = this.env.timers
      this.retireAt = timers.schedule(timers.now() + this.env.idleTtlMs, () => this.retireIfIdle())
    }
    this.parked = true
  }

  private onJoin(m: Extract<ActorMessage, { _tag: "Join" }>): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      if (m.epoch !== this.epoch) {
        // Our epoch may be older than the subscriber's (a rebuild we have not heard of yet).
        const current = yield* this.env.journal.epoch
        if (current !== this.epoch) yield* this.resetForEpoch(current)
        if (m.epoch !== this.epoch) return yield* Deferred.succeed(m.reply, { _tag: "EpochChanged" } as const)
      }
      if (this.head < m.minHeadSeq) {
        yield* this.readUpTo(m.minHeadSeq)
        // The read found a newer epoch (and reset for it): the subscriber's position is stale.
        if (m.epoch !== this.epoch) return yield* Deferred.succeed(m.reply, { _tag: "EpochChanged" } as const)
      }
      if (m.lastSeq + 1 < this.ringStart()) {
        return yield* Deferred.succeed(m.reply, { _tag: "Behind", ringStartSeq: this.ringStart() } as const)
      }
      const ls: LiveSubscriber = { subscriber: m.subscriber, lastSent: m.lastSeq }
      const missing = this.ring.filter((e) => e.seq > m.lastSeq)
      let ok = true
      for (const f of this.framesFor(m.subscriber.subprotocol, missing, true)) {
        if (!this.send(ls, f)) {
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
            frame: { case: "caughtUp", value: create(CaughtUpSchema, { topic: this.topic, seq: BigInt(caughtUpSeq) }) }
          })
        )])
        if (this.send(ls, caughtUp!)) this.live.set(m.subscriber, ls)
      }
      yield* Deferred.succeed(m.reply, { _tag: "Joined", caughtUpSeq } as const)
    })
  }

  /** Adaptive batching: hand-overs that queued up while we were busy go out together. */
  private onEntries(first: Extract<ActorMessage, { _tag: "Entries" }>): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      // One frame per subscriber instead of one per commit. An idle actor sends at once.
      const out: Array<StoredEntry> = []
      let m2: ActorMessage | undefined = first
      while (m2 !== undefined && m2._tag === "Entries") {
        if (m2.epoch !== this.epoch) {
          // Written in another epoch than ours (a rebuild we have not heard of yet, or a
          // hand-over that arrived after we moved on): never deliver across epochs.
          this.deliver(out.splice(0))
          m2 = { _tag: "Resync", epoch: undefined }
          break
        }
        yield* this.acceptEntries(m2.entries, out)
        m2 = undefined
        if (out.length >= this.env.settings.maxItemsPerFrame) break
        m2 = this.take()
      }
      // A message taken past the run is handled next by the main loop (with its error handling).
      this.carry = m2
      this.deliver(out)
    })
  }

  private onResync(epoch: string | undefined): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      const current = epoch ?? (yield* this.env.journal.epoch)
      if (current !== this.epoch) yield* this.resetForEpoch(current)
      else {
        // Same epoch (e.g. a rebuild that kept seqs, or a listener reconnect): re-read.
        this.ring = []
        const position = yield* this.env.journal.position(this.topic)
        if (position.headSeq > this.head) yield* this.readUpTo(position.headSeq)
        else this.head = position.headSeq
      }
    })
  }

  private handleMessage(m: ActorMessage): Effect.Effect<void, SqlError> {
    switch (m._tag) {
      case "Notify":
        this.notifyQueued = false
        return this.readUpTo(this.pendingNotifySeq)
      case "Entries":
        return this.onEntries(m)
      case "Join":
        return this.onJoin(m)
      case "Leave":
        if (m.evicted && this.live.has(m.subscriber)) this.evictions++
        this.live.delete(m.subscriber)
        return Effect.void
      case "Resync":
        return this.onResync(m.epoch)
    }
  }

  // ---- the fiber

  // The first reads retry: an actor must never die with leases (and their pending joins) on it.
  private get initialize(): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      const initial = yield* this.env.journal.position(this.topic).pipe(
        Effect.tapError((e) => Effect.logWarning(`topic ${this.topic}: reading its position failed; retrying`, e)),
        Effect.retry(Schedule.spaced("200 millis"))
      )
      this.epoch = internEpoch(initial.epoch)
      this.head = initial.headSeq
      this.initialized = true
    })
  }

  /** Handles messages until the mailbox is empty (parked) or the actor retires. */
  private run(launched: { parked: boolean }): Effect.Effect<void, SqlError> {
    return Effect.gen({ self: this }, function*() {
      if (!this.initialized) yield* this.initialize
      while (true) {
        let next: ActorMessage | undefined = this.carry
        this.carry = undefined
        if (next === undefined) {
          if (this.shut) return // the actor failed: it is over
          next = this.take()
          if (next === undefined) {
            // Mailbox empty: end this fiber; the next message starts another. Without
            // subscribers, the retirement deadline waits in the node's timer heap.
            this.park()
            // Per launch as well: this fiber's exit must read as parked even if a message has
            // already cleared the actor's flag (and scheduled the next fiber) before it exits.
            launched.parked = true
            return
          }
        }
        // Set before anything below can fail: a defect must still answer this message if it is a Join.
        this.handling = next
        const m = next
        yield* this.handleMessage(m).pipe(
          Effect.catchTag("SqlError", (e) =>
            Effect.gen({ self: this }, function*() {
              yield* Effect.logWarning(`topic ${this.topic}: journal read failed; will retry`, e)
              if (m._tag === "Join") yield* Deferred.fail(m.reply, e).pipe(Effect.ignore)
              yield* Effect.sleep("200 millis")
              // Retried as a message: a resync again (it must not turn into a mere read), else a read.
              if (m._tag === "Resync") this.resync(m.epoch)
              else this.queueNotify()
            }))
        )
        this.handling = undefined
      }
    }).pipe(Effect.annotateLogs({ topic: this.topic }))
  }

  /**
   * The fiber died of a defect: nothing may wait on this actor. The hub forgets it (the next
   * subscriber starts a fresh one), queued joins die (their connections end with `internal`),
   * the mailbox is shut (later offers return false at once; a lease's join then dies too), and
   * every live subscriber is told.
   */
  private failed(cause: Cause.Cause<unknown>) {
    this.env.onStopped(this)
    const joins: Array<Deferred.Deferred<JoinResult, SqlError>> = []
    for (const m of [this.handling, this.carry]) if (m?._tag === "Join") joins.push(m.reply)
    this.handling = this.carry = undefined
    for (let m = this.take(); m !== undefined; m = this.take()) if (m._tag === "Join") joins.push(m.reply)
    this.shut = true
    const subscribers = [...this.live.keys()]
    this.live.clear()
    for (const subscriber of subscribers) {
      try {
        subscriber.onActorFailed(this.topic)
      } catch {
        // One broken subscriber must not keep the others (and the pending joins) from hearing.
      }
    }
    // Last: completing a reply may run its waiter at once.
    const defect = new Error(`topic ${this.topic}: its actor failed`)
    for (const reply of joins) Deferred.doneUnsafe(reply, Exit.die(defect))
    Effect.runForkWith(this.env.context)(
      Effect.logError(`topic ${this.topic}: actor failed; ${subscribers.length} subscriber(s) told to reconnect`, cause)
    )
  }

  /**
   * The fiber-free path of `launch`: takes hand-overs of the actor's epoch that continue (or
   * repeat) its head and delivers them as `onEntries` does, batched up to a frame's items. True
   * if the mailbox was emptied (the actor is parked again); false when the first message left
   * needs the fiber (it stays in the mailbox).
   */
  private deliverHandOvers(): boolean {
    if (!this.initialized || this.shut || this.carry !== undefined) return false
    const out: Array<StoredEntry> = []
    while (this.mailboxHead < this.mailbox.length) {
      const m = this.mailbox[this.mailboxHead]!
      if (m._tag !== "Entries" || m.epoch !== this.epoch || m.entries[0]!.seq > this.head + 1) {
        this.deliver(out)
        return false
      }
      this.take()
      this.takeContinuing(m.entries, out)
      if (out.length >= this.env.settings.maxItemsPerFrame) this.deliver(out.splice(0))
    }
    this.deliver(out)
    // A delivery may have queued a message (an evicted subscriber's leave): the fiber takes it.
    if (this.queueDepth > 0) return false
    this.park()
    return true
  }

  /** `launch` threw (a bug): the actor is over, as if its fiber had died of the defect. */
  launchFailed(defect: unknown): void {
    this.failed(Cause.die(defect))
  }

  /**
   * Handles the mailbox of a woken (or new) actor: hand-overs that continue its head are
   * delivered right here; a fiber is started only for what needs effects (a first read, a join,
   * a notification, a resync, a gap to read from the journal, another epoch's entries).
   */
  launch(): void {
    // A message came before the retirement deadline: the actor goes on.
    if (this.retireAt !== undefined) {
      this.env.timers.cancel(this.retireAt)
      this.retireAt = undefined
    }
    if (this.deliverHandOvers()) return
    const launched = { parked: false }
    const fiber = Fiber.runIn(Effect.runForkWith(this.env.context)(this.run(launched)), this.env.scope)
    fiber.addObserver((exit) => {
      if (launched.parked) return
      if (Exit.isFailure(exit) && !Cause.hasInterruptsOnly(exit.cause)) this.failed(exit.cause)
      else this.env.onStopped(this)
    })
  }
}
