/**
 * Arbitraries of VALID authority histories, shared by the pure projection properties and the
 * write-path properties against Postgres.
 *
 * Generation is two-step: a raw Schema-derived structure (so effect's generator shrinks it), then
 * a deterministic `plan*` that turns it into a history the commands would accept:
 * - runs: `run.created`, then `run.started`/`run.step`, optionally one terminal event, nothing after;
 * - workers: `worker.created`, then taxonomy events (heartbeat bursts with small and large gaps,
 *   non-fatal and fatal `worker.error`, `worker.stopped`, `/stop`); once terminal, only a resume
 *   (`/resume` or a create that reattaches) is accepted, so the plan resumes before continuing.
 *   A resume of a live worker is a no-op op: the commands answer 200 and append nothing.
 * Ops carry gaps, not times; `runRecords`/`workerRecords` assign per-entity times (monotonic or
 * arbitrary), `interleave` assigns global monotonic times across entities.
 */
import { Arbitrary, Schema } from "effect"
import type { JsonObject, JsonValue } from "../../src/domain/Json.ts"
import type { RunEventRecord, RunEventType } from "../../src/domain/RunProjection.ts"
import type { WorkerEventRecord, WorkerEventType, WorkerTaxonomyType } from "../../src/domain/WorkerProjection.ts"

export const intBetween = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/**
 * An arbitrary JSON object (effect's generator: odd keys, `__proto__`, NUL, lone surrogates,
 * denormals). Histories pass payloads through `pgJson`: the projector only ever sees payloads read
 * back from Postgres jsonb, which holds no NUL character and no lone surrogate.
 */
export const Payload = Schema.Record(Schema.String, Schema.MutableJson)

/** 2020-09 … 2030-03: realistic, and far from the Timestamp range limits. */
const StartMs = intBetween(1_600_000_000_000, 1_900_000_000_000)
const GapMs = intBetween(0, 120_000)

// ---------------------------------------------------------------------------------------------
// Runs

export const rawRunHistory = (maxSteps: number) =>
  Schema.Struct({
    startMs: StartMs,
    /** false ⇒ each event at `startMs + gap` (occurred_at in arbitrary order). */
    monotonic: Schema.Boolean,
    createdPayload: Payload,
    steps: Schema.Array(
      Schema.Struct({ type: Schema.Literals(["run.started", "run.step"]), gapMs: GapMs, payload: Payload })
    ).check(Schema.isMaxLength(maxSteps)),
    end: Schema.Literals(["none", "run.completed", "run.failed", "run.canceled"]),
    endGapMs: GapMs,
    endPayload: Payload
  })
export type RawRunHistory = Schema.Schema.Type<ReturnType<typeof rawRunHistory>>

export interface RunOp {
  readonly type: RunEventType
  readonly payload: JsonObject
  readonly gapMs: number
}

export const planRun = (raw: RawRunHistory): ReadonlyArray<RunOp> => [
  { type: "run.created", payload: pgJson(raw.createdPayload), gapMs: 0 },
  ...raw.steps.map((s) => ({ type: s.type, payload: pgJson(s.payload), gapMs: s.gapMs })),
  ...(raw.end === "none" ? [] : [{ type: raw.end, payload: pgJson(raw.endPayload), gapMs: raw.endGapMs }])
]

export interface RunHistory {
  readonly raw: RawRunHistory
  readonly events: ReadonlyArray<RunEventRecord>
}

export const runRecords = (runId: string, ownerUserId: string, raw: RawRunHistory): ReadonlyArray<RunEventRecord> => {
  let t = raw.startMs
  return planRun(raw).map((op, i) => {
    t = raw.monotonic ? t + op.gapMs : raw.startMs + op.gapMs
    return { runId, ownerUserId, seq: i + 1, type: op.type, payload: op.payload, occurredAtMs: t }
  })
}

export const runHistoryArbitrary = (maxSteps = 16) =>
  Arbitrary.map(Arbitrary.schema(rawRunHistory(maxSteps)), (raw): RunHistory => ({
    raw,
    events: runRecords("run-1", "user-1", raw)
  }))

// ---------------------------------------------------------------------------------------------
// Workers

