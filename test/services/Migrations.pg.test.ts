/**
 * Schema migrations over existing data: a journal written under migration 1 (with its jsonb `body`
 * column) is carried to the current schema with each entry's body hash computed from its stored
 * `update_pb`, equal to what an append writes today — so a rebuild after upgrading still sees an
 * unchanged journal and keeps the epoch; the update-heavy tables get their fillfactor.
 */
import { PgClient } from "@effect/sql-pg"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { Migrator, SqlClient } from "effect/sql"
import { create } from "@bufbuild/protobuf"
import { encodeBody, encodeUpdate } from "../../src/domain/UpdateEncoding.ts"
import { RunEventSchema } from "../../src/gen/openagents/sync/v1/documents_pb.ts"
import { runMigrations } from "../../src/layers/Migrations.ts"
import migration0001 from "../../src/layers/migrations/0001_runtime_schema.ts"
import { UPDATE_HEAVY_TABLES } from "../../src/layers/migrations/0003_update_heavy_fillfactor.ts"
import { bodyMd5 } from "../../src/services/Journal.ts"
import { acquireDatabaseUrl } from "../support/TestDatabase.ts"

describe("migrations", () => {
  it.effect("2_journal_body_hash: backfills every entry's body hash from update_pb and drops the jsonb body", () =>
    Effect.gen(function*() {
      const url = yield* acquireDatabaseUrl
      yield* Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE SCHEMA IF NOT EXISTS runtime`
        yield* Migrator.make({})({ loader: Migrator.fromRecord({ "1_runtime_schema": migration0001 }), table: "runtime.schema_migrations" })

        const event = encodeBody({
          case: "runEvent",
          value: create(RunEventSchema, { runId: "m1", seq: 2n, type: "run.step" })
        })!
        const header = { kind: "run.event", docKey: "run_event:m1:2", docVersion: 1, schemaVersion: 1, occurredAtMs: 5, committedAtMs: 6 }
        // 7001 entries (more than one backfill page), one of them without a body
        const entries = Array.from({ length: 7001 }, (_, i) => ({
          topic: i % 2 === 0 ? "run/m1" : "user/u/runs",
          seq: Math.floor(i / 2) + 1,
          update: encodeUpdate({ ...header, seq: Math.floor(i / 2) + 1 }, i === 7000 ? undefined : event)
        }))
        yield* sql`
          INSERT INTO runtime.sync_stream_events
            (topic, seq, kind, doc_key, doc_version, schema_version, occurred_at, committed_at, body, update_pb, update_json)
          SELECT topic, seq, 'run.event', 'run_event:m1:2', 1, 1, now(), now(), '{}'::jsonb, pb, '{}'
          FROM unnest(${entries.map((e) => e.topic)}::text[], ${entries.map((e) => e.seq)}::bigint[],
                      ${entries.map((e) => e.update.pb)}::bytea[]) AS x(topic, seq, pb)`

        const ran = yield* runMigrations
        assert.deepStrictEqual(ran.map(([id, name]) => `${id}_${name}`), ["2_journal_body_hash", "3_update_heavy_fillfactor"])
        const rows = yield* sql<{ topic: string; seq: string; body_md5: string }>`
          SELECT topic, seq::text AS seq, encode(body_md5, 'hex') AS body_md5 FROM runtime.sync_stream_events`
        assert.strictEqual(rows.length, entries.length)
        const expected = new Map(entries.map((e, i) => [
          `${e.topic} ${e.seq}`,
          Buffer.from(bodyMd5(i === 7000 ? new Uint8Array(0) : event.pb)).toString("hex")
        ]))
        for (const r of rows) assert.strictEqual(r.body_md5, expected.get(`${r.topic} ${r.seq}`), `${r.topic} ${r.seq}`)
        const columns = yield* sql<{ column_name: string }>`
          SELECT column_name FROM information_schema.columns
          WHERE table_schema = 'runtime' AND table_name = 'sync_stream_events' AND column_name IN ('body', 'body_md5')`
        assert.deepStrictEqual(columns.map((c) => c.column_name), ["body_md5"])
        // 3_update_heavy_fillfactor: the tables updated by every command leave room for HOT updates
        const options = yield* sql<{ relname: string; reloptions: ReadonlyArray<string> | null }>`
          SELECT c.relname, c.reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = 'runtime' AND c.relkind = 'r' ORDER BY c.relname`
        for (const o of options) {
          const expected = (UPDATE_HEAVY_TABLES as ReadonlyArray<string>).includes(o.relname) ? ["fillfactor=70"] : null
          assert.deepStrictEqual(o.reloptions, expected, o.relname)
        }
      }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 2 })))
    }).pipe(Effect.scoped), { timeout: 120_000 })
})
