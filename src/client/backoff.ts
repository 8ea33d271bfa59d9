/**
 * Reconnect timing of the Khala client: the pure backoff schedule (exponential, capped, FULL
 * jitter), the token-refresh schedule, and the injectable `Scheduler` (timers + clock) every
 * timed decision of the client goes through, so that tests drive it with a fake clock.
 */

export interface BackoffOptions {
  /** Base delay of the first reconnect (attempt 0), before jitter. */
  readonly initialMs: number
  /** Cap of the exponential part. */
  readonly maxMs: number
  /** Growth per attempt. */
  readonly factor: number
  /** A connection that stayed up (Welcome received) this long resets the attempt counter. */
  readonly resetAfterMs: number
}

export const defaultBackoff: BackoffOptions = {
  initialMs: 500,
  maxMs: 30_000,
  factor: 2,
  resetAfterMs: 60_000
}

/**
 * Full-jitter exponential backoff: `random() * min(maxMs, initialMs * factor^attempt)`, so the
 * delay lies in `[0, cap)` and independent clients spread out instead of reconnecting together.
 * `random` must return values in `[0, 1)` (values outside are clamped). Never NaN or negative.
 */
export const backoffDelay = (attempt: number, options: BackoffOptions, random: () => number): number => {
  const n = Math.max(0, Math.floor(Number.isFinite(attempt) ? attempt : 0))
  const initial = Math.max(0, options.initialMs)
  const max = Math.max(0, options.maxMs)
  const factor = Math.max(1, options.factor)
  // factor^n overflows to Infinity for large n: min() with the cap keeps it finite.
  const ceiling = Math.min(max, initial * Math.pow(factor, n))
  const r = random()
  const jitter = Number.isFinite(r) ? Math.min(Math.max(r, 0), 1) : 0
  return Math.floor(jitter * ceiling)
}

/**
 * When to refresh a token that expires in `remainingMs`: at the earlier of 80% of the remaining
 * lifetime and `exp − marginMs`, but never before half of it (a short token is refreshed at 50%,
 * not at once). `undefined` when the token is too short-lived to refresh (`< minDelayMs` left):
 * the server's `token_expired` then makes the client reconnect with a new token.
 */
export const refreshDelay = (
  remainingMs: number,
  marginMs = 30_000,
  minDelayMs = 500
): number | undefined => {
  if (!Number.isFinite(remainingMs) || remainingMs <= 0) return undefined
  const delay = Math.max(remainingMs * 0.5, Math.min(remainingMs * 0.8, remainingMs - marginMs))
  return delay < minDelayMs ? undefined : Math.floor(delay)
}

/** An opaque timer handle. */
export type TimerHandle = unknown

/** Timers and the wall clock, injectable for tests (`realScheduler` by default). */
export interface Scheduler {
  readonly now: () => number
  readonly setTimeout: (callback: () => void, ms: number) => TimerHandle
  readonly clearTimeout: (handle: TimerHandle) => void
}

export const realScheduler: Scheduler = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => {
    globalThis.clearTimeout(handle as Parameters<typeof globalThis.clearTimeout>[0])
  }
}
