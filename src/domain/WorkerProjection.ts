/**
 * Codex worker lifecycle (SPEC §2 "Codex workers", §10 "Workers") and the worker summary projection.
 *
 * Pure: the summary is a function of the worker's events only. Heartbeat bursts converge because
 * `last_heartbeat_at` only moves when a heartbeat's own `occurred_at` is at least
 * `HEARTBEAT_COALESCE_MS` past the recorded one — a rule on event data, never on the wall clock.
 * The exact last heartbeat lives in the authority row (`codex_workers.last_heartbeat_at`).
 */
import { create } from "@bufbuild/protobuf"
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt"
import {
  type CodexWorkerSummary,
  CodexWorkerSummarySchema,
  WorkerErrorSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import type { JsonObject } from "./Json.ts"

/** The six types a client may post to `/events` (SPEC §2 taxonomy). */
export const WORKER_TAXONOMY = [
  "worker.started",
  "worker.stopped",
  "worker.error",
  "worker.heartbeat",
  "worker.event",
  "worker.request.received"
] as const
/** Authority-only events: appended by commands, never posted, never journaled as events. */
export const WORKER_AUTHORITY_ONLY = ["worker.created", "worker.resumed"] as const

export type WorkerTaxonomyType = (typeof WORKER_TAXONOMY)[number]
export type WorkerEventType = WorkerTaxonomyType | (typeof WORKER_AUTHORITY_ONLY)[number]

export const isWorkerTaxonomyType = (s: unknown): s is WorkerTaxonomyType =>
  typeof s === "string" && (WORKER_TAXONOMY as ReadonlyArray<string>).includes(s)

export type WorkerStatus = "created" | "running" | "stopped" | "failed"

export const isTerminalWorkerStatus = (status: string) => status === "stopped" || status === "failed"

/** Heartbeats closer than this (by their own occurred_at) do not change the summary. */
export const HEARTBEAT_COALESCE_MS = 10_000

export interface WorkerEventRecord {
  readonly workerId: string
  readonly ownerUserId: string
  readonly seq: number
  readonly type: WorkerEventType
  readonly payload: JsonObject
  readonly occurredAtMs: number
}

export const workerDocKey = (workerId: string) => `codex_worker_summary:${workerId}`
export const workerEventDocKey = (workerId: string, seq: number) => `worker_event:${workerId}:${seq}`

const sortedCounts = (counts: { readonly [k: string]: bigint }, add: string): { [k: string]: bigint } => {
  const next: { [k: string]: bigint } = { ...counts, [add]: (counts[add] ?? 0n) + 1n }
  return Object.fromEntries(Object.keys(next).sort().map((k) => [k, next[k]!]))
}

const errorMessage = (payload: JsonObject): string => {
  const m = payload["message"] ?? payload["error"]
  return typeof m === "string" ? m : m === undefined ? "" : JSON.stringify(m)
}

/**
 * The status a worker has after an event, given its status before. The projection sets the
 * summary's status with it, and grouped commands judge the lifecycle of a later command with it
 * before anything is projected.
 */
export const workerStatusAfter = (current: string, type: WorkerEventType, payload: JsonObject): string => {
  switch (type) {
    case "worker.started":
    case "worker.resumed":
      return "running"
    case "worker.stopped":
      return "stopped"
    case "worker.error":
      return payload["fatal"] === true ? "failed" : current
    case "worker.created":
    case "worker.heartbeat":
    case "worker.event":
    case "worker.request.received":
      return current
  }
}

/** previous summary + event → next summary (returns `prev` itself when a heartbeat coalesces). */
export const projectWorker = (prev: CodexWorkerSummary | undefined, event: WorkerEventRecord): CodexWorkerSummary => {
  const at = timestampFromMs(event.occurredAtMs)
  const base = prev ?? create(CodexWorkerSummarySchema, {
    workerId: event.workerId,
    ownerUserId: event.ownerUserId,
    status: "created",
    createdAt: at,
    updatedAt: at
  })
  if (event.type === "worker.heartbeat") {
    const last = base.lastHeartbeatAt ? timestampMs(base.lastHeartbeatAt) : undefined
    if (last !== undefined && event.occurredAtMs - last < HEARTBEAT_COALESCE_MS) return base
    return create(CodexWorkerSummarySchema, { ...base, lastHeartbeatAt: at })
  }
  const next = create(CodexWorkerSummarySchema, {
    ...base,
    status: workerStatusAfter(base.status, event.type, event.payload),
    lastSeq: BigInt(event.seq),
    lastEventType: event.type,
    eventCounts: sortedCounts(base.eventCounts, event.type),
    updatedAt: at
  })
  switch (event.type) {
    case "worker.created": {
      const metadata = event.payload["metadata"]
      if (typeof metadata === "object" && metadata !== null && !Array.isArray(metadata)) next.metadata = metadata
      next.createdAt = at
      break
    }
    case "worker.started":
      next.startedAt = at
      break
    case "worker.stopped":
      next.stoppedAt = at
      break
    case "worker.error": {
      const fatal = event.payload["fatal"] === true
      next.error = create(WorkerErrorSchema, { message: errorMessage(event.payload), fatal, occurredAt: at })
      if (fatal) next.stoppedAt = at
      break
    }
    case "worker.resumed":
      next.error = undefined
      next.stoppedAt = undefined
      break
    case "worker.event":
    case "worker.request.received":
      break
  }
  return next
}

export const projectWorkerHistory = (events: ReadonlyArray<WorkerEventRecord>): CodexWorkerSummary | undefined =>
  events.reduce<CodexWorkerSummary | undefined>(projectWorker, undefined)
