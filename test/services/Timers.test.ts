/**
 * Timers (the node's shared deadline heap) under the TestClock: deadlines fire exactly when the
 * clock reaches them (not a millisecond earlier), in deadline order, an earlier deadline added
 * while the fiber sleeps wakes it, cancelled entries never fire, and the fiber ends when nothing
 * is left (the next schedule starts it again).
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect } from "effect"
import { TestClock } from "effect/testing"
import { Timers } from "../../src/services/Timers.ts"

const settle = Effect.gen(function*() {
  for (let i = 0; i < 20; i++) yield* Effect.yieldNow
})

describe("Timers", () => {
  it.effect("fires at the deadline, in order; an earlier deadline wakes the sleeping fiber; cancelled never fires", () =>
    Effect.gen(function*() {
      const timers = yield* Timers.forClock
      const t0 = yield* Clock.currentTimeMillis
      const fired: Array<string> = []
      timers.schedule(t0 + 100, () => fired.push("a@100"))
      yield* settle
      timers.schedule(t0 + 50, () => fired.push("b@50")) // earlier than the one being slept on
      const c = timers.schedule(t0 + 70, () => fired.push("c@70"))
      timers.schedule(t0 + 100, (now) => fired.push(`d@${now - t0}`)) // same deadline: after "a"
      yield* TestClock.adjust(49)
      yield* settle
      assert.deepStrictEqual(fired, [])
      yield* TestClock.adjust(1)
      yield* settle
      assert.deepStrictEqual(fired, ["b@50"])
      timers.cancel(c)
      yield* TestClock.adjust(49)
      yield* settle
      assert.deepStrictEqual(fired, ["b@50"])
      yield* TestClock.adjust(1)
      yield* settle
      assert.deepStrictEqual(fired, ["b@50", "a@100", "d@100"])
      assert.strictEqual(timers.size, 0)
      // The fiber ended; a new deadline starts it again.
      timers.schedule(t0 + 130, () => fired.push("e@130"))
      yield* TestClock.adjust(30)
      yield* settle
      assert.deepStrictEqual(fired.at(-1), "e@130")
    }))

  it.effect("a callback that throws does not stop the others", () =>
    Effect.gen(function*() {
      const timers = yield* Timers.forClock
      const t0 = yield* Clock.currentTimeMillis
      const fired: Array<number> = []
      timers.schedule(t0 + 10, () => {
        throw new Error("boom")
      })
      timers.schedule(t0 + 10, () => fired.push(1))
      timers.schedule(t0 + 20, () => fired.push(2))
      yield* TestClock.adjust(20)
      yield* settle
      assert.deepStrictEqual(fired, [1, 2])
    }))
})
