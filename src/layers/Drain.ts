/**
 * Drain: graceful stop of the sync lane. Triggered by `POST /internal/v1/khala/drain` or by
 * SIGTERM/SIGINT (this layer's finalizer runs before the HTTP server closes). Draining: `/readyz`
 * answers 503, new WebSocket upgrades are refused, every open connection gets
 * `Goodbye{server_draining}` and is closed; we wait for them up to `drainTimeoutMs`. A drain
 * requested over HTTP then stops the process (exit 0) through the same path as SIGTERM.
 */
import { Deferred, Duration, Effect, Layer, Ref, Schedule } from "effect"
import { HttpServer } from "effect/http"
import { Lifecycle } from "../services/Lifecycle.ts"
import { KhalaConfig } from "./Config.ts"

const awaitNoConnections = (lifecycle: Lifecycle["Service"], timeoutMs: number) =>
  Ref.get(lifecycle.connections).pipe(
    Effect.repeat({ schedule: Schedule.spaced("50 millis"), until: (n) => n <= 0 }),
    Effect.timeoutOption(Duration.millis(timeoutMs)),
    Effect.asVoid
  )

export const DrainLive = (options: { readonly exitProcess: boolean }) =>
  Layer.effectDiscard(Effect.gen(function*() {
    yield* HttpServer.HttpServer // built after the server, so finalized before it closes
    const lifecycle = yield* Lifecycle
    const config = yield* KhalaConfig
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        yield* lifecycle.requestDrain
        yield* awaitNoConnections(lifecycle, config.drainTimeoutMs)
      })
    )
    if (options.exitProcess) {
      yield* Deferred.await(lifecycle.drainRequested).pipe(
        Effect.andThen(Effect.logInfo("drain requested: closing connections, then exiting")),
        Effect.andThen(awaitNoConnections(lifecycle, config.drainTimeoutMs)),
        Effect.andThen(Effect.sync(() => process.kill(process.pid, "SIGTERM"))),
        Effect.forkScoped
      )
    }
  }))
