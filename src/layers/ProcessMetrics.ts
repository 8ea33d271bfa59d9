/**
 * Process gauges for operators: memory (RSS, V8 heap, external) and event-loop stalls, sampled
 * every 5 seconds into the `khala_process_*` / `khala_event_loop_*` gauges of `GET /metrics`.
 *
 * Stalls are measured by a 100 ms probe timer: its lateness is how long the loop was busy (or
 * paused by a GC) before it could run a timer; the gauge is the largest lateness since the last
 * sample. Sampling costs a few microseconds.
 */
import { Effect, Layer, Metric, Schedule } from "effect"
import { performance } from "node:perf_hooks"
import {
  eventLoopDelayMaxMs,
  externalMemoryBytes,
  heapTotalBytes,
  heapUsedBytes,
  residentMemoryBytes
} from "../services/Metrics.ts"

export const SAMPLE_INTERVAL = "5 seconds"
const PROBE_MS = 100

export const ProcessMetricsLive = Layer.effectDiscard(Effect.gen(function*() {
  const probe = yield* Effect.acquireRelease(
    Effect.sync(() => {
      const state = { maxLateMs: 0, expected: performance.now() + PROBE_MS, timer: undefined as NodeJS.Timeout | undefined }
      state.timer = setInterval(() => {
        const now = performance.now()
        state.maxLateMs = Math.max(state.maxLateMs, now - state.expected)
        state.expected = now + PROBE_MS
      }, PROBE_MS).unref()
      return state
    }),
    (state) => Effect.sync(() => clearInterval(state.timer))
  )
  const sample = Effect.suspend(() => {
    const m = process.memoryUsage()
    const late = probe.maxLateMs
    probe.maxLateMs = 0
    return Effect.all([
      Metric.update(residentMemoryBytes, m.rss),
      Metric.update(heapUsedBytes, m.heapUsed),
      Metric.update(heapTotalBytes, m.heapTotal),
      Metric.update(externalMemoryBytes, m.external),
      Metric.update(eventLoopDelayMaxMs, late)
    ], { discard: true })
  })
  yield* sample.pipe(Effect.repeat(Schedule.spaced(SAMPLE_INTERVAL)), Effect.forkScoped)
}))
