/**
 * Journal: the ordered, gapless per-topic log (`runtime.sync_stream_events`) and its positions
 * (`runtime.sync_topic_sequences`) and epoch (`runtime.sync_journal_epoch`).
 *
 * Invariants:
 * - Seqs are allocated by Postgres in the committing transaction (`UPDATE … RETURNING` on the topic's
 *   sequence row). The row lock is held until commit, so per-topic commit order = seq order, and a
 *   rolled-back transaction leaves no gap.
 * - Each entry is encoded once, at write time, into the wire `Update` (binary and proto3 JSON;
 *   a document shared by several entries is encoded once for all of them, domain/UpdateEncoding.ts);
 *   readers splice the stored bytes into frames and never re-encode.
 * - Listeners hear `'<head_seq> <committed_at_ms> <topic>'` on channel `khala_journal` only after the
 *   entry committed (never on rollback): a command's transaction records what it appended in its
 *   `PendingDelivery`, and the command envelope announces it after the commit (JournalNotifier).
 *   An append outside a command envelope (no `PendingDelivery`) notifies inside its transaction.
 * Only the Projector appends (inside the command's transaction); TopicHub, Snapshot and the
 * retention job read.
 */
import { toJson } from "@bufbuild/protobuf"
import { Context, Deferred, Effect, Fiber, Layer, Option, Schema } from "effect"
import { Buffer } from "node:buffer"
import { hash } from "node:crypto"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { type Update, UpdateSchema } from "../gen/openagents/sync/v1/frames_pb.ts"
import { bodyEncoder, type EncodedBody, encodeUpdate } from "../domain/UpdateEncoding.ts"
import {
  type ChunkLimits,
  chunkDelimitedUpdatesProto,
  chunkJoinedUpdatesJson,
  delimitedItemSize,
  delimitedItemStart,
  type UpdatesHeader,
  utf8ByteLength,
  type Utf8Text,
  writeDelimitedItem
} from "../domain/Protocol.ts"
import { coalescedReads } from "./CoalescedReads.ts"
import { byteaArray, int8Array, textArray, timestamptzArray } from "./SqlArrays.ts"
import { KhalaConfig } from "../layers/Config.ts"

export const JOURNAL_CHANNEL = "khala_journal"

/** Room an `Updates` frame needs around its items (topic ≤ 256 bytes, epoch, tags, JSON keys). */
export const FRAME_OVERHEAD_BYTES = 1024

/** An entry whose encoding would not fit in one frame of `max_frame_bytes` (→ HTTP 413). */
export class JournalEntryTooLarge extends Schema.TaggedError<JournalEntryTooLarge>()("JournalEntryTooLarge", {
  topic: Schema.String,
  /** Index of the first (in input order) oversized draft in the appended list. */
  draft: Schema.Number,
  bytes: Schema.Number,
  limit: Schema.Number,
  /** The other oversized drafts, in input order. */
  others: Schema.Array(Schema.Struct({ draft: Schema.Number, bytes: Schema.Number }))
}) {}
export const SCHEMA_VERSION = 1

/**
 * The journal's `body_md5`: MD5 of the entry's encoded body (document or event) — what a rebuild
 * compares to decide whether an entry came back identical (its `committed_at` may differ).
 */
export const bodyMd5 = (bodyPb: Uint8Array): Uint8Array => hash("md5", bodyPb, "buffer")
const EMPTY_BODY_MD5 = bodyMd5(new Uint8Array(0))

/** An entry to append; the seq is allocated by `append`. */
export interface JournalDraft {
  readonly topic: string
  readonly kind: string
  readonly docKey: string
  readonly docVersion: number
  readonly occurredAtMs: number
  readonly body: Update["body"]
  /** `toBinary` of the body's message, when the caller has it already (a projected document). */
  readonly bodyPb?: Uint8Array
}

/** A stored entry as delivery reads it: the seq plus the pre-encoded Update. */
export interface StoredEntry {
  readonly seq: number
  readonly pb: Uint8Array
  readonly json: string
}

export interface TopicPosition {
  readonly epoch: string
  /** First retained seq; head + 1 for an empty topic. */
  readonly floorSeq: number
  readonly headSeq: number
}

