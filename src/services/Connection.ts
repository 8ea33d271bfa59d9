/**
 * Connection: one WebSocket client of `/sync/v1`, from Hello to close (SPEC §5, §10).
 *
 * Owns: authentication (Hello within auth_timeout_ms, RefreshToken, expiry at exp + skew),
 * per-topic cursors and ACL, replay from the journal in bounded chunks followed by the hand-over
 * to the topic actor (no gap, no duplicate), heartbeats, client rate and frame-size limits, the
 * bounded outbound queue and its writer, and the close protocol: request-scoped errors are
 * `Error` frames; connection-fatal ones are `Goodbye` then close with 4000 + code.
 *
 * An idle connection is plain state, with no fiber of its own: client frames are handled by a
 * fiber that exists only while frames are waiting (push sockets) or by the caller's pull loop
 * (`runConnection`); the writer exists only while the outbound queue has a backlog (the live fast
 * path writes straight to the socket); heartbeats, token expiry and the auth timeout are entries
 * in the node's shared `Timers` heap; closing runs in a fiber of its own. Every fiber is forked
 * with the context the connection was started in (one per node for the daemon), so no per-
 * connection copy of the service map is kept.
 *
 * Talks to the socket only through `SocketPort` (pulled: tests drive it with a fake socket and a
 * TestClock) or `PushSocketPort` (the daemon's `ws` sockets, which call back per message). Never
 * touches SQL itself: Journal, TopicAccess and TopicHub do.
 */
import { create } from "@bufbuild/protobuf"
import { Cause, Clock, type Context, Duration, Effect, Fiber, Metric, Ref, Result } from "effect"
import type { SqlError } from "effect/sql/SqlError"
import { randomUUID } from "node:crypto"
import {
  type ClientFrame,
  HeartbeatSchema,
  PongSchema,
  type ServerFrame,
  ServerFrameSchema,
  SubscribedSchema,
  TokenRefreshedSchema,
  TopicPositionSchema,
  UnsubscribedSchema,
  WelcomeSchema
} from "../gen/openagents/sync/v1/frames_pb.ts"
import { checkCursor, type Position } from "../domain/Cursor.ts"
import { type ProtocolError, protocolError } from "../domain/ErrorCode.ts"
import type { Principal } from "../domain/Principal.ts"
import {
  decodeClientFrame,
  type EncodedFrame,
  encodeServerFrame,
  errorFrame,
  goodbyeFrame,
  type Subprotocol
} from "../domain/Protocol.ts"
import { SmallMap } from "../domain/SmallMap.ts"
import { KhalaConfig, type KhalaSettings } from "../layers/Config.ts"
import { Journal, type ReplayPage } from "./Journal.ts"
import { Lifecycle } from "./Lifecycle.ts"
import {
  authFailures,
  connectionsGauge,
  deliveredTally,
  replayDurationMs,
  slowConsumerEvictions,
  subscriptionsGauge
} from "./Metrics.ts"
import { Outbound, type OutboundLimits } from "./Outbound.ts"
import { Timers, type TimerEntry } from "./Timers.ts"
import type { Subscriber } from "./TopicActor.ts"
import { TopicAccess } from "./TopicAccess.ts"
import { type TopicLease, TopicHub } from "./TopicHub.ts"
import { TokenVerifier } from "./TokenVerifier.ts"

/** The socket as the connection sees it (pulled: `runConnection` reads it in a loop). */
export interface SocketPort {
  readonly subprotocol: Subprotocol
  /** Next batch of client messages; fails when the socket closed. */
  readonly pull: Effect.Effect<ReadonlyArray<Uint8Array | string>, unknown>
  readonly write: (frames: ReadonlyArray<EncodedFrame>) => Effect.Effect<void, unknown>
  /** Optional synchronous write of one frame (the live fast path); false ⇒ not written. */
  readonly writeNow?: (frame: EncodedFrame) => boolean
  /** Bytes handed to the socket and not yet sent. */
  readonly bufferedBytes: () => number
  /** Resolves when the socket's send buffer drained. */
  readonly awaitDrain: Effect.Effect<void>
  /** Close handshake with a code and a reason (≤ 123 bytes). */
  readonly close: (code: number, reason: string) => Effect.Effect<void>
  /** Drops the TCP connection at once (a peer that does not read cannot complete a handshake). */
  readonly destroy: () => void
}

/** A socket that calls back per client message (`startConnection`): nothing waits on it while idle. */
export interface PushSocketPort extends Omit<SocketPort, "pull"> {
  /** Starts delivery: `message` for every client message, in order; `closed` once the peer is gone. */
  readonly listen: (handlers: { readonly message: (data: Uint8Array | string) => void; readonly closed: () => void }) => void
  /** Stops reading from the socket (too much unhandled input); `resume` reads again. */
  readonly pause: () => void
  readonly resume: () => void
}

