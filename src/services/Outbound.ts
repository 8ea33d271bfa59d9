/**
 * Outbound: one connection's bounded send queue (frames and bytes).
 *
 * Producers:
 * - topic actors call `offer` — never blocks; `false` means the connection is over its hard bound
 *   (2× the byte bound, or the frame bound) and must be evicted (`slow_consumer`). One slow
 *   connection therefore never slows an actor or the other subscribers of its topic;
 * - the connection's own replay calls `offerWait` — it waits while the queue (plus the socket's
 *   buffered bytes) is above the byte bound, so a replay is paced by the client, not evicted.
 * A writer drains it, in one of two modes:
 * - a long-lived fiber parked in `takeAll`;
 * - on demand (`onDemand`, what `Connection` uses): no fiber while the queue is empty. The first
 *   frame queued while no writer runs calls the demand callback (synchronously), which starts a
 *   writer; it takes with `takeNow` until that finds the queue empty, which also marks the writer
 *   as gone (in the same step, so no frame can fall between). `awaitIdle` waits for that.
 * Bytes counted are our queue plus the bytes the socket still buffers (`bufferedBytes()`), since
 * `ws.send` itself never pushes back.
 *
 * Fast path: when the queue is empty, no writer is busy (so everything offered before has
 * already been handed to the socket) and the socket buffer is low, `offer` hands the frame to the
 * socket at once (`writeNow`) instead of going through a writer: same order, no fiber per
 * delivery.
 */
import { Effect } from "effect"
import { type EncodedFrame, encodedFrameBytes } from "../domain/Protocol.ts"
import { deliveredTally } from "./Metrics.ts"

export interface OutboundLimits {
  readonly maxBytes: number
  readonly maxFrames: number
}

/** The socket side an outbound queue writes to (a connection's port satisfies it). */
export interface OutboundSocket {
  /** Bytes already handed to the socket but not yet on the wire. */
  readonly bufferedBytes: () => number
  /** Resolves when the socket's own buffer drained. */
  readonly awaitDrain: Effect.Effect<void>
  /** Synchronous write to the socket; false ⇒ not written (the frame is queued instead). */
  readonly writeNow?: ((frame: EncodedFrame) => boolean) | undefined
}

/** Who starts a writer in demand mode (`onDemand`). */
export interface DemandTarget {
  startWriter(): void
}

export class Outbound {
  private frames: Array<EncodedFrame> = []
  private queuedBytes = 0
  private closed = false
  private takeWaiter: (() => void) | undefined
  private spaceWaiters: Array<() => void> = []
  private readonly socket: OutboundSocket
  private demand: DemandTarget | undefined
  private idleWaiters: Array<() => void> | undefined
  /** Demand mode: a writer was started and has not yet found the queue empty. */
  writerActive = false

  readonly limits: OutboundLimits

  /** Kept as given (no closures per connection): an idle connection is mostly these objects. */
  constructor(limits: OutboundLimits, socket: OutboundSocket) {
    this.limits = limits
    this.socket = socket
  }

  get depth(): number {
    return this.frames.length
  }

  /** Queue plus socket bytes. */
  get pendingBytes(): number {
    return this.queuedBytes + this.socket.bufferedBytes()
  }

  get isOverSoftBound(): boolean {
    return this.pendingBytes > this.limits.maxBytes
  }

  /**
   * Switches to demand mode: `target.startWriter()` is called synchronously whenever a frame is
   * queued while no writer is active; it must start one that drains with `takeNow`.
   */
  onDemand(target: DemandTarget): void {
    this.demand = target
  }

  /** Nothing queued is waiting for a writer: a parked `takeAll`, or no active demand writer. */
  private get writerIdle(): boolean {
    return this.takeWaiter !== undefined || (this.demand !== undefined && !this.writerActive)
  }

  private push(frame: EncodedFrame, size: number) {
    this.frames.push(frame)
    this.queuedBytes += size
    const w = this.takeWaiter
    if (w) {
      this.takeWaiter = undefined
      w()
    } else if (this.demand !== undefined && !this.writerActive) {
      this.writerActive = true
      this.demand.startWriter()
    }
  }

