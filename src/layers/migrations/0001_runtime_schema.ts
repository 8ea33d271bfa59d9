/**
 * Migration 1: the `runtime` schema.
 *
 * Authority tables (written by commands): runs, run_events, codex_workers, codex_worker_events,
 * owner_sequences, idempotency_keys. Projection tables (written only by the projector, in the same
 * transaction): read_models, projection_checkpoints, sync_topic_sequences, sync_stream_events
 * (the journal), sync_journal_epoch.
 */
import { Effect } from "effect"
import { SqlClient } from "effect/sql"

export default Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`CREATE SCHEMA IF NOT EXISTS runtime`

  // Per-owner authority ordinal: the order in which one user's events were committed. Every
  // command of an owner locks its row, so the projector can replay a user's history (and so the
  // interleaving of its user/<uid>/* topics) in the original commit order.
  yield* sql`CREATE TABLE runtime.owner_sequences (
    owner_user_id text NOT NULL,
    stream text NOT NULL CHECK (stream IN ('runs', 'workers')),
    last_ordinal bigint NOT NULL,
    PRIMARY KEY (owner_user_id, stream)
  )`

  yield* sql`CREATE TABLE runtime.runs (
    run_id text PRIMARY KEY,
    owner_user_id text NOT NULL,
    status text NOT NULL,
    last_seq bigint NOT NULL,
    created_at timestamptz NOT NULL
  )`
  yield* sql`CREATE INDEX runs_owner_idx ON runtime.runs (owner_user_id)`
  yield* sql`CREATE TABLE runtime.run_events (
    run_id text NOT NULL REFERENCES runtime.runs (run_id),
    seq bigint NOT NULL CHECK (seq >= 1),
    owner_ordinal bigint NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id text,
    PRIMARY KEY (run_id, seq)
  )`

  yield* sql`CREATE TABLE runtime.codex_workers (
    worker_id text PRIMARY KEY,
    owner_user_id text NOT NULL,
    status text NOT NULL,
    last_seq bigint NOT NULL,
    last_heartbeat_at timestamptz,
    created_at timestamptz NOT NULL
  )`
  yield* sql`CREATE INDEX codex_workers_owner_idx ON runtime.codex_workers (owner_user_id)`
  yield* sql`CREATE TABLE runtime.codex_worker_events (
    worker_id text NOT NULL REFERENCES runtime.codex_workers (worker_id),
    seq bigint NOT NULL CHECK (seq >= 1),
    owner_ordinal bigint NOT NULL,
    type text NOT NULL,
    payload jsonb NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id text,
    PRIMARY KEY (worker_id, seq)
  )`

  yield* sql`CREATE TABLE runtime.idempotency_keys (
    entity_kind text NOT NULL,
    entity_id text NOT NULL,
    idempotency_key text NOT NULL,
    request_hash text NOT NULL,
    status integer NOT NULL,
    response jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (entity_kind, entity_id, idempotency_key)
  )`

  yield* sql`CREATE TABLE runtime.read_models (
    doc_key text PRIMARY KEY,
    kind text NOT NULL,
    entity_id text NOT NULL,
    owner_user_id text NOT NULL,
    doc_version bigint NOT NULL,
    document bytea NOT NULL,
    doc_hash text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
  )`
  yield* sql`CREATE INDEX read_models_owner_idx ON runtime.read_models (owner_user_id, kind)`

  yield* sql`CREATE TABLE runtime.projection_checkpoints (
    entity_kind text NOT NULL,
    entity_id text NOT NULL,
    last_seq bigint NOT NULL,
    doc_hash text NOT NULL,
    projection_version integer NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (entity_kind, entity_id)
  )`

  yield* sql`CREATE TABLE runtime.sync_journal_epoch (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp()
  )`
  yield* sql`INSERT INTO runtime.sync_journal_epoch (epoch) VALUES (md5(random()::text || clock_timestamp()::text))`

  // head_seq: last allocated seq; floor_seq: first retained seq (head_seq + 1 when empty).
  yield* sql`CREATE TABLE runtime.sync_topic_sequences (
    topic text PRIMARY KEY,
    head_seq bigint NOT NULL,
    floor_seq bigint NOT NULL,
    CHECK (floor_seq >= 1 AND floor_seq <= head_seq + 1)
  )`
  yield* sql`CREATE TABLE runtime.sync_stream_events (
    topic text NOT NULL,
    seq bigint NOT NULL CHECK (seq >= 1),
    kind text NOT NULL,
    doc_key text NOT NULL,
    doc_version bigint NOT NULL,
    schema_version integer NOT NULL,
    occurred_at timestamptz NOT NULL,
    committed_at timestamptz NOT NULL,
    body jsonb NOT NULL,
    update_pb bytea NOT NULL,
    update_json text NOT NULL,
    PRIMARY KEY (topic, seq)
  )`
  yield* sql`CREATE INDEX sync_stream_events_committed_idx ON runtime.sync_stream_events (committed_at)`
})
