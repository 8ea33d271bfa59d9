/**
 * WorkerCommands: the Codex worker surface of SPEC §6/§10.
 *
 * - create is create-or-reattach by worker_id: new ⇒ append `worker.created` (201); same owner and
 *   live ⇒ 200, nothing appended; same owner and terminal ⇒ resumed (`worker.resumed`, 200);
 *   another owner ⇒ 409.
 * - `/events` takes the six taxonomy types; after `worker.stopped` or a fatal `worker.error` the
 *   worker is terminal and every mutation is 409 until resume.
 * - Snapshots add `heartbeat_state`/`heartbeat_age_ms` computed at read time from the injected
 *   Clock and the exact last heartbeat of the authority row.
 * - Concurrent `/events` and `/heartbeat` commands are group-committed (CommandGroups): one alone
 *   commits in its own transaction; while the committers are busy, new ones gather and go through
 *   WorkerEventBatches' set-based transaction, which answers and writes what they would one by one.
 *   Create, stop and resume are one transaction each.
 */
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { toJson } from "@bufbuild/protobuf"
import { TimestampSchema } from "@bufbuild/protobuf/wkt"
import { Clock, Context, Effect, Layer, Schema } from "effect"
import { ApiError, apiError } from "../domain/ApiError.ts"
import { workerSummaryJson } from "../domain/Documents.ts"
import { heartbeatView } from "../domain/Heartbeat.ts"
import type { JsonObject } from "../domain/Json.ts"
import type { SqlError } from "effect/sql/SqlError"
import { isStorableString } from "../domain/SafeJson.ts"
import {
  isTerminalWorkerStatus,
  isWorkerTaxonomyType,
  WORKER_TAXONOMY,
  type WorkerEventType
} from "../domain/WorkerProjection.ts"
import { KhalaConfig } from "../layers/Config.ts"
import { makeCommandGroups } from "./CommandGroups.ts"
import { CommandRunner, type CommandResult, decodeBody, occurredAt, orInternal } from "./CommandRunner.ts"
import { EventStore, type WorkerRow } from "./EventStore.ts"
import { Idempotency, type IdempotencyScope, requestHash } from "./Idempotency.ts"
import type { JournalEntryTooLarge, TopicSeqs } from "./Journal.ts"
import { Projector } from "./Projector.ts"
import { ReadModels, type StoredDoc } from "./ReadModels.ts"
import { checkId, checkPayload, IdempotencyKey, Payload } from "./RunCommands.ts"
import type { CodexWorkerSummary } from "../gen/openagents/sync/v1/documents_pb.ts"
import { type WorkerGroupItem, WorkerEventBatches, workerNotFound, workerTerminal } from "./WorkerEventBatches.ts"

export const CreateWorkerBody = Schema.Struct({
  worker_id: Schema.String,
  owner_user_id: Schema.String,
  metadata: Schema.optionalKey(Payload),
  idempotency_key: Schema.optionalKey(IdempotencyKey)
})
export const WorkerEventBody = Schema.Struct({
  event_type: Schema.String,
  payload: Schema.optionalKey(Payload),
  idempotency_key: Schema.optionalKey(IdempotencyKey),
  occurred_at: Schema.optionalKey(Schema.String)
})
export const HeartbeatBody = Schema.Struct({
  payload: Schema.optionalKey(Payload),
  idempotency_key: Schema.optionalKey(IdempotencyKey),
  occurred_at: Schema.optionalKey(Schema.String)
})
export const StopBody = Schema.Struct({
  reason: Schema.optionalKey(Schema.String.check(
    Schema.makeFilter((s: string) => isStorableString(s) || "must not contain NUL characters or lone surrogates")
  )),
  idempotency_key: Schema.optionalKey(IdempotencyKey)
})
export const ResumeBody = Schema.Struct({
  idempotency_key: Schema.optionalKey(IdempotencyKey)
})

const iso = (ms: number) => toJson(TimestampSchema, timestampFromMs(ms)) as string

