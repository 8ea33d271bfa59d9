/**
 * FakeSocket: an in-memory `SocketPort` for driving `runConnection` under a TestClock.
 *
 * The test plays the client: it pushes client frames (encoded for the chosen subprotocol) that
 * `pull` hands to the connection, and can close its side (`pull` then fails). Everything the
 * server does to the socket is recorded: written frames (decoded), `close(code, reason)` calls
 * and `destroy()` calls. `bufferedBytes` is settable (a socket that does not drain) and
 * `awaitDrain` resolves only when the test calls `drain()`.
 *
 * Waiting is event-driven (`waitFor` re-checks on every write, close, destroy, blocked pull and
 * awaitDrain) with a LIVE-clock safety timeout, so the TestClock is never advanced by waiting and
 * a missing frame fails fast with a description of what was written.
 */
import { create } from "@bufbuild/protobuf"
import { Effect, Result } from "effect"
import { TestClock } from "effect/testing"
import {
  type ClientFrame,
  ClientFrameSchema,
  CursorSchema,
  HelloSchema,
  PingSchema,
  RefreshTokenSchema,
  type ServerFrame,
  SubscribeSchema,
  UnsubscribeSchema
} from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { decodeServerFrame, type EncodedFrame, encodeClientFrame, type Subprotocol } from "../../src/domain/Protocol.ts"
import type { SocketPort } from "../../src/services/Connection.ts"

export type ServerCase = NonNullable<ServerFrame["frame"]["case"]>
export type FrameOf<C extends ServerCase> = Extract<ServerFrame["frame"], { case: C }>["value"]

export interface CloseCall {
  readonly code: number
  readonly reason: string
}

export class ClientClosed extends Error {
  constructor() {
    super("the client closed the socket")
  }
}

export class WaitTimeout extends Error {}

export class FakeSocket implements SocketPort {
  readonly subprotocol: Subprotocol
  /** Every server frame written, decoded, in order. */
  readonly frames: Array<ServerFrame> = []
  /** Every server frame written, as it went on the wire. */
  readonly raw: Array<EncodedFrame> = []
  /** Number of `write` calls (batches). */
  writes = 0
  readonly closes: Array<CloseCall> = []
  destroyed = 0
  /** What `bufferedBytes()` reports. */
  buffered = 0
  /** Calls of `awaitDrain` so far. */
  drainWaits = 0

  private inbox: Array<Uint8Array | string> = []
  private clientClosed = false
  private pullWaiter: (() => void) | undefined
  private drainWaiters: Array<() => void> = []
  private listeners = new Set<() => void>()

  constructor(subprotocol: Subprotocol) {
    this.subprotocol = subprotocol
  }

  // ---- SocketPort

  readonly pull: Effect.Effect<ReadonlyArray<Uint8Array | string>, ClientClosed> = Effect.suspend(() => {
    if (this.inbox.length > 0) {
      const batch = this.inbox
      this.inbox = []
      return Effect.succeed(batch)
    }
    if (this.clientClosed) return Effect.fail(new ClientClosed())
    return Effect.callback<void>((resume) => {
      this.pullWaiter = () => resume(Effect.void)
      this.changed() // the connection now waits for frames (`isIdle`)
      return Effect.sync(() => {
        this.pullWaiter = undefined
      })
    }).pipe(Effect.andThen(this.pull))
  })

  readonly write = (frames: ReadonlyArray<EncodedFrame>): Effect.Effect<void> =>
    Effect.sync(() => {
      this.writes++
      for (const f of frames) {
        this.raw.push(f)
        const decoded = decodeServerFrame(this.subprotocol, f)
        if (Result.isFailure(decoded)) throw new Error(`server wrote an undecodable frame: ${decoded.failure.message}`)
        this.frames.push(decoded.success)
      }
      this.changed()
    })

  readonly bufferedBytes = (): number => this.buffered

  readonly awaitDrain: Effect.Effect<void> = Effect.suspend(() => {
    this.drainWaits++
    return Effect.callback<void>((resume) => {
      const waiter = () => resume(Effect.void)
      this.drainWaiters.push(waiter)
      this.changed() // `pendingDrains`
      return Effect.sync(() => {
        this.drainWaiters = this.drainWaiters.filter((w) => w !== waiter)
      })
    })
  })

  readonly close = (code: number, reason: string): Effect.Effect<void> =>
    Effect.sync(() => {
      this.closes.push({ code, reason })
      this.changed()
    })

  readonly destroy = (): void => {
    this.destroyed++
    this.changed()
  }

  // ---- the client side

