/**
 * The process gauges: sampled when the layer starts and on every interval after (driven by the
 * TestClock here), and the longest event-loop stall since the previous sample (a real-time probe
 * timer, so the stall here is real: a 600 ms busy loop).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Metric } from "effect"
import { TestClock } from "effect/testing"
import { ProcessMetricsLive } from "../../src/layers/ProcessMetrics.ts"
import { eventLoopDelayMaxMs, heapTotalBytes, heapUsedBytes, residentMemoryBytes } from "../../src/services/Metrics.ts"

describe("ProcessMetricsLive", () => {
  it.effect("samples memory at start and on every interval", () =>
    Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(ProcessMetricsLive)
      yield* Effect.yieldNow
      const rss = (yield* Metric.value(residentMemoryBytes)).value
      const used = (yield* Metric.value(heapUsedBytes)).value
      const total = (yield* Metric.value(heapTotalBytes)).value
      assert.isAbove(Number(rss), 10 * 1024 * 1024)
      assert.isAbove(Number(used), 0)
      assert.isAtLeast(Number(total), Number(used))
      // The next sample comes with the interval: a big allocation kept alive shows up in it.
      const keep = Array.from({ length: 200_000 }, (_, i) => ({ i }))
      yield* TestClock.adjust("5 seconds")
      yield* Effect.yieldNow
      const after = (yield* Metric.value(heapUsedBytes)).value
      assert.notStrictEqual(after, used)
      assert.strictEqual(keep.length, 200_000)
    })))

  it.effect("reports the longest event-loop stall since the previous sample", () =>
    Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(ProcessMetricsLive)
      const realSleep = (ms: number) => Effect.promise(() => new Promise((r) => setTimeout(r, ms)))
      yield* realSleep(150) // the probe has run at least once
      const busyUntil = Date.now() + 600
      while (Date.now() < busyUntil) { /* the event loop is stalled */ }
      yield* realSleep(150) // the probe runs, late
      yield* TestClock.adjust("5 seconds")
      yield* Effect.yieldNow
      const stall = Number((yield* Metric.value(eventLoopDelayMaxMs)).value)
      assert.isAtLeast(stall, 400)
      // Reset by the sample: the next interval had no stall of that size.
      yield* realSleep(250)
      yield* TestClock.adjust("5 seconds")
      yield* Effect.yieldNow
      assert.isBelow(Number((yield* Metric.value(eventLoopDelayMaxMs)).value), 400)
    })))
})