  /** Live delivery: false ⇒ over the hard bound (caller evicts); never blocks. `size`: if known. */
  offer(frame: EncodedFrame, size: number = encodedFrameBytes(frame)): boolean {
    if (this.closed) return false
    if (
      this.socket.writeNow !== undefined && this.frames.length === 0 && this.writerIdle &&
      this.socket.bufferedBytes() + size <= this.limits.maxBytes / 2 && this.socket.writeNow(frame)
    ) {
      deliveredTally.frames++
      deliveredTally.bytes += size
      return true
    }
    if (this.frames.length >= this.limits.maxFrames || this.pendingBytes + size > 2 * this.limits.maxBytes) return false
    this.push(frame, size)
    return true
  }

  /** Control frames (Goodbye, Error) bypass the bounds: they are few and must not be lost. */
  force(frame: EncodedFrame): void {
    if (!this.closed) this.push(frame, encodedFrameBytes(frame))
  }

  /** Replay delivery: waits until there is room under the byte bound. */
  offerWait(frame: EncodedFrame): Effect.Effect<boolean> {
    return Effect.suspend(() => {
      if (this.closed) return Effect.succeed(false)
      if (this.pendingBytes < this.limits.maxBytes / 2 && this.frames.length < this.limits.maxFrames / 2) {
        this.push(frame, encodedFrameBytes(frame))
        return Effect.succeed(true)
      }
      // Nothing queued: only the socket holds bytes, and the writer is idle — wait for the socket.
      // Otherwise the writer wakes us after it wrote the queue and the socket drained.
      if (this.frames.length === 0) return Effect.andThen(this.socket.awaitDrain, this.offerWait(frame))
      return Effect.callback<void>((resume) => {
        const waiter = () => resume(Effect.void)
        this.spaceWaiters.push(waiter)
        return Effect.sync(() => {
          this.spaceWaiters = this.spaceWaiters.filter((w) => w !== waiter)
        })
      }).pipe(Effect.andThen(this.offerWait(frame)))
    })
  }

  get hasSpaceWaiters(): boolean {
    return this.spaceWaiters.length > 0
  }

  /** Wakes replays waiting for room (called by the writer after the socket drained). */
  notifySpace(): void {
    if (this.spaceWaiters.length === 0) return
    if (this.pendingBytes >= this.limits.maxBytes / 2) return
    const waiters = this.spaceWaiters
    this.spaceWaiters = []
    for (const w of waiters) w()
  }

  /** Everything queued (at least one frame) and its total size; `undefined` once closed and empty. */
  get takeAll(): Effect.Effect<{ readonly frames: ReadonlyArray<EncodedFrame>; readonly bytes: number } | undefined> {
    return Effect.suspend(() => {
      if (this.frames.length > 0) {
        const batch = { frames: this.frames, bytes: this.queuedBytes }
        this.frames = []
        this.queuedBytes = 0
        return Effect.succeed(batch)
      }
      if (this.closed) return Effect.succeed(undefined)
      return Effect.callback<void>((resume) => {
        this.takeWaiter = () => resume(Effect.void)
        return Effect.sync(() => {
          this.takeWaiter = undefined
        })
      }).pipe(Effect.andThen(this.takeAll))
    })
  }

  /**
   * Demand mode: everything queued and its total size, or `undefined` when the queue is empty —
   * which also ends the writer (`writerActive` false) in the same step.
   */
  takeNow(): { readonly frames: ReadonlyArray<EncodedFrame>; readonly bytes: number } | undefined {
    if (this.frames.length > 0) {
      const batch = { frames: this.frames, bytes: this.queuedBytes }
      this.frames = []
      this.queuedBytes = 0
      return batch
    }
    this.writerActive = false
    const waiters = this.idleWaiters
    if (waiters !== undefined) {
      this.idleWaiters = undefined
      for (const w of waiters) w()
    }
    return undefined
  }

  /** Demand mode: resolves once the queue is empty and no writer is active (everything handed to the socket). */
  get awaitIdle(): Effect.Effect<void> {
    return Effect.callback<void>((resume) => {
      if (this.frames.length === 0 && !this.writerActive) return resume(Effect.void)
      const waiter = () => resume(Effect.void)
      ;(this.idleWaiters ??= []).push(waiter)
      return Effect.sync(() => {
        if (this.idleWaiters !== undefined) this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter)
      })
    })
  }

  /** No more frames are accepted; queued ones still drain; waiters are released. */
  close(): void {
    this.closed = true
    const w = this.takeWaiter
    this.takeWaiter = undefined
    w?.()
    const waiters = this.spaceWaiters
    this.spaceWaiters = []
    for (const s of waiters) s()
  }
}
