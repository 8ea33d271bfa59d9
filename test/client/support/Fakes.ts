/**
 * Test doubles for the client SDK's unit tests: a manual-clock `Scheduler`, an in-process fake
 * WebSocket whose "server side" the test drives frame by frame, seeded PRNGs, and helpers to
 * build server frames.
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf"
import {
  CaughtUpSchema,
  ClientFrameSchema,
  ErrorSchema,
  GoodbyeSchema,
  ServerFrameSchema,
  SubscribedSchema,
  TokenRefreshedSchema,
  UpdateSchema,
  UpdatesSchema,
  WelcomeSchema
} from "../../../src/gen/openagents/sync/v1/frames_pb.ts"
import type { ErrorCode } from "../../../src/gen/openagents/sync/v1/errors_pb.ts"
import type { ClientFrame, RefreshToken, ServerFrame, Subscribe, Unsubscribe, Update } from "../../../src/gen/openagents/sync/v1/frames_pb.ts"
import type { Scheduler, TimerHandle } from "../../../src/client/backoff.ts"
import type { CloseEventLike, MessageEventLike, WebSocketLike } from "../../../src/client/socket.ts"

// ---------------------------------------------------------------------------------------------
// Manual clock

interface FakeTimer {
  readonly id: number
  readonly at: number
  readonly callback: () => void
}

export class FakeScheduler implements Scheduler {
  #now: number
  #nextId = 1
  readonly #timers = new Map<number, FakeTimer>()

  constructor(start = 1_700_000_000_000) {
    this.#now = start
  }

  readonly now = (): number => this.#now

  readonly setTimeout = (callback: () => void, ms: number): TimerHandle => {
    const id = this.#nextId++
    this.#timers.set(id, { id, at: this.#now + Math.max(0, ms), callback })
    return id
  }

  readonly clearTimeout = (handle: TimerHandle): void => {
    if (typeof handle === "number") this.#timers.delete(handle)
  }

  /** Due times of the pending timers, relative to now. */
  pending(): Array<number> {
    return [...this.#timers.values()].map((t) => t.at - this.#now).sort((a, b) => a - b)
  }

  /** Advances the clock by `ms`, running due timers in order (each followed by a microtask flush). */
  async advance(ms: number): Promise<void> {
    const target = this.#now + ms
    while (true) {
      const due = [...this.#timers.values()].filter((t) => t.at <= target).sort((a, b) => a.at - b.at || a.id - b.id)[0]
      if (due === undefined) break
      this.#timers.delete(due.id)
      this.#now = due.at
      due.callback()
      await settle()
    }
    this.#now = target
    await settle()
  }
}

/** Lets pending promise chains (getToken, store reads) run. */
export const settle = async (rounds = 5): Promise<void> => {
  for (let i = 0; i < rounds; i++) await new Promise<void>((resolve) => setImmediate(resolve))
}

// ---------------------------------------------------------------------------------------------
// Fake WebSocket

export class FakeSocket implements WebSocketLike {
  static readonly instances: Array<FakeSocket> = []
  /** What a new socket does on its own: `fail` closes with 1006, `open` opens, `none` waits. */
  static behaviour: "fail" | "open" | "none" = "open"

  binaryType = "blob"
  readyState = 0
  onopen: ((event: unknown) => void) | null = null
  onmessage: ((event: MessageEventLike) => void) | null = null
  onclose: ((event: CloseEventLike) => void) | null = null
  onerror: ((event: unknown) => void) | null = null
  readonly url: string
  readonly protocols: ReadonlyArray<string>
  readonly sent: Array<ClientFrame["frame"]> = []
  closedWith: { code: number; reason: string } | undefined

  constructor(url: string, protocols?: string | Array<string>) {
    this.url = url
    this.protocols = protocols === undefined ? [] : typeof protocols === "string" ? [protocols] : protocols
    FakeSocket.instances.push(this)
    const behaviour = FakeSocket.behaviour
    queueMicrotask(() => {
      if (behaviour === "fail") this.serverClose(1006, "connection refused")
      else if (behaviour === "open") this.open()
    })
  }

  static reset(behaviour: "fail" | "open" | "none" = "open") {
    FakeSocket.instances.length = 0
    FakeSocket.behaviour = behaviour
  }

  static last(): FakeSocket {
    const s = FakeSocket.instances.at(-1)
    if (s === undefined) throw new Error("no socket")
    return s
  }

  open() {
    if (this.readyState !== 0) return
    this.readyState = 1
    this.onopen?.({})
  }

  send(data: string | Uint8Array<ArrayBuffer>): void {
    if (typeof data === "string") throw new Error("FakeSocket speaks khala.v1.proto only")
    this.sent.push(fromBinary(ClientFrameSchema, data).frame)
  }

  close(code = 1000, reason = ""): void {
    if (this.readyState >= 2) return
    this.closedWith = { code, reason }
    this.readyState = 3
    queueMicrotask(() => this.onclose?.({ code, reason }))
  }

  /** Delivers a server frame to the client. */
  serverSend(frame: ServerFrame["frame"]) {
    if (this.readyState !== 1) return
    const bytes = toBinary(ServerFrameSchema, create(ServerFrameSchema, { frame }))
    this.onmessage?.({ data: bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) })
  }

  serverClose(code: number, reason: string) {
    if (this.readyState === 3) return
    this.readyState = 3
    this.onclose?.({ code, reason })
  }

  subscribes(): Array<Subscribe> {
    return this.sent.flatMap((f) => (f.case === "subscribe" ? [f.value] : []))
  }

  unsubscribes(): Array<Unsubscribe> {
    return this.sent.flatMap((f) => (f.case === "unsubscribe" ? [f.value] : []))
  }

  refreshes(): Array<RefreshToken> {
    return this.sent.flatMap((f) => (f.case === "refreshToken" ? [f.value] : []))
  }
}

