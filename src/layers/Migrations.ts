/**
 * Versioned migrations, applied at start (and by `khala migrate`). Each migration runs in one
 * transaction; concurrent starters serialise on the migrations table lock.
 */
import { Effect, Layer } from "effect"
import { Migrator, SqlClient } from "effect/sql"
import migration0001 from "./migrations/0001_runtime_schema.ts"
import migration0002 from "./migrations/0002_journal_body_hash.ts"
import migration0003 from "./migrations/0003_update_heavy_fillfactor.ts"

export const migrations = Migrator.fromRecord({
  "1_runtime_schema": migration0001,
  "2_journal_body_hash": migration0002,
  "3_update_heavy_fillfactor": migration0003
})

const migrator = Migrator.make({})

/** Applies pending migrations; returns the ones it ran. */
export const runMigrations = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE SCHEMA IF NOT EXISTS runtime`
  return yield* migrator({ loader: migrations, table: "runtime.schema_migrations" })
}).pipe(Effect.withSpan("Migrations.run"))

export const MigrationsLive = Layer.effectDiscard(
  Effect.gen(function*() {
    const ran = yield* runMigrations
    if (ran.length > 0) yield* Effect.logInfo(`applied migrations: ${ran.map(([id, name]) => `${id}_${name}`).join(", ")}`)
  })
)
