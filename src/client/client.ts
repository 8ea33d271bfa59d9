/**
 * The Khala sync client (Promise/callback API), browser- and Node-safe. Owns the connection
 * lifecycle of docs/PROTOCOL.md: Hello with a token from `getToken`, proactive `RefreshToken`
 * before expiry, resubscribing every topic from its last APPLIED seq after a reconnect, applying
 * updates idempotently (`./state.ts`), the `stale_cursor` snapshot re-bootstrap, reconnects with
 * capped exponential backoff and full jitter (honouring `retry_after_ms`), a heartbeat watchdog,
 * read-your-writes (`awaitSeq`) and watermark persistence (`./store.ts`).
 *
 * Every timer goes through the injectable `Scheduler`; the WebSocket constructor and `fetch` are
 * injectable too. Frames are processed synchronously in arrival order; only store writes,
 * `getToken` and snapshot fetches are asynchronous.
 */
import { create } from "@bufbuild/protobuf"
import {
  CursorSchema,
  HelloSchema,
  RefreshTokenSchema,
  SubscribeSchema,
  UnsubscribeSchema
} from "../gen/openagents/sync/v1/frames_pb.ts"
import type {
  CaughtUp,
  Error as ErrorFrame,
  Goodbye,
  Subscribed,
  TokenRefreshed,
  Updates,
  Welcome
} from "../gen/openagents/sync/v1/frames_pb.ts"
import { backoffDelay, defaultBackoff, realScheduler, refreshDelay } from "./backoff.ts"
import type { BackoffOptions, Scheduler, TimerHandle } from "./backoff.ts"
import { decodeServerFrame, encodeClientFrame, errorCodeName, isDecodeFailure, PROTO_SUBPROTOCOL } from "./codec.ts"
import type { ClientFrameValue, Subprotocol } from "./codec.ts"
import {
  AwaitSeqTimeout,
  errorMessage,
  KhalaCallbackError,
  KhalaClientClosed,
  KhalaNotSubscribed,
  KhalaProtocolError,
  KhalaServerError,
  KhalaSnapshotError,
  KhalaStoreError,
  KhalaTokenError
} from "./errors.ts"
import type { KhalaClientError, KhalaTopicError } from "./errors.ts"
import { jwtExpiresAtMs } from "./jwt.ts"
import { deriveSnapshotUrl, fetchSnapshot } from "./snapshot.ts"
import type { FetchLike } from "./snapshot.ts"
import { globalWebSocket, OPEN } from "./socket.ts"
import type { WebSocketConstructor, WebSocketLike } from "./socket.ts"
import { TopicState } from "./state.ts"
import type { KhalaDocument } from "./state.ts"
import { FRESH_WATERMARK, memoryStore } from "./store.ts"
import type { Watermark, WatermarkStore } from "./store.ts"

export const CLIENT_VERSION = "0.1.0"

/** Most cursors per `Subscribe` frame (keeps frames far below `max_frame_bytes`). */
const MAX_CURSORS_PER_SUBSCRIBE = 50

// ---------------------------------------------------------------------------------------------
// Public types

/**
 * - `connecting`: opening a socket / waiting for `welcome`
 * - `catching_up`: connected; some topic is still replaying (before its `caught_up`)
 * - `live`: connected; every topic is caught up
 * - `stale`: connected; some topic is being re-bootstrapped from a snapshot
 * - `backing_off`: disconnected, waiting to reconnect
 * - `closed`: `close()` was called
 */
export type ConnectionState = "connecting" | "live" | "catching_up" | "backing_off" | "stale" | "closed"

export type ResetReason = "stale_cursor" | "snapshot" | "initial"

export type DocumentChange =
  /** One applied update whose document is new or newer than the one held. */
  | {
    readonly type: "upsert"
    readonly topic: string
    readonly seq: number
    /** True for entries replayed before the topic's `caught_up`. */
    readonly replay: boolean
    readonly document: KhalaDocument
  }
  /**
   * The topic's documents were replaced as a whole: after a snapshot bootstrap (`stale_cursor`,
   * or `startFrom: "snapshot"`), or, for a listener joining a topic that already holds documents,
   * the current state (`initial`).
   */
  | {
    readonly type: "reset"
    readonly topic: string
    readonly reason: ResetReason
    readonly watermark: Watermark
    readonly documents: ReadonlyMap<string, KhalaDocument>
  }

export interface RebootstrapInfo {
  readonly topic: string
  readonly reason: "stale_cursor" | "snapshot"
  /** The watermark the client held before. */
  readonly previous: Watermark
  readonly epoch: string
  readonly headSeq: number
  readonly floorSeq: number
}

export interface SubscribeOptions {
  readonly onChange?: (change: DocumentChange) => void
  /** The topic was re-bootstrapped from a snapshot (its documents were replaced). */
  readonly onStale?: (info: RebootstrapInfo) => void
  /** The subscription ended for good (`forbidden_topic`, `bad_request`, …); no retry. */
  readonly onError?: (error: KhalaTopicError) => void
  /**
   * Where a topic starts when it is not active yet (the first listener decides):
   * `watermark` (default) resumes from the stored watermark (or a fresh start), `snapshot`
   * bootstraps from `GET /sync/v1/snapshot` first (summary documents only), `beginning` forgets
   * the stored watermark and replays from seq 1.
   */
  readonly startFrom?: "watermark" | "snapshot" | "beginning"
}

