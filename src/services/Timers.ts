/**
 * Timers: one deadline heap per `Clock`, served by a single fiber, for the per-connection
 * deadlines (auth timeout, heartbeats, token expiry). A sleeping fiber per idle connection would
 * cost memory on every connection; this costs one heap entry each.
 *
 * The fiber sleeps on the `Clock` it was made for (so a TestClock drives it exactly: a deadline
 * at T fires when the clock reaches T, not before) until the earliest deadline, fires every due
 * entry in deadline order (ties in scheduling order), and exits when no entry is left; the next
 * `schedule` starts it again. A new earlier deadline wakes it. Callbacks run synchronously on the
 * timer fiber and must not block; one that throws is logged and does not stop the others.
 *
 * `Timers.forClock` returns the instance of the current fiber's `Clock` (one per node in
 * production; one per TestClock in tests), created on first use.
 */
import { Cause, Clock, type Context, Duration, Effect } from "effect"

export interface TimerEntry {
  readonly at: number
  readonly seq: number
  readonly fire: (now: number) => void
  cancelled: boolean
}

const before = (a: TimerEntry, b: TimerEntry) => a.at < b.at || (a.at === b.at && a.seq < b.seq)

export class Timers {
  private readonly heap: Array<TimerEntry> = []
  private live = 0
  private seq = 0
  private running = false
  private sleepingUntil = Number.POSITIVE_INFINITY
  private wake: (() => void) | undefined
  private readonly clock: Clock.Clock
  private readonly context: Context.Context<never>

  constructor(clock: Clock.Clock, context: Context.Context<never>) {
    this.clock = clock
    this.context = context
  }

  /** Number of pending (not cancelled) deadlines. */
  get size(): number {
    return this.live
  }

  now(): number {
    return this.clock.currentTimeMillisUnsafe()
  }

  /** Calls `fire(now)` once the clock reaches `at` (unless cancelled first). */
  schedule(at: number, fire: (now: number) => void): TimerEntry {
    const entry: TimerEntry = { at, seq: this.seq++, fire, cancelled: false }
    this.push(entry)
    this.live++
    if (!this.running) this.start()
    else if (at < this.sleepingUntil) this.wake?.()
    return entry
  }

  cancel(entry: TimerEntry | undefined): void {
    if (entry === undefined || entry.cancelled) return
    entry.cancelled = true
    this.live--
    // Nothing left: let the fiber end now rather than at a cancelled deadline (a live clock's
    // pending sleep would hold the process).
    if (this.live === 0) this.wake?.()
  }

  private start() {
    this.running = true
    const fiber = Effect.runForkWith(this.context)(this.loop)
    // A defect in the loop itself (not in a callback) must not leave the heap unserved.
    fiber.addObserver((exit) => {
      if (exit._tag === "Success") return
      this.running = false
      this.wake = undefined
      this.sleepingUntil = Number.POSITIVE_INFINITY
      if (Cause.hasInterruptsOnly(exit.cause)) return
      Effect.runForkWith(this.context)(Effect.logError("timer loop failed; restarting", exit.cause))
      if (this.live > 0) this.start()
    })
  }

  private readonly loop: Effect.Effect<void> = Effect.suspend(() => {
    const fireDue = (): number | undefined => {
      const now = this.clock.currentTimeMillisUnsafe()
      while (this.heap.length > 0) {
        const top = this.heap[0]!
        if (top.cancelled) {
          this.pop()
          continue
        }
        if (top.at > now) return top.at - now
        this.pop()
        top.cancelled = true
        this.live--
        try {
          top.fire(now)
        } catch (e) {
          Effect.runForkWith(this.context)(Effect.logError("timer callback failed", e))
        }
      }
      return undefined
    }
    const step: Effect.Effect<void> = Effect.suspend(() => {
      const delay = fireDue()
      if (delay === undefined || this.live === 0) {
        this.running = false
        this.heap.length = 0
        return Effect.void
      }
      this.sleepingUntil = this.heap[0]!.at
      const woken = Effect.callback<void>((resume) => {
        this.wake = () => resume(Effect.void)
        return Effect.sync(() => {
          this.wake = undefined
        })
      })
      return Effect.raceFirst(this.clock.sleep(Duration.millis(delay)), woken).pipe(
        Effect.andThen(Effect.sync(() => {
          this.wake = undefined
          this.sleepingUntil = Number.POSITIVE_INFINITY
        })),
        Effect.andThen(step)
      )
    })
    return step
  })

  private push(e: TimerEntry) {
    const h = this.heap
    h.push(e)
    let i = h.length - 1
    while (i > 0) {
      const p = (i - 1) >> 1
      if (!before(h[i]!, h[p]!)) break
      ;[h[i], h[p]] = [h[p]!, h[i]!]
      i = p
    }
  }

  private pop() {
    const h = this.heap
    const last = h.pop()!
    if (h.length === 0) return
    h[0] = last
    let i = 0
    while (true) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < h.length && before(h[l]!, h[m]!)) m = l
      if (r < h.length && before(h[r]!, h[m]!)) m = r
      if (m === i) break
      ;[h[i], h[m]] = [h[m]!, h[i]!]
      i = m
    }
  }

  private static readonly byClock = new WeakMap<Clock.Clock, Timers>()

  /** The timers of the current fiber's clock (its fiber runs with the first caller's context). */
  static readonly forClock: Effect.Effect<Timers> = Effect.gen(function*() {
    const clock = yield* Clock.Clock
    const existing = Timers.byClock.get(clock)
    if (existing) return existing
    const timers = new Timers(clock, yield* Effect.context<never>())
    Timers.byClock.set(clock, timers)
    return timers
  })
}
