/**
 * What the write path leaves in Postgres, for tests that compare two ways of issuing the same
 * commands (one by one vs grouped or batched); a trigger helper for refusing rows; a holder of row
 * locks that makes concurrent commands gather.
 */
import { Deferred, Effect, Fiber, Metric } from "effect"
import { SqlClient } from "effect/sql"
import { commandGroupEvents } from "../../src/services/Metrics.ts"
import { ProjectionOps } from "../../src/services/ProjectionOps.ts"

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
 * Checks what concurrent writers must leave however they interleave: per entity, gapless seqs and
 * the authority row's last seq at the top; per topic, gapless journal seqs up to its head; per
 * owner, distinct gapless ordinals. Returns the number of authority events.
 */
export const assertGaplessWrites = (kind: "runs" | "workers", assert: { strictEqual: (a: unknown, b: unknown, m?: string) => void }) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [events, entities, id] = kind === "runs"
      ? [sql.literal("runtime.run_events"), sql.literal("runtime.runs"), sql.literal("run_id")]
      : [sql.literal("runtime.codex_worker_events"), sql.literal("runtime.codex_workers"), sql.literal("worker_id")]
    const perEntity = yield* sql<{ id: string; n: bigint; max: bigint; last_seq: bigint }>`
      SELECT e.${id} AS id, count(*) AS n, max(e.seq) AS max, x.last_seq FROM ${events} e
      JOIN ${entities} x USING (${id}) GROUP BY e.${id}, x.last_seq`
    let total = 0
    for (const r of perEntity) {
      assert.strictEqual(Number(r.n), Number(r.max), r.id)
      assert.strictEqual(Number(r.last_seq), Number(r.max), r.id)
      total += Number(r.n)
    }
    const topics = yield* sql<{ topic: string; n: bigint; max: bigint; head_seq: bigint }>`
      SELECT e.topic, count(*) AS n, max(e.seq) AS max, s.head_seq FROM runtime.sync_stream_events e
      JOIN runtime.sync_topic_sequences s USING (topic) GROUP BY e.topic, s.head_seq`
    for (const t of topics) {
      assert.strictEqual(Number(t.n), Number(t.max), t.topic)
      assert.strictEqual(Number(t.head_seq), Number(t.max), t.topic)
    }
    const ordinals = yield* sql<{ owner_user_id: string; n: bigint; max: bigint; distinct_n: bigint }>`
      SELECT x.owner_user_id, count(*) AS n, max(e.owner_ordinal) AS max, count(DISTINCT e.owner_ordinal) AS distinct_n
      FROM ${events} e JOIN ${entities} x USING (${id}) GROUP BY x.owner_user_id`
    for (const o of ordinals) {
      assert.strictEqual(Number(o.n), Number(o.max), o.owner_user_id)
      assert.strictEqual(Number(o.distinct_n), Number(o.n), o.owner_user_id)
    }
    return total
  })

/**
 * Runs the same command scripts one by one (`bySingle`: answers and `capture`d tables) and then,
 * after `reset`, concurrently, and checks that groups did form (fewer transactions than commands)
 * and that nothing anyone can observe differs: the same answers, the same tables, no drift.
 */
export const assertGroupedAsOneByOne = <S, A, T, E, R>(
  assert: {
    strictEqual: (a: unknown, b: unknown, m?: string) => void
    isBelow: (a: number, b: number, m?: string) => void
    deepStrictEqual: (a: unknown, b: unknown, m?: string) => void
  },
  scripts: ReadonlyArray<ReadonlyArray<S>>,
  runScript: (script: ReadonlyArray<S>) => Effect.Effect<A, E, R>,
  setUp: Effect.Effect<unknown, E, R>,
  capture: Effect.Effect<T, E, R>
) =>
  Effect.gen(function*() {
    yield* setUp
    const oneByOne = yield* Effect.forEach(scripts, runScript)
    const bySingle = yield* capture
    yield* setUp
    const before = yield* Metric.value(commandGroupEvents)
    const concurrent = yield* Effect.forEach(scripts, runScript, { concurrency: "unbounded" })
    const byGroups = yield* capture
    const after = yield* Metric.value(commandGroupEvents)
    // groups did form (more commands than transactions) …
    const commands = scripts.reduce((n, s) => n + s.length, 0)
    assert.strictEqual(after.sum - before.sum, commands)
    assert.isBelow(after.count - before.count, commands)
    // … and changed nothing anyone can observe
    assert.deepStrictEqual(concurrent, oneByOne)
    assert.deepStrictEqual(byGroups, bySingle)
    assert.deepStrictEqual((yield* (yield* ProjectionOps).drift).drifted, [])
    return oneByOne
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