export interface AwaitSeqOptions {
  /** Default 30 s; `Infinity` waits until `signal` aborts, the topic ends or the client closes. */
  readonly timeoutMs?: number
  readonly signal?: AbortSignal
}

export type ClientEvent =
  | { readonly type: "state"; readonly state: ConnectionState }
  | { readonly type: "connected"; readonly connectionId: string; readonly url: string }
  | {
    readonly type: "disconnected"
    readonly code: number
    readonly reason: string
    readonly error?: KhalaServerError | KhalaProtocolError
  }
  | { readonly type: "reconnect_scheduled"; readonly attempt: number; readonly delayMs: number }
  | { readonly type: "token_refreshed"; readonly expiresAtMs: number }
  | {
    readonly type: "subscribed"
    readonly topic: string
    readonly epoch: string
    readonly floorSeq: number
    readonly headSeq: number
  }
  | { readonly type: "caught_up"; readonly topic: string; readonly seq: number }
  | ({ readonly type: "rebootstrapped" } & RebootstrapInfo)
  | { readonly type: "error"; readonly error: KhalaClientError }

export interface KhalaClientOptions {
  /** `ws(s)://host/sync/v1`, or a function picking one per connection attempt (several nodes). */
  readonly url: string | (() => string | Promise<string>)
  /** Default: derived from the connection URL (`http(s)://host/sync/v1/snapshot`). */
  readonly snapshotUrl?: string
  /** A sync JWT; called for every connection, every refresh and snapshot retries after a 401. */
  readonly getToken: () => Promise<string>
  readonly subprotocol?: Subprotocol
  readonly store?: WatermarkStore
  readonly backoff?: Partial<BackoffOptions>
  /** Jitter source in [0, 1); default `Math.random`. */
  readonly random?: () => number
  /** Default: the global `WebSocket` (browsers, Node ≥ 22); inject `ws` for older Node. */
  readonly WebSocket?: WebSocketConstructor
  /** Default: the global `fetch`. */
  readonly fetch?: FetchLike
  readonly scheduler?: Scheduler
  readonly clientId?: string
  readonly clientVersion?: string
  /** Send `RefreshToken` before the token expires (default true). */
  readonly refreshTokens?: boolean
  /** Refresh at the earlier of 80% of the lifetime and `exp − refreshMarginMs` (default 30 s). */
  readonly refreshMarginMs?: number
  /** No `welcome` within this long ⇒ drop and reconnect (default 15 s). */
  readonly connectTimeoutMs?: number
  /** Keep event documents (`run.event`, worker events) in `documents()` (default true). */
  readonly retainEvents?: boolean
}

export interface KhalaClient {
  readonly state: ConnectionState
  /** The current connection's id (from `welcome`), if connected. */
  readonly connectionId: string | undefined
  onStateChange(listener: (state: ConnectionState) => void): () => void
  onEvent(listener: (event: ClientEvent) => void): () => void
  /** Adds a listener to `topic` (subscribing on first use); returns its unsubscribe function. */
  subscribe(topic: string, options?: SubscribeOptions): () => void
  /** A copy of the topic's documents by `doc_key` (empty if not subscribed). */
  documents(topic: string): ReadonlyMap<string, KhalaDocument>
  /** The topic's applied watermark, if subscribed. */
  watermark(topic: string): Watermark | undefined
  /**
   * Resolves once the topic's APPLIED watermark is ≥ `seq` (e.g. a `topic_seqs` value an HTTP
   * command returned). Rejects with `AwaitSeqTimeout`, `KhalaNotSubscribed`, `KhalaClientClosed`
   * or the signal's reason.
   */
  awaitSeq(topic: string, seq: number, options?: AwaitSeqOptions): Promise<void>
  /** Waits for pending watermark writes. */
  flush(): Promise<void>
  /** Closes the connection for good and flushes the store. */
  close(): Promise<void>
}

// ---------------------------------------------------------------------------------------------
// Internal state

type SessionTopicStatus = "pending" | "replaying" | "live"

interface Session {
  readonly id: number
  readonly ws: WebSocketLike
  readonly url: string
  token: string
  pendingToken: string | undefined
  ended: boolean
  welcomed: boolean
  welcomedAt: number
  connectionId: string
  expiresAtMs: number
  serverOffsetMs: number
  heartbeatIntervalMs: number
  lastFrameAt: number
  retryAfterMs: number
  readonly topics: Map<string, SessionTopicStatus>
  readonly pendingRequests: Map<string, Set<string>>
  readonly timers: Set<TimerHandle>
  refreshTimer: TimerHandle | undefined
}

interface Listener {
  readonly onChange: ((change: DocumentChange) => void) | undefined
  readonly onStale: ((info: RebootstrapInfo) => void) | undefined
  readonly onError: ((error: KhalaTopicError) => void) | undefined
}

interface Waiter {
  readonly seq: number
  readonly resolve: () => void
  readonly reject: (error: unknown) => void
  timer: TimerHandle | undefined
  cleanup: () => void
}

type TopicPhase = "loading" | "ready" | "bootstrapping"