// ---------------------------------------------------------------------------------------------
// Frames

type F = ServerFrame["frame"]

export const welcome = (
  init: { tokenExpiresAtMs?: number; serverTimeMs?: number; heartbeatIntervalMs?: number } = {}
): F => ({
  case: "welcome",
  value: create(WelcomeSchema, {
    connectionId: `c-${FakeSocket.instances.length}`,
    serverTimeMs: BigInt(init.serverTimeMs ?? 0),
    heartbeatIntervalMs: BigInt(init.heartbeatIntervalMs ?? 15_000),
    maxFrameBytes: 65_536n,
    tokenExpiresAtMs: BigInt(init.tokenExpiresAtMs ?? 0)
  })
})

export const subscribed = (requestId: string, topics: ReadonlyArray<{ topic: string; epoch: string; head?: number }>): F => ({
  case: "subscribed",
  value: create(SubscribedSchema, {
    requestId,
    topics: topics.map((t) => ({ topic: t.topic, epoch: t.epoch, floorSeq: 1n, headSeq: BigInt(t.head ?? 0) }))
  })
})

export const updates = (topic: string, epoch: string, items: ReadonlyArray<Update>, replay = false): F => ({
  case: "updates",
  value: create(UpdatesSchema, { topic, epoch, items: [...items], replay })
})

export const caughtUp = (topic: string, seq: number): F => ({
  case: "caughtUp",
  value: create(CaughtUpSchema, { topic, seq: BigInt(seq) })
})

export const goodbye = (code: ErrorCode, retryAfterMs = 0, message = "bye"): F => ({
  case: "goodbye",
  value: create(GoodbyeSchema, { code, message, retryAfterMs: BigInt(retryAfterMs) })
})

export const errorFrame = (
  code: ErrorCode,
  init: { topic?: string; requestId?: string; retryAfterMs?: number; message?: string } = {}
): F => ({
  case: "error",
  value: create(ErrorSchema, {
    code,
    message: init.message ?? "error",
    topic: init.topic ?? "",
    requestId: init.requestId ?? "",
    retryAfterMs: BigInt(init.retryAfterMs ?? 0)
  })
})

export const tokenRefreshed = (expiresAtMs: number): F => ({
  case: "tokenRefreshed",
  value: create(TokenRefreshedSchema, { tokenExpiresAtMs: BigInt(expiresAtMs) })
})

export const runSummaryUpdate = (seq: number, docVersion: number, runId = "r1", status = "running"): Update =>
  create(UpdateSchema, {
    seq: BigInt(seq),
    kind: "run.summary",
    docKey: `run_summary:${runId}`,
    docVersion: BigInt(docVersion),
    schemaVersion: 1,
    body: { case: "runSummary", value: { runId, status, lastSeq: BigInt(docVersion), ownerUserId: "u1" } }
  })

export const runEventUpdate = (seq: number, runSeq: number, runId = "r1", type = "run.step"): Update =>
  create(UpdateSchema, {
    seq: BigInt(seq),
    kind: "run.event",
    docKey: `run_event:${runId}:${runSeq}`,
    docVersion: 1n,
    schemaVersion: 1,
    body: { case: "runEvent", value: { runId, seq: BigInt(runSeq), type } }
  })

// ---------------------------------------------------------------------------------------------
// Randomness

/** A small seeded PRNG (mulberry32) returning values in [0, 1). */
export const seeded = (seed: number): (() => number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A base64url-encoded unsigned JWT with the given claims (the client never verifies). */
export const fakeJwt = (claims: Record<string, unknown>): string => {
  const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString("base64url")
  return `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}.c2ln`
}
