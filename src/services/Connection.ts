/**
 * Connection: one WebSocket client of `/sync/v1`, from Hello to close (SPEC §5, §10).
 *
 * Owns: authentication (Hello within auth_timeout_ms, RefreshToken, expiry at exp + skew),
 * per-topic cursors and ACL, replay from the journal in bounded chunks followed by the hand-over
 * to the topic actor (no gap, no duplicate), heartbeats, client rate and frame-size limits, the
 * bounded outbound queue and its writer, and the close protocol: request-scoped errors are
 * `Error` frames; connection-fatal ones are `Goodbye` then close with 4000 + code.
 *
 * Talks to the socket only through `SocketPort`, so tests can drive it with a fake socket and a
 * TestClock. Never touches SQL itself: Journal, TopicAccess and TopicHub do.
 */
import { create } from "@bufbuild/protobuf"
import { Cause, Clock, Deferred, Duration, Effect, Fiber, FiberHandle, FiberMap, Metric, Ref, Result } from "effect"
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
  chunkUpdates,
  decodeClientFrame,
  type EncodedFrame,
  encodeServerFrame,
  errorFrame,
  goodbyeFrame,
  type Subprotocol
} from "../domain/Protocol.ts"
import type { KhalaSettings } from "../layers/Config.ts"
import type { SqlError } from "effect/sql/SqlError"
import { Journal, type StoredEntry } from "./Journal.ts"
import { Lifecycle } from "./Lifecycle.ts"
import {
  authFailures,
  connectionsGauge,
  deliveredTally,
  replayDurationMs,
  slowConsumerEvictions,
  subscriptionsGauge
} from "./Metrics.ts"
import { Outbound } from "./Outbound.ts"
import type { Subscriber } from "./TopicActor.ts"
import { TopicAccess } from "./TopicAccess.ts"
import { type TopicLease, TopicHub } from "./TopicHub.ts"
import { TokenVerifier, type VerifiedToken } from "./TokenVerifier.ts"
import { KhalaConfig } from "../layers/Config.ts"

/** The socket as the connection sees it. */
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

const REPLAY_BATCH = 2000
const MAX_ITEMS_PER_FRAME = 512
/** Over-limit frames in one second beyond which rate limiting becomes fatal. */
const RATE_ABUSE_FACTOR = 2

const frameOf = (frame: ServerFrame["frame"]) => create(ServerFrameSchema, { frame })

const trimReason = (s: string) => {
  const buf = Buffer.from(s, "utf8")
  return buf.byteLength <= 120 ? s : buf.subarray(0, 120).toString("utf8").replace(/\uFFFD$/, "")
}

interface Subscription {
  readonly topic: string
  readonly lease: TopicLease
  readonly subscriber: Subscriber
  /** Stops this subscription's subscriber from queuing anything (a Join may still be in flight). */
  readonly deactivate: () => void
}