/** What every connection of a node shares: services, and the context its fibers run in. */
export interface ConnectionDeps {
  readonly config: KhalaSettings
  readonly verifier: TokenVerifier["Service"]
  readonly access: TopicAccess["Service"]
  readonly journal: Journal["Service"]
  readonly hub: TopicHub["Service"]
  readonly lifecycle: Lifecycle["Service"]
  readonly timers: Timers
  readonly context: Context.Context<never>
  /** Every connection's outbound bounds (one object for all). */
  readonly outboundLimits: OutboundLimits
}

/** Reads the connection dependencies from the current context (build it once per node). */
export const connectionDeps: Effect.Effect<
  ConnectionDeps,
  never,
  KhalaConfig | TokenVerifier | TopicAccess | Journal | TopicHub | Lifecycle
> = Effect.gen(function*() {
  const config = yield* KhalaConfig
  return {
    config,
    verifier: yield* TokenVerifier,
    access: yield* TopicAccess,
    journal: yield* Journal,
    hub: yield* TopicHub,
    lifecycle: yield* Lifecycle,
    timers: yield* Timers.forClock,
    context: yield* Effect.context<never>(),
    outboundLimits: { maxBytes: config.outboundQueueMaxBytes, maxFrames: config.outboundQueueMaxFrames }
  }
})

const MAX_ITEMS_PER_FRAME = 512
/** Over-limit frames in one second beyond which rate limiting becomes fatal. */
const RATE_ABUSE_FACTOR = 2
/** Unhandled client input (bytes) at which a push socket is paused, and resumed below half. */
const INBOUND_HIGH_WATER = 64 * 1024

const frameOf = (frame: ServerFrame["frame"]) => create(ServerFrameSchema, { frame })

/**
 * Heartbeat deadlines are aligned to this grid (the interval is a floor, not exact to the ms), so
 * idle connections share timer wake-ups and one encoded Heartbeat per tick instead of each
 * waking the node's timer fiber on its own millisecond (10,000 idle connections at a 15 s
 * interval: ≤ 10 wake-ups per second instead of ~670, and their garbage).
 */
const HEARTBEAT_GRID_MS = 100
const nextHeartbeat = (now: number, intervalMs: number) =>
  Math.ceil((now + intervalMs) / HEARTBEAT_GRID_MS) * HEARTBEAT_GRID_MS

/** The Heartbeat of one tick, encoded once per subprotocol for every connection due at it. */
let heartbeatTick: { now: number; frames: Map<Subprotocol, EncodedFrame> } = { now: -1, frames: new Map() }
const heartbeatFrame = (subprotocol: Subprotocol, now: number): EncodedFrame => {
  if (heartbeatTick.now !== now) heartbeatTick = { now, frames: new Map() }
  let frame = heartbeatTick.frames.get(subprotocol)
  if (frame === undefined) {
    frame = encodeServerFrame(subprotocol, frameOf({ case: "heartbeat", value: create(HeartbeatSchema, { serverTimeMs: BigInt(now) }) }))
    heartbeatTick.frames.set(subprotocol, frame)
  }
  return frame
}

const trimReason = (s: string) => {
  const buf = Buffer.from(s, "utf8")
  return buf.byteLength <= 120 ? s : buf.subarray(0, 120).toString("utf8").replace(/\uFFFD$/, "")
}

const sizeOf = (data: Uint8Array | string) => (typeof data === "string" ? data.length : data.byteLength)

/** One subscription; it is also what the topic actor delivers to. */
class Subscription implements Subscriber {
  readonly conn: Connection
  readonly topic: string
  lease!: TopicLease
  /** False once unsubscribed: the subscriber queues nothing more (a Join may still be in flight). */
  active = true

  constructor(conn: Connection, topic: string) {
    this.conn = conn
    this.topic = topic
  }

  get connectionId(): string {
    return this.conn.connectionId
  }

  get subprotocol(): Subprotocol {
    return this.conn.subprotocol
  }

  offer(frame: EncodedFrame, bytes: number): boolean {
    if (!this.active) return true // unsubscribed: drop silently (the actor will get our Leave)
    if (this.conn.outbound.offer(frame, bytes)) return true
    this.conn.slowConsumer()
    return false
  }

  onEpochChanged(topic: string): void {
    // Called from the actor fiber: drop the subscription and tell the client asynchronously.
    if (!this.active || this.conn.subscriptions.get(topic) !== this) return
    this.conn.fork(this.conn.dropForEpoch(topic))
  }

