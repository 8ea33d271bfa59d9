/**
 * RunCommands: `POST /internal/v1/runs/{run_id}/events` and `GET /internal/v1/runs/{run_id}`.
 *
 * A command alone is one transaction: lock (or create) the run row → idempotency check → lifecycle
 * rules (404 before run.created, 409 on a second run.created or after a terminal event) → append
 * the authority event → project (read model + journal + checkpoint) → store the idempotent response.
 * Concurrent commands are group-committed (GroupCommit): while the workers are busy, new commands
 * gather and go together through RunEventBatches' set-based transaction, which answers and writes
 * exactly what the commands would have one after another in arrival order (property-tested), so
 * a burst of writers shares fsyncs and statements instead of queueing for them; a group that fails
 * in the database is retried one command at a time, so a refused command fails alone. Validation errors
 * are answered before any of this; a command issued inside a caller's transaction joins it.
 */
import { Clock, Context, Effect, Layer, Metric, Option, Schema, type Tracer } from "effect"
import { SqlClient } from "effect/sql"
import { ApiError, apiError } from "../domain/ApiError.ts"
import { runSummaryJson } from "../domain/Documents.ts"
import { isValidId } from "../domain/Ids.ts"
import { isJsonObject, type JsonObject } from "../domain/Json.ts"
import { isStorableJson, isStorableString } from "../domain/SafeJson.ts"
import { isRunEventType, RUN_EVENT_TYPES, type RunEventType, TERMINAL_RUN_STATUSES } from "../domain/RunProjection.ts"
import { CommandRunner, type CommandResult, commitFailed, decodeBody, occurredAt, orInternal } from "./CommandRunner.ts"
import { EventStore } from "./EventStore.ts"
import { makeGroupCommitter } from "./GroupCommit.ts"
import { commandGroupEvents } from "./Metrics.ts"
import { Idempotency, type IdempotencyScope, requestHash } from "./Idempotency.ts"
import { Projector } from "./Projector.ts"
import { ReadModels } from "./ReadModels.ts"
import { type GroupItem, type ItemAnswer, MAX_BATCH_EVENTS, RunEventBatches } from "./RunEventBatches.ts"

export const IdempotencyKey = Schema.String.check(
  Schema.isMinLength(1),
  Schema.isMaxLength(256),
  Schema.makeFilter((s: string) => isStorableString(s) || "must not contain NUL characters or lone surrogates")
)
export const Payload = Schema.Record(Schema.String, Schema.Unknown)

export const RunEventBody = Schema.Struct({
  type: Schema.String,
  payload: Schema.optionalKey(Payload),
  owner_user_id: Schema.optionalKey(Schema.String),
  idempotency_key: Schema.optionalKey(IdempotencyKey),
  occurred_at: Schema.optionalKey(Schema.String)
})

export const checkId = (what: string, id: string) =>
  isValidId(id)
    ? Effect.void
    : Effect.fail(apiError("invalid_request", `${what} must match [A-Za-z0-9._:-]{1,128}`, { [what]: id }))

export const checkPayload = (payload: unknown): Effect.Effect<JsonObject, ApiError> =>
  payload === undefined
    ? Effect.succeed({})
    : !isJsonObject(payload)
    ? Effect.fail(apiError("invalid_request", "payload must be a JSON object"))
    : !isStorableJson(payload)
    ? Effect.fail(apiError("invalid_request", "payload strings and keys must not contain NUL characters or lone surrogates"))
    : Effect.succeed(payload)

/** A run event that passed request validation (shape, ids, type, payload, timestamps). */
export interface ValidRunEvent {
  readonly runId: string
  readonly type: RunEventType
  readonly payload: JsonObject
  readonly body: typeof RunEventBody.Type
  readonly occurredAtMs: number
  readonly scope: IdempotencyScope | undefined
}