const WorkerStepKind = Schema.Literals([
  "worker.started",
  "worker.stopped",
  "stop",
  "worker.error",
  "fatal",
  "heartbeats",
  "worker.heartbeat",
  "worker.event",
  "worker.request.received",
  "resume",
  "reattach"
])

export const rawWorkerHistory = (maxSteps: number, maxBurst: number) =>
  Schema.Struct({
    startMs: StartMs,
    monotonic: Schema.Boolean,
    metadata: Payload,
    steps: Schema.Array(
      Schema.Struct({
        kind: WorkerStepKind,
        gapMs: GapMs,
        payload: Payload,
        message: Schema.MutableJson,
        /** heartbeats: burst size and the gap between the burst's heartbeats (below and above the coalesce window). */
        burst: intBetween(1, maxBurst),
        burstGapMs: intBetween(0, 15_000)
      })
    ).check(Schema.isMaxLength(maxSteps))
  })
export type RawWorkerHistory = Schema.Schema.Type<ReturnType<typeof rawWorkerHistory>>

export type WorkerOp =
  | { readonly kind: "create"; readonly metadata: JsonObject; readonly gapMs: number }
  /** POST /events with a taxonomy type (incl. worker.heartbeat). */
  | { readonly kind: "event"; readonly type: WorkerTaxonomyType; readonly payload: JsonObject; readonly gapMs: number }
  /** POST /heartbeat. */
  | { readonly kind: "heartbeat"; readonly payload: JsonObject; readonly gapMs: number }
  /** POST /stop ⇒ worker.stopped with `{reason}` or `{}`. */
  | { readonly kind: "stop"; readonly reason: string | undefined; readonly gapMs: number }
  /** worker.resumed, by `/resume` or by a create that reattaches. */
  | { readonly kind: "resume"; readonly via: "resume" | "create"; readonly gapMs: number }
  /** A resume/reattach of a live worker: 200, nothing appended. */
  | { readonly kind: "resume-live"; readonly via: "resume" | "create"; readonly gapMs: number }

export const planWorker = (raw: RawWorkerHistory): ReadonlyArray<WorkerOp> => {
  const ops: Array<WorkerOp> = [{ kind: "create", metadata: pgJson(raw.metadata), gapMs: 0 }]
  let terminal = false
  for (const step of raw.steps) {
    const s = { ...step, payload: pgJson(step.payload), message: jsonbSafe(step.message) }
    const isResume = s.kind === "resume" || s.kind === "reattach"
    const via = s.kind === "reattach" ? "create" : "resume"
    if (isResume) {
      ops.push({ kind: terminal ? "resume" : "resume-live", via, gapMs: s.gapMs })
      terminal = false
      continue
    }
    if (terminal) {
      // Nothing but a resume is accepted after stopped / fatal error: resume first.
      ops.push({ kind: "resume", via: s.gapMs % 2 === 0 ? "resume" : "create", gapMs: 0 })
      terminal = false
    }
    switch (s.kind) {
      case "worker.started":
      case "worker.event":
      case "worker.request.received":
      case "worker.heartbeat":
        ops.push({ kind: "event", type: s.kind, payload: s.payload, gapMs: s.gapMs })
        break
      case "worker.stopped":
        ops.push({ kind: "event", type: "worker.stopped", payload: s.payload, gapMs: s.gapMs })
        terminal = true
        break
      case "stop": {
        const reason = s.payload["reason"]
        ops.push({ kind: "stop", reason: typeof reason === "string" ? reason : undefined, gapMs: s.gapMs })
        terminal = true
        break
      }
      case "worker.error":
      case "fatal": {
        const fatal = s.kind === "fatal"
        ops.push({
          kind: "event",
          type: "worker.error",
          payload: { ...s.payload, message: s.message, fatal },
          gapMs: s.gapMs
        })
        terminal = fatal
        break
      }
      case "heartbeats":
        for (let i = 0; i < s.burst; i++) {
          ops.push({ kind: "heartbeat", payload: s.payload, gapMs: i === 0 ? s.gapMs : s.burstGapMs })
        }
        break
    }
  }
  return ops
}