  onActorFailed(topic: string): void {
    // Called as the actor's fiber ends: the client resumes every topic from its cursors elsewhere.
    if (!this.active || this.conn.subscriptions.get(topic) !== this) return
    this.conn.fork(this.conn.endEffect(protocolError("internal", "topic delivery failed; reconnect and resume")))
  }
}

type Phase = "hello" | "open" | "ended"

class Connection {
  readonly deps: ConnectionDeps
  readonly port: SocketPort | PushSocketPort
  readonly subprotocol: Subprotocol
  readonly connectionId = randomUUID()
  readonly outbound: Outbound
  readonly subscriptions = new SmallMap<string, Subscription>()
  phase: Phase = "hello"
  /** Who the token says (only what authorization reads: the token itself is not kept). */
  principal: Principal | undefined
  expiresAtMs = 0
  nextHeartbeatAt = 0
  timer: TimerEntry | undefined
  replays: Map<string, Fiber.Fiber<unknown, unknown>> | undefined
  /** The fiber handling client frames right now (the pull loop, or a push drain). */
  worker: Fiber.Fiber<unknown, unknown> | undefined
  working = false
  inbound: Array<Uint8Array | string> | undefined
  inboundBytes = 0
  paused = false
  writer: Fiber.Fiber<unknown, unknown> | undefined
  windowStart = 0
  windowCount = 0
  /** Runs last when the connection is over (release the socket, wake the caller). */
  onEnded: Effect.Effect<void> | undefined
  readonly onTimerFn = (now: number) => this.onTimer(now)

  constructor(deps: ConnectionDeps, port: SocketPort | PushSocketPort) {
    this.deps = deps
    this.port = port
    this.subprotocol = port.subprotocol
    this.outbound = new Outbound(deps.outboundLimits, port)
    this.outbound.onDemand(this)
  }

  fork<A, E>(effect: Effect.Effect<A, E>): Fiber.Fiber<A, E> {
    return Effect.runForkWith(this.deps.context)(effect)
  }

  encode(frame: ServerFrame): EncodedFrame {
    return encodeServerFrame(this.subprotocol, frame)
  }

  /** Request-scoped frames: offered like updates, so an unread socket is still bounded. */
  control(frame: ServerFrame): void {
    if (!this.outbound.offer(this.encode(frame))) this.slowConsumer()
  }

  sendControl(frame: ServerFrame): Effect.Effect<void> {
    return Effect.sync(() => this.control(frame))
  }

  sendError(e: ProtocolError): Effect.Effect<void> {
    return this.sendControl(errorFrame(e))
  }

  slowConsumer(): void {
    this.end(protocolError("slow_consumer", "outbound queue over its bound; resume from your last applied seq"))
  }

  endEffect(e: ProtocolError): Effect.Effect<void> {
    return Effect.sync(() => this.end(e))
  }

  // ---- lifecycle

  /** The node started draining (`Lifecycle.onDrain`). */
  onDraining(): void {
    this.end(protocolError("server_draining", "this node is draining; reconnect to another", { retryAfterMs: 0 }))
  }

