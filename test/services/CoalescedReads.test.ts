/**
 * Coalesced reads (the journal's position reads go through them):
 * - callers that ask while nothing is being read get a read of their own at once;
 * - callers that ask while a read is in flight wait for the next one, which starts only after that
 *   read ends — an answer is never one fetched before the call — and they share it;
 * - a key asked for twice is read once; a read covers at most `maxKeys` keys;
 * - a failed read fails exactly the callers it was for, and the next read goes on;
 * - an interrupted caller stops waiting without taking the read from the others;
 * - when the read's fiber is interrupted (the owner shuts down), every caller it holds or that
 *   waits is told, none waits forever; a read that leaves out a key is a defect for that key only.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber } from "effect"
import { coalescedReads } from "../../src/services/CoalescedReads.ts"

/** A store whose reads are recorded and held until released, one gate per read. */
const heldStore = Effect.gen(function*() {
  const values = new Map<string, number>()
  const reads: Array<ReadonlyArray<string>> = []
  const gates: Array<Deferred.Deferred<void, string>> = []
  const context = yield* Effect.context<never>()
  const loops: Array<Fiber.Fiber<void>> = []
  const read = coalescedReads<string, number, string>({
    maxKeys: 3,
    start: (loop) => {
      loops.push(Effect.runForkWith(context)(loop))
    },
    readMany: (keys) =>
      Effect.gen(function*() {
        reads.push(keys)
        const gate = yield* Deferred.make<void, string>()
        gates.push(gate)
        yield* Deferred.await(gate)
        // The values as they are when the read ends ("missing" is left out of the answer).
        return new Map(keys.filter((k) => k !== "missing").map((k) => [k, values.get(k) ?? 0]))
      })
  })
  /** Waits until read number `n` (from 1) is in flight (yielding to the event loop, where the read's fiber runs). */
  const inFlight = (n: number) =>
    Effect.gen(function*() {
      while (gates.length < n) yield* Effect.promise(() => new Promise((r) => setImmediate(r)))
    })
  return { values, reads, gates, read, inFlight, loops }
})

const forkRead = (read: (k: string) => Effect.Effect<number, string>, key: string) => Effect.forkChild(read(key))

/** A store with a first caller of `key` whose read is in flight (held at its gate). */
const withFirstRead = (key: string) =>
  Effect.gen(function*() {
    const s = yield* heldStore
    const first = yield* forkRead(s.read, key)
    yield* s.inFlight(1)
    return { s, first }
  })

/** One turn of the event loop: forked callers have asked, the read's fiber has run. */
const settle = Effect.promise(() => new Promise((r) => setImmediate(r)))

