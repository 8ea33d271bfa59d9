/**
 * RunCommands: `POST /internal/v1/runs/{run_id}/events` and `GET /internal/v1/runs/{run_id}`.
 *
 * One command = one transaction: lock (or create) the run row → idempotency check → lifecycle
 * rules (404 before run.created, 409 on a second run.created or after a terminal event) → append
 * the authority event → project (read model + journal + checkpoint) → store the idempotent response.
 */
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { ApiError, apiError } from "../domain/ApiError.ts"
import { runSummaryJson } from "../domain/Documents.ts"
import { isValidId } from "../domain/Ids.ts"
import { isJsonObject, type JsonObject } from "../domain/Json.ts"
import { isStorableJson, isStorableString } from "../domain/SafeJson.ts"
import { isRunEventType, RUN_EVENT_TYPES, TERMINAL_RUN_STATUSES } from "../domain/RunProjection.ts"
import { CommandRunner, type CommandResult, decodeBody, occurredAt, orInternal } from "./CommandRunner.ts"
import { EventStore } from "./EventStore.ts"
import { Idempotency, requestHash } from "./Idempotency.ts"
import { Projector } from "./Projector.ts"
import { ReadModels } from "./ReadModels.ts"

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

      const appendEvent = Effect.fn("RunCommands.appendEvent")(function*(
        runId: string,
        raw: unknown,
        requestId: string | undefined
      ) {
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
        const now = yield* Clock.currentTimeMillis
        const occurredAtMs = yield* occurredAt(body.occurred_at, now)
        const scope = body.idempotency_key === undefined ? undefined : {
          entityKind: "run" as const,
          entityId: runId,
          key: body.idempotency_key,
          requestHash: requestHash("run.event", body)
        }
        yield* Effect.annotateCurrentSpan({ "khala.run_id": runId, "khala.event_type": type })

        return yield* runner.transact(
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
                if (type === "run.created" && !created) {
                  return yield* apiError("run_already_exists", `run ${runId} was already created`, { run_id: runId })
                }
                if (TERMINAL_RUN_STATUSES.has(run.status)) {
                  return yield* apiError("run_terminal", `run ${runId} is ${run.status}; no further events are accepted`, {
                    run_id: runId,
                    status: run.status
                  })
                }
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
