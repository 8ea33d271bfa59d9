/**
 * The daemon: config → database (embedded or DATABASE_URL) → migrations → services → HTTP/WS
 * server, with telemetry provided to the server so request spans are traced.
 */
import { Layer } from "effect"
import { BackgroundLive, HttpAppLive, HttpServerLive, ServicesLive } from "./App.ts"
import { DrainLive } from "./Drain.ts"
import { KhalaConfig } from "./Config.ts"
import { DatabaseLive } from "./Database.ts"
import { MigrationsLive } from "./Migrations.ts"
import { LoggingLive, TracingLive } from "./Telemetry.ts"

/** The database with migrations applied before anything else uses it. */
export const MigratedDatabaseLive = MigrationsLive.pipe(Layer.provideMerge(DatabaseLive))

export const MainLive = Layer.mergeAll(HttpAppLive, DrainLive({ exitProcess: true })).pipe(
  Layer.provide(HttpServerLive),
  Layer.provide(BackgroundLive),
  Layer.provide(ServicesLive),
  Layer.provide(MigratedDatabaseLive),
  Layer.provide(KhalaConfig.layer),
  Layer.provide(TracingLive),
  Layer.provide(LoggingLive)
)
