/**
 * TestDatabase: a fresh, migrated Postgres database for one test file (Electric's `with_unique_db`).
 *
 * `DATABASE_URL` set ⇒ a new database `khala_test_<random>` on that server, dropped afterwards.
 * Unset ⇒ a throwaway embedded cluster in a temp dir (fsync off), removed afterwards.
 */
import { PgClient } from "@effect/sql-pg"
import { Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { embeddedPostgres, pgClientLayer } from "../../src/layers/Database.ts"
import { runMigrations } from "../../src/layers/Migrations.ts"

const withDatabase = (url: string, database: string) => {
  const u = new URL(url)
  u.pathname = `/${database}`
  return u.toString()
}

/** Acquires a database URL for the current scope. */
export const acquireDatabaseUrl = Effect.gen(function*() {
  const external = process.env.DATABASE_URL
  if (external) {
    const name = `khala_test_${crypto.randomBytes(6).toString("hex")}`
    yield* Effect.acquireRelease(
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql.unsafe(`CREATE DATABASE ${name}`)
      }).pipe(Effect.provide(pgClientLayer(Redacted.make(external), 1))),
      () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          yield* sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
        }).pipe(Effect.provide(pgClientLayer(Redacted.make(external), 1)), Effect.orDie)
    )
    return withDatabase(external, name)
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "khala-pgtest-"))
  yield* Effect.addFinalizer(() => Effect.sync(() => fs.rmSync(dataDir, { recursive: true, force: true })))
  const pg = yield* embeddedPostgres({ dataDir, durable: false })
  return pg.url
})

/** PgClient + SqlClient on a fresh migrated database. */
export const TestDatabase = Layer.unwrap(
  Effect.map(acquireDatabaseUrl, (url) =>
    Layer.effectDiscard(runMigrations).pipe(
      Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections: 20 }))
    ))
)

/** The URL of a fresh migrated database, for tests that spawn processes. */
export const TestDatabaseUrl = acquireDatabaseUrl
