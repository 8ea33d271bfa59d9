/**
 * Run lifecycle (SPEC §2 "Runs") and the run summary projection.
 *
 * `projectRun` is a pure function of the previous summary and one authority event: no clock, no
 * I/O. Replaying a run's events from seq 1 therefore rebuilds the same summary, byte for byte.
 */
import { create } from "@bufbuild/protobuf"
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { type RunSummary, RunSummarySchema } from "../gen/openagents/sync/v1/documents_pb.ts"
import type { JsonObject } from "./Json.ts"

export const RUN_EVENT_TYPES = [
  "run.created",
  "run.started",
  "run.step",
  "run.completed",
  "run.failed",
  "run.canceled"
] as const
export type RunEventType = (typeof RUN_EVENT_TYPES)[number]

export const isRunEventType = (s: unknown): s is RunEventType =>
  typeof s === "string" && (RUN_EVENT_TYPES as ReadonlyArray<string>).includes(s)

export type RunStatus = "created" | "running" | "completed" | "failed" | "canceled"

export const TERMINAL_RUN_STATUSES: ReadonlySet<string> = new Set<RunStatus>(["completed", "failed", "canceled"])

/** One committed run event as the projector sees it (values as read back from Postgres). */
export interface RunEventRecord {
  readonly runId: string
  readonly ownerUserId: string
  readonly seq: number
  readonly type: RunEventType
  readonly payload: JsonObject
  readonly occurredAtMs: number
}

/** The status a run has after an event of `type` (the projection uses it; so do batch lifecycle checks). */
export const runStatusAfter = (current: RunStatus | undefined, type: RunEventType): RunStatus => {
  switch (type) {
    case "run.created":
      return "created"
    case "run.started":
    case "run.step":
      return current === undefined || current === "created" ? "running" : current
    case "run.completed":
      return "completed"
    case "run.failed":
      return "failed"
    case "run.canceled":
      return "canceled"
  }
}

export const runDocKey = (runId: string) => `run_summary:${runId}`
export const runEventDocKey = (runId: string, seq: number) => `run_event:${runId}:${seq}`

/** previous summary + event → next summary. */
export const projectRun = (prev: RunSummary | undefined, event: RunEventRecord): RunSummary => {
  const status = runStatusAfter(prev?.status as RunStatus | undefined, event.type)
  const at = timestampFromMs(event.occurredAtMs)
  return create(RunSummarySchema, {
    runId: event.runId,
    ownerUserId: prev?.ownerUserId || event.ownerUserId,
    status,
    eventCount: (prev?.eventCount ?? 0n) + 1n,
    lastSeq: BigInt(event.seq),
    lastEventType: event.type,
    ...(prev?.createdAt ? { createdAt: prev.createdAt } : event.type === "run.created" ? { createdAt: at } : {}),
    updatedAt: at,
    ...(TERMINAL_RUN_STATUSES.has(status) ? { terminalAt: prev?.terminalAt ?? at } : {})
  })
}

/** Replays a whole history (seq order) from nothing. */
export const projectRunHistory = (events: ReadonlyArray<RunEventRecord>): RunSummary | undefined =>
  events.reduce<RunSummary | undefined>(projectRun, undefined)
