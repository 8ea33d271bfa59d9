/**
 * What the write path leaves in Postgres, for tests that compare two ways of issuing the same
 * commands (one by one vs grouped or batched); a trigger helper for refusing rows; a holder of row
 * locks that makes concurrent commands gather.
 */
import { Deferred, Effect, Fiber } from "effect"
import { SqlClient } from "effect/sql"

/** Every table the projector and the command envelope write besides the authority tables, in comparable form. */
export const captureProjectionTables = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  return {
    owners: yield* sql`SELECT owner_user_id, stream, last_ordinal::int FROM runtime.owner_sequences ORDER BY 1, 2`,
    models: yield* sql`
      SELECT doc_key, kind, entity_id, owner_user_id, doc_version::int, encode(document, 'hex') AS document, doc_hash
      FROM runtime.read_models ORDER BY doc_key`,
    checkpoints: yield* sql`
      SELECT entity_kind, entity_id, last_seq::int, doc_hash FROM runtime.projection_checkpoints ORDER BY 1, 2`,
    journal: yield* sql`
      SELECT topic, seq::int, kind, doc_key, doc_version::int, occurred_at, committed_at, encode(body_md5, 'hex') AS body_md5,
             encode(update_pb, 'hex') AS update_pb, update_json
      FROM runtime.sync_stream_events ORDER BY topic, seq`,
    heads: yield* sql`SELECT topic, head_seq::int, floor_seq::int FROM runtime.sync_topic_sequences ORDER BY topic`,
    keys: yield* sql`
      SELECT entity_kind, entity_id, idempotency_key, request_hash, status, response::text
      FROM runtime.idempotency_keys ORDER BY 1, 2, 3`
  }
})

/**
 * A trigger function `runtime.<name>` that runs `body` and raises (as a constraint or an
 * operator's trigger might); the effect returned drops it with its triggers.
 */
export const raisingFunction = (name: string, body = "") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* sql.unsafe(`CREATE OR REPLACE FUNCTION runtime.${name}() RETURNS trigger LANGUAGE plpgsql AS
      'BEGIN ${body} RAISE EXCEPTION ''${name} (test trigger)''; END'`)
    return sql.unsafe(`DROP FUNCTION IF EXISTS runtime.${name}() CASCADE`).pipe(Effect.orDie)
  })

/**
 * Forks a transaction that takes the row locks of `selectForUpdate` and holds them for `ms` of
 * real time (it.effect runs a TestClock); returns its fiber once the locks are held. Commands
 * issued meanwhile queue behind them and gather into groups.
 */
export const holdRowLocks = (selectForUpdate: string, ms: number) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const locked = yield* Deferred.make<void>()
    const holder = yield* Effect.forkChild(sql.withTransaction(Effect.gen(function*() {
      yield* sql.unsafe(selectForUpdate)
      yield* Deferred.succeed(locked, undefined)
      yield* Effect.promise(() => new Promise((r) => setTimeout(r, ms)))
    })))
    // A holder that fails before it holds the locks fails the test instead of leaving it waiting.
    yield* Deferred.await(locked).pipe(Effect.raceFirst(Fiber.await(holder).pipe(
      Effect.flatMap((exit) => Effect.die(new Error(`the lock holder ended before it held the locks: ${String(exit)}`)))
    )))
    return holder
  })
