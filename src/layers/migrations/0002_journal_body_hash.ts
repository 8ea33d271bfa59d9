/**
 * Migration 2: the journal keeps a 16-byte hash of each entry's body instead of a jsonb copy of it.
 *
 * `sync_stream_events.body` (jsonb) duplicated what `update_pb` and `update_json` already carry and
 * was read by nothing but the rebuild's "did every entry come back identical" comparison. It made
 * each row about half again as wide (replays read more pages) and every append pay a jsonb parse.
 * It becomes
 * `body_md5`: MD5 of the entry's encoded body (`Journal.bodyMd5`). Existing rows are backfilled
 * from their stored `update_pb` (the body's bytes found again by `bodyBytesOf`), so a rebuild after
 * this migration still recognises an unchanged journal and keeps the epoch.
 */
import { Effect } from "effect"
import { SqlClient } from "effect/sql"
import { bodyBytesOf } from "../../domain/UpdateEncoding.ts"
import { bodyMd5 } from "../../services/Journal.ts"

const PAGE = 5000

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`ALTER TABLE runtime.sync_stream_events ADD COLUMN body_md5 bytea`
  let after: { readonly topic: string; readonly seq: string } | undefined
  while (true) {
    const rows = yield* sql<{ topic: string; seq: string; update_pb: Uint8Array }>`
      SELECT e.topic, e.seq::text AS seq, e.update_pb FROM runtime.sync_stream_events e
      ${after === undefined ? sql`` : sql`WHERE (e.topic, e.seq) > (${after.topic}, ${after.seq}::bigint)`}
      ORDER BY e.topic, e.seq LIMIT ${PAGE}`
    if (rows.length === 0) break
    yield* sql`
      UPDATE runtime.sync_stream_events e SET body_md5 = x.h
      FROM unnest(${rows.map((r) => r.topic)}::text[], ${rows.map((r) => r.seq)}::bigint[],
                  ${rows.map((r) => bodyMd5(bodyBytesOf(r.update_pb)))}::bytea[]) AS x(topic, seq, h)
      WHERE e.topic = x.topic AND e.seq = x.seq`
    const last = rows[rows.length - 1]!
    after = { topic: last.topic, seq: last.seq }
  }
  yield* sql`ALTER TABLE runtime.sync_stream_events ALTER COLUMN body_md5 SET NOT NULL`
  yield* sql`ALTER TABLE runtime.sync_stream_events DROP COLUMN body`
})
