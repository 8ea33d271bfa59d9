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
import { Clock, Context, Effect, Layer, Metric, Schema } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { ApiError, apiError } from "../domain/ApiError.ts"
import { decodeRunSummary } from "../domain/Documents.ts"
import type { JsonObject } from "../domain/Json.ts"
import { type RunStatus, runStatusAfter } from "../domain/RunProjection.ts"
import { CommandRunner, type CommandResult, decodeBody } from "./CommandRunner.ts"
import { type EventRow, toRunRecord } from "./EventStore.ts"
import { Journal, JournalEntryTooLarge, type TopicSeqs } from "./Journal.ts"
import { commandsTotal } from "./Metrics.ts"
import { projectSet, runProjectionSpec, upsertCheckpoints, upsertDocuments } from "./Projector.ts"
import { lifecycleRejection, validateRunEvent, type ValidRunEvent } from "./RunCommands.ts"

/** Most events one batch may carry. */
export const MAX_BATCH_EVENTS = 1000

const BatchBody = Schema.Struct({
  events: Schema.Array(Schema.Unknown).check(Schema.isMinLength(1), Schema.isMaxLength(MAX_BATCH_EVENTS))
})

/** One item's answer: the single endpoint's status and body. */
export type BatchItemResult =
  | { readonly status: 200 | 201; readonly body: JsonObject }
  | { readonly status: number; readonly body: ReturnType<ApiError["toBody"]> }

/** A statement of a group's transaction failed: the transaction rolled back, nothing committed. */
export class StatementFailed extends Schema.TaggedError<StatementFailed>()("StatementFailed", {
  cause: Schema.Unknown
}) {}

/** Internal: item `index` would not fit one sync frame; the batch is retried without it. */
class ItemTooLarge extends Schema.TaggedError<ItemTooLarge>()("ItemTooLarge", {
  index: Schema.Number,
  bytes: Schema.Number,
  limit: Schema.Number
}) {}

type Outcome =
  | { readonly _tag: "rejected"; readonly error: ApiError }
  | { readonly _tag: "replayStored"; readonly body: JsonObject }
  | { readonly _tag: "replayItem"; readonly index: number }
  | { readonly _tag: "append"; readonly seq: number; readonly ownerUserId: string; readonly event: ValidRunEvent }

interface RunState {
  readonly ownerUserId: string
  status: string
  lastSeq: number
  exists: boolean
}

const itemKey = (runId: string, key: string) => `${runId}\u0000${key}`

/** One request of a group commit: a validated event and the request it came with. */
export interface GroupItem {
  readonly event: ValidRunEvent
  readonly requestId: string | undefined
}

