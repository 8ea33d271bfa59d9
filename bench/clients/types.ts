/**
 * What every system's client adapter offers the load generator, and the delivery bookkeeping
 * (gap / duplicate checks, latency) shared by all of them.
 */
import { Histogram, nowMs, type ReplayResult } from "../lib/common.ts"

export interface TopicState {
  readonly topic: string
  /** Last seq (Khala) or per-topic counter (baselines) received; 0 before the first. */
  last: number
  /** Published messages received (carrying a send-time marker). */
  messages: number
}

const MAX_VIOLATIONS = 20

/** Delivery statistics of one generator process. */
export class SubStats {
  messages = 0
  items = 0
  frames = 0
  bytes = 0
  gaps = 0
  duplicates = 0
  readonly violations: Array<string> = []
  firstRecvMs = 0
  lastRecvMs = 0
  /** Receive time of the last published message. */
  lastMsgMs = 0
  readonly latency = new Histogram()
  readonly commitLatency = new Histogram()
  reconnects = 0
  readonly errors: Array<string> = []
  /** Receive time of the frame being processed (one clock read per frame). */
  now = 0
  /** When set: every delivery of a published message as a (send marker, receive time) pair. */
  deliveries: Array<number> | undefined

  frame(bytes: number) {
    this.now = nowMs()
    this.frames++
    this.bytes += bytes
    if (this.firstRecvMs === 0) this.firstRecvMs = this.now
    this.lastRecvMs = this.now
  }

  /** One entry (seq must be last + 1); `sentMs` NaN ⇒ not a published message. */
  item(st: TopicState, seq: number, sentMs: number, committedAtMs: number) {
    this.items++
    if (seq === st.last + 1) st.last = seq
    else if (seq <= st.last) {
      this.duplicates++
      this.violation(`${st.topic}: duplicate seq ${seq} after ${st.last}`)
    } else {
      this.gaps++
      this.violation(`${st.topic}: gap, seq ${seq} after ${st.last}`)
      st.last = seq
    }
    if (!Number.isNaN(sentMs)) {
      st.messages++
      this.messages++
      this.lastMsgMs = this.now
      this.latency.record(this.now - sentMs)
      if (this.deliveries) this.deliveries.push(sentMs, this.now)
      if (committedAtMs > 0) this.commitLatency.record(this.now - committedAtMs)
    }
  }

  violation(s: string) {
    if (this.violations.length < MAX_VIOLATIONS) this.violations.push(s)
  }

  error(s: string) {
    if (this.errors.length < MAX_VIOLATIONS) this.errors.push(s)
  }
}

export interface SubConn {
  /** Resolves when subscribed (and, for Khala, caught up); rejects on failure. */
  readonly ready: Promise<void>
  readonly states: ReadonlyArray<TopicState>
  close(): void
}

export interface Publisher {
  /** Creates what must exist before publishing (Khala: the runs). Not timed. */
  setup(topics: ReadonlyArray<string>, concurrency: number): Promise<void>
  /**
   * Publishes message `n` of `topic`; must write synchronously (order), resolves on the ack —
   * with the send marker it wrote, where the adapter can tell (Khala), for ack→client latency.
   */
  publish(topic: string, n: number, padBytes: number): Promise<number | void>
  /** Khala only: messages `n .. n + count - 1` of `topic` in one batch request. */
  publishMany?(topic: string, n: number, count: number, padBytes: number): Promise<void>
  /** Khala only: creates Codex workers with these ids (each on an owner of its own). Not timed. */
  setupWorkers?(ids: ReadonlyArray<string>, concurrency: number): Promise<void>
  /** Khala only: heartbeat `n` of worker `id`, resolved on the ack. */
  heartbeat?(id: string, n: number, padBytes: number): Promise<void>
  close(): void
}

export interface Replayer {
  /** Before the entries are loaded (Socket.IO: connect, then drop the transport). */
  prepare(topic: string): Promise<void>
  /** Replays `topic` from its beginning; resolves when caught up. */
  go(topic: string, expected: number): Promise<ReplayResult>
  close(): void
}

export interface ClientFactory {
  subscriber(topics: ReadonlyArray<string>, stats: SubStats, resume: boolean): SubConn
  publisher(): Promise<Publisher>
  replayer(): Replayer
}

/** Checks a replayed sequence; shared by the replay adapters. */
export class SeqCheck {
  last = 0
  gaps = 0
  duplicates = 0
  readonly violations: Array<string> = []
  add(seq: number) {
    if (seq === this.last + 1) this.last = seq
    else if (seq <= this.last) {
      this.duplicates++
      if (this.violations.length < MAX_VIOLATIONS) this.violations.push(`duplicate seq ${seq} after ${this.last}`)
    } else {
      this.gaps++
      if (this.violations.length < MAX_VIOLATIONS) this.violations.push(`gap: seq ${seq} after ${this.last}`)
      this.last = seq
    }
  }
}