  /** Registers the connection (count, drain, auth deadline). */
  open(): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      yield* Ref.update(this.deps.lifecycle.connections, (n) => n + 1)
      yield* Metric.modify(connectionsGauge, 1)
      const timers = this.deps.timers
      this.timer = timers.schedule(timers.now() + this.deps.config.authTimeoutMs, this.onTimerFn)
      this.deps.lifecycle.onDrain(this)
    })
  }

  /**
   * Ends the connection once (later calls are ignored): with the fatal error to send, or
   * `undefined` when the client went away. The close protocol runs in a fiber of its own.
   */
  end(reason: ProtocolError | undefined): void {
    if (this.phase === "ended") return
    this.phase = "ended"
    // Not nested in the caller's step (an actor's delivery loop, the timer fiber): it yields first.
    this.fork(Effect.andThen(Effect.yieldNow, this.shutdown(reason)))
  }

  private release(evicted: boolean): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      this.deps.timers.cancel(this.timer)
      this.timer = undefined
      this.deps.lifecycle.offDrain(this) // idempotent
      const worker = this.worker
      if (worker !== undefined) yield* Fiber.interrupt(worker)
      for (const topic of [...this.subscriptions.keys()]) yield* this.removeSubscription(topic, evicted)
    })
  }

  private shutdown(reason: ProtocolError | undefined): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      yield* this.release(reason?.code === "slow_consumer")
      if (reason !== undefined) {
        if (reason.code === "slow_consumer") yield* Metric.update(slowConsumerEvictions, 1)
        this.outbound.force(this.encode(goodbyeFrame(reason)))
        this.outbound.close()
        // Flush what is queued (Goodbye last), then close; a peer that does not read is dropped.
        const flushed = yield* this.outbound.awaitIdle.pipe(
          Effect.timeoutOption(Duration.millis(reason.code === "slow_consumer" ? 250 : 2000)),
          Effect.map((o) => o._tag === "Some")
        )
        if (flushed && reason.code !== "slow_consumer") yield* this.port.close(reason.closeCode, trimReason(reason.message))
        else {
          yield* this.port.close(reason.closeCode, trimReason(reason.message))
          yield* Effect.sleep(Duration.millis(100))
          this.port.destroy()
        }
      } else {
        this.outbound.close()
      }
      const writer = this.writer
      if (writer !== undefined) yield* Fiber.interrupt(writer)
    }).pipe(Effect.ensuring(this.finish()))
  }

  private finish(): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      yield* Ref.update(this.deps.lifecycle.connections, (n) => n - 1)
      yield* Metric.modify(connectionsGauge, -1)
      if (this.onEnded !== undefined) yield* this.onEnded
    })
  }

  /**
   * The server is going away under a live connection (shutdown, or the caller was interrupted):
   * best-effort Goodbye{server_draining} and close, leases released.
   */
  abort(): Effect.Effect<void> {
    return Effect.suspend(() => {
      if (this.phase === "ended") return Effect.void // the close protocol is already running
      this.phase = "ended"
      const e = protocolError("server_draining", "the server is shutting down; reconnect", { retryAfterMs: 0 })
      this.fork(
        this.port.write([this.encode(goodbyeFrame(e))]).pipe(
          Effect.andThen(this.port.close(e.closeCode, trimReason(e.message))),
          Effect.ignore
        )
      )
      return this.release(false).pipe(
        Effect.andThen(Effect.sync(() => this.outbound.close())),
        Effect.andThen(Effect.suspend(() => (this.writer === undefined ? Effect.void : Fiber.interrupt(this.writer)))),
        Effect.ensuring(this.finish())
      )
    })
  }

  // ---- writer: exists only while the outbound queue has a backlog

  /** Starts the writer fiber (the outbound queue asks for one when a frame is queued behind the socket). */
  startWriter(): void {
    const fiber = this.fork(this.writeBacklog())
    // It may have finished synchronously (the socket took everything at once).
    if (this.outbound.writerActive) this.writer = fiber
  }

  private writeBacklog(): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      const outbound = this.outbound
      while (true) {
        const batch = outbound.takeNow()
        if (batch === undefined) return
        yield* this.port.write(batch.frames)
        deliveredTally.frames += batch.frames.length
        deliveredTally.bytes += batch.bytes
        if (outbound.isOverSoftBound) {
          const drained = yield* this.port.awaitDrain.pipe(
            Effect.timeoutOption(Duration.millis(this.deps.config.slowConsumerGraceMs)),
            Effect.map((o) => o._tag === "Some")
          )
          if (!drained && outbound.isOverSoftBound) this.slowConsumer()
        } else if (outbound.hasSpaceWaiters) {
          // A replay waits for room: let the socket drain (the client paces the replay).
          yield* this.port.awaitDrain
        }
        outbound.notifySpace()
      }
    }).pipe(
      // A socket that cannot be written to is gone.
      Effect.catchCause((cause) =>
        Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.sync(() => this.end(undefined))
      ),
      Effect.ensuring(Effect.sync(() => {
        this.writer = undefined
      }))
    )
  }

  // ---- timers: the auth deadline, then heartbeats and token expiry (one heap entry)

  private onTimer(now: number): void {
    this.timer = undefined
    if (this.phase === "ended") return
    if (this.phase === "hello") {
      this.fork(Metric.update(Metric.withAttributes(authFailures, { code: "unauthenticated" }), 1))
      return this.end(protocolError("unauthenticated", "no Hello within the auth timeout"))
    }
    const config = this.deps.config
    const expiresAtMs = this.expiresAtMs + config.clockSkewMs
    if (now >= expiresAtMs) return this.end(protocolError("token_expired", "the token expired; reconnect with a new one"))
    if (now >= this.nextHeartbeatAt) {
      this.nextHeartbeatAt = nextHeartbeat(now, config.heartbeatIntervalMs)
      if (!this.outbound.offer(heartbeatFrame(this.subprotocol, now))) this.slowConsumer()
    }
    this.timer = this.deps.timers.schedule(Math.min(expiresAtMs, this.nextHeartbeatAt), this.onTimerFn)
  }

  /** Re-evaluates the deadlines now (after Hello or a refresh: the expiry may move either way). */
  private rearm(): void {
    this.deps.timers.cancel(this.timer)
    this.onTimer(this.deps.timers.now())
  }

  // ---- client input

  /** Push sockets: one client message; handled in order by a fiber that exists while input waits. */
  receive(data: Uint8Array | string): void {
    if (this.phase === "ended") return
    ;(this.inbound ??= []).push(data)
    this.inboundBytes += sizeOf(data)
    if (!this.paused && this.inboundBytes >= INBOUND_HIGH_WATER) {
      this.paused = true
      ;(this.port as PushSocketPort).pause()
    }
    if (!this.working) this.startWorker()
  }

  private startWorker(): void {
    this.working = true
    const fiber = this.fork(this.drainInbound())
    if (this.working) this.worker = fiber
  }

  private drainInbound(): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      while (this.phase !== "ended") {
        const inbound = this.inbound
        if (inbound === undefined || inbound.length === 0) return
        const data = inbound.shift()!
        this.inboundBytes -= sizeOf(data)
        if (this.paused && this.inboundBytes < INBOUND_HIGH_WATER / 2) {
          this.paused = false
          ;(this.port as PushSocketPort).resume()
        }
        yield* this.handle(data)
      }
    }).pipe(
      (eff) => this.guard(eff),
      Effect.ensuring(Effect.sync(() => {
        this.working = false
        this.worker = undefined
        if (this.inbound?.length === 0) this.inbound = undefined
        // A message that arrived after the loop saw an empty queue (the fiber may yield between
        // its last check and this finalizer) must not wait for the next one.
        else if (this.inbound !== undefined && this.phase !== "ended") this.startWorker()
      }))
    )
  }

  /** Pull sockets: the caller's loop; a failed pull is the client going away. */
  pullLoop(port: SocketPort): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      while (this.phase !== "ended") {
        const batch = yield* port.pull
        for (const data of batch) {
          if ((this.phase as Phase) === "ended") return
          yield* this.handle(data)
        }
      }
    }).pipe(
      (eff) => this.guard(eff),
      Effect.andThen(Effect.sync(() => this.end(undefined)))
    )
  }

  /** A defect is ours: tell the client (internal). A failure is the socket going away. */
  guard<A, E>(self: Effect.Effect<A, E>): Effect.Effect<void> {
    return self.pipe(
      Effect.asVoid,
      Effect.catchCause((cause) =>
        Cause.hasDies(cause)
          ? Effect.logError("connection failed", cause).pipe(
            Effect.andThen(this.endEffect(protocolError("internal", "internal error; reconnect and resume")))
          )
          : Effect.void
      )
    )
  }

  private handle(data: Uint8Array | string): Effect.Effect<void> {
    if (this.phase === "hello") return this.onHello(data)
    if (this.phase !== "open") return Effect.void
    return this.handleFrame(data)
  }

  private verify(token: string) {
    return this.deps.verifier.verify(token).pipe(
      Effect.tapError((e) => Metric.update(Metric.withAttributes(authFailures, { code: e.reason }), 1)),
      Effect.mapError((e) => protocolError(e.reason, e.message))
    )
  }

  private onHello(data: Uint8Array | string): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      const config = this.deps.config
      const decoded = decodeClientFrame(this.subprotocol, data, config.maxFrameBytes)
      if (Result.isFailure(decoded) || decoded.success.frame.case !== "hello") {
        return this.end(protocolError("unauthenticated", "the first frame must be a valid Hello"))
      }
      const verified = yield* Effect.result(this.verify(decoded.success.frame.value.token))
      if (this.phase !== "hello") return // the auth deadline passed meanwhile
      if (Result.isFailure(verified)) return this.end(verified.failure)
      const t = verified.success
      this.principal = { userId: t.userId, isAdmin: t.isAdmin, canRead: t.canRead }
      this.expiresAtMs = t.expiresAtMs
      this.phase = "open"
      const now = yield* Clock.currentTimeMillis
      this.control(frameOf({
        case: "welcome",
        value: create(WelcomeSchema, {
          connectionId: this.connectionId,
          serverTimeMs: BigInt(now),
          heartbeatIntervalMs: BigInt(config.heartbeatIntervalMs),
          maxFrameBytes: BigInt(config.maxFrameBytes),
          tokenExpiresAtMs: BigInt(t.expiresAtMs)
        })
      }))
      this.nextHeartbeatAt = nextHeartbeat(now, config.heartbeatIntervalMs)
      this.rearm()
    })
  }

  // ---- rate limit: a one-second window of maxClientFramesPerS frames
  private admit(): Effect.Effect<boolean> {
    return Effect.gen({ self: this }, function*() {
      const config = this.deps.config
      const now = yield* Clock.currentTimeMillis
      if (now - this.windowStart >= 1000) {
        this.windowStart = now
        this.windowCount = 0
      }
      this.windowCount++
      if (this.windowCount <= config.maxClientFramesPerS) return true
      const e = protocolError("rate_limited", `more than ${config.maxClientFramesPerS} frames per second`, {
        retryAfterMs: Math.max(1, 1000 - (now - this.windowStart))
      })
      if (this.windowCount > config.maxClientFramesPerS * RATE_ABUSE_FACTOR) {
        this.end(e)
      } else if (this.windowCount === config.maxClientFramesPerS + 1) {
        yield* this.sendError(e)
      }
      return false
    })
  }

  private handleFrame(data: Uint8Array | string): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      if (!(yield* this.admit())) return
      const decoded = decodeClientFrame(this.subprotocol, data, this.deps.config.maxFrameBytes)
      if (Result.isFailure(decoded)) return yield* this.sendError(decoded.failure)
      const frame = decoded.success.frame
      switch (frame.case) {
        case "hello":
          return yield* this.sendError(protocolError("bad_request", "already authenticated"))
        case "subscribe":
          return yield* this.onSubscribe(frame.value.requestId, frame)
        case "unsubscribe":
          return yield* this.onUnsubscribe(frame.value.requestId, frame.value.topics)
        case "refreshToken":
          return yield* this.onRefresh(frame.value.token)
        case "ping":
          return yield* this.sendControl(frameOf({ case: "pong", value: create(PongSchema, { nonce: frame.value.nonce }) }))
      }
    })
  }

  // ---- subscriptions

  /**
   * Ends a subscription. `fromReplay`: called by the subscription's own replay fiber, which must
   * not interrupt itself; it ends on its own right after.
   */
  removeSubscription(topic: string, evicted = false, fromReplay = false): Effect.Effect<boolean> {
    return Effect.gen({ self: this }, function*() {
      const sub = this.subscriptions.get(topic)
      if (!sub) return false
      sub.active = false
      this.subscriptions.delete(topic)
      const replay = this.replays?.get(topic)
      if (replay !== undefined) {
        this.replays!.delete(topic)
        if (!fromReplay) yield* Fiber.interrupt(replay)
      }
      yield* sub.lease.release(sub, evicted)
      yield* Metric.modify(subscriptionsGauge, -1)
      return true
    })
  }

  dropForEpoch(topic: string): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      if (!(yield* this.removeSubscription(topic))) return
      const current = yield* this.deps.journal.position(topic).pipe(
        Effect.orElseSucceed((): Position => ({ epoch: "", floorSeq: 0, headSeq: 0 }))
      )
      yield* this.sendError(staleError(topic, current, "the journal epoch changed"))
    }).pipe(Effect.ignore)
  }

  private startReplay(sub: Subscription, afterSeq: number, position: Position, requestId: string) {
    const replays = (this.replays ??= new Map())
    const fiber = this.fork(
      this.replay(sub, afterSeq, position, requestId).pipe(
        Effect.ensuring(Effect.sync(() => {
          if (replays.get(sub.topic) === fiber) replays.delete(sub.topic)
          if (replays.size === 0 && this.replays === replays) this.replays = undefined
        }))
      )
    )
    if (fiber.pollUnsafe() === undefined) replays.set(sub.topic, fiber)
  }

  /** Replays (afterSeq, …] from the journal, then hands over to the actor. */
  private replay(sub: Subscription, afterSeq: number, position: Position, requestId: string): Effect.Effect<void> {
    const self = this
    const { journal, config } = this.deps
    const subprotocol = this.subprotocol
    return Effect.gen(function*() {
      const started = yield* Clock.currentTimeMillis
      let last = afterSeq
      let exhausted = last >= position.headSeq
      let behind = false
      const encoding = subprotocol === "khala.v1.proto" ? "pb" : "json"
      // The cursor cannot be served: the subscription ends with stale_cursor and the topic's position.
      const endStale = (reason: string) =>
        Effect.gen(function*() {
          const current = yield* journal.position(sub.topic)
          yield* self.removeSubscription(sub.topic, false, true)
          return yield* self.sendError(staleError(sub.topic, current, reason, requestId))
        })
      // Aligned pages, shared by every replay of the topic (Journal.readReplayPage).
      const readPage = (after: number) => journal.readReplayPage(sub.topic, position.epoch, after, encoding)
      let prefetched: { readonly after: number; readonly fiber: Fiber.Fiber<ReplayPage, SqlError> } | undefined
      while (true) {
        if (exhausted) {
          const joined = yield* sub.lease.join(sub, position.epoch, last, position.headSeq)
          if (joined._tag === "Joined") {
            const now = yield* Clock.currentTimeMillis
            yield* Metric.update(replayDurationMs, now - started)
            return
          }
          if (joined._tag === "EpochChanged") {
            return yield* endStale("the journal epoch changed")
          }
          exhausted = false
          behind = true
        }
        // The page after a full one is read while this one is being sent (`prefetched`).
        const page = prefetched && prefetched.after === last
          ? yield* Fiber.join(prefetched.fiber)
          : yield* readPage(last)
        prefetched = undefined
        if (page.epochChanged) {
          // A rebuild moved the journal to another epoch: the cursor names entries that are gone.
          return yield* endStale("the journal epoch changed")
        }
        const count = page.count
        if (page.more && count > 0 && page.firstSeq === last + 1) {
          const after = page.lastSeq
          prefetched = { after, fiber: yield* Effect.forkChild(readPage(after)) }
        }
        // The actor is ahead of `last` but the journal has nothing after it: entries were removed
        // under us (never in normal operation); the cursor cannot be served.
        const vanished = behind && count === 0
        behind = false
        if (vanished || (count > 0 && page.firstSeq !== last + 1)) {
          // Retention compacted entries this replay still needed.
          return yield* endStale("entries after after_seq were compacted")
        }
        const header = { topic: sub.topic, epoch: position.epoch, replay: true }
        const limits = { maxItems: MAX_ITEMS_PER_FRAME, maxFrameBytes: config.maxFrameBytes }
        // Frames straight from the page's bytes (protobuf, or JSON as UTF-8).
        const frames: ReadonlyArray<EncodedFrame> = encoding === "pb"
          ? page.framesProto(header, limits)
          : page.framesJson(header, limits)
        for (const frame of frames) {
          if (!(yield* self.outbound.offerWait(frame))) return
        }
        if (count > 0) last = page.lastSeq
        exhausted = !page.more || count === 0
      }
    }).pipe(
      Effect.catchTag("SqlError", (e) =>
        Effect.logWarning(`replay of ${sub.topic} failed`, e).pipe(
          Effect.andThen(self.endEffect(protocolError("internal", "journal unavailable; resume from your last applied seq")))
        )),
      (eff) => self.guard(eff)
    )
  }

  private onSubscribe(requestId: string, cursors: ClientFrame["frame"] & { case: "subscribe" }): Effect.Effect<void> {
    const self = this
    const { config, access, journal, hub } = this.deps
    return Effect.gen(function*() {
      const p = self.principal!
      const list = cursors.value.cursors
      if (list.length === 0) {
        return yield* self.sendError(protocolError("bad_request", "subscribe needs at least one cursor", { requestId }))
      }
      const accepted: Array<{ topic: string; afterSeq: number; position: Position }> = []
      const seen = new Set<string>()
      for (const cursor of list) {
        const topic = cursor.topic
        const fail = (e: ProtocolError) => self.sendError(e)
        if (seen.has(topic) || self.subscriptions.has(topic)) {
          yield* fail(protocolError("bad_request", `already subscribed to ${topic}`, { requestId, topic }))
          continue
        }
        seen.add(topic)
        if (self.subscriptions.size + accepted.length >= config.maxSubscriptions) {
          yield* fail(protocolError("too_many_subscriptions", `at most ${config.maxSubscriptions} subscriptions per connection`, {
            requestId,
            topic
          }))
          continue
        }
        const authorized = yield* Effect.result(access.authorize(p, topic))
        if (Result.isFailure(authorized)) {
          const e = authorized.failure
          if (e._tag !== "TopicDenied") {
            return self.end(protocolError("internal", "authorization unavailable; reconnect and resume"))
          }
          yield* fail(protocolError(e.reason, e.message, { requestId, topic }))
          continue
        }
        const position = yield* journal.position(topic)
        // Compare as uint64 first: any after_seq beyond 2^53 is ahead of every head.
        if (cursor.afterSeq > BigInt(position.headSeq)) {
          yield* fail(staleError(topic, position, "after_seq is ahead of the topic head", requestId))
          continue
        }
        const afterSeq = Number(cursor.afterSeq)
        const check = checkCursor(afterSeq, cursor.epoch, position)
        if (check._tag === "Stale") {
          yield* fail(staleError(topic, position, check.reason, requestId))
          continue
        }
        accepted.push({ topic, afterSeq, position })
      }
      if (accepted.length === 0) return
      const subs: Array<Subscription> = []
      // Uninterruptible: a lease acquired is always registered, so it is always released.
      yield* Effect.uninterruptible(Effect.gen(function*() {
        for (const a of accepted) {
          const sub = new Subscription(self, a.topic)
          sub.lease = yield* hub.acquire(a.topic)
          self.subscriptions.set(a.topic, sub)
          subs.push(sub)
          yield* Metric.modify(subscriptionsGauge, 1)
        }
      }))
      yield* self.sendControl(frameOf({
        case: "subscribed",
        value: create(SubscribedSchema, {
          requestId,
          topics: accepted.map((a) =>
            create(TopicPositionSchema, {
              topic: a.topic,
              epoch: a.position.epoch,
              floorSeq: BigInt(a.position.floorSeq),
              headSeq: BigInt(a.position.headSeq)
            })
          )
        })
      }))
      for (const [i, sub] of subs.entries()) {
        const a = accepted[i]!
        if (self.subscriptions.get(a.topic) === sub) self.startReplay(sub, a.afterSeq, a.position, requestId)
      }
    }).pipe(
      Effect.catchTag("SqlError", () =>
        self.endEffect(protocolError("internal", "journal unavailable; reconnect and resume", { retryable: true })))
    )
  }

  private onUnsubscribe(requestId: string, topics: ReadonlyArray<string>): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      for (const topic of topics) yield* this.removeSubscription(topic)
      yield* this.sendControl(frameOf({ case: "unsubscribed", value: create(UnsubscribedSchema, { requestId, topics: [...topics] }) }))
    })
  }

  private onRefresh(token: string): Effect.Effect<void> {
    return Effect.gen({ self: this }, function*() {
      const verified = yield* Effect.result(this.verify(token))
      if (Result.isFailure(verified)) return this.end(protocolError("unauthenticated", verified.failure.message))
      const t = verified.success
      if (t.userId !== this.principal!.userId) {
        return this.end(protocolError("unauthenticated", "a refreshed token must be for the same user"))
      }
      const principal = { userId: t.userId, isAdmin: t.isAdmin, canRead: t.canRead }
      this.principal = principal
      this.expiresAtMs = t.expiresAtMs
      this.rearm()
      yield* this.sendControl(frameOf({
        case: "tokenRefreshed",
        value: create(TokenRefreshedSchema, { tokenExpiresAtMs: BigInt(t.expiresAtMs) })
      }))
      // Scopes may have shrunk: re-check every subscription.
      for (const topic of [...this.subscriptions.keys()]) {
        const ok = yield* Effect.result(this.deps.access.authorize(principal, topic))
        if (Result.isFailure(ok) && ok.failure._tag === "TopicDenied") {
          yield* this.removeSubscription(topic)
          yield* this.sendError(protocolError("forbidden_topic", `the refreshed token may not read ${topic}`, { topic }))
        }
      }
    })
  }
}

