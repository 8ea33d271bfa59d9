/**
 * Every `khala_` metric, defined once. Exposed on `GET /metrics` (Prometheus text).
 */
import { Effect, Metric } from "effect"

const ms = Metric.exponentialBoundaries({ start: 0.5, factor: 2, count: 14 })

export const commandsTotal = Metric.counter("khala_commands_total", {
  description: "HTTP commands by command and outcome (ok, replayed, or the error code)",
  incremental: true
})
export const commandCommitDurationMs = Metric.histogram("khala_command_commit_duration_ms", {
  description: "Duration of a command's transaction, commit included",
  boundaries: ms
})
export const projectionWriteFailures = Metric.counter("khala_projection_write_failures_total", {
  description: "Command transactions that failed with a database error",
  incremental: true
})
export const projectionDriftTotal = Metric.counter("khala_projection_drift_total", {
  description: "Documents found to differ from a recomputation of their authority history",
  incremental: true
})
export const projectionLagMs = Metric.gauge("khala_projection_lag_ms", {
  description: "Commit-to-notification lag of the last journal notification this node received"
})
export const replayDurationMs = Metric.histogram("khala_replay_duration_ms", {
  description: "Time from Subscribe to CaughtUp per subscription",
  boundaries: ms
})
export const feedReconcileWakeups = Metric.counter("khala_feed_reconcile_wakeups_total", {
  description: "Topic actors the reconciler woke: still behind the journal head read one interval earlier (lost or late notifications)"
})
export const commandGroupEvents = Metric.histogram("khala_command_group_events", {
  description: "Single-event commands (run events, worker events and heartbeats) per group transaction",
  boundaries: Metric.exponentialBoundaries({ start: 1, factor: 2, count: 11 })
})
export const connectionsGauge = Metric.gauge("khala_ws_connections", { description: "Open WebSocket connections" })
export const subscriptionsGauge = Metric.gauge("khala_ws_subscriptions", { description: "Active topic subscriptions" })
export const deliveredFrames = Metric.counter("khala_delivered_frames_total", {
  description: "Frames written to WebSocket connections",
  incremental: true
})
export const deliveredBytes = Metric.counter("khala_delivered_bytes_total", {
  description: "Bytes written to WebSocket connections",
  incremental: true
})
export const slowConsumerEvictions = Metric.counter("khala_slow_consumer_evictions_total", {
  description: "Connections closed with slow_consumer",
  incremental: true
})
export const authFailures = Metric.counter("khala_auth_failures_total", {
  description: "Authentication failures by code",
  incremental: true
})
export const tokenMintFailures = Metric.counter("khala_token_mint_failures_total", {
  description: "Token mint requests that failed",
  incremental: true
})
export const topicQueueDepth = Metric.gauge("khala_topic_queue_depth", {
  description: "Entries waiting in topic actor mailboxes (sum over topics)"
})
export const journalCompactedEntries = Metric.counter("khala_journal_compacted_entries_total", {
  description: "Journal entries removed by retention",
  incremental: true
})

/**
 * Frames and bytes handed to sockets and not yet added to `khala_delivered_frames_total` /
 * `khala_delivered_bytes_total`: one node-wide tally, so the delivery hot path runs no effect per
 * write. `flushDelivered` moves it into the counters (every second, and before `/metrics` renders).
 */
export const deliveredTally = { frames: 0, bytes: 0 }

export const flushDelivered = Effect.suspend(() => {
  const { frames, bytes } = deliveredTally
  deliveredTally.frames = 0
  deliveredTally.bytes = 0
  return frames === 0 ? Effect.void : Metric.update(deliveredFrames, frames).pipe(Effect.andThen(Metric.update(deliveredBytes, bytes)))
})

// Process gauges, sampled every few seconds (layers/ProcessMetrics.ts): what an operator compares
// with `khala_ws_connections` to see memory per connection, and event-loop stalls.
export const residentMemoryBytes = Metric.gauge("khala_process_resident_memory_bytes", {
  description: "Resident set size of the daemon process (not its embedded Postgres)"
})
export const heapUsedBytes = Metric.gauge("khala_process_heap_used_bytes", {
  description: "V8 heap in use (live objects and garbage not yet collected)"
})
export const heapTotalBytes = Metric.gauge("khala_process_heap_total_bytes", {
  description: "V8 heap reserved from the OS"
})
export const externalMemoryBytes = Metric.gauge("khala_process_external_memory_bytes", {
  description: "Memory of buffers and other objects outside the V8 heap"
})
export const eventLoopDelayMaxMs = Metric.gauge("khala_event_loop_delay_max_ms", {
  description: "Longest event-loop stall (lateness of a 100 ms probe timer) since the previous sample"
})
