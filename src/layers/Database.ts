/**
 * Database: the `PgClient`/`SqlClient` every service uses.
 *
 * `DATABASE_URL` set ⇒ a pool on it. Unset ⇒ the embedded PostgreSQL under `<KHALA_DATA_DIR>/pg`,
 * started for the layer's lifetime and stopped (fast shutdown) when its scope closes.
 */
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Option, Redacted, Schema } from "effect"
import * as path from "node:path"
import { KhalaConfig } from "./Config.ts"
import { startEmbeddedPostgres, type EmbeddedPostgres } from "./EmbeddedPostgres.ts"

export class EmbeddedPostgresError extends Schema.TaggedError<EmbeddedPostgresError>()("EmbeddedPostgresError", {
  message: Schema.String
}) {}

/** Starts an embedded cluster for the current scope. */
export const embeddedPostgres = (options: {
  readonly dataDir: string
  readonly durable: boolean
  readonly settings?: Readonly<Record<string, string>>
}) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => startEmbeddedPostgres(options),
      catch: (cause) => new EmbeddedPostgresError({ message: `embedded postgres failed to start: ${String(cause)}` })
    }),
    (pg: EmbeddedPostgres) => Effect.promise(() => pg.stop())
  )

export const pgClientLayer = (url: Redacted.Redacted<string>, maxConnections: number) =>
  // TCP keep-alive: a half-open connection (the LISTEN one above all) is detected and replaced.
  PgClient.layer({ url, maxConnections, applicationName: "khala", keepAlive: "30 seconds" })

export const DatabaseLive = Layer.unwrap(
  Effect.gen(function*() {
    const config = yield* KhalaConfig
    if (Option.isSome(config.databaseUrl)) return pgClientLayer(config.databaseUrl.value, config.dbMaxConnections)
    const settings = config.embeddedPgSettings
    const pg = yield* embeddedPostgres({ dataDir: path.join(config.dataDir, "pg"), durable: true, settings })
    const shown = Object.entries(settings).map(([name, value]) => `${name}=${value}`).join(", ")
    yield* Effect.logInfo(`embedded postgres on 127.0.0.1:${pg.port} (data: ${pg.dataDir}; ${shown || "default settings"})`)
    return pgClientLayer(Redacted.make(pg.url), config.dbMaxConnections)
  })
)