describe("coalescedReads", () => {
  it.effect("an idle caller reads at once; callers during a read share the next one", () =>
    Effect.gen(function*() {
      const { s, first: a } = yield* withFirstRead("a")
      assert.deepStrictEqual(s.reads, [["a"]])
      // Asked while the first read is in flight: a value written meanwhile must be seen.
      s.values.set("a", 7)
      const a2 = yield* forkRead(s.read, "a")
      const b = yield* forkRead(s.read, "b")
      const b2 = yield* forkRead(s.read, "b")
      yield* settle
      assert.strictEqual(s.reads.length, 1, "no second read while one is in flight")
      yield* Deferred.succeed(s.gates[0]!, undefined)
      yield* s.inFlight(2)
      assert.deepStrictEqual(s.reads[1], ["a", "b"], "one read for every key asked meanwhile, each once")
      s.values.set("b", 3)
      yield* Deferred.succeed(s.gates[1]!, undefined)
      assert.strictEqual(yield* Fiber.join(a), 7) // the first read ended after the write
      assert.strictEqual(yield* Fiber.join(a2), 7)
      assert.strictEqual(yield* Fiber.join(b), 3)
      assert.strictEqual(yield* Fiber.join(b2), 3)
      assert.strictEqual(s.reads.length, 2)
    }))

  it.effect("a read covers at most maxKeys keys; the rest go in the next", () =>
    Effect.gen(function*() {
      const { s, first } = yield* withFirstRead("k0")
      const rest = []
      for (let i = 1; i <= 5; i++) rest.push(yield* forkRead(s.read, `k${i}`))
      yield* settle
      yield* Deferred.succeed(s.gates[0]!, undefined)
      yield* s.inFlight(2)
      yield* Deferred.succeed(s.gates[1]!, undefined)
      yield* s.inFlight(3)
      yield* Deferred.succeed(s.gates[2]!, undefined)
      yield* Fiber.join(first)
      for (const f of rest) yield* Fiber.join(f)
      assert.deepStrictEqual(s.reads, [["k0"], ["k1", "k2", "k3"], ["k4", "k5"]])
    }))

  it.effect("a failed read fails its callers only; the next read goes on", () =>
    Effect.gen(function*() {
      const { s, first: a } = yield* withFirstRead("a")
      const b = yield* forkRead(s.read, "b")
      yield* settle
      yield* Deferred.fail(s.gates[0]!, "connection lost")
      yield* s.inFlight(2)
      yield* Deferred.succeed(s.gates[1]!, undefined)
      const ea = yield* Fiber.await(a)
      assert.isTrue(Exit.isFailure(ea))
      assert.deepStrictEqual(ea, Exit.fail("connection lost"))
      assert.strictEqual(yield* Fiber.join(b), 0)
      // And the reader is idle again: a new caller gets a read of its own.
      const c = yield* forkRead(s.read, "c")
      yield* s.inFlight(3)
      yield* Deferred.succeed(s.gates[2]!, undefined)
      assert.strictEqual(yield* Fiber.join(c), 0)
      assert.deepStrictEqual(s.reads, [["a"], ["b"], ["c"]])
    }))

  it.effect("an interrupted caller stops waiting; the others still get the read", () =>
    Effect.gen(function*() {
      const s = yield* heldStore
      s.values.set("a", 1)
      const first = yield* forkRead(s.read, "x")
      yield* s.inFlight(1)
      // Two callers of the same key wait for the next read; one of them gives up.
      const a = yield* forkRead(s.read, "a")
      const a2 = yield* forkRead(s.read, "a")
      yield* settle
      yield* Fiber.interrupt(a)
      yield* Deferred.succeed(s.gates[0]!, undefined)
      yield* s.inFlight(2)
      yield* Deferred.succeed(s.gates[1]!, undefined)
      assert.strictEqual(yield* Fiber.join(first), 0)
      assert.strictEqual(yield* Fiber.join(a2), 1)
      assert.deepStrictEqual(s.reads, [["x"], ["a"]])
    }))

  it.effect("the read's fiber interrupted: the callers it holds and those waiting are told", () =>
    Effect.gen(function*() {
      const { s, first: a } = yield* withFirstRead("a")
      const b = yield* forkRead(s.read, "b")
      yield* settle
      yield* Fiber.interrupt(s.loops[0]!)
      const ea = yield* Fiber.await(a)
      const eb = yield* Fiber.await(b)
      assert.isTrue(Exit.isFailure(ea) && Exit.hasInterrupts(ea), "the caller of the read in flight")
      assert.isTrue(Exit.isFailure(eb) && Exit.hasInterrupts(eb), "the caller waiting for the next read")
      // A new caller starts a new loop.
      const c = yield* forkRead(s.read, "c")
      yield* s.inFlight(2)
      yield* Deferred.succeed(s.gates[1]!, undefined)
      assert.strictEqual(yield* Fiber.join(c), 0)
      assert.strictEqual(s.loops.length, 2)
    }))

  it.effect("a key the read did not answer is a defect for its callers only", () =>
    Effect.gen(function*() {
      const { s, first } = yield* withFirstRead("x")
      const missing = yield* forkRead(s.read, "missing")
      const other = yield* forkRead(s.read, "other")
      yield* settle
      yield* Deferred.succeed(s.gates[0]!, undefined)
      yield* s.inFlight(2)
      yield* Deferred.succeed(s.gates[1]!, undefined)
      assert.strictEqual(yield* Fiber.join(first), 0)
      assert.strictEqual(yield* Fiber.join(other), 0)
      const em = yield* Fiber.await(missing)
      assert.isTrue(Exit.isFailure(em) && Exit.hasDies(em))
    }))
})
