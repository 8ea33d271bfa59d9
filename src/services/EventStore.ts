/**
 * EventStore: the authority tables (runs, run_events, codex_workers, codex_worker_events,
 * owner_sequences). Every write runs inside the command's transaction.
 *
 * - Per-entity seqs are gapless: the entity row is locked (`FOR UPDATE`) and its `last_seq` bumped
 *   in the same transaction as the event insert.
 * - Each event also takes the next per-owner ordinal (`owner_sequences`), the order a rebuild
 *   replays one owner's history in, so its `user/<uid>/*` topics get the same seqs again.
 * - Inserted events are read back (`RETURNING`), so the projector sees exactly what a replay
 *   will read later (jsonb-canonical payload, microsecond-truncated timestamps).
 */
import { Context, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { isJsonObject, type JsonObject } from "../domain/Json.ts"
import { parseJson } from "../domain/SafeJson.ts"
import type { RunEventRecord, RunEventType } from "../domain/RunProjection.ts"
import type { WorkerEventRecord, WorkerEventType } from "../domain/WorkerProjection.ts"

export interface RunRow {
  readonly runId: string
  readonly ownerUserId: string
  readonly status: string
  readonly lastSeq: number
}

export interface WorkerRow {
  readonly workerId: string
  readonly ownerUserId: string
  readonly status: string
  readonly lastSeq: number
  readonly lastHeartbeatAtMs: number | undefined
}

export interface NewEvent<T> {
  readonly entityId: string
  readonly ownerUserId: string
  readonly seq: number
  readonly type: T
  readonly payload: JsonObject
  readonly occurredAtMs: number
  readonly requestId: string | undefined
}

/** Payloads are read as text and parsed with `parsePayload` (see domain/SafeJson.ts for why). */
export type EventRow = { seq: bigint; type: string; payload: string; occurred_at: Date }

/** A stored payload (always a JSON object: commands only store objects). */
export const parsePayload = (text: string): JsonObject => {
  const value = parseJson(text)
  return isJsonObject(value) ? value : {}
}

/** A stored run event row → the record the projector applies (live, drift and rebuild alike). */
export const toRunRecord = (runId: string, ownerUserId: string) => (r: EventRow): RunEventRecord => ({
  runId,
  ownerUserId,
  seq: Number(r.seq),
  type: r.type as RunEventType,
  payload: parsePayload(r.payload),
  occurredAtMs: r.occurred_at.getTime()
})

export const toWorkerRecord = (workerId: string, ownerUserId: string) => (r: EventRow): WorkerEventRecord => ({
  workerId,
  ownerUserId,
  seq: Number(r.seq),
  type: r.type as WorkerEventType,
  payload: parsePayload(r.payload),
  occurredAtMs: r.occurred_at.getTime()
})

const toRunRow = (r: { run_id: string; owner_user_id: string; status: string; last_seq: bigint }): RunRow => ({
  runId: r.run_id,
  ownerUserId: r.owner_user_id,
  status: r.status,
  lastSeq: Number(r.last_seq)
})

const toWorkerRow = (r: {
  worker_id: string
  owner_user_id: string
  status: string
  last_seq: bigint
  last_heartbeat_at: Date | null
}): WorkerRow => ({
  workerId: r.worker_id,
  ownerUserId: r.owner_user_id,
  status: r.status,
  lastSeq: Number(r.last_seq),
  lastHeartbeatAtMs: r.last_heartbeat_at?.getTime()
})

export class EventStore extends Context.Service<EventStore, {
  readonly lockRun: (runId: string) => Effect.Effect<RunRow | undefined, SqlError>
  /** Inserts the run row for run.created; `undefined` if the run already exists. */
  readonly insertRun: (runId: string, ownerUserId: string, createdAtMs: number) => Effect.Effect<RunRow | undefined, SqlError>
  readonly getRun: (runId: string) => Effect.Effect<RunRow | undefined, SqlError>
  readonly appendRunEvent: (event: NewEvent<RunEventType>) => Effect.Effect<RunEventRecord, SqlError>
  readonly setRunState: (runId: string, status: string, lastSeq: number) => Effect.Effect<void, SqlError>
  readonly runHistory: (runId: string) => Effect.Effect<ReadonlyArray<RunEventRecord>, SqlError>

  readonly lockWorker: (workerId: string) => Effect.Effect<WorkerRow | undefined, SqlError>
  readonly insertWorker: (
    workerId: string,
    ownerUserId: string,
    createdAtMs: number
  ) => Effect.Effect<WorkerRow | undefined, SqlError>
  readonly getWorker: (workerId: string) => Effect.Effect<WorkerRow | undefined, SqlError>
  readonly listWorkers: (ownerUserId: string | undefined) => Effect.Effect<ReadonlyArray<WorkerRow>, SqlError>
  readonly appendWorkerEvent: (event: NewEvent<WorkerEventType>) => Effect.Effect<WorkerEventRecord, SqlError>
  readonly setWorkerState: (
    workerId: string,
    status: string,
    lastSeq: number,
    heartbeatAtMs: number | undefined
  ) => Effect.Effect<void, SqlError>
  readonly workerHistory: (workerId: string) => Effect.Effect<ReadonlyArray<WorkerEventRecord>, SqlError>
}>()("khala/services/EventStore") {
  static readonly layer = Layer.effect(
    EventStore,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient

      /** The owner's next ordinal, as a CTE: taken in the same statement as the event insert. */
      const nextOrdinal = (ownerUserId: string, stream: "runs" | "workers") =>
        sql`
          INSERT INTO runtime.owner_sequences (owner_user_id, stream, last_ordinal) VALUES (${ownerUserId}, ${stream}, 1)
          ON CONFLICT (owner_user_id, stream) DO UPDATE SET last_ordinal = runtime.owner_sequences.last_ordinal + 1
          RETURNING last_ordinal`

      // Constant identifiers, spliced as SQL text.
      const eventTable = { runs: sql.literal("runtime.run_events"), workers: sql.literal("runtime.codex_worker_events") }
      const eventEntityColumn = { runs: sql.literal("run_id"), workers: sql.literal("worker_id") }

      /** Inserts one authority event with the owner's next ordinal (one statement); reads it back. */
      const insertEvent = (stream: "runs" | "workers", e: NewEvent<string>) =>
        sql<EventRow>`
          WITH o AS (${nextOrdinal(e.ownerUserId, stream)})
          INSERT INTO ${eventTable[stream]} (${eventEntityColumn[stream]}, owner_ordinal, seq, type, payload, occurred_at,
            request_id)
          SELECT ${e.entityId}, o.last_ordinal, ${e.seq}, ${e.type}, ${JSON.stringify(e.payload)}::jsonb,
                 ${new Date(e.occurredAtMs)}, ${e.requestId ?? null} FROM o
          RETURNING seq, type, payload::text AS payload, occurred_at`.pipe(Effect.map(([row]) => row!))

      const runRow = (runId: string, forUpdate: boolean) =>
        (forUpdate
          ? sql<{ run_id: string; owner_user_id: string; status: string; last_seq: bigint }>`
            SELECT run_id, owner_user_id, status, last_seq FROM runtime.runs WHERE run_id = ${runId} FOR UPDATE`
          : sql<{ run_id: string; owner_user_id: string; status: string; last_seq: bigint }>`
            SELECT run_id, owner_user_id, status, last_seq FROM runtime.runs WHERE run_id = ${runId}`).pipe(
            Effect.map(([r]) => (r ? toRunRow(r) : undefined))
          )

      const workerRow = (workerId: string, forUpdate: boolean) =>
        (forUpdate
          ? sql<Parameters<typeof toWorkerRow>[0]>`
            SELECT worker_id, owner_user_id, status, last_seq, last_heartbeat_at
            FROM runtime.codex_workers WHERE worker_id = ${workerId} FOR UPDATE`
          : sql<Parameters<typeof toWorkerRow>[0]>`
            SELECT worker_id, owner_user_id, status, last_seq, last_heartbeat_at
            FROM runtime.codex_workers WHERE worker_id = ${workerId}`).pipe(
            Effect.map(([r]) => (r ? toWorkerRow(r) : undefined))
          )

      return EventStore.of({
        lockRun: (runId) => runRow(runId, true),
        getRun: (runId) => runRow(runId, false),
        insertRun: (runId, ownerUserId, createdAtMs) =>
          sql<{ run_id: string; owner_user_id: string; status: string; last_seq: bigint }>`
            INSERT INTO runtime.runs (run_id, owner_user_id, status, last_seq, created_at)
            VALUES (${runId}, ${ownerUserId}, 'created', 0, ${new Date(createdAtMs)})
            ON CONFLICT (run_id) DO NOTHING
            RETURNING run_id, owner_user_id, status, last_seq`.pipe(Effect.map(([r]) => (r ? toRunRow(r) : undefined))),
        appendRunEvent: Effect.fn("EventStore.appendRunEvent")(function*(e: NewEvent<RunEventType>) {
          return toRunRecord(e.entityId, e.ownerUserId)(yield* insertEvent("runs", e))
        }),
        setRunState: (runId, status, lastSeq) =>
          sql`UPDATE runtime.runs SET status = ${status}, last_seq = ${lastSeq} WHERE run_id = ${runId}`.pipe(Effect.asVoid),
        runHistory: (runId) =>
          sql<EventRow & { owner_user_id: string }>`
            SELECT e.seq, e.type, e.payload::text AS payload, e.occurred_at, r.owner_user_id
            FROM runtime.run_events e JOIN runtime.runs r USING (run_id)
            WHERE e.run_id = ${runId} ORDER BY e.seq`.pipe(
            Effect.map((rows) => rows.map((r) => toRunRecord(runId, r.owner_user_id)(r)))
          ),

        lockWorker: (workerId) => workerRow(workerId, true),
        getWorker: (workerId) => workerRow(workerId, false),
        insertWorker: (workerId, ownerUserId, createdAtMs) =>
          sql<Parameters<typeof toWorkerRow>[0]>`
            INSERT INTO runtime.codex_workers (worker_id, owner_user_id, status, last_seq, created_at)
            VALUES (${workerId}, ${ownerUserId}, 'created', 0, ${new Date(createdAtMs)})
            ON CONFLICT (worker_id) DO NOTHING
            RETURNING worker_id, owner_user_id, status, last_seq, last_heartbeat_at`.pipe(
            Effect.map(([r]) => (r ? toWorkerRow(r) : undefined))
          ),
        listWorkers: (ownerUserId) =>
          (ownerUserId === undefined
            ? sql<Parameters<typeof toWorkerRow>[0]>`
              SELECT worker_id, owner_user_id, status, last_seq, last_heartbeat_at FROM runtime.codex_workers
              ORDER BY worker_id`
            : sql<Parameters<typeof toWorkerRow>[0]>`
              SELECT worker_id, owner_user_id, status, last_seq, last_heartbeat_at FROM runtime.codex_workers
              WHERE owner_user_id = ${ownerUserId} ORDER BY worker_id`).pipe(Effect.map((rows) => rows.map(toWorkerRow))),
        appendWorkerEvent: Effect.fn("EventStore.appendWorkerEvent")(function*(e: NewEvent<WorkerEventType>) {
          return toWorkerRecord(e.entityId, e.ownerUserId)(yield* insertEvent("workers", e))
        }),
        setWorkerState: (workerId, status, lastSeq, heartbeatAtMs) =>
          (heartbeatAtMs === undefined
            ? sql`UPDATE runtime.codex_workers SET status = ${status}, last_seq = ${lastSeq} WHERE worker_id = ${workerId}`
            : sql`UPDATE runtime.codex_workers SET status = ${status}, last_seq = ${lastSeq},
                    last_heartbeat_at = GREATEST(last_heartbeat_at, ${new Date(heartbeatAtMs)})
                  WHERE worker_id = ${workerId}`).pipe(Effect.asVoid),
        workerHistory: (workerId) =>
          sql<EventRow & { owner_user_id: string }>`
            SELECT e.seq, e.type, e.payload::text AS payload, e.occurred_at, w.owner_user_id
            FROM runtime.codex_worker_events e JOIN runtime.codex_workers w USING (worker_id)
            WHERE e.worker_id = ${workerId} ORDER BY e.seq`.pipe(
            Effect.map((rows) => rows.map((r) => toWorkerRecord(workerId, r.owner_user_id)(r)))
          )
      })
    })
  )
}
