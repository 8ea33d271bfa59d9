/**
 * RunEventBatches: `POST /internal/v1/runs/events/batch` — many run events in one transaction.
 *
 * Each item is judged exactly as `POST /internal/v1/runs/{run_id}/events` would judge it if the
 * items were sent one after another, in order: the same validation, 404/409 lifecycle rules,
 * idempotency keys (shared with the single endpoint: a key used here replays there and vice versa),
 * the same per-run seqs, documents, journal entries and seqs. A rejected item changes nothing and
 * answers with its typed error; the accepted ones commit together (one fsync), which is what makes
 * durable ingest fast. The whole batch is durable when the response arrives.
 *
 * The transaction is set-based: a fixed number of statements per batch, whatever its size. Locks
 * are taken in one global order — run rows by id, owner ordinals by owner, topic seqs by topic — so
 * batches and single commands cannot deadlock each other.
 */
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { ApiError, apiError } from "../domain/ApiError.ts"
import { decodeRunSummary } from "../domain/Documents.ts"
import type { JsonObject } from "../domain/Json.ts"
import { type RunStatus, runStatusAfter } from "../domain/RunProjection.ts"
import type { RunSummary } from "../gen/openagents/sync/v1/documents_pb.ts"
import { answersOf, appendEvents, commitBatch, type EventKind, KeyLedger, type Outcome } from "./BatchedAppend.ts"
import { type ItemAnswer, StatementFailed } from "./CommandGroups.ts"
import { CommandRunner, type CommandResult, decodeBody } from "./CommandRunner.ts"
import { toRunRecord } from "./EventStore.ts"
import { Journal } from "./Journal.ts"
import { runProjectionSpec } from "./Projector.ts"
import { int8Array, textArray, timestamptzArray } from "./SqlArrays.ts"
import { lifecycleRejection, runNotFound, validateRunEvent, type ValidRunEvent } from "./RunCommands.ts"

/** Most events one batch may carry. */
export const MAX_BATCH_EVENTS = 1000

const BatchBody = Schema.Struct({
  events: Schema.Array(Schema.Unknown).check(Schema.isMinLength(1), Schema.isMaxLength(MAX_BATCH_EVENTS))
})

/** One item's answer: the single endpoint's status and body. */
export type BatchItemResult =
  | { readonly status: 200 | 201; readonly body: JsonObject }
  | { readonly status: number; readonly body: ReturnType<ApiError["toBody"]> }

interface RunState {
  readonly ownerUserId: string
  status: string
  lastSeq: number
  exists: boolean
}

/** How run events are stored and projected (BatchedAppend). */
const RUN_EVENTS: EventKind<RunSummary> = {
  stream: "runs",
  spec: (runId, ownerUserId, row) => runProjectionSpec(toRunRecord(runId, ownerUserId)(row)),
  decode: decodeRunSummary
}

/** One request of a group commit: a validated event and the request it came with. */
export interface GroupItem {
  readonly event: ValidRunEvent
  readonly requestId: string | undefined
}