/** Request validation of one run event: 400 `invalid_request` with the reason, before any read. */
export const validateRunEvent = (runId: string, raw: unknown, nowMs: number) =>
  Effect.gen(function*() {
    yield* checkId("run_id", runId)
    const body = yield* decodeBody(RunEventBody, raw)
    if (!isRunEventType(body.type)) {
      return yield* apiError("invalid_request", `type must be one of ${RUN_EVENT_TYPES.join(", ")}`, {
        type: body.type
      })
    }
    const type = body.type
    const payload = yield* checkPayload(body.payload)
    if (type === "run.created") {
      if (body.owner_user_id === undefined) {
        return yield* apiError("invalid_request", "owner_user_id is required on run.created")
      }
      yield* checkId("owner_user_id", body.owner_user_id)
    }
    const occurredAtMs = yield* occurredAt(body.occurred_at, nowMs)
    const scope: IdempotencyScope | undefined = body.idempotency_key === undefined ? undefined : {
      entityKind: "run",
      entityId: runId,
      key: body.idempotency_key,
      requestHash: requestHash("run.event", body)
    }
    return { runId, type, payload, body, occurredAtMs, scope } satisfies ValidRunEvent
  })

/**
 * The lifecycle rules of an existing run (SPEC §2): a second `run.created` is 409
 * `run_already_exists` (`createdNow`: this very command created the row); any event after a
 * terminal one is 409 `run_terminal`.
 */
export const lifecycleRejection = (
  runId: string,
  status: string,
  type: RunEventType,
  createdNow: boolean
): ApiError | undefined => {
  if (type === "run.created" && !createdNow) {
    return apiError("run_already_exists", `run ${runId} was already created`, { run_id: runId })
  }
  if (TERMINAL_RUN_STATUSES.has(status)) {
    return apiError("run_terminal", `run ${runId} is ${status}; no further events are accepted`, {
      run_id: runId,
      status
    })
  }
  return undefined
}

/** Group transactions committing at once (each holds one pooled connection while it commits). */
const GROUP_COMMIT_WORKERS = 2
/** Lone commits failing in the database in a row after which a failed group's rest fails at once. */
const FALLBACK_FAILURES = 3
/** Commands waiting for a group beyond which new ones wait to be queued (HTTP backpressure). */
const GROUP_COMMIT_QUEUE = 4 * MAX_BATCH_EVENTS

interface PendingCommand extends GroupItem {
  readonly now: number
  /** The request's span: a command committed alone is traced under it. */
  readonly span: Tracer.AnySpan | undefined
}

