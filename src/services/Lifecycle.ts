/**
 * Lifecycle: the node's readiness and drain state. Draining is one-way: once set, `/readyz`
 * answers 503, the WebSocket endpoint refuses new connections, and open ones are sent
 * `Goodbye{server_draining}`.
 */
import { Context, Deferred, Effect, Layer, Ref } from "effect"

/** Told once when the node starts draining (synchronously). */
export interface DrainListener {
  onDraining(): void
}

export class Lifecycle extends Context.Service<Lifecycle, {
  readonly isDraining: Effect.Effect<boolean>
  /** `isDraining` for synchronous callers (the upgrade handler runs in Node's HTTP parser callback). */
  readonly drainingNow: () => boolean
  /** Completes when a drain was requested. */
  readonly drainRequested: Deferred.Deferred<void>
  readonly requestDrain: Effect.Effect<void>
  /** Open WebSocket connections on this node (for drain). */
  readonly connections: Ref.Ref<number>
  /**
   * Registers a synchronous drain listener (told at once if already draining); `offDrain` removes
   * it. A listener object instead of a waiting fiber (or closures) per connection keeps idle
   * connections cheap.
   */
  readonly onDrain: (listener: DrainListener) => void
  readonly offDrain: (listener: DrainListener) => void
}>()("khala/services/Lifecycle") {
  static readonly layer = Layer.effect(
    Lifecycle,
    Effect.gen(function*() {
      const drainRequested = yield* Deferred.make<void>()
      const listeners = new Set<DrainListener>()
      let draining = false
      return Lifecycle.of({
        isDraining: Effect.sync(() => draining),
        drainingNow: () => draining,
        drainRequested,
        requestDrain: Effect.suspend(() => {
          if (!draining) {
            draining = true
            for (const l of [...listeners]) l.onDraining()
          }
          return Deferred.succeed(drainRequested, undefined).pipe(Effect.asVoid)
        }),
        connections: yield* Ref.make(0),
        onDrain: (listener) => {
          if (draining) listener.onDraining()
          else listeners.add(listener)
        },
        offDrain: (listener) => void listeners.delete(listener)
      })
    })
  )
}