export class RunEventBatches extends Context.Service<RunEventBatches, {
  readonly append: (raw: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
  /**
   * Concurrent single-event commands (RunCommands' group commit) in one transaction: answers in
   * input order, each exactly what the command would answer alone, in that order. Fails with
   * `StatementFailed` when one of its statements failed (the transaction rolled back: nothing of
   * the group committed), with a 500 `ApiError` when the outcome is unknown (BEGIN or COMMIT
   * failed: the group may have committed).
   */
  readonly commitGroup: (
    group: ReadonlyArray<GroupItem>,
    committedAtMs: number
  ) => Effect.Effect<ReadonlyArray<ItemAnswer>, ApiError | StatementFailed>
}>()("khala/services/RunEventBatches") {
  static readonly layer = Layer.effect(
    RunEventBatches,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const runner = yield* CommandRunner
      const journal = yield* Journal

      /** One transaction over the items that passed validation and are not `rejected` already. */
      const commit = (
        items: ReadonlyArray<ValidRunEvent | ApiError>,
        rejected: ReadonlyMap<number, ApiError>,
        now: number,
        requestIds: (i: number) => string | undefined
      ) =>
        Effect.gen(function*() {
          const live: Array<[number, ValidRunEvent]> = []
          items.forEach((item, i) => {
            if (!(item instanceof ApiError) && !rejected.has(i)) live.push([i, item])
          })

          // 1. Create the rows of runs whose first live item is run.created (sorted: lock order).
          const creators = new Map<string, ValidRunEvent>()
          for (const [, e] of live) if (e.type === "run.created" && !creators.has(e.runId)) creators.set(e.runId, e)
          const createIds = [...creators.keys()].sort()
          const createdHere = new Set(
            createIds.length === 0 ? [] : (yield* sql<{ run_id: string }>`
              INSERT INTO runtime.runs (run_id, owner_user_id, status, last_seq, created_at)
              SELECT id, owner, 'created', 0, at
              FROM unnest(${textArray(createIds)}, ${textArray(createIds.map((id) => creators.get(id)!.body.owner_user_id!))},
                          ${timestamptzArray(createIds.map((id) => creators.get(id)!.occurredAtMs))}) AS x(id, owner, at)
              ORDER BY id
              ON CONFLICT (run_id) DO NOTHING
              RETURNING run_id`).map((r) => r.run_id)
          )

          // 2. Lock every run the batch touches, in id order.
          const runIds = [...new Set(live.map(([, e]) => e.runId))].sort()
          const state = new Map<string, RunState>()
          if (runIds.length > 0) {
            const rows = yield* sql<{ run_id: string; owner_user_id: string; status: string; last_seq: bigint }>`
              SELECT run_id, owner_user_id, status, last_seq FROM runtime.runs
              WHERE run_id = ANY(${textArray(runIds)}) ORDER BY run_id FOR UPDATE`
            for (const r of rows) {
              state.set(r.run_id, {
                ownerUserId: r.owner_user_id,
                status: r.status,
                lastSeq: Number(r.last_seq),
                // A run this batch created exists from its creating item on.
                exists: !createdHere.has(r.run_id)
              })
            }
          }

          // 3. Stored idempotency keys of the keyed items.
          const keys = yield* KeyLedger.load(sql, "run", live.flatMap(([, e]) => e.scope === undefined ? [] : [e.scope]))

          // 4. The lifecycle rules, item by item, in order (what sequential commands would see).
          const outcomes = items.map((item, i): Outcome => {
            const early = item instanceof ApiError ? item : rejected.get(i)
            if (early) return { _tag: "rejected", error: early }
            const e = item as ValidRunEvent
            const run = state.get(e.runId)
            let createdNow = false
            if (run && !run.exists && e.type === "run.created" && creators.get(e.runId) === e) {
              run.exists = true
              createdNow = true
            }
            if (!run || !run.exists) {
              return { _tag: "rejected", error: runNotFound(e.runId) }
            }
            const seen = keys.check(e.scope)
            if (seen) return seen
            const rejection = lifecycleRejection(e.runId, run.status, e.type, createdNow)
            if (rejection) return { _tag: "rejected", error: rejection }
            run.lastSeq += 1
            run.status = runStatusAfter(run.status as RunStatus, e.type)
            return keys.accept(i, {
              entityId: e.runId,
              ownerUserId: run.ownerUserId,
              seq: run.lastSeq,
              type: e.type,
              payload: e.payload,
              occurredAtMs: e.occurredAtMs,
              scope: e.scope
            })
          })

          // 5–9. Owner ordinals, events, projection, journal; documents, checkpoints and the run
          // rows' state in one statement.
          const appended = yield* appendEvents(sql, journal, RUN_EVENTS, outcomes, requestIds, now, (ids) => sql`
            UPDATE runtime.runs r SET status = x.status, last_seq = x.last_seq
            FROM unnest(${textArray(ids)}, ${textArray(ids.map((id) => state.get(id)!.status))},
                        ${int8Array(ids.map((id) => BigInt(state.get(id)!.lastSeq)))}) AS x(run_id, status, last_seq)
            WHERE r.run_id = x.run_id`)

          // 10. Answers; the keyed appends' answers are stored for retries.
          const results = yield* answersOf(sql, "run", outcomes, (a, i) => ({
            run_id: a.entityId,
            seq: a.seq,
            topic_seqs: appended.itemTopicSeqs[i] ?? {}
          }))
          return { results, topicSeqs: appended.topicSeqs }
        })

      /** Commits `items` (validated, or already refused) in one transaction labelled `command`. */
      const commitItems = <E = never>(
        command: string,
        items: ReadonlyArray<ValidRunEvent | ApiError>,
        now: number,
        requestIds: (i: number) => string | undefined,
        /** A failing statement becomes this error (rolled back: nothing committed) instead of a 500. */
        rolledBack?: (cause: unknown) => E
      ) =>
        commitBatch(
          runner,
          command,
          items.map((item) => item instanceof ApiError ? "run.invalid" : item.type),
          (rejected) => commit(items, rejected, now, requestIds),
          rolledBack
        )

      const append = Effect.fn("RunEventBatches.append")(function*(raw: unknown, requestId: string | undefined) {
        const { events } = yield* decodeBody(BatchBody, raw)
        const now = yield* Clock.currentTimeMillis
        const items = yield* Effect.forEach(events, (item) => {
          const runId = typeof item === "object" && item !== null && "run_id" in item ? item.run_id : undefined
          return typeof runId !== "string"
            ? Effect.succeed(apiError("invalid_request", "each event needs a run_id string"))
            : validateRunEvent(runId, item, now).pipe(Effect.catch((e: ApiError) => Effect.succeed(e)))
        })
        yield* Effect.annotateCurrentSpan({ "khala.batch_events": items.length })
        const result = yield* commitItems("run.batch", items, now, () => requestId)
        const results: Array<BatchItemResult> = result.results.map((r) =>
          r instanceof ApiError ? { status: r.status, body: r.toBody() } : r as BatchItemResult
        )
        return {
          status: 200,
          body: { results, topic_seqs: result.topicSeqs } as unknown as JsonObject
        } satisfies CommandResult
      })

      const commitGroup = (group: ReadonlyArray<GroupItem>, now: number) =>
        Effect.gen(function*() {
          yield* Effect.annotateCurrentSpan({ "khala.group_events": group.length })
          const result = yield* commitItems(
            "run.group",
            group.map((g) => g.event),
            now,
            (i) => group[i]!.requestId,
            (cause) => new StatementFailed({ cause })
          )
          return result.results
        }).pipe(Effect.withSpan("RunEventBatches.commitGroup"))

      return RunEventBatches.of({ append, commitGroup })
    })
  )
}