export class RunCommands extends Context.Service<RunCommands, {
  readonly appendEvent: (runId: string, body: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
  readonly get: (runId: string) => Effect.Effect<JsonObject, ApiError>
}>()("khala/services/RunCommands") {
  static readonly layer = Layer.effect(
    RunCommands,
    Effect.gen(function*() {
      const runner = yield* CommandRunner
      const store = yield* EventStore
      const projector = yield* Projector
      const idempotency = yield* Idempotency
      const readModels = yield* ReadModels
      const batches = yield* RunEventBatches
      const sql = yield* SqlClient.SqlClient

      /** The one-event transaction (a group of one: no contention, so nothing to share). */
      const commitOne = (event: ValidRunEvent, requestId: string | undefined, now: number) => {
        const { runId, type, payload, body, occurredAtMs, scope } = event
        return runner.transact(
          type,
          Effect.gen(function*() {
            const created = type === "run.created"
              ? yield* store.insertRun(runId, body.owner_user_id!, occurredAtMs)
              : undefined
            const run = created ?? (yield* store.lockRun(runId))
            if (!run) return yield* apiError("run_not_found", `run ${runId} does not exist`, { run_id: runId })
            return yield* idempotency.guard(
              scope,
              Effect.gen(function*() {
                const rejected = lifecycleRejection(runId, run.status, type, created !== undefined)
                if (rejected) return yield* rejected
                const seq = run.lastSeq + 1
                const record = yield* store.appendRunEvent({
                  entityId: runId,
                  ownerUserId: run.ownerUserId,
                  seq,
                  type,
                  payload,
                  occurredAtMs,
                  requestId
                })
                const projected = yield* projector.applyRun(record, now)
                yield* store.setRunState(runId, projected.doc.status, seq)
                return { status: 201, body: { run_id: runId, seq, topic_seqs: projected.topicSeqs } }
              })
            )
          })
        )
      }

      /** One command in its own transaction, traced under its request; its error is its answer. */
      const alone = (item: PendingCommand): Effect.Effect<ItemAnswer> =>
        commitOne(item.event, item.requestId, item.now).pipe(
          item.span === undefined ? (e) => e : Effect.withParentSpan(item.span),
          Effect.catch((e: ApiError) => Effect.succeed(e))
        )

      /**
       * A statement of the shared transaction failed, so it rolled back and nothing of the group
       * committed. That may be one command's doing (a row the database refuses) or not (the
       * connection dropped); so each command is committed alone, in arrival order, and a poison
       * command fails only itself. After FALLBACK_FAILURES lone failures in a row the database is
       * taken to be down and the rest get the same answer (a retryable 500) at once instead of
       * each waiting to fail. (When the outcome is unknown — COMMIT failed — nothing is retried.)
       */
      const oneByOne = (items: ReadonlyArray<PendingCommand>, groupError: ApiError) =>
        Effect.gen(function*() {
          const answers: Array<ItemAnswer> = []
          let failuresInARow = 0
          for (const item of items) {
            if (failuresInARow >= FALLBACK_FAILURES) {
              answers.push(groupError)
              continue
            }
            const answer = yield* alone(item)
            failuresInARow = answer instanceof ApiError && answer.code === "internal" ? failuresInARow + 1 : 0
            answers.push(answer)
          }
          return answers
        })

      // Group commit: concurrent commands share transactions (RunEventBatches.commitGroup answers
      // each exactly as its own transaction would); a command that finds a worker idle commits alone.
      const committer = yield* makeGroupCommitter<PendingCommand, ItemAnswer, never>({
        workers: GROUP_COMMIT_WORKERS,
        maxGroup: MAX_BATCH_EVENTS,
        capacity: GROUP_COMMIT_QUEUE,
        commit: (items) =>
          Metric.update(commandGroupEvents, items.length).pipe(Effect.andThen(
            items.length === 1
              ? Effect.map(alone(items[0]!), (a): ReadonlyArray<ItemAnswer> => [a])
              // Committed at the latest of its commands' request times (the injected clock's).
              : batches.commitGroup(items, items.reduce((t, i) => Math.max(t, i.now), 0)).pipe(
                Effect.catchTag("StatementFailed", (e) =>
                  Effect.logWarning(
                    `a group of ${items.length} commands failed in the database; committing them one at a time`,
                    e.cause
                  ).pipe(Effect.andThen(oneByOne(items, commitFailed())))),
                // BEGIN or COMMIT failed: the group may have committed; every command gets the 500
                // (a retry with its idempotency key is safe), none is committed again here.
                Effect.catch((e: ApiError) => Effect.succeed(items.map(() => e)))
              )
          ))
      })

      const appendEvent = Effect.fn("RunCommands.appendEvent")(function*(
        runId: string,
        raw: unknown,
        requestId: string | undefined
      ) {
        const now = yield* Clock.currentTimeMillis
        const event = yield* validateRunEvent(runId, raw, now)
        yield* Effect.annotateCurrentSpan({ "khala.run_id": runId, "khala.event_type": event.type })
        // Inside a caller's transaction (tools, tests): join it, as one command always did.
        if (Option.isSome(yield* Effect.serviceOption(sql.transactionService))) return yield* commitOne(event, requestId, now)
        const span = Option.getOrUndefined(yield* Effect.option(Effect.currentSpan))
        const answer = yield* committer.submit({ event, requestId, now, span })
        if (answer instanceof ApiError) return yield* answer
        return answer
      })

      const get = Effect.fn("RunCommands.get")(function*(runId: string) {
        yield* checkId("run_id", runId)
        const doc = yield* orInternal(readModels.runSummary(runId))
        if (!doc) return yield* apiError("run_not_found", `run ${runId} does not exist`, { run_id: runId })
        return runSummaryJson(doc.doc) as JsonObject
      })

      return RunCommands.of({ appendEvent, get })
    })
  )
}