/** Serves one connection until it closes. Never fails. */
export const runConnection = (port: SocketPort) =>
  Effect.gen(function*() {
    const config: KhalaSettings = yield* KhalaConfig
    const verifier = yield* TokenVerifier
    const access = yield* TopicAccess
    const journal = yield* Journal
    const hub = yield* TopicHub
    const lifecycle = yield* Lifecycle

    const connectionId = randomUUID()
    const subprotocol = port.subprotocol
    const encode = (frame: ServerFrame) => encodeServerFrame(subprotocol, frame)
    const outbound = new Outbound(
      { maxBytes: config.outboundQueueMaxBytes, maxFrames: config.outboundQueueMaxFrames },
      port.bufferedBytes,
      port.awaitDrain,
      port.writeNow
    )
    /** Completed with the reason the connection must end (fatal error). */
    /** Completed once: with the fatal error to send, or `undefined` when the client went away. */
    const fatal = yield* Deferred.make<ProtocolError | undefined>()
    const end = (e: ProtocolError) => Deferred.succeed(fatal, e).pipe(Effect.asVoid)
    const endUnsafe = (e: ProtocolError) => {
      Deferred.doneUnsafe(fatal, Effect.succeed(e))
    }
    const slowConsumer = () =>
      endUnsafe(protocolError("slow_consumer", "outbound queue over its bound; resume from your last applied seq"))

    /** Request-scoped frames: offered like updates, so an unread socket is still bounded. */
    const sendControl = (frame: ServerFrame) =>
      Effect.sync(() => {
        if (!outbound.offer(encode(frame))) slowConsumer()
      })
    const sendError = (e: ProtocolError) => sendControl(errorFrame(e))

    // ---- writer: drains the outbound queue into the socket, watching its buffer
    const writer = Effect.gen(function*() {
      while (true) {
        const batch = yield* outbound.takeAll
        if (batch === undefined) return
        yield* port.write(batch.frames)
        deliveredTally.frames += batch.frames.length
        deliveredTally.bytes += batch.bytes
        if (outbound.isOverSoftBound) {
          const drained = yield* port.awaitDrain.pipe(
            Effect.timeoutOption(Duration.millis(config.slowConsumerGraceMs)),
            Effect.map((o) => o._tag === "Some")
          )
          if (!drained && outbound.isOverSoftBound) slowConsumer()
        } else if (outbound.hasSpaceWaiters) {
          // A replay waits for room: let the socket drain (the client paces the replay).
          yield* port.awaitDrain
        }
        outbound.notifySpace()
      }
    })

    // ---- state
    let principal: (Principal & { readonly token: VerifiedToken }) | undefined
    const expiresAt = yield* Ref.make(0)
    const subscriptions = new Map<string, Subscription>()
    const replays = yield* FiberMap.make<string>()
    /** The heartbeat + token-expiry timer; restarted by every refresh (the deadline may move either way). */
    const timerFiber = yield* FiberHandle.make<void>()
    // Runs however the connection ends (an abrupt TCP close interrupts this fiber): release every
    // topic lease so actors stop delivering here and can retire.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        outbound.close()
        for (const topic of [...subscriptions.keys()]) yield* removeSubscription(topic)
      })
    )

    /**
     * Ends a subscription. `fromReplay`: called by the subscription's own replay fiber, which must
     * not interrupt itself (FiberMap.remove would); it ends on its own right after.
     */
    const removeSubscription = (topic: string, evicted = false, fromReplay = false) =>
      Effect.gen(function*() {
        const sub = subscriptions.get(topic)
        if (!sub) return false
        sub.deactivate()
        subscriptions.delete(topic)
        if (!fromReplay) yield* FiberMap.remove(replays, topic)
        yield* sub.lease.release(sub.subscriber, evicted)
        yield* Metric.modify(subscriptionsGauge, -1)
        return true
      })

    const staleError = (topic: string, position: Position, message: string, requestId?: string) =>
      protocolError("stale_cursor", message, {
        topic,
        floorSeq: BigInt(position.floorSeq),
        headSeq: BigInt(position.headSeq),
        ...(requestId === undefined ? {} : { requestId })
      })

    /** Replays (afterSeq, …] from the journal, then hands over to the actor. */
    const replay = (sub: Subscription, afterSeq: number, position: Position, requestId: string) =>
      Effect.gen(function*() {
        const started = yield* Clock.currentTimeMillis
        let last = afterSeq
        let exhausted = last >= position.headSeq
        let behind = false
        const encoding = subprotocol === "khala.v1.proto" ? "pb" : "json"
        const readPage = (after: number) => journal.read(sub.topic, after, REPLAY_BATCH, encoding)
        let prefetched: { readonly after: number; readonly fiber: Fiber.Fiber<ReadonlyArray<StoredEntry>, SqlError> } | undefined
        while (true) {
          if (exhausted) {
            const joined = yield* sub.lease.join(sub.subscriber, position.epoch, last, position.headSeq)
            if (joined._tag === "Joined") {
              const now = yield* Clock.currentTimeMillis
              yield* Metric.update(replayDurationMs, now - started)
              return
            }
            if (joined._tag === "EpochChanged") {
              const current = yield* journal.position(sub.topic)
              yield* removeSubscription(sub.topic, false, true)
              return yield* sendError(staleError(sub.topic, current, "the journal epoch changed", requestId))
            }
            exhausted = false
            behind = true
          }
          // The page after a full one is read while this one is being sent (`prefetched`).
          const rows = prefetched && prefetched.after === last
            ? yield* Fiber.join(prefetched.fiber)
            : yield* readPage(last)
          prefetched = undefined
          if (rows.length === REPLAY_BATCH && rows[0]!.seq === last + 1) {
            const after = rows[rows.length - 1]!.seq
            prefetched = { after, fiber: yield* Effect.forkChild(readPage(after)) }
          }
          // The actor is ahead of `last` but the journal has nothing after it: entries were removed
          // under us (never in normal operation); the cursor cannot be served.
          const vanished = behind && rows.length === 0
          behind = false
          if (vanished || (rows.length > 0 && rows[0]!.seq !== last + 1)) {
            // Retention compacted entries this replay still needed.
            const current = yield* journal.position(sub.topic)
            yield* removeSubscription(sub.topic, false, true)
            return yield* sendError(staleError(sub.topic, current, "entries after after_seq were compacted", requestId))
          }
          for (
            const frame of chunkUpdates(subprotocol, { topic: sub.topic, epoch: position.epoch, replay: true }, rows, {
              maxItems: MAX_ITEMS_PER_FRAME,
              maxFrameBytes: config.maxFrameBytes
            })
          ) {
            if (!(yield* outbound.offerWait(frame))) return
          }
          if (rows.length > 0) last = rows[rows.length - 1]!.seq
          exhausted = rows.length < REPLAY_BATCH
        }
      }).pipe(
        Effect.catchTag("SqlError", (e) =>
          Effect.logWarning(`replay of ${sub.topic} failed`, e).pipe(
            Effect.andThen(end(protocolError("internal", "journal unavailable; resume from your last applied seq")))
          ))
      )

    const makeSubscriber = () => {
      let active = true
      const subscriber: Subscriber = {
        connectionId,
        subprotocol,
        offer: (frame, bytes) => {
          if (!active) return true // unsubscribed: drop silently (the actor will get our Leave)
          if (outbound.offer(frame, bytes)) return true
          slowConsumer()
          return false
        },
        onEpochChanged: (topic) => {
          // Called from the actor fiber: drop the subscription and tell the client asynchronously.
          if (!active || subscriptions.get(topic)?.subscriber !== subscriber) return
          Effect.runFork(
            Effect.gen(function*() {
              if (!(yield* removeSubscription(topic))) return
              const current = yield* journal.position(topic).pipe(
                Effect.orElseSucceed((): Position => ({ epoch: "", floorSeq: 0, headSeq: 0 }))
              )
              yield* sendError(staleError(topic, current, "the journal epoch changed"))
            }).pipe(Effect.ignore)
          )
        }
      }
      return { subscriber, deactivate: () => void (active = false) }
    }

    // ---- requests
    const onSubscribe = (requestId: string, cursors: ClientFrame["frame"] & { case: "subscribe" }) =>
      Effect.gen(function*() {
        const p = principal!
        const list = cursors.value.cursors
        if (list.length === 0) {
          return yield* sendError(protocolError("bad_request", "subscribe needs at least one cursor", { requestId }))
        }
        const accepted: Array<{ topic: string; afterSeq: number; position: Position }> = []
        const seen = new Set<string>()
        for (const cursor of list) {
          const topic = cursor.topic
          const fail = (e: ProtocolError) => sendError(e)
          if (seen.has(topic) || subscriptions.has(topic)) {
            yield* fail(protocolError("bad_request", `already subscribed to ${topic}`, { requestId, topic }))
            continue
          }
          seen.add(topic)
          if (subscriptions.size + accepted.length >= config.maxSubscriptions) {
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
              return yield* end(protocolError("internal", "authorization unavailable; reconnect and resume"))
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
        const leases: Array<Subscription> = []
        // Uninterruptible: a lease acquired is always registered, so it is always released.
        yield* Effect.uninterruptible(Effect.gen(function*() {
          for (const a of accepted) {
            const lease = yield* hub.acquire(a.topic)
            const sub: Subscription = { topic: a.topic, lease, ...makeSubscriber() }
            subscriptions.set(a.topic, sub)
            leases.push(sub)
            yield* Metric.modify(subscriptionsGauge, 1)
          }
        }))
        yield* sendControl(frameOf({
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
        for (const [i, sub] of leases.entries()) {
          const a = accepted[i]!
          yield* FiberMap.run(replays, a.topic, replay(sub, a.afterSeq, a.position, requestId))
        }
      }).pipe(
        Effect.catchTag("SqlError", () =>
          end(protocolError("internal", "journal unavailable; reconnect and resume", { retryable: true })))
      )

    const onUnsubscribe = (requestId: string, topics: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        for (const topic of topics) yield* removeSubscription(topic)
        yield* sendControl(frameOf({ case: "unsubscribed", value: create(UnsubscribedSchema, { requestId, topics: [...topics] }) }))
      })

    const verify = (token: string) =>
      verifier.verify(token).pipe(
        Effect.tapError((e) => Metric.update(Metric.withAttributes(authFailures, { code: e.reason }), 1)),
        Effect.mapError((e) => protocolError(e.reason, e.message))
      )

    const onRefresh = (token: string) =>
      Effect.gen(function*() {
        const verified = yield* Effect.result(verify(token))
        if (Result.isFailure(verified)) return yield* end(protocolError("unauthenticated", verified.failure.message))
        const t = verified.success
        if (t.userId !== principal!.userId) {
          return yield* end(protocolError("unauthenticated", "a refreshed token must be for the same user"))
        }
        principal = { userId: t.userId, isAdmin: t.isAdmin, canRead: t.canRead, token: t }
        yield* Ref.set(expiresAt, t.expiresAtMs)
        yield* FiberHandle.run(timerFiber, timers)
        yield* sendControl(frameOf({
          case: "tokenRefreshed",
          value: create(TokenRefreshedSchema, { tokenExpiresAtMs: BigInt(t.expiresAtMs) })
        }))
        // Scopes may have shrunk: re-check every subscription.
        for (const topic of [...subscriptions.keys()]) {
          const ok = yield* Effect.result(access.authorize(principal, topic))
          if (Result.isFailure(ok) && ok.failure._tag === "TopicDenied") {
            yield* removeSubscription(topic)
            yield* sendError(protocolError("forbidden_topic", `the refreshed token may not read ${topic}`, { topic }))
          }
        }
      })

    // ---- rate limit: a one-second window of maxClientFramesPerS frames
    let windowStart = 0
    let windowCount = 0
    const admit = Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (now - windowStart >= 1000) {
        windowStart = now
        windowCount = 0
      }
      windowCount++
      if (windowCount <= config.maxClientFramesPerS) return true
      const e = protocolError("rate_limited", `more than ${config.maxClientFramesPerS} frames per second`, {
        retryAfterMs: Math.max(1, 1000 - (now - windowStart))
      })
      if (windowCount > config.maxClientFramesPerS * RATE_ABUSE_FACTOR) {
        yield* end(e)
      } else if (windowCount === config.maxClientFramesPerS + 1) {
        yield* sendError(e)
      }
      return false
    })

    const handleFrame = (data: Uint8Array | string) =>
      Effect.gen(function*() {
        if (!(yield* admit)) return
        const decoded = decodeClientFrame(subprotocol, data, config.maxFrameBytes)
        if (Result.isFailure(decoded)) return yield* sendError(decoded.failure)
        const frame = decoded.success.frame
        switch (frame.case) {
          case "hello":
            return yield* sendError(protocolError("bad_request", "already authenticated"))
          case "subscribe":
            return yield* onSubscribe(frame.value.requestId, frame)
          case "unsubscribe":
            return yield* onUnsubscribe(frame.value.requestId, frame.value.topics)
          case "refreshToken":
            return yield* onRefresh(frame.value.token)
          case "ping":
            return yield* sendControl(frameOf({ case: "pong", value: create(PongSchema, { nonce: frame.value.nonce }) }))
        }
      })

    // ---- lifecycle fibers
    const awaitHello = Effect.gen(function*() {
      const batch = yield* port.pull
      const first = batch[0]!
      const decoded = decodeClientFrame(subprotocol, first, config.maxFrameBytes)
      if (Result.isFailure(decoded) || decoded.success.frame.case !== "hello") {
        return { _tag: "Fatal" as const, error: protocolError("unauthenticated", "the first frame must be a valid Hello") }
      }
      const verified = yield* Effect.result(verify(decoded.success.frame.value.token))
      if (Result.isFailure(verified)) return { _tag: "Fatal" as const, error: verified.failure }
      return { _tag: "Hello" as const, token: verified.success, rest: batch.slice(1) }
    })

    /**
     * One timer fiber per connection for both heartbeats and token expiry (a fiber per timer would
     * cost memory on every idle connection). Restarted by a refresh; the heartbeat phase survives.
     */
    let nextHeartbeatAt = 0
    const timers = Effect.gen(function*() {
      while (true) {
        const now = yield* Clock.currentTimeMillis
        const expiresAtMs = (yield* Ref.get(expiresAt)) + config.clockSkewMs
        if (now >= expiresAtMs) return yield* end(protocolError("token_expired", "the token expired; reconnect with a new one"))
        if (now >= nextHeartbeatAt) {
          nextHeartbeatAt = now + config.heartbeatIntervalMs
          yield* sendControl(frameOf({ case: "heartbeat", value: create(HeartbeatSchema, { serverTimeMs: BigInt(now) }) }))
        }
        yield* Effect.sleep(Duration.millis(Math.min(expiresAtMs, nextHeartbeatAt) - now))
      }
    })

    const readLoop = (pending: ReadonlyArray<Uint8Array | string>) =>
      Effect.gen(function*() {
        for (const f of pending) yield* handleFrame(f)
        while (true) {
          const batch = yield* port.pull
          for (const f of batch) yield* handleFrame(f)
        }
      })

    // ---- the connection
    const session = Effect.gen(function*() {
      const hello = yield* awaitHello.pipe(
        Effect.timeoutOption(Duration.millis(config.authTimeoutMs)),
        Effect.map((o) =>
          o._tag === "Some"
            ? o.value
            : { _tag: "Fatal" as const, error: protocolError("unauthenticated", "no Hello within the auth timeout") }
        )
      )
      if (hello._tag === "Fatal") {
        if (hello.error.code === "unauthenticated" && hello.error.message.startsWith("no Hello")) {
          yield* Metric.update(Metric.withAttributes(authFailures, { code: "unauthenticated" }), 1)
        }
        return yield* end(hello.error)
      }
      const t = hello.token
      principal = { userId: t.userId, isAdmin: t.isAdmin, canRead: t.canRead, token: t }
      yield* Ref.set(expiresAt, t.expiresAtMs)
      const now = yield* Clock.currentTimeMillis
      yield* sendControl(frameOf({
        case: "welcome",
        value: create(WelcomeSchema, {
          connectionId,
          serverTimeMs: BigInt(now),
          heartbeatIntervalMs: BigInt(config.heartbeatIntervalMs),
          maxFrameBytes: BigInt(config.maxFrameBytes),
          tokenExpiresAtMs: BigInt(t.expiresAtMs)
        })
      }))
      nextHeartbeatAt = now + config.heartbeatIntervalMs
      yield* FiberHandle.run(timerFiber, timers)
      yield* readLoop(hello.rest)
    })

    yield* Ref.update(lifecycle.connections, (n) => n + 1)
    yield* Metric.modify(connectionsGauge, 1)
    const writerFiber = yield* Effect.forkChild(writer)
    const onDrain = () =>
      endUnsafe(protocolError("server_draining", "this node is draining; reconnect to another", { retryAfterMs: 0 }))
    // Unregistered by the scope however the connection ends (an abrupt close interrupts us).
    yield* Effect.acquireRelease(Effect.sync(() => lifecycle.onDrain(onDrain)), (stop) => Effect.sync(stop))
    // The session ends when the client goes away (pull fails) or a fatal reason is set.
    const sessionFiber = yield* Effect.forkChild(
      session.pipe(
        Effect.catchCause((cause) =>
          // A failed pull is the client going away; a defect is ours: tell the client (internal).
          Cause.hasDies(cause)
            ? Effect.logError("connection failed", cause).pipe(
              Effect.andThen(end(protocolError("internal", "internal error; reconnect and resume")))
            )
            : Effect.void
        ),
        Effect.andThen(Deferred.succeed(fatal, undefined))
      )
    )
    const reason = yield* Deferred.await(fatal)
    yield* Fiber.interrupt(sessionFiber)
    for (const topic of [...subscriptions.keys()]) yield* removeSubscription(topic, reason?.code === "slow_consumer")
    if (reason !== undefined) {
      if (reason.code === "slow_consumer") yield* Metric.update(slowConsumerEvictions, 1)
      outbound.force(encode(goodbyeFrame(reason)))
      outbound.close()
      // Flush what is queued (Goodbye last), then close; a peer that does not read is dropped.
      const flushed = yield* Fiber.join(writerFiber).pipe(
        Effect.timeoutOption(Duration.millis(reason.code === "slow_consumer" ? 250 : 2000)),
        Effect.map((o) => o._tag === "Some"),
        Effect.orElseSucceed(() => false)
      )
      if (flushed && reason.code !== "slow_consumer") yield* port.close(reason.closeCode, trimReason(reason.message))
      else {
        yield* port.close(reason.closeCode, trimReason(reason.message))
        yield* Effect.sleep(Duration.millis(100))
        port.destroy()
      }
    } else {
      outbound.close()
    }
    yield* Fiber.interrupt(writerFiber)
  }).pipe(
    // Interrupted (process shutdown, or the server dropped the request): best-effort Goodbye.
    Effect.onInterrupt(() =>
      Effect.sync(() => {
        const e = protocolError("server_draining", "the server is shutting down; reconnect", { retryAfterMs: 0 })
        Effect.runFork(
          port.write([encodeServerFrame(port.subprotocol, goodbyeFrame(e))]).pipe(
            Effect.andThen(port.close(e.closeCode, trimReason(e.message))),
            Effect.ignore
          )
        )
      })
    ),
    Effect.ensuring(
      Effect.gen(function*() {
        const lifecycle = yield* Lifecycle
        yield* Ref.update(lifecycle.connections, (n) => n - 1)
        yield* Metric.modify(connectionsGauge, -1)
      })
    ),
    Effect.scoped,
    Effect.withSpan("Connection")
  )
