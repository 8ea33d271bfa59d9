/**
 * Lifecycle: the node's readiness and drain state. Draining is one-way: once set, `/readyz`
 * answers 503, the WebSocket endpoint refuses new connections, and open ones are sent
 * `Goodbye{server_draining}`.
 */
import { Context, Deferred, Effect, Layer, Ref } from "effect"

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
   * Registers a synchronous drain callback (called at once if already draining); returns its
   * unregistration. A callback instead of a waiting fiber per connection keeps idle connections cheap.
   */
  readonly onDrain: (callback: () => void) => () => void
}>()("khala/services/Lifecycle") {
  static readonly layer = Layer.effect(
    Lifecycle,
    Effect.gen(function*() {
      const drainRequested = yield* Deferred.make<void>()
      const listeners = new Set<() => void>()
      let draining = false
      return Lifecycle.of({
        isDraining: Effect.sync(() => draining),
        drainingNow: () => draining,
        drainRequested,
        requestDrain: Effect.suspend(() => {
          if (!draining) {
            draining = true
            for (const l of [...listeners]) l()
          }
          return Deferred.succeed(drainRequested, undefined).pipe(Effect.asVoid)
        }),
        connections: yield* Ref.make(0),
        onDrain: (callback) => {
          if (draining) {
            callback()
            return () => {}
          }
          listeners.add(callback)
          return () => {
            listeners.delete(callback)
          }
        }
      })
    })
  )
}