  /** Pushes one raw client message. */
  sendRaw(data: Uint8Array | string): void {
    if (this.clientClosed) throw new Error("the client side is closed")
    this.inbox.push(data)
    this.wakePull()
  }

  /** Pushes several client frames as one batch (one `pull`). */
  sendFrames(frames: ReadonlyArray<ClientFrame["frame"]>): void {
    for (const frame of frames) this.inbox.push(encodeClientFrame(this.subprotocol, create(ClientFrameSchema, { frame })))
    this.wakePull()
  }

  send(frame: ClientFrame["frame"]): void {
    this.sendFrames([frame])
  }

  hello(token: string): void {
    this.send({ case: "hello", value: create(HelloSchema, { token, clientId: "fake", clientVersion: "test" }) })
  }

  ping(nonce: string): void {
    this.send({ case: "ping", value: create(PingSchema, { nonce }) })
  }

  refresh(token: string): void {
    this.send({ case: "refreshToken", value: create(RefreshTokenSchema, { token }) })
  }

  subscribe(
    requestId: string,
    cursors: ReadonlyArray<{ readonly topic: string; readonly afterSeq?: number; readonly epoch?: string }>
  ): void {
    this.send({
      case: "subscribe",
      value: create(SubscribeSchema, {
        requestId,
        cursors: cursors.map((c) =>
          create(CursorSchema, { topic: c.topic, afterSeq: BigInt(c.afterSeq ?? 0), epoch: c.epoch ?? "" })
        )
      })
    })
  }

  unsubscribe(requestId: string, topics: ReadonlyArray<string>): void {
    this.send({ case: "unsubscribe", value: create(UnsubscribeSchema, { requestId, topics: [...topics] }) })
  }

  /** The client goes away: the pending and every later `pull` fails. */
  closeClient(): void {
    this.clientClosed = true
    this.wakePull()
  }

  /** The socket's send buffer drained: resolves every pending `awaitDrain`. */
  drain(): void {
    const waiters = this.drainWaiters
    this.drainWaiters = []
    for (const w of waiters) w()
  }

  /** The connection is blocked in `pull` with nothing left to read: it handled every frame sent. */
  get isIdle(): boolean {
    return this.pullWaiter !== undefined && this.inbox.length === 0
  }

  get pendingDrains(): number {
    return this.drainWaiters.length
  }

  // ---- inspection

  cases(): Array<ServerCase> {
    return this.frames.map((f) => f.frame.case!)
  }

  all<C extends ServerCase>(c: C): Array<FrameOf<C>> {
    return this.frames.filter((f) => f.frame.case === c).map((f) => f.frame.value as FrameOf<C>)
  }

  count(c: ServerCase): number {
    return this.all(c).length
  }

  describe(): string {
    return `written=[${this.cases().join(", ")}] closes=${JSON.stringify(this.closes)} destroyed=${this.destroyed}`
  }

  /**
   * Waits (on socket events, not on the TestClock) until `cond()` holds; fails after `timeoutMs`
   * of real time with what was written so far. Real time passes only for I/O (token
   * verification, Postgres); the TestClock is left alone.
   */
  waitFor(cond: () => boolean, what: string, timeoutMs = 5_000): Effect.Effect<void, WaitTimeout> {
    const self = this
    return Effect.callback<void>((resume) => {
      if (cond()) return resume(Effect.void)
      const listener = () => {
        if (cond()) {
          self.listeners.delete(listener)
          resume(Effect.void)
        }
      }
      self.listeners.add(listener)
      return Effect.sync(() => {
        self.listeners.delete(listener)
      })
    }).pipe(
      Effect.timeoutOrElse({
        duration: timeoutMs,
        orElse: () => Effect.fail(new WaitTimeout(`timed out waiting for ${what}; ${self.describe()}`))
      }),
      TestClock.withLive
    )
  }

  /** Waits until the `n`-th frame of case `c` (1-based, default: one more than now) was written. */
  awaitFrame<C extends ServerCase>(c: C, n?: number, timeoutMs?: number): Effect.Effect<FrameOf<C>, WaitTimeout> {
    const target = n ?? this.count(c) + 1
    return this.waitFor(() => this.count(c) >= target, `${c} #${target}`, timeoutMs).pipe(
      Effect.map(() => this.all(c)[target - 1]!)
    )
  }

  awaitClose(timeoutMs?: number): Effect.Effect<CloseCall, WaitTimeout> {
    return this.waitFor(() => this.closes.length > 0, "close()", timeoutMs).pipe(Effect.map(() => this.closes[0]!))
  }

  private wakePull() {
    const w = this.pullWaiter
    this.pullWaiter = undefined
    w?.()
  }

  private changed() {
    for (const l of [...this.listeners]) l()
  }
}