interface TopicEntry {
  readonly topic: string
  readonly state: TopicState
  readonly listeners: Set<Listener>
  readonly waiters: Set<Waiter>
  phase: TopicPhase
  persistQueued: boolean
}

const closeReason = (s: string) => (s.length > 100 ? `${s.slice(0, 100)}…` : s)

// ---------------------------------------------------------------------------------------------

class Client implements KhalaClient {
  readonly #options: KhalaClientOptions
  readonly #subprotocol: Subprotocol
  readonly #store: WatermarkStore
  readonly #backoff: BackoffOptions
  readonly #random: () => number
  readonly #WebSocket: WebSocketConstructor | undefined
  readonly #fetch: FetchLike | undefined
  readonly #scheduler: Scheduler
  readonly #connectTimeoutMs: number

  #state: ConnectionState = "connecting"
  #closed = false
  #attempt = 0
  #sessionCounter = 0
  #requestCounter = 0
  #session: Session | undefined
  #reconnectTimer: TimerHandle | undefined
  #lastToken: string | undefined
  readonly #timers = new Set<TimerHandle>()
  readonly #topics = new Map<string, TopicEntry>()
  readonly #persisting = new Map<string, Promise<void>>()
  readonly #stateListeners = new Set<(state: ConnectionState) => void>()
  readonly #eventListeners = new Set<(event: ClientEvent) => void>()

  constructor(options: KhalaClientOptions) {
    this.#options = options
    this.#subprotocol = options.subprotocol ?? PROTO_SUBPROTOCOL
    this.#store = options.store ?? memoryStore()
    this.#backoff = { ...defaultBackoff, ...options.backoff }
    this.#random = options.random ?? Math.random
    this.#WebSocket = options.WebSocket ?? globalWebSocket()
    this.#fetch = options.fetch ?? globalFetch()
    this.#scheduler = options.scheduler ?? realScheduler
    this.#connectTimeoutMs = options.connectTimeoutMs ?? 15_000
    void this.#connect()
  }

  // -------------------------------------------------------------------------------------------
  // Public API

  get state(): ConnectionState {
    return this.#state
  }

  get connectionId(): string | undefined {
    const s = this.#session
    return s !== undefined && s.welcomed ? s.connectionId : undefined
  }

  onStateChange(listener: (state: ConnectionState) => void): () => void {
    this.#stateListeners.add(listener)
    return () => {
      this.#stateListeners.delete(listener)
    }
  }

  onEvent(listener: (event: ClientEvent) => void): () => void {
    this.#eventListeners.add(listener)
    return () => {
      this.#eventListeners.delete(listener)
    }
  }