const staleError = (topic: string, position: Position, message: string, requestId?: string) =>
  protocolError("stale_cursor", message, {
    topic,
    floorSeq: BigInt(position.floorSeq),
    headSeq: BigInt(position.headSeq),
    ...(requestId === undefined ? {} : { requestId })
  })

/** Serves one pulled connection until it closes (the caller's fiber runs the read loop). Never fails. */
export const runConnection = (port: SocketPort) =>
  Effect.gen(function*() {
    const deps = yield* connectionDeps
    const conn = new Connection(deps, port)
    let done: (() => void) | undefined
    let ended = false
    conn.onEnded = Effect.sync(() => {
      ended = true
      done?.()
    })
    yield* Effect.onInterrupt(
      Effect.gen(function*() {
        yield* conn.open()
        const loop = yield* Effect.forkChild(conn.pullLoop(port))
        if (conn.phase !== "ended") conn.worker = loop
        yield* Effect.callback<void>((resume) => {
          if (ended) return resume(Effect.void)
          done = () => resume(Effect.void)
        })
      }),
      () => conn.abort()
    )
  })

/** A push connection that was started; `abort` ends it at once (server shutdown). */
export interface ConnectionHandle {
  readonly connectionId: string
  readonly abort: Effect.Effect<void>
}

/**
 * Starts serving a push socket and returns at once: the connection keeps no fiber while idle.
 * `onEnded` runs once it is over (whichever way), after every lease was released.
 */
export const startConnection = (
  deps: ConnectionDeps,
  port: PushSocketPort,
  onEnded: Effect.Effect<void>
): Effect.Effect<ConnectionHandle> =>
  Effect.gen(function*() {
    const conn = new Connection(deps, port)
    conn.onEnded = onEnded
    yield* conn.open()
    port.listen({ message: (data) => conn.receive(data), closed: () => conn.end(undefined) })
    return { connectionId: conn.connectionId, abort: conn.abort() }
  })