/**
 * The entries a transaction appended (with notifications), by topic in seq order. The command
 * envelope provides one per transaction and hands it to this node's TopicHub after the commit, so
 * local subscribers get the entries without reading them back from Postgres (other nodes, and
 * anything this fast path misses, still go through the notification and a journal read).
 */
export class PendingDelivery extends Context.Service<PendingDelivery, {
  /** The journal epoch the entries were written in (read inside the transaction). */
  epoch: string
  /** The entries' `committed_at` (set by the append). */
  committedAtMs: number
  readonly topics: Map<string, Array<StoredEntry>>
}>()(
  "khala/services/Journal/PendingDelivery"
) {}

const utf8Decoder = new TextDecoder()

/** Entries per replay page; page k holds seqs k·REPLAY_PAGE+1 … (k+1)·REPLAY_PAGE. */
export const REPLAY_PAGE = 2000

/**
 * A replay page as kept in memory: its entries' encodings (one subprotocol's) packed into one
 * buffer, with each entry's seq offset and end. A cached page is a handful of objects instead of a
 * few per entry (which every scavenge of a replay had to copy and promote, and every major GC to
 * mark). Protobuf entries are kept in their `Updates.items` form (tag, length, bytes) and JSON
 * entries as UTF-8 text each followed by a comma, so consecutive entries are one byte range that
 * a replay frame copies at once (`ReplayPage.framesProto` / `framesJson`); readers that need
 * entries get short-lived views (`entries()`).
 */
export interface PackedPage {
  readonly epoch: string
  readonly first: number
  readonly count: number
  readonly encoding: "pb" | "json"
  /** Entry i is seq `first + offsets[i]`, ascending. */
  readonly offsets: Uint16Array
  /**
   * Entry i ends at byte `ends[i]` of `data`; it starts where i − 1 ends ("pb") or one byte after,
   * past the comma ("json").
   */
  readonly ends: Float64Array
  /** "pb": delimited `Updates.items` fields back to back; "json": `item,item,…,item,`. */
  readonly data: Uint8Array
  /** Memory accounted for in the page cache. */
  readonly bytes: number
}

const NO_BYTES = new Uint8Array(0)
const COMMA = 0x2c

/**
 * Packs a page's slots (slot k = seq first + k; holes where the journal has no entry): each entry's
 * stored `update_pb` ("pb"), or its `update_json` ("json": the string, or its UTF-8 bytes).
 */
export const packPage = (
  epoch: string,
  first: number,
  encoding: "pb" | "json",
  slots: ReadonlyArray<Uint8Array | string | undefined>
): PackedPage => {
  const binary = encoding === "pb"
  let count = 0
  let size = 0
  for (let k = 0; k < slots.length; k++) {
    const item = slots[k]
    if (item === undefined) continue
    count++
    const length = typeof item === "string" ? Buffer.byteLength(item, "utf8") : item.byteLength
    size += binary ? delimitedItemSize(length) : length + 1
  }
  const offsets = new Uint16Array(count)
  const ends = new Float64Array(count)
  // Every byte is written below.
  const data = Buffer.allocUnsafeSlow(size)
  let i = 0
  let at = 0
  for (let k = 0; k < slots.length; k++) {
    const item = slots[k]
    if (item === undefined) continue
    offsets[i] = k
    if (binary) {
      at = writeDelimitedItem(data, at, typeof item === "string" ? Buffer.from(item, "utf8") : item)
      ends[i++] = at
    } else {
      if (typeof item === "string") at += data.write(item, at, "utf8")
      else {
        data.set(item, at)
        at += item.byteLength
      }
      ends[i++] = at
      data[at++] = COMMA
    }
  }
  // Per entry: its offset (2 bytes) and end (8).
  return { epoch, first, count, encoding, offsets, ends, data, bytes: 256 + 10 * count + size }
}

/**
 * What a replay reads of one page: its entries after the requested seq (`page` entries `from` …
 * `count − 1`), and whether the page was full.
 */
export class ReplayPage {
  readonly page: PackedPage | undefined
  /** Index in `page` of the first entry after the requested seq. */
  readonly from: number
  /**
   * The page is filled up to its last seq: entries after it may exist. False ⇒ the journal ends
   * inside this page.
   */
  readonly more: boolean
  /** The journal is in another epoch than the one asked for: no entries of it are the reader's. */
  readonly epochChanged: boolean