/** Most worker commands in one group transaction. */
const MAX_WORKER_GROUP = 500

interface PendingWorkerCommand extends WorkerGroupItem {
  readonly now: number
}

export class WorkerCommands extends Context.Service<WorkerCommands, {
  readonly create: (body: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
  readonly get: (workerId: string) => Effect.Effect<JsonObject, ApiError>
  readonly list: (ownerUserId: string | undefined) => Effect.Effect<JsonObject, ApiError>
  readonly appendEvent: (workerId: string, body: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
  readonly heartbeat: (workerId: string, body: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
  readonly stop: (workerId: string, body: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
  readonly resume: (workerId: string, body: unknown, requestId: string | undefined) => Effect.Effect<CommandResult, ApiError>
}>()("khala/services/WorkerCommands") {
  static readonly layer = Layer.effect(
    WorkerCommands,
    Effect.gen(function*() {
      const config = yield* KhalaConfig
      const runner = yield* CommandRunner
      const store = yield* EventStore
      const projector = yield* Projector
      const idempotency = yield* Idempotency
      const readModels = yield* ReadModels
      const batches = yield* WorkerEventBatches

      /** Snapshot JSON: the summary document plus authority heartbeat fields. */
      const snapshotJson = (row: WorkerRow, summary: CodexWorkerSummary | undefined, nowMs: number): JsonObject => ({
        ...(summary ? (workerSummaryJson(summary) as JsonObject) : { worker_id: row.workerId, owner_user_id: row.ownerUserId }),
        status: row.status,
        ...(row.lastHeartbeatAtMs === undefined ? {} : { last_heartbeat_at: iso(row.lastHeartbeatAtMs) }),
        ...heartbeatView(row.lastHeartbeatAtMs, nowMs, config.workerHeartbeatStaleAfterMs)
      })

      const scopeOf = (workerId: string, command: string, body: Record<string, unknown> & { idempotency_key?: string }):
        | IdempotencyScope
        | undefined =>
        body.idempotency_key === undefined ? undefined : {
          entityKind: "worker",
          entityId: workerId,
          key: body.idempotency_key,
          requestHash: requestHash(command, body)
        }

      /** Appends one event to a locked worker and projects it; returns the new row and seqs. */
      const appendLocked = (
        row: WorkerRow,
        type: WorkerEventType,
        payload: JsonObject,
        occurredAtMs: number,
        nowMs: number,
        requestId: string | undefined
      ) =>
        Effect.gen(function*() {
          const seq = row.lastSeq + 1
          const record = yield* store.appendWorkerEvent({
            entityId: row.workerId,
            ownerUserId: row.ownerUserId,
            seq,
            type,
            payload,
            occurredAtMs,
            requestId
          })
          const projected = yield* projector.applyWorker(record, nowMs)
          const heartbeatAt = type === "worker.heartbeat" ? record.occurredAtMs : undefined
          yield* store.setWorkerState(row.workerId, projected.doc.status, seq, heartbeatAt)
          const next: WorkerRow = {
            ...row,
            status: projected.doc.status,
            lastSeq: seq,
            lastHeartbeatAtMs: heartbeatAt === undefined
              ? row.lastHeartbeatAtMs
              : Math.max(row.lastHeartbeatAtMs ?? heartbeatAt, heartbeatAt)
          }
          return { row: next, seq, summary: projected.doc, topicSeqs: projected.topicSeqs }
        })

      const lockOr404 = (workerId: string) =>
        Effect.flatMap(store.lockWorker(workerId), (row) =>
          row ? Effect.succeed(row) : Effect.fail(workerNotFound(workerId)))

      const terminal409 = (row: WorkerRow) =>
        isTerminalWorkerStatus(row.status) ? Effect.fail(workerTerminal(row.workerId, row.status)) : Effect.void

      /** The envelope of every command on an existing worker: transaction → lock (404) → idempotency. */
      const onLockedWorker = (
        command: string,
        workerId: string,
        scope: IdempotencyScope | undefined,
        body: (row: WorkerRow) => Effect.Effect<CommandResult, ApiError | SqlError | JournalEntryTooLarge>
      ) =>
        runner.transact(
          command,
          Effect.flatMap(lockOr404(workerId), (row) => idempotency.guard(scope, body(row)))
        )

      /** An append-style command (event, heartbeat) alone: its own transaction. */
      const appendCommand = (item: WorkerGroupItem, now: number) =>
        onLockedWorker(item.type, item.workerId, item.scope, (row) =>
          Effect.gen(function*() {
            yield* terminal409(row)
            const out = yield* appendLocked(row, item.type, item.payload, item.occurredAtMs, now, item.requestId)
            return { status: 201, body: { worker_id: item.workerId, seq: out.seq, topic_seqs: out.topicSeqs } }
          }))

      // Group commit: concurrent event and heartbeat commands share transactions
      // (WorkerEventBatches answers each exactly as its own transaction would).
      const committer = yield* makeCommandGroups<PendingWorkerCommand>({
        maxGroup: MAX_WORKER_GROUP,
        alone: (item) => appendCommand(item, item.now),
        together: batches.commitGroup
      })

      /** Commits a validated append-style command: alone, or grouped with concurrent ones. */
      const submitAppend = (command: string, item: WorkerGroupItem, now: number) =>
        Effect.annotateCurrentSpan({ "khala.worker_id": item.workerId, "khala.command": command }).pipe(
          Effect.andThen(committer.submit({ ...item, now }))
        )

      const summaryOf = (workerId: string) =>
        Effect.map(readModels.workerSummary(workerId), (d: StoredDoc<CodexWorkerSummary> | undefined) => d?.doc)

      const withSeqs = (snapshot: JsonObject, topicSeqs: TopicSeqs): JsonObject => ({ ...snapshot, topic_seqs: topicSeqs })
      /** The response of a command that appended: the new snapshot plus the seqs it produced. */
      const appendedSnapshot = (out: { row: WorkerRow; summary: CodexWorkerSummary; topicSeqs: TopicSeqs }, nowMs: number) =>
        withSeqs(snapshotJson(out.row, out.summary, nowMs), out.topicSeqs)

      const create = Effect.fn("WorkerCommands.create")(function*(raw: unknown, requestId: string | undefined) {
        const body = yield* decodeBody(CreateWorkerBody, raw)
        yield* checkId("worker_id", body.worker_id)
        yield* checkId("owner_user_id", body.owner_user_id)
        const metadata = yield* checkPayload(body.metadata)
        const now = yield* Clock.currentTimeMillis
        const scope = scopeOf(body.worker_id, "worker.create", body)
        return yield* runner.transact(
          "worker.create",
          Effect.gen(function*() {
            const inserted = yield* store.insertWorker(body.worker_id, body.owner_user_id, now)
            const row = inserted ?? (yield* lockOr404(body.worker_id))
            return yield* idempotency.guard(
              scope,
              Effect.gen(function*() {
                if (row.ownerUserId !== body.owner_user_id) {
                  return yield* apiError("worker_owner_conflict", `worker ${row.workerId} belongs to another owner`, {
                    worker_id: row.workerId
                  })
                }
                if (inserted) {
                  const out = yield* appendLocked(row, "worker.created", { metadata }, now, now, requestId)
                  return { status: 201, body: appendedSnapshot(out, now) }
                }
                if (isTerminalWorkerStatus(row.status)) {
                  const out = yield* appendLocked(row, "worker.resumed", {}, now, now, requestId)
                  return { status: 200, body: appendedSnapshot(out, now) }
                }
                return { status: 200, body: withSeqs(snapshotJson(row, yield* summaryOf(row.workerId), now), {}) }
              })
            )
          })
        )
      })

      const appendEvent = Effect.fn("WorkerCommands.appendEvent")(function*(
        workerId: string,
        raw: unknown,
        requestId: string | undefined
      ) {
        yield* checkId("worker_id", workerId)
        const body = yield* decodeBody(WorkerEventBody, raw)
        if (!isWorkerTaxonomyType(body.event_type)) {
          return yield* apiError("invalid_request", `event_type must be one of ${WORKER_TAXONOMY.join(", ")}`, {
            event_type: body.event_type
          })
        }
        const payload = yield* checkPayload(body.payload)
        const now = yield* Clock.currentTimeMillis
        const at = yield* occurredAt(body.occurred_at, now)
        return yield* submitAppend("events", {
          workerId,
          type: body.event_type,
          payload,
          occurredAtMs: at,
          scope: scopeOf(workerId, "worker.event", body),
          requestId
        }, now)
      })

      const heartbeat = Effect.fn("WorkerCommands.heartbeat")(function*(
        workerId: string,
        raw: unknown,
        requestId: string | undefined
      ) {
        yield* checkId("worker_id", workerId)
        const body = yield* decodeBody(HeartbeatBody, raw ?? {})
        const payload = yield* checkPayload(body.payload)
        const now = yield* Clock.currentTimeMillis
        const at = yield* occurredAt(body.occurred_at, now)
        return yield* submitAppend("heartbeat", {
          workerId,
          type: "worker.heartbeat",
          payload,
          occurredAtMs: at,
          scope: scopeOf(workerId, "worker.heartbeat", body),
          requestId
        }, now)
      })

      const stop = Effect.fn("WorkerCommands.stop")(function*(workerId: string, raw: unknown, requestId: string | undefined) {
        yield* checkId("worker_id", workerId)
        const body = yield* decodeBody(StopBody, raw ?? {})
        const now = yield* Clock.currentTimeMillis
        const scope = scopeOf(workerId, "worker.stop", body)
        return yield* onLockedWorker("worker.stop", workerId, scope, (row) =>
          Effect.gen(function*() {
            yield* terminal409(row)
            const payload: JsonObject = body.reason === undefined ? {} : { reason: body.reason }
            const out = yield* appendLocked(row, "worker.stopped", payload, now, now, requestId)
            return { status: 200, body: appendedSnapshot(out, now) }
          }))
      })

      const resume = Effect.fn("WorkerCommands.resume")(function*(
        workerId: string,
        raw: unknown,
        requestId: string | undefined
      ) {
        yield* checkId("worker_id", workerId)
        const body = yield* decodeBody(ResumeBody, raw ?? {})
        const now = yield* Clock.currentTimeMillis
        const scope = scopeOf(workerId, "worker.resume", body)
        return yield* onLockedWorker("worker.resume", workerId, scope, (row) =>
          Effect.gen(function*() {
            if (!isTerminalWorkerStatus(row.status)) {
              return { status: 200, body: withSeqs(snapshotJson(row, yield* summaryOf(workerId), now), {}) }
            }
            const out = yield* appendLocked(row, "worker.resumed", {}, now, now, requestId)
            return { status: 200, body: appendedSnapshot(out, now) }
          }))
      })

      const get = Effect.fn("WorkerCommands.get")(function*(workerId: string) {
        yield* checkId("worker_id", workerId)
        const row = yield* orInternal(store.getWorker(workerId))
        if (!row) return yield* apiError("worker_not_found", `worker ${workerId} does not exist`, { worker_id: workerId })
        const summary = yield* orInternal(summaryOf(workerId))
        return snapshotJson(row, summary, yield* Clock.currentTimeMillis)
      })

      const list = Effect.fn("WorkerCommands.list")(function*(ownerUserId: string | undefined) {
        if (ownerUserId !== undefined) yield* checkId("owner_user_id", ownerUserId)
        const rows = yield* orInternal(store.listWorkers(ownerUserId))
        const docs = yield* orInternal(readModels.workerSummaries(rows.map((r) => r.workerId)))
        const now = yield* Clock.currentTimeMillis
        return { workers: rows.map((r) => snapshotJson(r, docs.get(r.workerId)?.doc, now)) }
      })

      return WorkerCommands.of({ create, get, list, appendEvent, heartbeat, stop, resume })
    })
  )
}
