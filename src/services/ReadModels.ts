/**
 * ReadModels: reads of the projected documents (`runtime.read_models`) for the HTTP surface and
 * the snapshot endpoint. Never writes (the Projector is the single writer).
 */
import { Context, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import type { CodexWorkerSummary, RunSummary } from "../gen/openagents/sync/v1/documents_pb.ts"
import { decodeRunSummary, decodeWorkerSummary, runSummaryJson, workerSummaryJson } from "../domain/Documents.ts"
import type { JsonValue } from "../domain/Json.ts"
import { runDocKey } from "../domain/RunProjection.ts"
import { formatTopic, type Topic } from "../domain/Topic.ts"
import { workerDocKey } from "../domain/WorkerProjection.ts"
import { SUMMARY_KIND } from "./Projector.ts"

export interface StoredDoc<D> {
  readonly doc: D
  readonly docVersion: number
}

export interface SnapshotDocument {
  readonly doc_key: string
  readonly doc_version: number
  readonly kind: string
  readonly document: JsonValue
}

export interface TopicSnapshot {
  readonly topic: string
  readonly epoch: string
  readonly head_seq: number
  readonly floor_seq: number
  readonly documents: ReadonlyArray<SnapshotDocument>
}

type DocRow = { doc_key: string; kind: string; doc_version: bigint; document: Uint8Array }

const toSnapshotDocument = (r: DocRow): SnapshotDocument => ({
  doc_key: r.doc_key,
  doc_version: Number(r.doc_version),
  kind: r.kind,
  document: r.kind === SUMMARY_KIND.run
    ? runSummaryJson(decodeRunSummary(r.document))
    : workerSummaryJson(decodeWorkerSummary(r.document))
})

export class ReadModels extends Context.Service<ReadModels, {
  readonly runSummary: (runId: string) => Effect.Effect<StoredDoc<RunSummary> | undefined, SqlError>
  readonly workerSummary: (workerId: string) => Effect.Effect<StoredDoc<CodexWorkerSummary> | undefined, SqlError>
  readonly workerSummaries: (
    workerIds: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyMap<string, StoredDoc<CodexWorkerSummary>>, SqlError>
  /** The topic's documents and the head_seq they reflect, read in one REPEATABLE READ snapshot. */
  readonly snapshot: (topic: Topic) => Effect.Effect<TopicSnapshot, SqlError>
}>()("khala/services/ReadModels") {
  static readonly layer = Layer.effect(
    ReadModels,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient

      const one = <D>(docKey: string, decode: (b: Uint8Array) => D) =>
        sql<{ doc_version: bigint; document: Uint8Array }>`
          SELECT doc_version, document FROM runtime.read_models WHERE doc_key = ${docKey}`.pipe(
          Effect.map(([r]) => (r ? { doc: decode(r.document), docVersion: Number(r.doc_version) } : undefined))
        )

      const workerSummaries = (workerIds: ReadonlyArray<string>) =>
        workerIds.length === 0
          ? Effect.succeed(new Map<string, StoredDoc<CodexWorkerSummary>>())
          : sql<{ entity_id: string; doc_version: bigint; document: Uint8Array }>`
            SELECT entity_id, doc_version, document FROM runtime.read_models
            WHERE doc_key IN ${sql.in(workerIds.map(workerDocKey))}`.pipe(
            Effect.map((rows) =>
              new Map(rows.map((r) => [r.entity_id, {
                doc: decodeWorkerSummary(r.document),
                docVersion: Number(r.doc_version)
              }]))
            )
          )

      const documentsOf = (topic: Topic) => {
        switch (topic._tag) {
          case "Run":
            return sql<DocRow>`SELECT doc_key, kind, doc_version, document FROM runtime.read_models
              WHERE doc_key = ${runDocKey(topic.runId)}`
          case "Worker":
            return sql<DocRow>`SELECT doc_key, kind, doc_version, document FROM runtime.read_models
              WHERE doc_key = ${workerDocKey(topic.workerId)}`
          case "UserRuns":
            return sql<DocRow>`SELECT doc_key, kind, doc_version, document FROM runtime.read_models
              WHERE owner_user_id = ${topic.userId} AND kind = ${SUMMARY_KIND.run} ORDER BY doc_key`
          case "UserWorkers":
            return sql<DocRow>`SELECT doc_key, kind, doc_version, document FROM runtime.read_models
              WHERE owner_user_id = ${topic.userId} AND kind = ${SUMMARY_KIND.worker} ORDER BY doc_key`
        }
      }

      const snapshot = Effect.fn("ReadModels.snapshot")(function*(topic: Topic) {
        const name = formatTopic(topic)
        return yield* sql.withTransaction(Effect.gen(function*() {
          yield* sql`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY`
          const [pos] = yield* sql<{ epoch: string; head_seq: bigint | null; floor_seq: bigint | null }>`
            SELECT e.epoch, s.head_seq, s.floor_seq FROM runtime.sync_journal_epoch e
            LEFT JOIN runtime.sync_topic_sequences s ON s.topic = ${name}`
          const rows = yield* documentsOf(topic)
          const head = pos?.head_seq == null ? 0 : Number(pos.head_seq)
          return {
            topic: name,
            epoch: pos?.epoch ?? "",
            head_seq: head,
            floor_seq: pos?.floor_seq == null ? head + 1 : Number(pos.floor_seq),
            documents: rows.map(toSnapshotDocument)
          }
        }))
      })

      return ReadModels.of({
        runSummary: (runId) => one(runDocKey(runId), decodeRunSummary),
        workerSummary: (workerId) => one(workerDocKey(workerId), decodeWorkerSummary),
        workerSummaries,
        snapshot
      })
    })
  )
}