  subscribe(topic: string, options: SubscribeOptions = {}): () => void {
    if (this.#closed) throw new KhalaClientClosed()
    const listener: Listener = { onChange: options.onChange, onStale: options.onStale, onError: options.onError }
    let entry = this.#topics.get(topic)
    if (entry === undefined) {
      entry = {
        topic,
        state: new TopicState(topic, FRESH_WATERMARK, { retainEvents: this.#options.retainEvents ?? true }),
        listeners: new Set(),
        waiters: new Set(),
        phase: "loading",
        persistQueued: false
      }
      this.#topics.set(topic, entry)
      entry.listeners.add(listener)
      void this.#load(entry, options.startFrom ?? "watermark")
      this.#recomputeState()
    } else {
      entry.listeners.add(listener)
      const joined = entry
      if (joined.state.size > 0 || joined.state.watermark.afterSeq > 0) {
        queueMicrotask(() => {
          if (!joined.listeners.has(listener) || listener.onChange === undefined) return
          this.#call(topic, () =>
            listener.onChange?.({
              type: "reset",
              topic,
              reason: "initial",
              watermark: joined.state.watermark,
              documents: joined.state.documents()
            }))
        })
      }
    }
    const owner = entry
    return () => this.#removeListener(owner, listener)
  }

  documents(topic: string): ReadonlyMap<string, KhalaDocument> {
    return this.#topics.get(topic)?.state.documents() ?? new Map()
  }

  watermark(topic: string): Watermark | undefined {
    return this.#topics.get(topic)?.state.watermark
  }

  awaitSeq(topic: string, seq: number, options: AwaitSeqOptions = {}): Promise<void> {
    if (this.#closed) return Promise.reject(new KhalaClientClosed())
    const entry = this.#topics.get(topic)
    if (entry === undefined) return Promise.reject(new KhalaNotSubscribed({ topic }))
    if (entry.state.watermark.afterSeq >= seq) return Promise.resolve()
    const signal = options.signal
    if (signal?.aborted) return Promise.reject(signal.reason)
    const timeoutMs = options.timeoutMs ?? 30_000
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        waiter.cleanup()
        reject(signal?.reason)
      }
      const waiter: Waiter = {
        seq,
        resolve: () => {
          waiter.cleanup()
          resolve()
        },
        reject: (e) => {
          waiter.cleanup()
          reject(e)
        },
        timer: undefined,
        cleanup: () => {
          entry.waiters.delete(waiter)
          if (waiter.timer !== undefined) this.#scheduler.clearTimeout(waiter.timer)
          waiter.timer = undefined
          signal?.removeEventListener("abort", onAbort)
        }
      }
      entry.waiters.add(waiter)
      signal?.addEventListener("abort", onAbort, { once: true })
      if (Number.isFinite(timeoutMs)) {
        waiter.timer = this.#scheduler.setTimeout(() => {
          waiter.timer = undefined
          waiter.reject(
            new AwaitSeqTimeout({ topic, seq, appliedSeq: entry.state.watermark.afterSeq, timeoutMs })
          )
        }, Math.max(0, timeoutMs))
      }
    })
  }

  async flush(): Promise<void> {
    while (this.#persisting.size > 0) await Promise.all([...this.#persisting.values()])
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true
      if (this.#reconnectTimer !== undefined) this.#scheduler.clearTimeout(this.#reconnectTimer)
      this.#reconnectTimer = undefined
      for (const t of this.#timers) this.#scheduler.clearTimeout(t)
      this.#timers.clear()
      const session = this.#session
      if (session !== undefined) this.#drop(session, { code: 1000, reason: "client closed" })
      for (const entry of this.#topics.values()) {
        for (const w of [...entry.waiters]) w.reject(new KhalaClientClosed())
      }
      this.#setState("closed")
    }
    await this.flush()
  }

  // -------------------------------------------------------------------------------------------
  // Connection lifecycle

  async #connect(): Promise<void> {
    this.#reconnectTimer = undefined
    if (this.#closed) return
    this.#setState("connecting")
    let url: string
    let token: string
    try {
      url = typeof this.#options.url === "function" ? await this.#options.url() : this.#options.url
    } catch (e) {
      this.#emitError(new KhalaProtocolError({ message: `url() failed: ${errorMessage(e)}` }))
      this.#scheduleReconnect(0)
      return
    }
    try {
      token = await this.#options.getToken()
    } catch (e) {
      this.#emitError(new KhalaTokenError({ message: `getToken() failed: ${errorMessage(e)}` }))
      this.#scheduleReconnect(0)
      return
    }
    if (this.#closed) return
    const WebSocketCtor = this.#WebSocket
    if (WebSocketCtor === undefined) {
      this.#emitError(new KhalaProtocolError({ message: "no WebSocket implementation: pass options.WebSocket" }))
      this.#setState("closed")
      this.#closed = true
      return
    }
    let ws: WebSocketLike
    try {
      ws = new WebSocketCtor(url, [this.#subprotocol])
    } catch (e) {
      this.#emitError(new KhalaProtocolError({ message: `cannot open ${url}: ${errorMessage(e)}` }))
      this.#scheduleReconnect(0)
      return
    }
    const now = this.#scheduler.now()
    const session: Session = {
      id: ++this.#sessionCounter,
      ws,
      url,
      token,
      pendingToken: undefined,
      ended: false,
      welcomed: false,
      welcomedAt: 0,
      connectionId: "",
      expiresAtMs: 0,
      serverOffsetMs: 0,
      heartbeatIntervalMs: 0,
      lastFrameAt: now,
      retryAfterMs: 0,
      topics: new Map(),
      pendingRequests: new Map(),
      timers: new Set(),
      refreshTimer: undefined
    }
    this.#session = session
    try {
      ws.binaryType = "arraybuffer"
    } catch {
      // some implementations only accept it after open; frames then arrive as they come
    }
    ws.onopen = () => {
      if (session.ended) return
      this.#send(session, {
        case: "hello",
        value: create(HelloSchema, {
          token: session.token,
          clientId: this.#options.clientId ?? "khala-ts",
          clientVersion: this.#options.clientVersion ?? CLIENT_VERSION
        })
      })
    }
    ws.onmessage = (event) => this.#onMessage(session, event.data)
    ws.onclose = (event) => this.#endSession(session, { code: event.code, reason: event.reason })
    ws.onerror = () => {
      // a close event follows; the connect timeout covers implementations where it does not
    }
    this.#sessionTimer(session, () => {
      if (!session.welcomed) {
        this.#drop(session, {
          code: 4000,
          reason: "no welcome",
          error: new KhalaProtocolError({ message: `no welcome within ${this.#connectTimeoutMs} ms` })
        })
      }
    }, this.#connectTimeoutMs)
  }

  #send(session: Session, frame: ClientFrameValue): boolean {
    if (session.ended || session.ws.readyState !== OPEN) return false
    try {
      session.ws.send(encodeClientFrame(this.#subprotocol, frame))
      return true
    } catch (e) {
      this.#drop(session, {
        code: 4000,
        reason: "send failed",
        error: new KhalaProtocolError({ message: `send failed: ${errorMessage(e)}` })
      })
      return false
    }
  }

  /** Closes the socket from this side and ends the session. */
  #drop(session: Session, info: { code: number; reason: string; error?: KhalaServerError | KhalaProtocolError }) {
    if (session.ended) return
    try {
      session.ws.close(info.code, closeReason(info.reason))
    } catch {
      // already closing, or an implementation that refuses the code: nothing else to do
    }
    this.#endSession(session, info)
  }

  #endSession(session: Session, info: { code: number; reason: string; error?: KhalaServerError | KhalaProtocolError }) {
    if (session.ended) return
    session.ended = true
    for (const t of session.timers) this.#scheduler.clearTimeout(t)
    session.timers.clear()
    session.ws.onopen = null
    session.ws.onmessage = null
    session.ws.onclose = null
    session.ws.onerror = null
    if (this.#session === session) this.#session = undefined
    this.#emit({
      type: "disconnected",
      code: info.code,
      reason: info.reason,
      ...(info.error === undefined ? {} : { error: info.error })
    })
    if (this.#closed) return
    if (session.welcomed && this.#scheduler.now() - session.welcomedAt >= this.#backoff.resetAfterMs) this.#attempt = 0
    this.#scheduleReconnect(session.retryAfterMs)
  }

  #scheduleReconnect(minDelayMs: number) {
    if (this.#closed || this.#reconnectTimer !== undefined) return
    const delayMs = Math.max(backoffDelay(this.#attempt, this.#backoff, this.#random), minDelayMs)
    const attempt = this.#attempt
    this.#attempt++
    this.#setState("backing_off")
    this.#emit({ type: "reconnect_scheduled", attempt, delayMs })
    this.#reconnectTimer = this.#scheduler.setTimeout(() => void this.#connect(), delayMs)
  }

  #sessionTimer(session: Session, f: () => void, ms: number): TimerHandle {
    const handle = this.#scheduler.setTimeout(() => {
      session.timers.delete(handle)
      if (!session.ended) f()
    }, ms)
    session.timers.add(handle)
    return handle
  }

  // -------------------------------------------------------------------------------------------
  // Frames

  #onMessage(session: Session, data: unknown) {
    if (session.ended) return
    session.lastFrameAt = this.#scheduler.now()
    const frame = decodeServerFrame(this.#subprotocol, data)
    if (isDecodeFailure(frame)) {
      this.#drop(session, { code: 4000, reason: "undecodable frame", error: new KhalaProtocolError({ message: frame.message }) })
      return
    }
    switch (frame.case) {
      case "welcome":
        return this.#onWelcome(session, frame.value)
      case "subscribed":
        return this.#onSubscribed(session, frame.value)
      case "updates":
        return this.#onUpdates(session, frame.value)
      case "caughtUp":
        return this.#onCaughtUp(session, frame.value)
      case "error":
        return this.#onError(session, frame.value)
      case "goodbye":
        return this.#onGoodbye(session, frame.value)
      case "tokenRefreshed":
        return this.#onTokenRefreshed(session, frame.value)
      case "heartbeat":
      case "pong":
      case "unsubscribed":
      case undefined:
        return
    }
  }

  #onWelcome(session: Session, welcome: Welcome) {
    if (session.welcomed) return
    const now = this.#scheduler.now()
    session.welcomed = true
    session.welcomedAt = now
    session.connectionId = welcome.connectionId
    const serverTime = Number(welcome.serverTimeMs)
    session.serverOffsetMs = serverTime > 0 ? serverTime - now : 0
    session.expiresAtMs = Number(welcome.tokenExpiresAtMs) || (jwtExpiresAtMs(session.token) ?? 0)
    session.heartbeatIntervalMs = Number(welcome.heartbeatIntervalMs)
    this.#lastToken = session.token
    this.#emit({ type: "connected", connectionId: session.connectionId, url: session.url })
    this.#armWatchdog(session)
    this.#scheduleRefresh(session)
    this.#subscribeTopics(session, [...this.#topics.values()])
    this.#recomputeState()
  }

  #armWatchdog(session: Session) {
    const interval = session.heartbeatIntervalMs
    if (!(interval > 0)) return
    this.#sessionTimer(session, () => {
      const silentMs = this.#scheduler.now() - session.lastFrameAt
      if (silentMs > interval * 2 + 5_000) {
        this.#drop(session, {
          code: 4000,
          reason: "heartbeat timeout",
          error: new KhalaProtocolError({ message: `no frame from the server for ${silentMs} ms` })
        })
      } else {
        this.#armWatchdog(session)
      }
    }, interval)
  }

  #subscribeTopics(session: Session, entries: ReadonlyArray<TopicEntry>) {
    if (session.ended || !session.welcomed) return
    const eligible = entries.filter((e) => e.phase === "ready" && !session.topics.has(e.topic) && this.#isActive(e))
    for (let i = 0; i < eligible.length; i += MAX_CURSORS_PER_SUBSCRIBE) {
      const chunk = eligible.slice(i, i + MAX_CURSORS_PER_SUBSCRIBE)
      const requestId = `s${++this.#requestCounter}`
      session.pendingRequests.set(requestId, new Set(chunk.map((e) => e.topic)))
      for (const e of chunk) session.topics.set(e.topic, "pending")
      this.#send(session, {
        case: "subscribe",
        value: create(SubscribeSchema, {
          requestId,
          cursors: chunk.map((e) =>
            create(CursorSchema, {
              topic: e.topic,
              afterSeq: BigInt(e.state.watermark.afterSeq),
              epoch: e.state.watermark.epoch
            })
          )
        })
      })
    }
  }

  /** Forgets a topic on a session (it is no longer subscribed there, or never will be). */
  #forgetSessionTopic(session: Session, topic: string) {
    session.topics.delete(topic)
    for (const [id, topics] of session.pendingRequests) {
      topics.delete(topic)
      if (topics.size === 0) session.pendingRequests.delete(id)
    }
  }

  #onSubscribed(session: Session, subscribed: Subscribed) {
    const pending = session.pendingRequests.get(subscribed.requestId)
    for (const position of subscribed.topics) {
      const topic = position.topic
      if (pending === undefined || !pending.has(topic) || session.topics.get(topic) !== "pending") continue
      pending.delete(topic)
      const entry = this.#topics.get(topic)
      if (entry === undefined || entry.phase !== "ready") {
        session.topics.delete(topic)
        continue
      }
      entry.state.adoptEpoch(position.epoch)
      session.topics.set(topic, "replaying")
      this.#emit({
        type: "subscribed",
        topic,
        epoch: position.epoch,
        floorSeq: Number(position.floorSeq),
        headSeq: Number(position.headSeq)
      })
    }
    if (pending !== undefined && pending.size === 0) session.pendingRequests.delete(subscribed.requestId)
    this.#recomputeState()
  }

  #onUpdates(session: Session, updates: Updates) {
    const topic = updates.topic
    const status = session.topics.get(topic)
    if (status !== "replaying" && status !== "live") return // not (yet) ours on this connection
    const entry = this.#topics.get(topic)
    if (entry === undefined || entry.phase !== "ready") return
    const before = entry.state.watermark.afterSeq
    const changes: Array<DocumentChange> = []
    let violation: KhalaProtocolError | undefined
    for (const item of updates.items) {
      const outcome = entry.state.apply(updates.epoch, item)
      if (outcome._tag === "Applied") {
        changes.push({ type: "upsert", topic, seq: Number(item.seq), replay: updates.replay, document: outcome.document })
      } else if (outcome._tag === "Gap") {
        violation = new KhalaProtocolError({
          topic,
          message: `seq gap on ${topic}: expected ${outcome.expected}, got ${outcome.got}`
        })
        break
      } else if (outcome._tag === "EpochMismatch") {
        violation = new KhalaProtocolError({
          topic,
          message: `epoch changed on ${topic} without stale_cursor: ${outcome.expected} ⇒ ${outcome.got}`
        })
        break
      }
    }
    if (entry.state.watermark.afterSeq !== before) {
      this.#persist(entry)
      for (const change of changes) this.#deliver(entry, change)
      this.#resolveWaiters(entry)
    }
    if (violation !== undefined) {
      this.#drop(session, { code: 4000, reason: "protocol violation", error: violation })
    }
  }

  #onCaughtUp(session: Session, caughtUp: CaughtUp) {
    const topic = caughtUp.topic
    const status = session.topics.get(topic)
    if (status !== "replaying") return
    const entry = this.#topics.get(topic)
    if (entry === undefined) return
    const seq = Number(caughtUp.seq)
    if (seq > entry.state.watermark.afterSeq) {
      this.#drop(session, {
        code: 4000,
        reason: "protocol violation",
        error: new KhalaProtocolError({
          topic,
          message: `caught_up at ${seq} on ${topic} but only ${entry.state.watermark.afterSeq} was delivered`
        })
      })
      return
    }
    session.topics.set(topic, "live")
    this.#emit({ type: "caught_up", topic, seq: entry.state.watermark.afterSeq })
    this.#recomputeState()
  }

  #onError(session: Session, frame: ErrorFrame) {
    const code = errorCodeName(frame.code)
    const retryAfterMs = Number(frame.retryAfterMs)
    const error = new KhalaServerError({
      code,
      message: frame.message,
      frame: "error",
      ...(frame.topic === "" ? {} : { topic: frame.topic }),
      ...(frame.requestId === "" ? {} : { requestId: frame.requestId }),
      ...(retryAfterMs > 0 ? { retryAfterMs } : {})
    })
    if (retryAfterMs > 0) session.retryAfterMs = Math.max(session.retryAfterMs, retryAfterMs)
    const topic = frame.topic
    const entry = topic === "" ? undefined : this.#topics.get(topic)
    if (entry === undefined || !session.topics.has(topic)) {
      this.#emitError(error)
      return
    }
    this.#forgetSessionTopic(session, topic)
    switch (code) {
      case "stale_cursor":
        void this.#bootstrap(entry, "stale_cursor")
        break
      case "rate_limited": {
        this.#emitError(error)
        this.#sessionTimer(session, () => this.#subscribeTopics(session, [entry]), Math.max(retryAfterMs, 1_000))
        break
      }
      case "forbidden_topic":
      case "bad_request":
      case "too_many_subscriptions":
      case "payload_too_large":
        this.#failTopic(entry, error)
        break
      default:
        // internal or unknown: resume on a fresh connection
        this.#emitError(error)
        this.#drop(session, { code: 4000, reason: `error ${code} on ${topic}`, error })
    }
    this.#recomputeState()
  }

  #onGoodbye(session: Session, goodbye: Goodbye) {
    const code = errorCodeName(goodbye.code)
    const retryAfterMs = Number(goodbye.retryAfterMs)
    const error = new KhalaServerError({
      code,
      message: goodbye.message,
      frame: "goodbye",
      ...(retryAfterMs > 0 ? { retryAfterMs } : {})
    })
    if (retryAfterMs > 0) session.retryAfterMs = Math.max(session.retryAfterMs, retryAfterMs)
    // token_expired / unauthenticated: the next connection asks getToken() for a new token.
    if (code === "token_expired" || code === "unauthenticated") this.#lastToken = undefined
    this.#drop(session, { code: 1000, reason: `goodbye ${code}`, error })
  }

  #onTokenRefreshed(session: Session, refreshed: TokenRefreshed) {
    session.expiresAtMs = Number(refreshed.tokenExpiresAtMs)
    if (session.pendingToken !== undefined) {
      session.token = session.pendingToken
      session.pendingToken = undefined
      this.#lastToken = session.token
    }
    this.#emit({ type: "token_refreshed", expiresAtMs: session.expiresAtMs })
    this.#scheduleRefresh(session)
  }

  // -------------------------------------------------------------------------------------------
  // Token refresh

  #remainingMs(session: Session): number {
    return session.expiresAtMs - (this.#scheduler.now() + session.serverOffsetMs)
  }

  #scheduleRefresh(session: Session) {
    if (session.refreshTimer !== undefined) {
      this.#scheduler.clearTimeout(session.refreshTimer)
      session.timers.delete(session.refreshTimer)
      session.refreshTimer = undefined
    }
    if (this.#options.refreshTokens === false || session.expiresAtMs <= 0) return
    const delay = refreshDelay(this.#remainingMs(session), this.#options.refreshMarginMs ?? 30_000)
    if (delay === undefined) return
    session.refreshTimer = this.#sessionTimer(session, () => void this.#refresh(session), delay)
  }

  /** Retries a refresh that could not be sent, while the token still has some life left. */
  #retryRefresh(session: Session) {
    const delay = Math.min(5_000, this.#remainingMs(session) / 2)
    if (delay < 250) return
    session.refreshTimer = this.#sessionTimer(session, () => void this.#refresh(session), delay)
  }

  async #refresh(session: Session): Promise<void> {
    session.refreshTimer = undefined
    let token: string
    try {
      token = await this.#options.getToken()
    } catch (e) {
      this.#emitError(new KhalaTokenError({ message: `getToken() failed during refresh: ${errorMessage(e)}` }))
      if (!session.ended) this.#retryRefresh(session)
      return
    }
    if (session.ended) return
    const exp = jwtExpiresAtMs(token)
    if (exp !== undefined && exp <= session.expiresAtMs) {
      this.#retryRefresh(session) // getToken() returned no fresher token (cached): ask again later
      return
    }
    session.pendingToken = token
    this.#send(session, { case: "refreshToken", value: create(RefreshTokenSchema, { token }) })
  }

  // -------------------------------------------------------------------------------------------
  // Topics

  #isActive(entry: TopicEntry): boolean {
    return !this.#closed && this.#topics.get(entry.topic) === entry
  }

  async #load(entry: TopicEntry, startFrom: "watermark" | "snapshot" | "beginning"): Promise<void> {
    await this.#persisting.get(entry.topic)
    let stored: Watermark | undefined
    try {
      if (startFrom === "beginning") await this.#store.delete(entry.topic)
      else stored = await this.#store.get(entry.topic)
    } catch (e) {
      this.#emitError(new KhalaStoreError({ topic: entry.topic, message: errorMessage(e) }))
    }
    if (!this.#isActive(entry)) return
    entry.state.reset(stored ?? FRESH_WATERMARK, [])
    if (startFrom === "snapshot") {
      void this.#bootstrap(entry, "snapshot")
      return
    }
    entry.phase = "ready"
    const session = this.#session
    if (session !== undefined) this.#subscribeTopics(session, [entry])
    this.#recomputeState()
  }

  #removeListener(entry: TopicEntry, listener: Listener) {
    if (!entry.listeners.delete(listener)) return
    if (entry.listeners.size > 0 || this.#topics.get(entry.topic) !== entry) return
    this.#topics.delete(entry.topic)
    for (const w of [...entry.waiters]) w.reject(new KhalaNotSubscribed({ topic: entry.topic }))
    const session = this.#session
    if (session !== undefined && session.topics.has(entry.topic)) {
      this.#forgetSessionTopic(session, entry.topic)
      this.#send(session, {
        case: "unsubscribe",
        value: create(UnsubscribeSchema, { requestId: `u${++this.#requestCounter}`, topics: [entry.topic] })
      })
    }
    this.#recomputeState()
  }

  /** The subscription ended for good: tell its listeners and drop the topic. */
  #failTopic(entry: TopicEntry, error: KhalaTopicError) {
    this.#emitError(error)
    if (this.#topics.get(entry.topic) === entry) this.#topics.delete(entry.topic)
    for (const w of [...entry.waiters]) w.reject(error)
    for (const l of [...entry.listeners]) {
      if (l.onError !== undefined) this.#call(entry.topic, () => l.onError?.(error))
    }
    entry.listeners.clear()
    this.#recomputeState()
  }

  /** Replaces the topic's documents with its snapshot, then subscribes from the snapshot's head. */
  async #bootstrap(entry: TopicEntry, reason: "stale_cursor" | "snapshot"): Promise<void> {
    if (entry.phase === "bootstrapping") return
    entry.phase = "bootstrapping"
    this.#recomputeState()
    const previous = entry.state.watermark
    let attempt = 0
    let freshToken = false
    while (this.#isActive(entry)) {
      try {
        const token = !freshToken && this.#lastToken !== undefined && !this.#expiresSoon(this.#lastToken)
          ? this.#lastToken
          : await this.#options.getToken()
        const snapshot = await fetchSnapshot(this.#requireFetch(), await this.#snapshotUrl(), entry.topic, token)
        if (!this.#isActive(entry)) return
        entry.state.reset({ epoch: snapshot.epoch, afterSeq: snapshot.headSeq }, snapshot.documents)
        entry.phase = "ready"
        this.#persist(entry)
        const info: RebootstrapInfo = {
          topic: entry.topic,
          reason,
          previous,
          epoch: snapshot.epoch,
          headSeq: snapshot.headSeq,
          floorSeq: snapshot.floorSeq
        }
        this.#deliver(entry, {
          type: "reset",
          topic: entry.topic,
          reason,
          watermark: entry.state.watermark,
          documents: entry.state.documents()
        })
        for (const l of [...entry.listeners]) {
          if (l.onStale !== undefined) this.#call(entry.topic, () => l.onStale?.(info))
        }
        this.#emit({ type: "rebootstrapped", ...info })
        this.#resolveWaiters(entry)
        const session = this.#session
        if (session !== undefined) this.#subscribeTopics(session, [entry])
        this.#recomputeState()
        return
      } catch (e) {
        const error = e instanceof KhalaSnapshotError
          ? e
          : new KhalaSnapshotError({ topic: entry.topic, status: 0, message: errorMessage(e) })
        if (error.status === 400 || error.status === 403 || error.status === 404 || this.#fetch === undefined) {
          if (this.#isActive(entry)) this.#failTopic(entry, error)
          return
        }
        freshToken = error.status === 401
        this.#emitError(error)
        await this.#sleep(backoffDelay(attempt++, this.#backoff, this.#random))
      }
    }
  }

  #expiresSoon(token: string): boolean {
    const exp = jwtExpiresAtMs(token)
    return exp !== undefined && exp - this.#scheduler.now() < 5_000
  }

  #requireFetch(): FetchLike {
    if (this.#fetch === undefined) throw new Error("no fetch implementation: pass options.fetch")
    return this.#fetch
  }

  async #snapshotUrl(): Promise<string> {
    if (this.#options.snapshotUrl !== undefined) return this.#options.snapshotUrl
    const url = this.#session?.url ??
      (typeof this.#options.url === "function" ? await this.#options.url() : this.#options.url)
    return deriveSnapshotUrl(url)
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const handle = this.#scheduler.setTimeout(() => {
        this.#timers.delete(handle)
        resolve()
      }, ms)
      this.#timers.add(handle)
    })
  }

  #persist(entry: TopicEntry) {
    if (entry.persistQueued) return
    entry.persistQueued = true
    const topic = entry.topic
    const previous = this.#persisting.get(topic) ?? Promise.resolve()
    const next = previous.then(async () => {
      entry.persistQueued = false
      try {
        await this.#store.set(topic, entry.state.watermark)
      } catch (e) {
        this.#emitError(new KhalaStoreError({ topic, message: errorMessage(e) }))
      }
    })
    this.#persisting.set(topic, next)
    void next.then(() => {
      if (this.#persisting.get(topic) === next) this.#persisting.delete(topic)
    })
  }

  #resolveWaiters(entry: TopicEntry) {
    const applied = entry.state.watermark.afterSeq
    for (const w of [...entry.waiters]) if (w.seq <= applied) w.resolve()
  }

  #deliver(entry: TopicEntry, change: DocumentChange) {
    for (const l of [...entry.listeners]) {
      if (l.onChange !== undefined) this.#call(entry.topic, () => l.onChange?.(change))
    }
  }

  // -------------------------------------------------------------------------------------------
  // State and events

  #recomputeState() {
    if (this.#closed) return this.#setState("closed")
    const session = this.#session
    if (session === undefined || !session.welcomed) return
    let stale = false
    let catchingUp = false
    for (const entry of this.#topics.values()) {
      if (entry.phase === "bootstrapping") stale = true
      else if (entry.phase === "loading" || session.topics.get(entry.topic) !== "live") catchingUp = true
    }
    this.#setState(stale ? "stale" : catchingUp ? "catching_up" : "live")
  }

  #setState(state: ConnectionState) {
    if (this.#state === state || this.#state === "closed") return
    this.#state = state
    for (const l of [...this.#stateListeners]) this.#call(undefined, () => l(state))
    this.#emit({ type: "state", state })
  }

  #emit(event: ClientEvent) {
    for (const l of [...this.#eventListeners]) {
      try {
        l(event)
      } catch {
        // an event listener must not break the client (and reporting it would recurse)
      }
    }
  }

  #emitError(error: KhalaClientError) {
    this.#emit({ type: "error", error })
  }

  #call(topic: string | undefined, f: () => void) {
    try {
      f()
    } catch (e) {
      this.#emitError(
        new KhalaCallbackError({ message: errorMessage(e), ...(topic === undefined ? {} : { topic }) })
      )
    }
  }
}

const globalFetch = (): FetchLike | undefined => {
  const f: unknown = Reflect.get(globalThis, "fetch")
  if (typeof f !== "function") return undefined
  return (input, init) => (f as (input: string, init: object) => ReturnType<FetchLike>)(input, init)
}

/** Creates a client and starts connecting at once. */
export const createKhalaClient = (options: KhalaClientOptions): KhalaClient => new Client(options)