/** One item's answer inside the service: the single endpoint's result or its typed error. */
export type ItemAnswer = CommandResult | ApiError

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
              SELECT id, owner, 'created', 0, at::timestamptz
              FROM unnest(${createIds}::text[], ${createIds.map((id) => creators.get(id)!.body.owner_user_id!)}::text[],
                          ${createIds.map((id) => new Date(creators.get(id)!.occurredAtMs).toISOString())}::text[])
                AS x(id, owner, at)
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
              WHERE run_id = ANY(${runIds}::text[]) ORDER BY run_id FOR UPDATE`
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
          const keyed = live.filter(([, e]) => e.scope !== undefined)
          const storedKeys = new Map<string, { hash: string; response: JsonObject }>()
          if (keyed.length > 0) {
            const rows = yield* sql<{ entity_id: string; idempotency_key: string; request_hash: string; response: JsonObject }>`
              SELECT entity_id, idempotency_key, request_hash, response FROM runtime.idempotency_keys
              WHERE entity_kind = 'run' AND (entity_id, idempotency_key) IN (
                SELECT * FROM unnest(${keyed.map(([, e]) => e.runId)}::text[], ${keyed.map(([, e]) => e.scope!.key)}::text[]))`
            for (const r of rows) {
              storedKeys.set(itemKey(r.entity_id, r.idempotency_key), { hash: r.request_hash, response: r.response })
            }
          }

          // 4. The lifecycle rules, item by item, in order (what sequential commands would see).
          const outcomes = new Array<Outcome>(items.length)
          const batchKeys = new Map<string, { hash: string; index: number }>()
          items.forEach((item, i) => {
            const early = item instanceof ApiError ? item : rejected.get(i)
            if (early) {
              outcomes[i] = { _tag: "rejected", error: early }
              return
            }
            const e = item as ValidRunEvent
            const run = state.get(e.runId)
            let createdNow = false
            if (run && !run.exists && e.type === "run.created" && creators.get(e.runId) === e) {
              run.exists = true
              createdNow = true
            }
            if (!run || !run.exists) {
              outcomes[i] = {
                _tag: "rejected",
                error: apiError("run_not_found", `run ${e.runId} does not exist`, { run_id: e.runId })
              }
              return
            }
            if (e.scope) {
              const k = itemKey(e.runId, e.scope.key)
              const prior = storedKeys.get(k) ?? batchKeys.get(k)
              if (prior) {
                outcomes[i] = prior.hash !== e.scope.requestHash
                  ? {
                    _tag: "rejected",
                    error: apiError("idempotency_key_reused", "this idempotency_key was used with a different request", {
                      idempotency_key: e.scope.key
                    })
                  }
                  : "response" in prior
                  ? { _tag: "replayStored", body: prior.response }
                  : { _tag: "replayItem", index: prior.index }
                return
              }
            }
            const rejection = lifecycleRejection(e.runId, run.status, e.type, createdNow)
            if (rejection) {
              outcomes[i] = { _tag: "rejected", error: rejection }
              return
            }
            run.lastSeq += 1
            run.status = runStatusAfter(run.status as RunStatus, e.type)
            outcomes[i] = { _tag: "append", seq: run.lastSeq, ownerUserId: run.ownerUserId, event: e }
            if (e.scope) batchKeys.set(itemKey(e.runId, e.scope.key), { hash: e.scope.requestHash, index: i })
          })

          const appends: Array<[number, Extract<Outcome, { _tag: "append" }>]> = []
          outcomes.forEach((o, i) => {
            if (o._tag === "append") appends.push([i, o])
          })
          const itemTopicSeqs = new Array<TopicSeqs>(items.length)
          const batchTopicSeqs: TopicSeqs = {}

          if (appends.length > 0) {
            // 5. Owner ordinals (owner order), then every event in one statement, read back.
            const perOwner = new Map<string, number>()
            for (const [, a] of appends) perOwner.set(a.ownerUserId, (perOwner.get(a.ownerUserId) ?? 0) + 1)
            const owners = [...perOwner.keys()].sort()
            const lastOrdinal = new Map(
              (yield* sql<{ owner_user_id: string; last_ordinal: bigint }>`
                INSERT INTO runtime.owner_sequences AS s (owner_user_id, stream, last_ordinal)
                SELECT u, 'runs', n FROM unnest(${owners}::text[], ${owners.map((o) => perOwner.get(o)!)}::bigint[]) AS x(u, n)
                ORDER BY u
                ON CONFLICT (owner_user_id, stream) DO UPDATE SET last_ordinal = s.last_ordinal + EXCLUDED.last_ordinal
                RETURNING owner_user_id, last_ordinal`).map((r) => [r.owner_user_id, Number(r.last_ordinal)])
            )
            const nextOrdinal = new Map(owners.map((o) => [o, lastOrdinal.get(o)! - perOwner.get(o)! + 1]))
            // One array per column (`unnest`): a fixed statement, whatever the batch size.
            const n = appends.length
            const cols = {
              runId: new Array<string>(n),
              seq: new Array<bigint>(n),
              ordinal: new Array<bigint>(n),
              type: new Array<string>(n),
              payload: new Array<string>(n),
              occurredAt: new Array<Date>(n),
              requestId: new Array<string>(n)
            }
            appends.forEach(([i, a], k) => {
              const ordinal = nextOrdinal.get(a.ownerUserId)!
              nextOrdinal.set(a.ownerUserId, ordinal + 1)
              cols.runId[k] = a.event.runId
              cols.seq[k] = BigInt(a.seq)
              cols.ordinal[k] = BigInt(ordinal)
              cols.type[k] = a.event.type
              cols.payload[k] = JSON.stringify(a.event.payload)
              cols.occurredAt[k] = new Date(a.event.occurredAtMs)
              cols.requestId[k] = requestIds(i) ?? "" // never empty when given (requestIdOf)
            })
            const stored = new Map<string, EventRow>()
            for (const r of yield* sql<EventRow & { run_id: string }>`
              INSERT INTO runtime.run_events (run_id, seq, owner_ordinal, type, payload, occurred_at, request_id)
              SELECT run_id, seq, ordinal, type, payload, occurred_at, NULLIF(request_id, '')
              FROM unnest(${cols.runId}::text[], ${cols.seq}::bigint[], ${cols.ordinal}::bigint[], ${cols.type}::text[],
                          ${cols.payload}::jsonb[], ${cols.occurredAt}::timestamptz[], ${cols.requestId}::text[])
                AS x(run_id, seq, ordinal, type, payload, occurred_at, request_id)
              RETURNING run_id, seq, type, payload::text AS payload, occurred_at`) {
              stored.set(`${r.run_id}:${r.seq}`, r)
            }

            // 6. Project in item order from the stored documents.
            const set = yield* projectSet(
              sql,
              appends.map(([, a]) =>
                runProjectionSpec(toRunRecord(a.event.runId, a.ownerUserId)(stored.get(`${a.event.runId}:${a.seq}`)!))
              ),
              decodeRunSummary
            )
            const draftItem = set.draftEvent.map((k) => appends[k]![0])

            // 7. The journal: every entry of the batch, seqs allocated in topic order.
            const appended = yield* journal.appendAll(set.drafts, now).pipe(
              Effect.catchIf(
                (e): e is JournalEntryTooLarge => e instanceof JournalEntryTooLarge,
                (e) => Effect.fail(new ItemTooLarge({ index: draftItem[e.draft]!, bytes: e.bytes, limit: e.limit }))
              )
            )
            set.drafts.forEach((d, k) => {
              const i = draftItem[k]!
              const seq = appended.seqs[k]!
              ;(itemTopicSeqs[i] ??= {})[d.topic] = seq
              batchTopicSeqs[d.topic] = Math.max(batchTopicSeqs[d.topic] ?? 0, seq)
            })

            // 8. Final documents (changed ones), checkpoints and run state: one statement each.
            yield* upsertDocuments(sql, set.documents)
            yield* upsertCheckpoints(sql, set.checkpoints)
            const ids = set.checkpoints.map((c) => c.entity_id)
            yield* sql`
              UPDATE runtime.runs r SET status = x.status, last_seq = x.last_seq
              FROM unnest(${ids}::text[], ${ids.map((id) => state.get(id)!.status)}::text[],
                          ${ids.map((id) => state.get(id)!.lastSeq)}::bigint[]) AS x(run_id, status, last_seq)
              WHERE r.run_id = x.run_id`
          }

          // 9. Answers; the keyed appends' answers are stored for retries.
          const results: Array<ItemAnswer> = outcomes.map((o, i) => {
            switch (o._tag) {
              case "rejected":
                return o.error
              case "replayStored":
                return { status: 200, body: o.body }
              case "append":
                return { status: 201, body: { run_id: o.event.runId, seq: o.seq, topic_seqs: itemTopicSeqs[i] ?? {} } }
              case "replayItem":
                return { status: 200, body: {} }
            }
          })
          outcomes.forEach((o, i) => {
            if (o._tag === "replayItem") results[i] = { status: 200, body: (results[o.index] as CommandResult).body }
          })
          const keyRows = appends.filter(([, a]) => a.event.scope !== undefined).map(([i, a]) => ({
            entity_kind: "run",
            entity_id: a.event.runId,
            idempotency_key: a.event.scope!.key,
            request_hash: a.event.scope!.requestHash,
            status: 201,
            response: JSON.stringify((results[i] as CommandResult).body)
          }))
          if (keyRows.length > 0) {
            yield* sql`INSERT INTO runtime.idempotency_keys ${sql.insert(keyRows as [typeof keyRows[0], ...typeof keyRows])}`
          }
          return { results, topicSeqs: batchTopicSeqs, appended: appends.length }
        })

      /**
       * Commits `items` (validated, or already rejected) in one transaction, labelled `command`:
       * an item whose journal entry would not fit one frame is 413 and the rest is committed
       * without it. Counts every item's outcome. A database failure is every item's answer.
       */
      const commitItems = <E = never>(
        command: string,
        items: ReadonlyArray<ValidRunEvent | ApiError>,
        now: number,
        requestIds: (i: number) => string | undefined,
        /** A failing statement becomes this error (rolled back: nothing committed) instead of a 500. */
        rolledBack?: (cause: SqlError) => E
      ) =>
        Effect.gen(function*() {
          const rejected = new Map<number, ApiError>()
          let done: Effect.Success<ReturnType<typeof commit>> | undefined
          while (done === undefined) {
            const body = commit(items, rejected, now, requestIds).pipe(
              Effect.map((r) => ({ status: 201, body: {}, ...r }))
            )
            done = yield* runner.transact(command, body, rolledBack).pipe(
              Effect.catchIf((e): e is ItemTooLarge => e instanceof ItemTooLarge, (e) =>
                Effect.sync(() => {
                  rejected.set(
                    e.index,
                    apiError("payload_too_large", `the event would not fit in one sync frame (${e.bytes} > ${e.limit} bytes)`, {
                      limit_bytes: e.limit
                    })
                  )
                  return undefined
                }))
            )
          }
          const result = done
          for (const [i, r] of result.results.entries()) {
            const item = items[i]!
            const label = item instanceof ApiError ? "run.invalid" : item.type
            const outcome = r instanceof ApiError ? r.code : r.status === 201 ? "ok" : "replayed"
            yield* Metric.update(Metric.withAttributes(commandsTotal, { command: label, outcome }), 1)
          }
          return result
        })

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
