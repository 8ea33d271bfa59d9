/**
 * Shared bench helpers: the wall clock every process agrees on, the latency histogram the
 * generators merge, payload builders with a cheap-to-find send-time marker, and the job /
 * result shapes exchanged over IPC between the orchestrator (bench/run.ts) and the load
 * generators (bench/loadgen.ts).
 */

/** Epoch milliseconds with sub-millisecond resolution (comparable across processes). */
export const nowMs = (): number => performance.timeOrigin + performance.now()

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------
// Send-time marker: `@@T<epoch ms>;` inside every published payload. Found with a byte search in
// binary (protobuf Struct string value) and text frames alike, so subscribers do not need to
// decode the document to measure latency.

export const MARKER = "@@T"
export const MARKER_BYTES = Buffer.from(MARKER, "latin1")
const SEMI = 0x3b

export const marker = (ms: number) => `${MARKER}${ms.toFixed(3)};`

/** The send time in `buf[from, to)` (first marker), or NaN. */
export const findMarker = (buf: Buffer, from: number, to: number): number => {
  const i = buf.indexOf(MARKER_BYTES, from)
  if (i < 0 || i >= to) return Number.NaN
  const start = i + MARKER_BYTES.length
  const end = buf.indexOf(SEMI, start)
  if (end < 0 || end > to) return Number.NaN
  return Number(buf.toString("latin1", start, end))
}

/** Parses a marker string (as found in a decoded JSON payload). */
export const parseMarker = (s: unknown): number =>
  typeof s === "string" && s.startsWith(MARKER) ? Number(s.slice(MARKER.length, s.length - 1)) : Number.NaN

const PAD = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(40)
export const pad = (bytes: number) => PAD.slice(0, Math.max(0, bytes))

/** The baseline message: ~300 bytes of JSON with topic, per-topic counter and send time. */
export interface BaselineMessage {
  readonly t: string
  readonly n: number
  readonly ts: string
  readonly pad: string
}

// ---------------------------------------------------------------------------------------------
// Latency histogram: 10 µs buckets below 1 s, 10 ms buckets above. Sparse, mergeable.

export class Histogram {
  readonly buckets = new Map<number, number>()
  count = 0
  sum = 0
  max = 0

  record(ms: number) {
    if (!(ms >= 0)) ms = 0
    const key = ms < 1000 ? Math.floor(ms * 100) : 100_000 + Math.floor((ms - 1000) / 10)
    this.buckets.set(key, (this.buckets.get(key) ?? 0) + 1)
    this.count++
    this.sum += ms
    if (ms > this.max) this.max = ms
  }

  toJSON(): HistogramData {
    return { buckets: [...this.buckets.entries()], count: this.count, sum: this.sum, max: this.max }
  }

  static merge(parts: ReadonlyArray<HistogramData | undefined>): Histogram {
    const h = new Histogram()
    for (const p of parts) {
      if (!p) continue
      for (const [k, v] of p.buckets) h.buckets.set(k, (h.buckets.get(k) ?? 0) + v)
      h.count += p.count
      h.sum += p.sum
      h.max = Math.max(h.max, p.max)
    }
    return h
  }

  /** Upper edge of the bucket holding the q-quantile, in ms. */
  quantile(q: number): number {
    if (this.count === 0) return Number.NaN
    const keys = [...this.buckets.keys()].sort((a, b) => a - b)
    const rank = Math.ceil(q * this.count)
    let seen = 0
    for (const k of keys) {
      seen += this.buckets.get(k)!
      if (seen >= rank) return k < 100_000 ? (k + 1) / 100 : 1000 + (k - 100_000 + 1) * 10
    }
    return this.max
  }

  mean(): number {
    return this.count === 0 ? Number.NaN : this.sum / this.count
  }
}

export interface HistogramData {
  readonly buckets: ReadonlyArray<readonly [number, number]>
  readonly count: number
  readonly sum: number
  readonly max: number
}

// ---------------------------------------------------------------------------------------------
// Systems and jobs

export type SystemName = "khala" | "ws" | "socketio" | "nats"
export const SYSTEMS: ReadonlyArray<SystemName> = ["khala", "ws", "socketio", "nats"]
export const SYSTEM_LABEL: Record<SystemName, string> = {
  khala: "Khala",
  ws: "raw ws",
  socketio: "Socket.IO",
  nats: "NATS JetStream"
}

export type KhalaSubprotocol = "khala.v1.proto" | "khala.v1.json"

