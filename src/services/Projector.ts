/**
 * Projector: the single writer of read models, the journal and projection checkpoints.
 *
 * Runs inside the command's transaction: previous document + committed event → next document
 * (pure, `domain/*Projection.ts`); the read model is upserted with `doc_version + 1` only when the
 * encoded content changed; journal entries go to every affected topic (SPEC §3); the checkpoint
 * records the last applied entity seq and the document hash.
 */
import { create } from "@bufbuild/protobuf"
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { Context, Effect, Layer } from "effect"
import { SqlClient, type Statement } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import {
  type CodexWorkerSummary,
  type RunSummary,
  RunEventSchema,
  WorkerEventSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import type { Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import {
  decodeRunSummary,
  decodeWorkerSummary,
  encodeRunSummary,
  encodeWorkerSummary,
  PROJECTION_VERSION,
  sha256Hex
} from "../domain/Documents.ts"
import { projectRun, runDocKey, runEventDocKey, type RunEventRecord } from "../domain/RunProjection.ts"
import { runTopic, userRunsTopic, userWorkersTopic, workerTopic } from "../domain/Topic.ts"
import {
  isWorkerTaxonomyType,
  projectWorker,
  workerDocKey,
  workerEventDocKey,
  type WorkerEventRecord
} from "../domain/WorkerProjection.ts"
import { Journal, type JournalDraft, type JournalEntryTooLarge, type TopicSeqs } from "./Journal.ts"
import { byteaArray, int4Array, int8Array, textArray } from "./SqlArrays.ts"

export interface Projected<Doc> {
  readonly doc: Doc
  readonly docVersion: number
  readonly changed: boolean
  readonly topicSeqs: TopicSeqs
}

/** `notify: false` (rebuild) skips the per-topic notifications; the caller announces the epoch instead. */
export interface ApplyOptions {
  readonly notify: boolean
}

export const SUMMARY_KIND = { run: "run.summary", worker: "worker.summary" } as const

/** A document as stored: its version, bytes, content hash and decoded value. */
export interface StoredDoc<Doc> {
  readonly docVersion: number
  readonly bytes: Uint8Array
  /** sha256 (hex) recorded for `bytes` (a step's is computed when first read). */
  readonly hash: string
  readonly doc: Doc
}

const sameBytes = (a: Uint8Array, b: Uint8Array): boolean => {
  if (a.byteLength !== b.byteLength) return false
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false
  return true
}

/** How one entity kind projects: everything `projectStep` needs besides the previous document. */
export interface ProjectionSpec<Doc> {
  readonly entityKind: "run" | "worker"
  readonly entityId: string
  readonly ownerUserId: string
  readonly seq: number
  readonly occurredAtMs: number
  readonly docKey: string
  readonly encode: (doc: Doc) => Uint8Array
  readonly project: (prev: Doc | undefined) => Doc
  readonly summaryBody: (doc: Doc) => Update["body"]
  /** The event's own journal entry (on the entity topic), if it has one. */
  readonly eventDraft: JournalDraft | undefined
  readonly summaryTopics: ReadonlyArray<string>
}

/** The outcome of applying one event to a document, before anything is written. */
export interface ProjectionStep<Doc> extends StoredDoc<Doc> {
  readonly changed: boolean
  /** The event's entry, then a summary entry per summary topic if the content changed. */
  readonly drafts: ReadonlyArray<JournalDraft>
}

/** previous stored document + event → next document and its journal drafts (pure). */
export const projectStep = <Doc>(spec: ProjectionSpec<Doc>, prev: StoredDoc<Doc> | undefined): ProjectionStep<Doc> => {
  const doc = spec.project(prev?.doc)
  const bytes = spec.encode(doc)
  // Other bytes than the stored document's are another document. Equal bytes are compared by hash
  // too: the hash recorded for a stored row is not necessarily its bytes' own (a row altered
  // behind Khala's back). A step's hash is computed only when read (the last step of an entity
  // per batch is stored with it): hashing every step was a few percent of the commit path.
  let hash: string | undefined
  const changed = prev === undefined || !sameBytes(bytes, prev.bytes) || (hash = sha256Hex(bytes)) !== prev.hash
  const docVersion = (prev?.docVersion ?? 0) + (changed ? 1 : 0)
  const drafts: Array<JournalDraft> = spec.eventDraft ? [spec.eventDraft] : []
  if (changed) {
    for (const topic of spec.summaryTopics) {
      drafts.push({
        topic,
        kind: SUMMARY_KIND[spec.entityKind],
        docKey: spec.docKey,
        docVersion,
        occurredAtMs: spec.occurredAtMs,
        body: spec.summaryBody(doc),
        bodyPb: bytes // the stored document's bytes are the body's encoding: not encoded again
      })
    }
  }
  return {
    doc,
    bytes,
    get hash() {
      return (hash ??= sha256Hex(bytes))
    },
    changed,
    docVersion,
    drafts
  }
}

/** The projection of one run event. */
export const runProjectionSpec = (event: RunEventRecord): ProjectionSpec<RunSummary> => ({
  entityKind: "run",
  entityId: event.runId,
  ownerUserId: event.ownerUserId,
  seq: event.seq,
  occurredAtMs: event.occurredAtMs,
  docKey: runDocKey(event.runId),
  encode: encodeRunSummary,
  project: (prev) => projectRun(prev, event),
  summaryBody: (doc) => ({ case: "runSummary", value: doc }),
  eventDraft: {
    topic: runTopic(event.runId),
    kind: "run.event",
    docKey: runEventDocKey(event.runId, event.seq),
    docVersion: 1,
    occurredAtMs: event.occurredAtMs,
    body: {
      case: "runEvent",
      value: create(RunEventSchema, {
        runId: event.runId,
        seq: BigInt(event.seq),
        type: event.type,
        payload: event.payload,
        occurredAt: timestampFromMs(event.occurredAtMs)
      })
    }
  },
  summaryTopics: [runTopic(event.runId), userRunsTopic(event.ownerUserId)]
})

/** The projection of one worker event. */
export const workerProjectionSpec = (event: WorkerEventRecord): ProjectionSpec<CodexWorkerSummary> => ({
  entityKind: "worker",
  entityId: event.workerId,
  ownerUserId: event.ownerUserId,
  seq: event.seq,
  occurredAtMs: event.occurredAtMs,
  docKey: workerDocKey(event.workerId),
  encode: encodeWorkerSummary,
  project: (prev) => projectWorker(prev, event),
  summaryBody: (doc) => ({ case: "workerSummary", value: doc }),
  // Authority-only events (worker.created/resumed) show only as summary updates.
  eventDraft: isWorkerTaxonomyType(event.type)
    ? {
      topic: workerTopic(event.workerId),
      kind: event.type,
      docKey: workerEventDocKey(event.workerId, event.seq),
      docVersion: 1,
      occurredAtMs: event.occurredAtMs,
      body: {
        case: "workerEvent",
        value: create(WorkerEventSchema, {
          workerId: event.workerId,
          seq: BigInt(event.seq),
          type: event.type,
          payload: event.payload,
          occurredAt: timestampFromMs(event.occurredAtMs)
        })
      }
    }
    : undefined,
  summaryTopics: [workerTopic(event.workerId), userWorkersTopic(event.ownerUserId)]
})

/** A read-model row as set-based writers (batches, rebuild pages) upsert it. */
export type DocumentRow = {
  readonly doc_key: string
  readonly kind: string
  readonly entity_id: string
  readonly owner_user_id: string
  readonly doc_version: number
  readonly document: Uint8Array
  readonly doc_hash: string
}

/** A checkpoint row as set-based writers upsert it. */
export type CheckpointRow = {
  readonly entity_kind: string
  readonly entity_id: string
  readonly last_seq: number
  readonly doc_hash: string
  readonly projection_version: number
}

/**
 * The upsert of documents (distinct doc keys). The rows go as one array per column (`unnest`):
 * the statement text and its seven parameters are the same for every size, so it stays prepared,
 * where a row list binds seven parameters per row.
 */
const documentsUpsert = (sql: SqlClient.SqlClient, rows: ReadonlyArray<DocumentRow>) =>
  sql`
    INSERT INTO runtime.read_models (doc_key, kind, entity_id, owner_user_id, doc_version, document, doc_hash)
    SELECT * FROM unnest(${textArray(rows.map((r) => r.doc_key))}, ${textArray(rows.map((r) => r.kind))},
                         ${textArray(rows.map((r) => r.entity_id))}, ${textArray(rows.map((r) => r.owner_user_id))},
                         ${int8Array(rows.map((r) => BigInt(r.doc_version)))}, ${byteaArray(rows.map((r) => r.document))},
                         ${textArray(rows.map((r) => r.doc_hash))})
    ON CONFLICT (doc_key) DO UPDATE SET doc_version = EXCLUDED.doc_version, document = EXCLUDED.document,
      doc_hash = EXCLUDED.doc_hash, updated_at = clock_timestamp()`

/** The upsert of checkpoints (distinct entities), column arrays as `documentsUpsert`. */
const checkpointsUpsert = (sql: SqlClient.SqlClient, rows: ReadonlyArray<CheckpointRow>) =>
  sql`
    INSERT INTO runtime.projection_checkpoints (entity_kind, entity_id, last_seq, doc_hash, projection_version)
    SELECT * FROM unnest(${textArray(rows.map((r) => r.entity_kind))}, ${textArray(rows.map((r) => r.entity_id))},
                         ${int8Array(rows.map((r) => BigInt(r.last_seq)))}, ${textArray(rows.map((r) => r.doc_hash))},
                         ${int4Array(rows.map((r) => r.projection_version))})
    ON CONFLICT (entity_kind, entity_id) DO UPDATE SET last_seq = EXCLUDED.last_seq, doc_hash = EXCLUDED.doc_hash,
      projection_version = EXCLUDED.projection_version, updated_at = clock_timestamp()`

/**
 * Upserts the final documents and the checkpoints of a projected set — and `also`, a batch's
 * write of its entity rows — in one statement (the others as data-modifying CTEs: two round trips
 * fewer per batch); nothing for none. Every row these write for an entity is written only under
 * that entity row's lock, taken earlier in the transaction, so the order of the writes inside the
 * statement cannot deadlock with another writer.
 */
export const upsertProjection = (
  sql: SqlClient.SqlClient,
  documents: ReadonlyArray<DocumentRow>,
  checkpoints: ReadonlyArray<CheckpointRow>,
  also?: Statement.Statement<unknown>
) => {
  const parts: Array<Statement.Statement<unknown>> = []
  if (documents.length > 0) parts.push(documentsUpsert(sql, documents))
  if (also !== undefined) parts.push(also)
  if (checkpoints.length > 0) parts.push(checkpointsUpsert(sql, checkpoints))
  switch (parts.length) {
    case 0:
      return Effect.void
    case 1:
      return Effect.asVoid(parts[0]!)
    case 2:
      return Effect.asVoid(sql`WITH a AS (${parts[0]!}) ${parts[1]!}`)
    default:
      return Effect.asVoid(sql`WITH a AS (${parts[0]!}), b AS (${parts[1]!}) ${parts[2]!}`)
  }
}

/**
 * Many events projected together (a batch, a rebuild page), in order, from the stored documents:
 * the journal drafts one event at a time would give (with the index of the event each came
 * from), and the final document of every entity some event changed plus every entity's
 * checkpoint — one row each, however many of its events the set holds. The caller appends the
 * drafts and upserts the rows (`upsertProjection`).
 */
export const projectSet = <Doc>(
  sql: SqlClient.SqlClient,
  specs: ReadonlyArray<ProjectionSpec<Doc>>,
  decode: (bytes: Uint8Array) => Doc
) =>
  Effect.gen(function*() {
    const drafts: Array<JournalDraft> = []
    const draftEvent: Array<number> = []
    const documents: Array<DocumentRow> = []
    const checkpoints: Array<CheckpointRow> = []
    if (specs.length === 0) return { drafts, draftEvent, documents, checkpoints }
    const kind = specs[0]!.entityKind
    const docs = new Map<string, StoredDoc<Doc>>()
    for (
      const r of yield* sql<{ doc_key: string; doc_version: bigint; document: Uint8Array; doc_hash: string }>`
      SELECT doc_key, doc_version, document, doc_hash FROM runtime.read_models
      WHERE doc_key = ANY(${textArray([...new Set(specs.map((s) => s.docKey))])})`
    ) docs.set(r.doc_key, { docVersion: Number(r.doc_version), bytes: r.document, hash: r.doc_hash, doc: decode(r.document) })
    // Per entity, in first-seen order: its last step, whether any step changed the document.
    const finals = new Map<string, { spec: ProjectionSpec<Doc>; step: ProjectionStep<Doc>; changed: boolean }>()
    specs.forEach((spec, i) => {
      const step = projectStep(spec, docs.get(spec.docKey))
      docs.set(spec.docKey, step)
      for (const d of step.drafts) {
        drafts.push(d)
        draftEvent.push(i)
      }
      const prev = finals.get(spec.docKey)
      finals.set(spec.docKey, { spec, step, changed: step.changed || prev?.changed === true })
    })
    for (const { spec, step, changed } of finals.values()) {
      if (changed) {
        documents.push({
          doc_key: spec.docKey,
          kind: SUMMARY_KIND[kind],
          entity_id: spec.entityId,
          owner_user_id: spec.ownerUserId,
          doc_version: step.docVersion,
          document: step.bytes,
          doc_hash: step.hash
        })
      }
      checkpoints.push({
        entity_kind: kind,
        entity_id: spec.entityId,
        last_seq: spec.seq,
        doc_hash: step.hash,
        projection_version: PROJECTION_VERSION
      })
    }
    return { drafts, draftEvent, documents, checkpoints }
  })

export class Projector extends Context.Service<Projector, {
  readonly applyRun: (
    event: RunEventRecord,
    committedAtMs: number,
    options?: ApplyOptions
  ) => Effect.Effect<Projected<RunSummary>, SqlError | JournalEntryTooLarge>
  readonly applyWorker: (
    event: WorkerEventRecord,
    committedAtMs: number,
    options?: ApplyOptions
  ) => Effect.Effect<Projected<CodexWorkerSummary>, SqlError | JournalEntryTooLarge>
  /**
   * Many committed events of one kind, in order, set-based (rebuild): the same documents, journal
   * entries and seqs, and final checkpoints as `applyRun`/`applyWorker` one event at a time, with
   * a fixed number of statements — each document and topic row is written once, not once per event
   * (one transaction rewriting one row n times leaves a version chain that every later access walks:
   * quadratic in the length of a run).
   */
  readonly applyAll: (
    events: { readonly _tag: "runs"; readonly events: ReadonlyArray<RunEventRecord> } | {
      readonly _tag: "workers"
      readonly events: ReadonlyArray<WorkerEventRecord>
    },
    committedAtMs: number,
    options?: ApplyOptions
  ) => Effect.Effect<void, SqlError | JournalEntryTooLarge>
}>()("khala/services/Projector") {
  static readonly layer = Layer.effect(
    Projector,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const journal = yield* Journal

      /** The shared step: load → project → upsert if changed → journal → checkpoint. */
      const apply = <Doc>(
        spec: ProjectionSpec<Doc>,
        decode: (bytes: Uint8Array) => Doc,
        committedAtMs: number,
        options: ApplyOptions | undefined
      ) =>
        Effect.gen(function*() {
          const [prevRow] = yield* sql<{ doc_version: bigint; document: Uint8Array; doc_hash: string }>`
            SELECT doc_version, document, doc_hash FROM runtime.read_models WHERE doc_key = ${spec.docKey}`
          const step = projectStep(
            spec,
            prevRow
              ? { docVersion: Number(prevRow.doc_version), bytes: prevRow.document, hash: prevRow.doc_hash, doc: decode(prevRow.document) }
              : undefined
          )
          // The checkpoint always; the read model only when its content changed — one statement.
          const checkpoint = sql`
            INSERT INTO runtime.projection_checkpoints (entity_kind, entity_id, last_seq, doc_hash, projection_version)
            VALUES (${spec.entityKind}, ${spec.entityId}, ${spec.seq}, ${step.hash}, ${PROJECTION_VERSION})
            ON CONFLICT (entity_kind, entity_id) DO UPDATE SET last_seq = EXCLUDED.last_seq, doc_hash = EXCLUDED.doc_hash,
              projection_version = EXCLUDED.projection_version, updated_at = clock_timestamp()`
          if (step.changed) {
            yield* sql`
              WITH rm AS (
                INSERT INTO runtime.read_models (doc_key, kind, entity_id, owner_user_id, doc_version, document, doc_hash)
                VALUES (${spec.docKey}, ${SUMMARY_KIND[spec.entityKind]}, ${spec.entityId}, ${spec.ownerUserId},
                        ${step.docVersion}, ${step.bytes}, ${step.hash})
                ON CONFLICT (doc_key) DO UPDATE SET doc_version = EXCLUDED.doc_version, document = EXCLUDED.document,
                  doc_hash = EXCLUDED.doc_hash, updated_at = clock_timestamp()
              )
              ${checkpoint}`
          } else {
            yield* checkpoint
          }
          const topicSeqs = yield* journal.append(step.drafts, committedAtMs, options)
          return { doc: step.doc, docVersion: step.docVersion, changed: step.changed, topicSeqs }
        })

      const applyRun = Effect.fn("Projector.applyRun")(function*(
        event: RunEventRecord,
        committedAtMs: number,
        options?: ApplyOptions
      ) {
        yield* Effect.annotateCurrentSpan({ "khala.run_id": event.runId, "khala.seq": event.seq })
        return yield* apply(runProjectionSpec(event), decodeRunSummary, committedAtMs, options)
      })

      const applyWorker = Effect.fn("Projector.applyWorker")(function*(
        event: WorkerEventRecord,
        committedAtMs: number,
        options?: ApplyOptions
      ) {
        yield* Effect.annotateCurrentSpan({ "khala.worker_id": event.workerId, "khala.seq": event.seq })
        return yield* apply(workerProjectionSpec(event), decodeWorkerSummary, committedAtMs, options)
      })

      const applyAllOf = <Doc>(
        specs: ReadonlyArray<ProjectionSpec<Doc>>,
        decode: (bytes: Uint8Array) => Doc,
        committedAtMs: number,
        options: ApplyOptions | undefined
      ) =>
        Effect.gen(function*() {
          const set = yield* projectSet(sql, specs, decode)
          yield* upsertProjection(sql, set.documents, set.checkpoints)
          // Seqs are allocated per topic in draft order: what one append per event would give.
          if (set.drafts.length > 0) yield* journal.appendAll(set.drafts, committedAtMs, options)
        })

      const applyAll = Effect.fn("Projector.applyAll")(function*(
        events: { readonly _tag: "runs"; readonly events: ReadonlyArray<RunEventRecord> } | {
          readonly _tag: "workers"
          readonly events: ReadonlyArray<WorkerEventRecord>
        },
        committedAtMs: number,
        options?: ApplyOptions
      ) {
        yield* Effect.annotateCurrentSpan({ "khala.events": events.events.length })
        return yield* events._tag === "runs"
          ? applyAllOf(events.events.map(runProjectionSpec), decodeRunSummary, committedAtMs, options)
          : applyAllOf(events.events.map(workerProjectionSpec), decodeWorkerSummary, committedAtMs, options)
      })

      return Projector.of({ applyRun, applyWorker, applyAll })
    })
  )
}
