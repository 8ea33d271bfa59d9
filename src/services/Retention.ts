/**
 * Retention: compaction of the journal by age (`retentionMaxAgeMs`) and per-topic count
 * (`retentionMaxEntriesPerTopic`), maintaining `floor_seq` (the first retained seq).
 *
 * A topic's new floor is the larger of "head − max entries + 1" and "one past the newest entry
 * older than the age limit", so the retained part is always a contiguous suffix (entries are
 * deleted by seq, never by timestamp alone). Each topic is compacted in its own short transaction
 * that locks only its sequence row, so compaction never deadlocks with writers. Runs every
 * `retentionIntervalMs` and on demand (`POST /internal/v1/khala/compact`).
 */
import { Clock, Context, Duration, Effect, Layer, Metric, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { KhalaConfig } from "../layers/Config.ts"
import { journalCompactedEntries } from "./Metrics.ts"

export interface CompactionReport {
  readonly topics_compacted: number
  readonly entries_deleted: number
  readonly duration_ms: number
}

export class Retention extends Context.Service<Retention, {
  readonly compact: Effect.Effect<CompactionReport, SqlError>
}>()("khala/services/Retention") {
  static readonly layer = Layer.effect(
    Retention,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const config = yield* KhalaConfig

      const compact = Effect.gen(function*() {
        const start = yield* Clock.currentTimeMillis
        const cutoff = new Date(start - config.retentionMaxAgeMs)
        const targets = yield* sql<{ topic: string; new_floor: bigint }>`
          WITH by_age AS (
            SELECT topic, max(seq) + 1 AS floor FROM runtime.sync_stream_events
            WHERE committed_at < ${cutoff} GROUP BY topic
          )
          SELECT s.topic, GREATEST(COALESCE(a.floor, 0), s.head_seq - ${config.retentionMaxEntriesPerTopic} + 1) AS new_floor
          FROM runtime.sync_topic_sequences s LEFT JOIN by_age a USING (topic)
          WHERE GREATEST(COALESCE(a.floor, 0), s.head_seq - ${config.retentionMaxEntriesPerTopic} + 1) > s.floor_seq
          ORDER BY s.topic`
        let deleted = 0
        for (const t of targets) {
          const n = yield* sql.withTransaction(Effect.gen(function*() {
            yield* sql`UPDATE runtime.sync_topic_sequences
              SET floor_seq = LEAST(GREATEST(floor_seq, ${t.new_floor}), head_seq + 1) WHERE topic = ${t.topic}`
            const rows = yield* sql<{ n: bigint }>`
              WITH d AS (
                DELETE FROM runtime.sync_stream_events e USING runtime.sync_topic_sequences s
                WHERE e.topic = ${t.topic} AND s.topic = e.topic AND e.seq < s.floor_seq RETURNING 1
              ) SELECT count(*) AS n FROM d`
            return Number(rows[0]?.n ?? 0)
          }))
          deleted += n
        }
        if (deleted > 0) yield* Metric.update(journalCompactedEntries, deleted)
        const end = yield* Clock.currentTimeMillis
        return { topics_compacted: targets.length, entries_deleted: deleted, duration_ms: end - start }
      }).pipe(Effect.withSpan("Retention.compact"))

      return Retention.of({ compact })
    })
  )
}

/** The periodic compaction job. */
export const RetentionJobLive = Layer.effectDiscard(
  Effect.gen(function*() {
    const retention = yield* Retention
    const config = yield* KhalaConfig
    yield* retention.compact.pipe(
      Effect.tap((r) => r.entries_deleted > 0 ? Effect.logInfo(`retention: ${JSON.stringify(r)}`) : Effect.void),
      Effect.catch((e) => Effect.logWarning("retention run failed", e)),
      Effect.repeat(Schedule.spaced(Duration.millis(config.retentionIntervalMs))),
      Effect.forkScoped
    )
  })
)