/** How a generator reaches a system under test. */
export interface Target {
  readonly system: SystemName
  /** WebSocket URL (Khala: `…/sync/v1`). */
  readonly wsUrl: string
  /** Khala only. */
  readonly httpBase?: string
  readonly serviceToken?: string
  readonly syncToken?: string
  readonly subprotocol?: KhalaSubprotocol
  /**
   * Khala: publish through `POST /internal/v1/runs/events/batch`, coalescing the publishes that
   * arrive while batches are committing into the next one (at most this many events per batch; two
   * batches in flight). Unset: one HTTP command per publish.
   */
  readonly batch?: number
}

export interface SubscribeJob {
  readonly kind: "subscribe"
  readonly target: Target
  /** Topics of each connection (bench topic names; Khala maps `x` to `run/x` unless it has a `/`). */
  readonly conns: ReadonlyArray<ReadonlyArray<string>>
  /** Khala: reconnect and resume after `slow_consumer`. */
  readonly resume: boolean
  /** Keep every delivery's (send marker, receive time) for ack→client latency. */
  readonly trackDeliveries?: boolean
  readonly connectConcurrency: number
}

export interface PublishJob {
  readonly kind: "publish"
  readonly target: Target
  readonly topics: ReadonlyArray<string>
  /** `saturate`: as fast as `window` in-flight acknowledged publishes allow; `rate`: open loop. */
  readonly mode: "saturate" | "rate"
  readonly rate?: number
  readonly durationMs?: number
  readonly count?: number
  readonly window: number
  readonly padBytes: number
  /** Per-topic counters start after this (a topic loaded in several steps). */
  readonly firstN?: number
  /** Khala: create the runs first (not timed). */
  readonly setup: boolean
  /** Report each publish's acknowledgement time, keyed by its send marker. */
  readonly trackAcks?: boolean
}

export interface IngestJob {
  readonly kind: "ingest"
  readonly target: Target
  readonly writers: number
  readonly durationMs: number
  readonly topicPrefix: string
  readonly padBytes: number
  /** Khala: each writer appends `batch` events per request through the batch endpoint. */
  readonly batch?: number
  /** Khala: each writer is a Codex worker sending heartbeats (`POST …/workers/<id>/heartbeat`). */
  readonly workerHeartbeats?: boolean
}

export interface ReplayJob {
  readonly kind: "replay"
  readonly target: Target
  readonly topic: string
  /** Entries the client must receive before it counts as caught up (baselines). */
  readonly expected: number
}

export type Job = SubscribeJob | PublishJob | IngestJob | ReplayJob

/** Per-generator delivery statistics of a subscribe job. */
export interface SubscribeResult {
  readonly conns: number
  readonly subscriptions: number
  /** Published messages received (items carrying a send-time marker). */
  readonly messages: number
  /** All entries received (Khala: journal items incl. summaries). */
  readonly items: number
  readonly frames: number
  readonly bytes: number
  readonly gaps: number
  readonly duplicates: number
  readonly violations: ReadonlyArray<string>
  readonly missing: number
  readonly complete: boolean
  readonly firstRecvMs: number
  readonly lastRecvMs: number
  readonly lastMsgMs: number
  readonly latency: HistogramData
  /** Khala only: commit→client from `committed_at_ms` (ms resolution). */
  readonly commitLatency: HistogramData
  /** With `trackDeliveries` and acks: receive − acknowledgement of the same publish (≥ 0). */
  readonly ackToClient?: HistogramData
  /** Deliveries that arrived before their publish was acknowledged. */
  readonly beforeAck?: number
  readonly reconnects: number
  readonly errors: ReadonlyArray<string>
  readonly cpuMs: number
}

export interface PublishResult {
  readonly counts: Record<string, number>
  readonly published: number
  readonly startMs: number
  readonly endMs: number
  readonly errors: number
  readonly errorSamples: ReadonlyArray<string>
  readonly ackLatency: HistogramData
  /** With `trackAcks`: acknowledgement time by send marker (`toFixed(3)`). */
  readonly acks?: Record<string, number>
  readonly setupMs: number
  readonly cpuMs: number
}

export interface ReplayResult {
  readonly entries: number
  readonly bytes: number
  readonly elapsedMs: number
  readonly gaps: number
  readonly duplicates: number
  readonly violations: ReadonlyArray<string>
  readonly complete: boolean
  readonly errors: ReadonlyArray<string>
}

/** Messages from a generator to the orchestrator. */
export type GenMessage =
  | { readonly type: "ready"; readonly opened: number; readonly failed: number; readonly errors: ReadonlyArray<string> }
  | { readonly type: "result"; readonly result: unknown }
  | { readonly type: "error"; readonly message: string }

/** Messages from the orchestrator to a generator. */
export type ParentMessage =
  | { readonly type: "job"; readonly job: Job }
  | {
    readonly type: "expect"
    readonly counts: Record<string, number>
    readonly timeoutMs: number
    readonly acks?: Record<string, number>
  }
  | { readonly type: "go" }
  | { readonly type: "close" }