/** Whether the worker is terminal after the plan (stopped or fatally failed). */
export const planEndsTerminal = (ops: ReadonlyArray<WorkerOp>): boolean => {
  let terminal = false
  for (const op of ops) {
    if (op.kind === "stop") terminal = true
    else if (op.kind === "resume") terminal = false
    else if (op.kind === "event" && op.type === "worker.stopped") terminal = true
    else if (op.kind === "event" && op.type === "worker.error" && op.payload["fatal"] === true) terminal = true
  }
  return terminal
}

/** The authority event an op appends (type and payload exactly as the commands build them), if any. */
export const workerOpEvent = (op: WorkerOp): { readonly type: WorkerEventType; readonly payload: JsonObject } | undefined => {
  switch (op.kind) {
    case "create":
      return { type: "worker.created", payload: { metadata: op.metadata } }
    case "event":
      return { type: op.type, payload: op.payload }
    case "heartbeat":
      return { type: "worker.heartbeat", payload: op.payload }
    case "stop":
      return { type: "worker.stopped", payload: op.reason === undefined ? {} : { reason: op.reason } }
    case "resume":
      return { type: "worker.resumed", payload: {} }
    case "resume-live":
      return undefined
  }
}

export const workerRecords = (
  workerId: string,
  ownerUserId: string,
  raw: RawWorkerHistory
): ReadonlyArray<WorkerEventRecord> => {
  let t = raw.startMs
  const out: Array<WorkerEventRecord> = []
  for (const op of planWorker(raw)) {
    t = raw.monotonic ? t + op.gapMs : raw.startMs + op.gapMs
    const event = workerOpEvent(op)
    if (event) {
      out.push({ workerId, ownerUserId, seq: out.length + 1, type: event.type, payload: event.payload, occurredAtMs: t })
    }
  }
  return out
}

export interface WorkerHistory {
  readonly raw: RawWorkerHistory
  readonly events: ReadonlyArray<WorkerEventRecord>
}

export const workerHistoryArbitrary = (maxSteps = 16, maxBurst = 20) =>
  Arbitrary.map(Arbitrary.schema(rawWorkerHistory(maxSteps, maxBurst)), (raw): WorkerHistory => ({
    raw,
    events: workerRecords("worker-1", "user-1", raw)
  }))

// ---------------------------------------------------------------------------------------------
// Several users, each with several runs and workers, interleaved

export const rawWorld = (limits: {
  readonly users: readonly [number, number]
  readonly runs: readonly [number, number]
  readonly workers: readonly [number, number]
  readonly steps: number
  readonly burst: number
}) =>
  Schema.Struct({
    users: Schema.Array(
      Schema.Struct({
        runs: Schema.Array(rawRunHistory(limits.steps)).check(
          Schema.isMinLength(limits.runs[0]),
          Schema.isMaxLength(limits.runs[1])
        ),
        workers: Schema.Array(rawWorkerHistory(limits.steps, limits.burst)).check(
          Schema.isMinLength(limits.workers[0]),
          Schema.isMaxLength(limits.workers[1])
        )
      })
    ).check(Schema.isMinLength(limits.users[0]), Schema.isMaxLength(limits.users[1])),
    /** Picks the entity whose next op goes next (cycled; empty ⇒ round-robin). */
    schedule: Schema.Array(intBetween(0, 1_000)).check(Schema.isMaxLength(400)),
    startMs: StartMs
  })
export type RawWorld = Schema.Schema.Type<ReturnType<typeof rawWorld>>

export type WorldStep =
  | { readonly entity: "run"; readonly id: string; readonly owner: string; readonly op: RunOp; readonly atMs: number }
  | { readonly entity: "worker"; readonly id: string; readonly owner: string; readonly op: WorkerOp; readonly atMs: number }

export type WorldEntity =
  | { readonly entity: "run"; readonly id: string; readonly owner: string; readonly ops: ReadonlyArray<RunOp> }
  | { readonly entity: "worker"; readonly id: string; readonly owner: string; readonly ops: ReadonlyArray<WorkerOp> }