  constructor(page: PackedPage | undefined, from: number, more: boolean, epochChanged = false) {
    this.page = page
    this.from = from
    this.more = more
    this.epochChanged = epochChanged
  }

  /** A page read in another epoch than the replay's: no entries. */
  static readonly ofOtherEpoch = new ReplayPage(undefined, 0, false, true)

  /** Entries after the requested seq. */
  get count(): number {
    return this.page === undefined ? 0 : this.page.count - this.from
  }

  /** Seq of the first entry after the requested seq (`count` > 0). */
  get firstSeq(): number {
    return this.page!.first + this.page!.offsets[this.from]!
  }

  /** Seq of the last entry (`count` > 0). */
  get lastSeq(): number {
    return this.page!.first + this.page!.offsets[this.page!.count - 1]!
  }

  /**
   * The entries after the requested seq, ascending, built per call: views into the page ("pb") or
   * strings decoded from it ("json").
   */
  entries(): Array<StoredEntry> {
    const page = this.page
    if (page === undefined) return []
    const { offsets, ends, data, first, count } = page
    const binary = page.encoding === "pb"
    const text = binary ? undefined : Buffer.from(data.buffer, data.byteOffset, data.byteLength)
    const entries: Array<StoredEntry> = new Array(count - this.from)
    for (let i = this.from, j = 0; i < count; i++, j++) {
      const seq = first + offsets[i]!
      entries[j] = binary
        ? { seq, pb: data.subarray(delimitedItemStart(data, i === 0 ? 0 : ends[i - 1]!), ends[i]!), json: "" }
        : { seq, pb: NO_BYTES, json: text!.toString("utf8", i === 0 ? 0 : ends[i - 1]! + 1, ends[i]!) }
    }
    return entries
  }

  /**
   * The protobuf `Updates` frames of the entries after the requested seq (a page read for
   * "pb"): `chunkUpdates` of `entries()`, byte for byte, one copy per frame.
   */
  framesProto(header: UpdatesHeader, limits: ChunkLimits): Array<Uint8Array> {
    const page = this.page
    if (page === undefined || page.encoding !== "pb") return []
    return chunkDelimitedUpdatesProto(header, page.data, page.ends, this.from, page.count, limits)
  }

  /**
   * The JSON `Updates` frames of the entries after the requested seq (a page read for "json"):
   * `chunkUpdates` of `entries()` as UTF-8, byte for byte, one copy per frame.
   */
  framesJson(header: UpdatesHeader, limits: ChunkLimits): Array<Utf8Text> {
    const page = this.page
    if (page === undefined || page.encoding !== "json") return []
    return chunkJoinedUpdatesJson(header, page.data, page.ends, this.from, page.count, limits)
  }
}

/** The entries of a packed page after `afterSeq`, and whether more may follow. */
export const unpackAfter = (page: PackedPage, afterSeq: number): ReplayPage => {
  const { offsets, first, count } = page
  let i = 0
  while (i < count && first + offsets[i]! <= afterSeq) i++
  // More may follow when the page is filled up to its last seq.
  const more = count > 0 && offsets[count - 1] === REPLAY_PAGE - 1
  return new ReplayPage(page, i, more)
}

/** `{topic: last seq appended to it}` for one command. */
export type TopicSeqs = Record<string, number>

/** What an append allocated: the seq of each draft (input order) and the last seq per topic. */
export interface Appended {
  readonly seqs: ReadonlyArray<number>
  readonly topicSeqs: TopicSeqs
}


