/**
 * Migration 3: the tables rewritten on every command keep 30 % of each page free.
 *
 * Every appended event updates its entity row (`runs` / `codex_workers`: status, last seq, last
 * heartbeat), its owner's ordinal (`owner_sequences`), its topics' heads (`sync_topic_sequences`),
 * its document (`read_models`) and its checkpoint (`projection_checkpoints`). None of those
 * updates touches an indexed column, so Postgres can write the new row version into the same page
 * without touching any index (a HOT update) — if the page has room. With the default fillfactor
 * (100) pages are full and most updates were not HOT: a 1000-run batch load measured 15–50 % HOT
 * updates, each non-HOT one adding an entry to every index of the table and leaving the table and
 * its indexes to bloat. With fillfactor 70: 96 % HOT, those five statements 48 → 22 ms of Postgres
 * time per 1000-event batch, and the tables 5–10× smaller after the same load.
 *
 * The setting applies to pages written from now on; rows of an existing table move to such pages
 * as they are updated (a non-HOT update writes the new version where there is room), or at once
 * with `VACUUM FULL` / pg_repack in a maintenance window (docs/OPERATIONS.md).
 */
import { Effect } from "effect"
import { SqlClient } from "effect/sql"

export const UPDATE_HEAVY_TABLES = [
  "runs",
  "codex_workers",
  "owner_sequences",
  "sync_topic_sequences",
  "read_models",
  "projection_checkpoints"
] as const

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  // Each ALTER waits for a SHARE UPDATE EXCLUSIVE lock (reads and writes go on), which a running
  // VACUUM, ANALYZE or index build holds: give up after 30 s rather than hold every starting node
  // (the migrations table stays locked meanwhile); the next start tries again.
  yield* sql`SET LOCAL lock_timeout = '30s'`
  for (const table of UPDATE_HEAVY_TABLES) yield* sql.unsafe(`ALTER TABLE runtime.${table} SET (fillfactor = 70)`)
})