const plainRunOp = (op: RunOp): RunOp => ({ ...op, payload: plainKeys(op.payload) })
const plainWorkerOp = (op: WorkerOp): WorkerOp => {
  switch (op.kind) {
    case "create":
      return { ...op, metadata: plainKeys(op.metadata) }
    case "event":
    case "heartbeat":
      return { ...op, payload: plainKeys(op.payload) }
    default:
      return op
  }
}

/**
 * Entities of a world, with ids under `prefix` (distinct per property iteration). Payload keys
 * are made `plainKeys` (see there): these histories go through Postgres and `JSON.parse`.
 */
export const worldEntities = (raw: RawWorld, prefix: string): ReadonlyArray<WorldEntity> =>
  raw.users.flatMap((u, ui) => {
    const owner = `${prefix}u${ui}`
    return [
      ...u.runs.map((r, ri): WorldEntity => ({
        entity: "run",
        id: `${prefix}r${ui}-${ri}`,
        owner,
        ops: planRun(r).map(plainRunOp)
      })),
      ...u.workers.map((w, wi): WorldEntity => ({
        entity: "worker",
        id: `${prefix}w${ui}-${wi}`,
        owner,
        ops: planWorker(w).map(plainWorkerOp)
      }))
    ]
  })

/** All ops of all entities in one global order (per-entity order kept), at non-decreasing times. */
export const interleave = (raw: RawWorld, entities: ReadonlyArray<WorldEntity>): ReadonlyArray<WorldStep> => {
  const queues = entities.map((e) => ({ e, next: 0 }))
  const steps: Array<WorldStep> = []
  let t = raw.startMs
  let i = 0
  while (queues.length > 0) {
    const pick = (raw.schedule.length > 0 ? raw.schedule[i % raw.schedule.length]! : i) % queues.length
    i++
    const q = queues[pick]!
    const e = q.e
    const index = q.next++
    if (q.next >= e.ops.length) queues.splice(pick, 1)
    if (e.entity === "run") {
      const op = e.ops[index]!
      t += op.gapMs
      steps.push({ entity: "run", id: e.id, owner: e.owner, op, atMs: t })
    } else {
      const op = e.ops[index]!
      t += op.gapMs
      steps.push({ entity: "worker", id: e.id, owner: e.owner, op, atMs: t })
    }
  }
  return steps
}

export const pgJson = (payload: JsonObject): JsonObject => jsonbSafe(payload) as JsonObject

/** Makes a JSON value storable in Postgres jsonb: no NUL characters, no lone surrogates. */
export const jsonbSafe = (value: JsonValue): JsonValue => {
  if (typeof value === "string") return value.replaceAll("\u0000", "").toWellFormed()
  if (Array.isArray(value)) return value.map(jsonbSafe)
  if (value !== null && typeof value === "object") {
    const out: JsonObject = {}
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, jsonbSafe(k) as string, { value: jsonbSafe(v), enumerable: true, writable: true, configurable: true })
    }
    return out
  }
  return value
}

/**
 * Replaces, in object keys (recursively), every character JSON has to escape (`"`, `\`, control
 * characters) by `_`. Node 24's V8 mis-decodes an escaped object key once `JSON.parse` has seen a
 * key that matches its raw source prefix (nodejs/node#63785: after any parse of `{"\\": …}`, a later
 * `{"\n": …}` yields the key `"\\"`). Postgres rows are decoded with `JSON.parse`, so such keys
 * would make what the projector reads depend on the process's parse history instead of the
 * events; the random replay property avoids them, and a dedicated test in WritePath.pg.test.ts
 * pins the hazard.
 */
export const plainKeys = (payload: JsonObject): JsonObject => plainKeysValue(payload) as JsonObject

const plainKeysValue = (value: JsonValue): JsonValue => {
  if (Array.isArray(value)) return value.map(plainKeysValue)
  if (value !== null && typeof value === "object") {
    const out: JsonObject = {}
    for (const [k, v] of Object.entries(value)) {
      Object.defineProperty(out, k.replace(/["\\\u0000-\u001f]/g, "_"), {
        value: plainKeysValue(v),
        enumerable: true,
        writable: true,
        configurable: true
      })
    }
    return out
  }
  return value
}