export class Journal extends Context.Service<Journal, {
  /** Appends drafts (in order) inside the current transaction; returns the last seq per topic. */
  readonly append: (
    drafts: ReadonlyArray<JournalDraft>,
    committedAtMs: number,
    options?: { readonly notify: boolean }
  ) => Effect.Effect<TopicSeqs, SqlError | JournalEntryTooLarge>
  /** `append` that also returns each draft's seq (batched commands answer per item). */
  readonly appendAll: (
    drafts: ReadonlyArray<JournalDraft>,
    committedAtMs: number,
    options?: { readonly notify: boolean }
  ) => Effect.Effect<Appended, SqlError | JournalEntryTooLarge>
  /**
   * Entries with seq > afterSeq, ascending, at most `limit`, with both encodings (live delivery),
   * and the journal epoch they were read in (same statement; "" when none came back).
   */
  readonly read: (
    topic: string,
    afterSeq: number,
    limit: number
  ) => Effect.Effect<{ readonly epoch: string; readonly rows: ReadonlyArray<StoredEntry> }, SqlError>
  /**
   * Replay read: the entries after `afterSeq` up to the end of its aligned page (≤ REPLAY_PAGE),
   * in one subprotocol's encoding. Complete pages of `epoch` are immutable, so they are cached
   * (LRU, `replayCacheBytes`) and concurrent reads of one page share one query: a thousand
   * clients resuming one topic together read each page from Postgres once. Only entries of
   * `epoch`: a page read after the journal moved to another epoch comes back empty, `epochChanged`.
   */
  readonly readReplayPage: (
    topic: string,
    epoch: string,
    afterSeq: number,
    encoding: "pb" | "json"
  ) => Effect.Effect<ReplayPage, SqlError>
  readonly position: (topic: string) => Effect.Effect<TopicPosition, SqlError>
  readonly epoch: Effect.Effect<string, SqlError>
}>()("khala/services/Journal") {
  static readonly layer = Layer.effect(
    Journal,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const { maxFrameBytes, replayCacheBytes } = yield* KhalaConfig
      /**
       * The journal epoch as a column of the statement that reads rows: one snapshot, so rows are
       * always filed under the epoch they were written in, even if a rebuild commits meanwhile.
       */
      const epochColumn = sql`(SELECT epoch FROM runtime.sync_journal_epoch) AS epoch`
      const maxEntryBytes = maxFrameBytes - FRAME_OVERHEAD_BYTES

      const appendAll = Effect.fn("Journal.append")(function*(
        drafts: ReadonlyArray<JournalDraft>,
        committedAtMs: number,
        options?: { readonly notify: boolean }
      ) {
        const byTopic = new Map<string, Array<number>>()
        drafts.forEach((d, i) => {
          const list = byTopic.get(d.topic)
          if (list) list.push(i)
          else byTopic.set(d.topic, [i])
        })
        const seqs = new Array<number>(drafts.length)
        const topicSeqs: TopicSeqs = {}
        if (byTopic.size === 0) return { seqs, topicSeqs }
        // One statement allocates every topic's seqs, locking the sequence rows in topic-name order.
        // Every writer (command, batch, retention) locks them in that order, so they cannot deadlock.
        const topics = [...byTopic.keys()].sort()
        let epochSeen = ""
        const pending = options?.notify === false ? undefined : Option.getOrUndefined(yield* Effect.serviceOption(PendingDelivery))
        const counts = topics.map((t) => BigInt(byTopic.get(t)!.length))
        const heads = new Map(
          (yield* sql<{ topic: string; head_seq: bigint; epoch: string }>`
            INSERT INTO runtime.sync_topic_sequences AS s (topic, head_seq, floor_seq)
            SELECT t, n, 1 FROM unnest(${textArray(topics)}, ${int8Array(counts)}) WITH ORDINALITY AS x(t, n, ord)
            ORDER BY ord
            ON CONFLICT (topic) DO UPDATE SET head_seq = s.head_seq + EXCLUDED.head_seq
            RETURNING s.topic, s.head_seq, ${epochColumn}`).map((r) => {
            epochSeen = r.epoch
            return [r.topic, Number(r.head_seq)] as const
          })
        )
        if (pending) {
          pending.epoch = epochSeen
          pending.committedAtMs = committedAtMs
        }
        // Column arrays for one `INSERT … SELECT FROM unnest(…)`: a handful of parameters however
        // many rows (a multi-row VALUES would bind 11 per row). Each body is encoded once.
        const n = drafts.length
        const cols = {
          topic: new Array<string>(n),
          seq: new Array<bigint>(n),
          kind: new Array<string>(n),
          docKey: new Array<string>(n),
          docVersion: new Array<bigint>(n),
          occurredAtMs: new Array<number>(n),
          bodyMd5: new Array<Uint8Array>(n),
          pb: new Array<Uint8Array>(n),
          json: new Array<string>(n)
        }
        const encodeBodyOnce = bodyEncoder()
        const hashes = new Map<EncodedBody, Uint8Array>()
        // Rows go in topic order (a topic's entries of one append sit together in the table's
        // pages): draft i is row `rowOf[i]`, and its seq follows its topic's earlier drafts.
        const rowOf = new Array<number>(n)
        let row = 0
        for (const [topic, indexes] of byTopic) {
          const head = heads.get(topic)!
          topicSeqs[topic] = head
          indexes.forEach((i, k) => {
            rowOf[i] = row++
            seqs[i] = head - indexes.length + 1 + k
          })
        }
        // Encoded in input order, so the first oversized draft found is the earliest (a batch
        // refuses that item and is judged again without it; a later item's entry may be oversized
        // only because of an earlier one's, e.g. a worker summary carrying an error message).
        const tooLarge: Array<{ readonly draft: number; readonly bytes: number }> = []
        for (let i = 0; i < n; i++) {
          const d = drafts[i]!
          const seq = seqs[i]!
          const body = encodeBodyOnce(d.body, d.bodyPb)
          const encoded = encodeUpdate({
            seq,
            kind: d.kind,
            docKey: d.docKey,
            docVersion: d.docVersion,
            schemaVersion: SCHEMA_VERSION,
            occurredAtMs: d.occurredAtMs,
            committedAtMs
          }, body)
          const bytes = Math.max(encoded.pb.byteLength, utf8ByteLength(encoded.json))
          if (bytes > maxEntryBytes) {
            tooLarge.push({ draft: i, bytes })
            continue
          }
          let md5 = body === undefined ? EMPTY_BODY_MD5 : hashes.get(body)
          if (md5 === undefined) {
            md5 = bodyMd5(body!.pb)
            hashes.set(body!, md5)
          }
          const r = rowOf[i]!
          cols.topic[r] = d.topic
          cols.seq[r] = BigInt(seq)
          cols.kind[r] = d.kind
          cols.docKey[r] = d.docKey
          cols.docVersion[r] = BigInt(d.docVersion)
          cols.occurredAtMs[r] = d.occurredAtMs
          cols.bodyMd5[r] = md5
          cols.pb[r] = encoded.pb
          cols.json[r] = encoded.json
        }
        // Every oversized draft is reported (the first one is the error's `draft`), so a batch can
        // refuse all the items that are oversized whatever comes before them in one retry.
        if (tooLarge.length > 0) {
          const [first, ...others] = tooLarge
          return yield* new JournalEntryTooLarge({
            topic: drafts[first!.draft]!.topic,
            draft: first!.draft,
            bytes: first!.bytes,
            limit: maxEntryBytes,
            others
          })
        }
        // The entries for this node's actors, per topic in seq order (the rows' order).
        if (pending) {
          for (let r = 0; r < n; r++) {
            const topic = cols.topic[r]!
            const entry = { seq: Number(cols.seq[r]), pb: cols.pb[r]!, json: cols.json[r]! }
            const list = pending.topics.get(topic)
            if (list) list.push(entry)
            else pending.topics.set(topic, [entry])
          }
        }
        yield* sql`
          INSERT INTO runtime.sync_stream_events
            (topic, seq, kind, doc_key, doc_version, schema_version, occurred_at, committed_at, body_md5, update_pb, update_json)
          SELECT topic, seq, kind, doc_key, doc_version, ${SCHEMA_VERSION}, occurred_at, ${new Date(committedAtMs)}, body_md5,
                 update_pb, update_json
          FROM unnest(${textArray(cols.topic)}, ${int8Array(cols.seq)}, ${textArray(cols.kind)}, ${textArray(cols.docKey)},
                      ${int8Array(cols.docVersion)}, ${timestamptzArray(cols.occurredAtMs)}, ${byteaArray(cols.bodyMd5)},
                      ${byteaArray(cols.pb)}, ${textArray(cols.json)})
            AS x(topic, seq, kind, doc_key, doc_version, occurred_at, body_md5, update_pb, update_json)`
        // Announced after the commit by the command envelope (see JournalNotifier).
        if (options?.notify === false || pending) return { seqs, topicSeqs }
        // No envelope: one notification statement for every topic, inside the transaction.
        const payloads = Object.entries(topicSeqs).map(([topic, head]) => `${head} ${committedAtMs} ${topic}`)
        yield* sql`SELECT pg_notify(${JOURNAL_CHANNEL}, p) FROM unnest(${payloads}::text[]) AS p`
        return { seqs, topicSeqs }
      })

      const append = (
        drafts: ReadonlyArray<JournalDraft>,
        committedAtMs: number,
        options?: { readonly notify: boolean }
      ) => Effect.map(appendAll(drafts, committedAtMs, options), (a) => a.topicSeqs)

      type EntryRow = { seq: bigint; update_pb: Uint8Array | null; update_json: string | null }
      const toEntry = (r: EntryRow): StoredEntry => ({ seq: Number(r.seq), pb: r.update_pb ?? NO_BYTES, json: r.update_json ?? "" })

      // Live delivery (topic actors) needs both encodings: its subscribers may speak either.
      // Seqs are gapless above the retention floor, so the entries wanted are the seq range
      // (afterSeq, afterSeq + limit]: bounded whatever plan Postgres picks. An open-ended
      // `seq > x ORDER BY seq LIMIT n` is planned from table statistics, and with stale ones (a
      // topic that grew since the last ANALYZE) it becomes a bitmap scan of every entry after x plus
      // a sort, on every read: O(n²) over a long catch-up. Only when the range is empty (entries
      // compacted under a reader far behind) does the open-ended query find what follows the gap.
      const read = (topic: string, afterSeq: number, limit: number) =>
        sql<EntryRow & { epoch: string }>`
          SELECT seq, update_pb, update_json, ${epochColumn}
          FROM runtime.sync_stream_events
          WHERE topic = ${topic} AND seq > ${afterSeq} AND seq <= ${afterSeq + limit} ORDER BY seq`.pipe(
          Effect.flatMap((rows) =>
            rows.length > 0 ? Effect.succeed(rows) : sql<EntryRow & { epoch: string }>`
              SELECT seq, update_pb, update_json, ${epochColumn}
              FROM runtime.sync_stream_events
              WHERE topic = ${topic} AND seq > ${afterSeq} ORDER BY seq LIMIT ${limit}`
          ),
          Effect.map((rows) => ({ epoch: rows[0]?.epoch ?? "", rows: rows.map(toEntry) }))
        )

      // ---- replay pages: an LRU of complete pages (Map order = recency) and the reads in flight
      const pageCache = new Map<string, PackedPage>()
      let pageCacheBytes = 0
      const inFlight = new Map<string, Deferred.Deferred<PackedPage, SqlError>>()
      const remember = (key: string, page: PackedPage) => {
        if (page.bytes > replayCacheBytes) return
        pageCache.set(key, page)
        pageCacheBytes += page.bytes
        for (const [k, v] of pageCache) {
          if (pageCacheBytes <= replayCacheBytes) break
          pageCache.delete(k)
          pageCacheBytes -= v.bytes
        }
      }
      const readPage = (topic: string, first: number, encoding: "pb" | "json") => {
        const last = first + REPLAY_PAGE - 1
        // The page is a seq range (see `read` for why never `seq >= first … LIMIT`) of plain rows,
        // unordered: each entry goes to its slot by seq, so Postgres sorts nothing (an ordered
        // aggregate of the page cost Postgres about twice the plain scan, more than its smaller
        // decoding saved the daemon). The statement's epoch comes first as a row of its own
        // (seq 0: journal seqs start at 1), not as a column repeated on every entry.
        const column = encoding === "pb" ? sql`update_pb` : sql`update_json`
        const epochItem = encoding === "pb" ? sql`convert_to(epoch, 'UTF8')` : sql`epoch`
        return sql<{ seq: bigint; item: Uint8Array | string }>`
          SELECT 0::int8 AS seq, ${epochItem} AS item FROM runtime.sync_journal_epoch
          UNION ALL
          SELECT seq, ${column} FROM runtime.sync_stream_events
          WHERE topic = ${topic} AND seq BETWEEN ${first} AND ${last}`.pipe(
          Effect.map((result) => {
            let epoch = ""
            const slots: Array<Uint8Array | string | undefined> = new Array(REPLAY_PAGE)
            for (const r of result) {
              const seq = Number(r.seq)
              if (seq === 0) epoch = typeof r.item === "string" ? r.item : utf8Decoder.decode(r.item)
              else slots[seq - first] = r.item
            }
            return packPage(epoch, first, encoding, slots)
          })
        )
      }
      const readReplayPage = (topic: string, pageEpoch: string, afterSeq: number, encoding: "pb" | "json") =>
        Effect.gen(function*() {
          const page = Math.floor(afterSeq / REPLAY_PAGE)
          const first = page * REPLAY_PAGE + 1
          const key = `${encoding}\u0000${pageEpoch}\u0000${page}\u0000${topic}`
          const cached = pageCache.get(key)
          if (cached !== undefined) {
            pageCache.delete(key) // most recently used goes last
            pageCache.set(key, cached)
            return unpackAfter(cached, afterSeq)
          }
          let pending = inFlight.get(key)
          if (pending === undefined) {
            // The read runs in a fiber of its own (not interrupted with any one reader), fills the
            // cache and completes `pending`; every reader waits for it, interruptibly.
            const mine = yield* Deferred.make<PackedPage, SqlError>()
            inFlight.set(key, mine)
            pending = mine
            yield* Effect.forkDetach(
              readPage(topic, first, encoding).pipe(
                Effect.tap((packed) =>
                  Effect.sync(() => {
                    // Complete (every seq of the page present) and of the epoch asked for: immutable.
                    if (packed.count === REPLAY_PAGE && packed.epoch === pageEpoch && replayCacheBytes > 0) {
                      remember(key, packed)
                    }
                  })
                ),
                Effect.exit,
                Effect.flatMap((exit) =>
                  Effect.sync(() => {
                    inFlight.delete(key)
                    Deferred.doneUnsafe(mine, exit)
                  })
                )
              )
            )
          }
          const packed = yield* Deferred.await(pending)
          // The journal moved to another epoch: its seqs name other entries, none of them this
          // replay's (it ends with the epoch change).
          if (packed.epoch !== pageEpoch) return ReplayPage.ofOtherEpoch
          return unpackAfter(packed, afterSeq)
        })

      const epoch = sql<{ epoch: string }>`SELECT epoch FROM runtime.sync_journal_epoch`.pipe(
        Effect.map((rows) => rows[0]?.epoch ?? "")
      )

      const readPositions = (topics: ReadonlyArray<string>) =>
        sql<{ epoch: string; topic: string; head_seq: bigint | null; floor_seq: bigint | null }>`
          SELECT e.epoch, t.topic, s.head_seq, s.floor_seq
          FROM runtime.sync_journal_epoch e
          CROSS JOIN unnest(${topics}::text[]) AS t(topic)
          LEFT JOIN runtime.sync_topic_sequences s ON s.topic = t.topic`.pipe(
          Effect.map((rows) => {
            const positions = new Map<string, TopicPosition>()
            for (const row of rows) {
              const headSeq = row.head_seq == null ? 0 : Number(row.head_seq)
              positions.set(row.topic, {
                epoch: row.epoch,
                headSeq,
                floorSeq: row.floor_seq == null ? headSeq + 1 : Number(row.floor_seq)
              })
            }
            // No epoch row (never after the migrations): every topic is empty, in no epoch.
            if (rows.length === 0) for (const topic of topics) positions.set(topic, { epoch: "", headSeq: 0, floorSeq: 1 })
            return positions
          })
        )
      // Concurrent position reads (a connection storm subscribes to thousands of topics, each read
      // twice: by the connection and by the topic's actor) go out as one statement per round trip.
      const context = yield* Effect.context<never>()
      const scope = yield* Effect.scope
      const coalescedPosition = coalescedReads<string, TopicPosition, SqlError>({
        maxKeys: 1000,
        readMany: readPositions,
        // The journal's fiber, interrupted with the layer (callers still waiting are then told).
        start: (loop) => {
          Fiber.runIn(Effect.runForkWith(context)(loop), scope)
        }
      })
      // Inside a transaction a read must see that transaction's own writes: read on its connection.
      const position = (topic: string) =>
        Effect.flatMap(Effect.serviceOption(sql.transactionService), (tx) =>
          Option.isNone(tx)
            ? coalescedPosition(topic)
            : Effect.map(readPositions([topic]), (positions) => positions.get(topic)!))

      return Journal.of({ append, appendAll, read, readReplayPage, position, epoch })
    })
  )
}

/** The proto3 JSON of an Update (for tests and tools). */
export const updateJson = (update: Update) => toJson(UpdateSchema, update, { useProtoFieldName: true })
