/**
 * Coalesced reads: concurrent reads of single keys become one read of many keys.
 *
 * At most one read is in flight. Keys asked for while it runs wait and go out together in the next
 * read, which starts when the current one ends — so a caller always gets a read that started after
 * it asked (never a result fetched before its call), an idle caller gets its read at once, and under
 * load the number of statements stays at one per round trip however many callers there are (a
 * reconnect storm of 10 000 clients: each subscription needs its topic's position, twice).
 *
 * The read runs in a fiber of the owner's (`start`), not of any caller: a caller that is interrupted
 * stops waiting and the read goes on for the others, and no caller's context (its transaction, its
 * span) leaks into a read served to everyone.
 */
import { Deferred, Effect, Exit } from "effect"

export const coalescedReads = <K, V, E>(options: {
  /** Reads every key given (it must answer for each one). */
  readonly readMany: (keys: ReadonlyArray<K>) => Effect.Effect<ReadonlyMap<K, V>, E>
  /** At most this many keys per read; the rest wait for the next one. */
  readonly maxKeys: number
  /** Starts the read loop in the owner's fiber context (e.g. `Effect.runForkWith(layerContext)`). */
  readonly start: (loop: Effect.Effect<void>) => void
}): ((key: K) => Effect.Effect<V, E>) => {
  const { readMany, maxKeys, start } = options
  let waiting = new Map<K, Array<Deferred.Deferred<V, E>>>()
  let reading = false

  const takeBatch = (): Map<K, Array<Deferred.Deferred<V, E>>> => {
    if (waiting.size <= maxKeys) {
      const batch = waiting
      waiting = new Map()
      return batch
    }
    const batch = new Map<K, Array<Deferred.Deferred<V, E>>>()
    for (const [key, callers] of waiting) {
      if (batch.size === maxKeys) break
      batch.set(key, callers)
      waiting.delete(key)
    }
    return batch
  }

  const answer = (batch: Map<K, Array<Deferred.Deferred<V, E>>>, exit: Exit.Exit<ReadonlyMap<K, V>, E>) => {
    for (const [key, callers] of batch) {
      const result: Exit.Exit<V, E> = Exit.isSuccess(exit)
        ? (exit.value.has(key) ? Exit.succeed(exit.value.get(key)!) : Exit.die(new Error(`coalesced read gave no answer for ${String(key)}`)))
        : Exit.failCause(exit.cause)
      for (const caller of callers) Deferred.doneUnsafe(caller, result)
    }
  }

  let inHand: Map<K, Array<Deferred.Deferred<V, E>>> | undefined
  const readLoop: Effect.Effect<void> = Effect.gen(function*() {
    while (waiting.size > 0) {
      const batch = (inHand = takeBatch())
      const exit = yield* Effect.exit(readMany([...batch.keys()]))
      inHand = undefined
      answer(batch, exit)
    }
  }).pipe(Effect.onExit((exit) =>
    Effect.sync(() => {
      reading = false
      // Ended early (interrupted: the node is shutting down, or a defect): nobody waits forever.
      const ended: Exit.Exit<never> = Exit.isFailure(exit) ? Exit.failCause(exit.cause) : Exit.interrupt()
      if (inHand !== undefined) answer(inHand, ended)
      inHand = undefined
      while (waiting.size > 0) answer(takeBatch(), ended)
    })
  ))

  return (key) =>
    Effect.gen(function*() {
      const mine = yield* Deferred.make<V, E>()
      const callers = waiting.get(key)
      if (callers === undefined) waiting.set(key, [mine])
      else callers.push(mine)
      if (!reading) {
        reading = true
        start(readLoop)
      }
      return yield* Deferred.await(mine)
    })
}
