/**
 * GroupCommit: concurrent submissions share commits, answers go back to their own callers, a
 * caller interrupted before its group was taken is left out, and closing the committer's scope
 * never leaves a caller waiting.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Scope } from "effect"
import { makeGroupCommitter } from "../../src/services/GroupCommit.ts"

/** One worker, held busy by its first group until `gate` opens; records every group. */
const gatedCommitter = Effect.gen(function*() {
  const groups: Array<ReadonlyArray<number>> = []
  const gate = yield* Deferred.make<void>()
  const committer = yield* makeGroupCommitter<number, string, never>({
    workers: 1,
    maxGroup: 100,
    capacity: 100,
    commit: (items) =>
      Effect.gen(function*() {
        groups.push(items)
        if (groups.length === 1) yield* Deferred.await(gate)
        return items.map((i) => `answer ${i}`)
      })
  })
  return { groups, gate, committer }
})

describe("GroupCommit", () => {
  it.effect("groups what queued while the workers were busy; each caller gets its own answer", () =>
    Effect.gen(function*() {
      const { groups, gate, committer } = yield* gatedCommitter
      const first = yield* Effect.forkChild(committer.submit(0))
      yield* Effect.yieldNow
      const rest = yield* Effect.forkChild(Effect.all(Array.from({ length: 10 }, (_, i) => committer.submit(i + 1)), { concurrency: "unbounded" }))
      yield* Effect.yieldNow
      yield* Deferred.succeed(gate, undefined)
      assert.strictEqual(yield* Fiber.join(first), "answer 0")
      assert.deepStrictEqual(yield* Fiber.join(rest), Array.from({ length: 10 }, (_, i) => `answer ${i + 1}`))
      assert.deepStrictEqual(groups, [[0], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    }).pipe(Effect.scoped))

  it.effect("a caller interrupted while queued is left out of its group", () =>
    Effect.gen(function*() {
      const { groups, gate, committer } = yield* gatedCommitter
      const busy = yield* Effect.forkChild(committer.submit(0))
      yield* Effect.yieldNow
      const gone = yield* Effect.forkChild(committer.submit(1))
      const kept = yield* Effect.forkChild(committer.submit(2))
      yield* Effect.yieldNow
      yield* Fiber.interrupt(gone)
      yield* Deferred.succeed(gate, undefined)
      assert.strictEqual(yield* Fiber.join(busy), "answer 0")
      assert.strictEqual(yield* Fiber.join(kept), "answer 2")
      assert.deepStrictEqual(groups, [[0], [2]])
    }).pipe(Effect.scoped))

  it.effect("closing the scope interrupts callers still queued", () =>
    Effect.gen(function*() {
      const scope = yield* Scope.make()
      const committer = yield* makeGroupCommitter<number, number, never>({
        workers: 1,
        maxGroup: 100,
        capacity: 100,
        commit: () => Effect.never
      }).pipe(Scope.provide(scope))
      const inFlight = yield* Effect.forkChild(committer.submit(1))
      yield* Effect.yieldNow
      const queued = yield* Effect.forkChild(committer.submit(2))
      yield* Effect.yieldNow
      yield* Scope.close(scope, Exit.void)
      assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(inFlight)))
      assert.isTrue(Exit.hasInterrupts(yield* Fiber.await(queued)))
    }))
})
