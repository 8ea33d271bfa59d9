/**
 * WorkerEventBatches: concurrent worker event and heartbeat commands (`POST
 * /internal/v1/codex/workers/{id}/events` and `/heartbeat`) in one set-based transaction — the
 * group commit of WorkerCommands, as RunEventBatches is RunCommands'.
 *
 * Each item is judged exactly as its command alone would judge it if the commands ran one after
 * another in arrival order: 404 for an unknown worker, then the idempotency key (a stored or
 * earlier answer is replayed, a reused key is 409), then 409 on a terminal worker (after
 * `worker.stopped` or a fatal `worker.error`, including one earlier in the same group). Accepted
 * items take the worker's next seqs and owner ordinals and are projected in order; the authority
 * row ends with the last status and seq and the latest heartbeat. Answers, and every byte written,
 * equal the one-by-one run's (tested).
 *
 * Statements per group, whatever its size: lock the workers (id order), read the stored keys,
 * then BatchedAppend's owner ordinals → events → documents read → journal → documents and
 * checkpoints, the worker rows, the stored keys. Locks follow the global order (worker rows by
 * id, owner ordinals by owner, topic seqs by topic), as the single commands do.
 */
import { Context, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql"
import { type ApiError, apiError } from "../domain/ApiError.ts"
import { decodeWorkerSummary } from "../domain/Documents.ts"
import type { JsonObject } from "../domain/Json.ts"
import { isTerminalWorkerStatus, type WorkerTaxonomyType, workerStatusAfter } from "../domain/WorkerProjection.ts"
import type { CodexWorkerSummary } from "../gen/openagents/sync/v1/documents_pb.ts"
import { answersOf, appendEvents, commitBatch, type EventKind, KeyLedger, type Outcome } from "./BatchedAppend.ts"
import { type ItemAnswer, StatementFailed } from "./CommandGroups.ts"
import { CommandRunner } from "./CommandRunner.ts"
import { toWorkerRecord } from "./EventStore.ts"
import type { IdempotencyScope } from "./Idempotency.ts"
import { Journal } from "./Journal.ts"
import { workerProjectionSpec } from "./Projector.ts"
import { int8Array, textArray, timestamptzArray } from "./SqlArrays.ts"

/** A validated worker event or heartbeat command. */
export interface WorkerGroupItem {
  readonly workerId: string
  readonly type: WorkerTaxonomyType
  readonly payload: JsonObject
  readonly occurredAtMs: number
  readonly scope: IdempotencyScope | undefined
  readonly requestId: string | undefined
}

/** How worker events are stored and projected (BatchedAppend). */
const WORKER_EVENTS: EventKind<CodexWorkerSummary> = {
  stream: "workers",
  spec: (workerId, ownerUserId, row) => workerProjectionSpec(toWorkerRecord(workerId, ownerUserId)(row)),
  decode: decodeWorkerSummary
}

interface WorkerState {
  readonly ownerUserId: string
  status: string
  lastSeq: number
  /** The latest heartbeat of the group (the row keeps the greatest it has seen). */
  heartbeatAtMs: number | undefined
}

/** The 409 of a command on a stopped or failed worker (WorkerCommands answers the same). */
export const workerTerminal = (workerId: string, status: string) =>
  apiError("worker_terminal", `worker ${workerId} is ${status}; resume it first`, { worker_id: workerId, status })

/** The 404 of a command on an unknown worker (WorkerCommands answers the same). */
export const workerNotFound = (workerId: string) =>
  apiError("worker_not_found", `worker ${workerId} does not exist`, { worker_id: workerId })

export class WorkerEventBatches extends Context.Service<WorkerEventBatches, {
  /**
   * Concurrent worker commands in one transaction: answers in input order, each exactly what the
   * command would answer alone, in that order. Fails with `StatementFailed` when a statement failed
   * (rolled back: nothing of the group committed), with a 500 `ApiError` when the outcome is
   * unknown (BEGIN or COMMIT failed).
   */
  readonly commitGroup: (
    group: ReadonlyArray<WorkerGroupItem>,
    committedAtMs: number
  ) => Effect.Effect<ReadonlyArray<ItemAnswer>, ApiError | StatementFailed>
}>()("khala/services/WorkerEventBatches") {
  static readonly layer = Layer.effect(
    WorkerEventBatches,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const runner = yield* CommandRunner
      const journal = yield* Journal

      const commit = (items: ReadonlyArray<WorkerGroupItem>, rejected: ReadonlyMap<number, ApiError>, now: number) =>
        Effect.gen(function*() {
          // 1. Lock every worker the group touches, in id order.
          const ids = [...new Set(items.filter((_, i) => !rejected.has(i)).map((e) => e.workerId))].sort()
          const state = new Map<string, WorkerState>()
          if (ids.length > 0) {
            const rows = yield* sql<{ worker_id: string; owner_user_id: string; status: string; last_seq: bigint }>`
              SELECT worker_id, owner_user_id, status, last_seq FROM runtime.codex_workers
              WHERE worker_id = ANY(${textArray(ids)}) ORDER BY worker_id FOR UPDATE`
            for (const r of rows) {
              state.set(r.worker_id, {
                ownerUserId: r.owner_user_id,
                status: r.status,
                lastSeq: Number(r.last_seq),
                heartbeatAtMs: undefined
              })
            }
          }

          // 2. Stored idempotency keys of the keyed items.
          const keys = yield* KeyLedger.load(
            sql,
            "worker",
            items.flatMap((e, i) => e.scope === undefined || rejected.has(i) ? [] : [e.scope])
          )

          // 3. Item by item, in order: 404, idempotency, 409 on a terminal worker, append.
          const outcomes = items.map((e, i): Outcome => {
            const early = rejected.get(i)
            if (early) return { _tag: "rejected", error: early }
            const worker = state.get(e.workerId)
            if (!worker) return { _tag: "rejected", error: workerNotFound(e.workerId) }
            const seen = keys.check(e.scope)
            if (seen) return seen
            if (isTerminalWorkerStatus(worker.status)) {
              return { _tag: "rejected", error: workerTerminal(e.workerId, worker.status) }
            }
            worker.lastSeq += 1
            worker.status = workerStatusAfter(worker.status, e.type, e.payload)
            if (e.type === "worker.heartbeat") worker.heartbeatAtMs = Math.max(worker.heartbeatAtMs ?? 0, e.occurredAtMs)
            return keys.accept(i, {
              entityId: e.workerId,
              ownerUserId: worker.ownerUserId,
              seq: worker.lastSeq,
              type: e.type,
              payload: e.payload,
              occurredAtMs: e.occurredAtMs,
              scope: e.scope
            })
          })

          // 4–5. Owner ordinals, events, projection, journal; documents, checkpoints and the worker
          // rows (status, seq, and the latest heartbeat, never moved back) in one statement.
          const appended = yield* appendEvents(sql, journal, WORKER_EVENTS, outcomes, (i) => items[i]!.requestId, now, (changed) => sql`
            UPDATE runtime.codex_workers w SET status = x.status, last_seq = x.last_seq,
              last_heartbeat_at = GREATEST(w.last_heartbeat_at, x.heartbeat_at)
            FROM unnest(${textArray(changed)}, ${textArray(changed.map((id) => state.get(id)!.status))},
                        ${int8Array(changed.map((id) => BigInt(state.get(id)!.lastSeq)))},
                        ${timestamptzArray(changed.map((id) => state.get(id)!.heartbeatAtMs ?? null))})
              AS x(worker_id, status, last_seq, heartbeat_at)
            WHERE w.worker_id = x.worker_id`)

          // 6. Answers (what appendEvent / heartbeat answer); keyed ones stored for retries.
          const results = yield* answersOf(sql, "worker", outcomes, (a, i) => ({
            worker_id: a.entityId,
            seq: a.seq,
            topic_seqs: appended.itemTopicSeqs[i] ?? {}
          }))
          return { results, topicSeqs: appended.topicSeqs }
        })

      const commitGroup = (group: ReadonlyArray<WorkerGroupItem>, now: number) =>
        Effect.gen(function*() {
          yield* Effect.annotateCurrentSpan({ "khala.group_events": group.length })
          const result = yield* commitBatch(
            runner,
            "worker.group",
            group.map((g) => g.type),
            (rejected) => commit(group, rejected, now),
            (cause: unknown) => new StatementFailed({ cause })
          )
          return result.results
        }).pipe(Effect.withSpan("WorkerEventBatches.commitGroup"))

      return WorkerEventBatches.of({ commitGroup })
    })
  )
}
