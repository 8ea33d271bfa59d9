/**
 * GroupCommit: turns concurrent single requests into shared transactions.
 *
 * Requests are queued (bounded: a full queue makes `submit` wait, which backpressures the HTTP
 * handlers) and `workers` fibers each take everything queued, up to `maxGroup` items in arrival
 * order, and commit it with one call. A request that finds a worker idle is committed at once,
 * alone: grouping adds no latency when there is no contention, and groups grow with the load (while
 * every worker is busy committing, new requests gather for the next group), so one fsync and one
 * set of statements serve many requests exactly when that matters.
 *
 * `commit` answers per item, in input order, and never fails: an item's failure is part of its
 * answer. A request interrupted before its group was taken is left out of it; once taken, it is
 * committed (its caller is gone, so the answer is dropped; idempotency keys make retries safe).
 * When the committer's scope closes, requests still queued are interrupted (never left waiting).
 */
import { Deferred, Effect, Exit, Queue, Scope } from "effect"

interface Pending<I, O> {
  readonly item: I
  readonly reply: Deferred.Deferred<O>
  cancelled: boolean
}

export interface GroupCommitter<I, O> {
  readonly submit: (item: I) => Effect.Effect<O>
}

export const makeGroupCommitter = <I, O, R>(options: {
  /** Groups committing at the same time. */
  readonly workers: number
  /** Most items in one group. */
  readonly maxGroup: number
  /** Requests that may wait for a worker before `submit` itself waits. */
  readonly capacity: number
  readonly commit: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<O>, never, R>
}): Effect.Effect<GroupCommitter<I, O>, never, R | Scope.Scope> =>
  Effect.gen(function*() {
    const queue = yield* Queue.bounded<Pending<I, O>>(options.capacity)
    /** Queued and not yet taken by a worker. */
    const queued = new Set<Pending<I, O>>()
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        yield* Queue.shutdown(queue) // callers waiting to enqueue are released too
        for (const p of queued) Deferred.doneUnsafe(p.reply, Effect.interrupt)
        queued.clear()
      })
    )

    // Interruptible only while waiting and while committing: a group taken is always answered.
    const worker = Effect.uninterruptibleMask((restore) => Effect.gen(function*() {
      const taken = yield* restore(Queue.takeBetween(queue, 1, options.maxGroup))
      for (const p of taken) queued.delete(p)
      const group = taken.filter((p) => !p.cancelled)
      if (group.length === 0) return
      // Interrupted (the scope closes): the exit carries it to every member.
      const exit = yield* Effect.exit(restore(options.commit(group.map((p) => p.item))))
      if (Exit.isSuccess(exit)) {
        group.forEach((p, i) => Deferred.doneUnsafe(p.reply, Effect.succeed(exit.value[i]!)))
      } else {
        // A defect (or an interruption at shutdown) is every member's.
        for (const p of group) Deferred.doneUnsafe(p.reply, Effect.failCause(exit.cause))
      }
    }))
    for (let i = 0; i < options.workers; i++) yield* Effect.forkScoped(Effect.forever(worker))

    const submit = (item: I) =>
      Effect.gen(function*() {
        const pending: Pending<I, O> = { item, reply: yield* Deferred.make<O>(), cancelled: false }
        queued.add(pending)
        yield* Queue.offer(queue, pending).pipe(Effect.onInterrupt(() => Effect.sync(() => queued.delete(pending))))
        return yield* Deferred.await(pending.reply).pipe(
          Effect.onInterrupt(() => Effect.sync(() => void (pending.cancelled = true)))
        )
      })
    return { submit }
  })
