/**
 * BatchedAppend: the steps every set-based event transaction shares (RunEventBatches for runs,
 * WorkerEventBatches for Codex workers), each one statement whatever the number of events.
 *
 * The caller locks its entity rows (sorted by id) and judges its items in order — each item's
 * outcome is what its command alone would answer at that point — with a `KeyLedger` for
 * idempotency keys (stored ones and the batch's own). The accepted events are then appended in one
 * go (`appendEvents`): owner ordinals (owner order), the authority events, read back, projected in
 * item order, their journal entries (topic order), documents and checkpoints. `answersOf` turns
 * the outcomes into answers and stores the keyed ones. The caller updates its entity rows.
 *
 * Locks are taken in one global order — entity rows by id, owner ordinals by owner, topic seqs by
 * topic — which single commands follow too, so no two transactions can deadlock.
 */
import { Effect, Metric, Schema } from "effect"
import type { SqlClient, Statement } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import { ApiError } from "../domain/ApiError.ts"
import type { JsonObject } from "../domain/Json.ts"
import type { ItemAnswer } from "./CommandGroups.ts"
import { type CommandResult, type CommandRunner, entryTooLarge } from "./CommandRunner.ts"
import type { EventRow } from "./EventStore.ts"
import { type EntityKind, type IdempotencyScope, keyReused } from "./Idempotency.ts"
import { type Journal, JournalEntryTooLarge, type TopicSeqs } from "./Journal.ts"
import { commandsTotal } from "./Metrics.ts"
import { int8Array, textArray, timestamptzArray } from "./SqlArrays.ts"
import { projectSet, type ProjectionSpec, SUMMARY_KIND, upsertProjection } from "./Projector.ts"

const SUMMARY_KINDS: ReadonlySet<string> = new Set(Object.values(SUMMARY_KIND))

/** These items would not fit one sync frame: the batch is judged again without them (413). */
export class ItemTooLarge extends Schema.TaggedError<ItemTooLarge>()("ItemTooLarge", {
  indexes: Schema.Array(Schema.Number),
  limit: Schema.Number
}) {}

/**
 * How much an event's own entry can shrink when earlier items are refused: only its seqs change
 * (the topic seq in the header, the entity seq in the doc key and the body), by at most a few
 * varint bytes or decimal digits each — under 48 bytes in all.
 */
const SEQ_WIDTH_MARGIN = 64

/** An accepted event: the seq it takes and what it appends. */
export interface Append {
  readonly _tag: "append"
  readonly entityId: string
  readonly ownerUserId: string
  readonly seq: number
  readonly type: string
  readonly payload: JsonObject
  readonly occurredAtMs: number
  readonly scope: IdempotencyScope | undefined
}

/** What one item comes to, in order. */
export type Outcome =
  | { readonly _tag: "rejected"; readonly error: ApiError }
  | { readonly _tag: "replayStored"; readonly body: JsonObject }
  | { readonly _tag: "replayItem"; readonly index: number }
  | Append

const keyOf = (entityId: string, key: string) => `${entityId}\u0000${key}`

/**
 * The idempotency keys of one batch: those stored before it (read once) and those its own
 * accepted items use. `check` is what `Idempotency.guard` would decide for the item.
 */
export class KeyLedger {
  private readonly batch = new Map<string, { readonly hash: string; readonly index: number }>()
  private readonly stored: ReadonlyMap<string, { readonly hash: string; readonly response: JsonObject }>
  private constructor(stored: ReadonlyMap<string, { readonly hash: string; readonly response: JsonObject }>) {
    this.stored = stored
  }

  /** Reads the stored keys of the keyed items (one statement; none without keys). */
  static load(sql: SqlClient.SqlClient, kind: EntityKind, scopes: ReadonlyArray<IdempotencyScope>) {
    return Effect.gen(function*() {
      const stored = new Map<string, { hash: string; response: JsonObject }>()
      if (scopes.length > 0) {
        const rows = yield* sql<{ entity_id: string; idempotency_key: string; request_hash: string; response: JsonObject }>`
          SELECT entity_id, idempotency_key, request_hash, response FROM runtime.idempotency_keys
          WHERE entity_kind = ${kind} AND (entity_id, idempotency_key) IN (
            SELECT * FROM unnest(${textArray(scopes.map((s) => s.entityId))}, ${textArray(scopes.map((s) => s.key))}))`
        for (const r of rows) stored.set(keyOf(r.entity_id, r.idempotency_key), { hash: r.request_hash, response: r.response })
      }
      return new KeyLedger(stored)
    })
  }

  /** A replay or a reused-key rejection if the key was seen; `undefined` to go on judging. */
  check(scope: IdempotencyScope | undefined): Outcome | undefined {
    if (scope === undefined) return undefined
    const k = keyOf(scope.entityId, scope.key)
    const prior = this.stored.get(k) ?? this.batch.get(k)
    if (prior === undefined) return undefined
    if (prior.hash !== scope.requestHash) return { _tag: "rejected", error: keyReused(scope.key) }
    return "response" in prior ? { _tag: "replayStored", body: prior.response } : { _tag: "replayItem", index: prior.index }
  }

  /** Item `index` is accepted as this append: its outcome; later retries of its key in the batch replay it. */
  accept(index: number, append: Omit<Append, "_tag">): Append {
    const { scope } = append
    if (scope !== undefined) this.batch.set(keyOf(scope.entityId, scope.key), { hash: scope.requestHash, index })
    return { _tag: "append", ...append }
  }
}

/** Each stream's authority event table and that table's entity id column. */
const EVENT_TABLES = {
  runs: { table: "runtime.run_events", idColumn: "run_id" },
  workers: { table: "runtime.codex_worker_events", idColumn: "worker_id" }
} as const

/** How one entity kind's events are stored and projected. */
export interface EventKind<Doc> {
  readonly stream: "runs" | "workers"
  /** How a stored event row projects. */
  readonly spec: (entityId: string, ownerUserId: string, row: EventRow) => ProjectionSpec<Doc>
  readonly decode: (bytes: Uint8Array) => Doc
}

/**
 * Appends every accepted event (outcomes that are `append`): owner ordinals, the events (read
 * back, so the projector sees what a replay will), projection in item order, journal entries, then
 * documents, checkpoints and `entityRows` of the entities whose events were appended (each once, in
 * item order) in one statement. Returns each item's topic seqs (by item index) and the batch's
 * heads. An oversized entry fails with `ItemTooLarge`.
 */
export const appendEvents = <Doc>(
  sql: SqlClient.SqlClient,
  journal: Journal["Service"],
  kind: EventKind<Doc>,
  outcomes: ReadonlyArray<Outcome>,
  requestIds: (i: number) => string | undefined,
  now: number,
  /** The write of the appended entities' rows (given them, each once, in item order), done with the documents. */
  entityRows: (entities: ReadonlyArray<string>) => Statement.Statement<unknown>
): Effect.Effect<
  {
    readonly itemTopicSeqs: ReadonlyArray<TopicSeqs | undefined>
    readonly topicSeqs: TopicSeqs
  },
  SqlError | ItemTooLarge
> =>
  Effect.gen(function*() {
    const appends: Array<[number, Append]> = []
    outcomes.forEach((o, i) => {
      if (o._tag === "append") appends.push([i, o])
    })
    const itemTopicSeqs = new Array<TopicSeqs | undefined>(outcomes.length)
    const topicSeqs: TopicSeqs = {}
    if (appends.length === 0) return { itemTopicSeqs, topicSeqs }

    // Owner ordinals (owner order), then every event in one statement, read back.
    const perOwner = new Map<string, number>()
    for (const [, a] of appends) perOwner.set(a.ownerUserId, (perOwner.get(a.ownerUserId) ?? 0) + 1)
    const owners = [...perOwner.keys()].sort()
    const lastOrdinal = new Map(
      (yield* sql<{ owner_user_id: string; last_ordinal: bigint }>`
        INSERT INTO runtime.owner_sequences AS s (owner_user_id, stream, last_ordinal)
        SELECT u, ${kind.stream}, n FROM unnest(${textArray(owners)}, ${int8Array(owners.map((o) => BigInt(perOwner.get(o)!)))})
          AS x(u, n)
        ORDER BY u
        ON CONFLICT (owner_user_id, stream) DO UPDATE SET last_ordinal = s.last_ordinal + EXCLUDED.last_ordinal
        RETURNING owner_user_id, last_ordinal`).map((r) => [r.owner_user_id, Number(r.last_ordinal)])
    )
    const nextOrdinal = new Map(owners.map((o) => [o, lastOrdinal.get(o)! - perOwner.get(o)! + 1]))
    // One array per column (`unnest`): a fixed statement, whatever the batch size.
    const n = appends.length
    const cols = {
      entityId: new Array<string>(n),
      seq: new Array<bigint>(n),
      ordinal: new Array<bigint>(n),
      type: new Array<string>(n),
      payload: new Array<string>(n),
      occurredAtMs: new Array<number>(n),
      requestId: new Array<string | null>(n)
    }
    appends.forEach(([i, a], k) => {
      const ordinal = nextOrdinal.get(a.ownerUserId)!
      nextOrdinal.set(a.ownerUserId, ordinal + 1)
      cols.entityId[k] = a.entityId
      cols.seq[k] = BigInt(a.seq)
      cols.ordinal[k] = BigInt(ordinal)
      cols.type[k] = a.type
      cols.payload[k] = JSON.stringify(a.payload)
      cols.occurredAtMs[k] = a.occurredAtMs
      cols.requestId[k] = requestIds(i) ?? null
    })
    const { table, idColumn } = EVENT_TABLES[kind.stream]
    const rows = yield* sql<EventRow & { entity_id: string }>`
      INSERT INTO ${sql.literal(table)} (${sql.literal(idColumn)}, seq, owner_ordinal, type, payload, occurred_at, request_id)
      SELECT * FROM unnest(${textArray(cols.entityId)}, ${int8Array(cols.seq)}, ${int8Array(cols.ordinal)},
                           ${textArray(cols.type)}, ${textArray(cols.payload)}::jsonb[], ${timestamptzArray(cols.occurredAtMs)},
                           ${textArray(cols.requestId)})
      RETURNING ${sql.literal(idColumn)} AS entity_id, seq, type, payload::text AS payload, occurred_at`
    const stored = new Map<string, EventRow>()
    for (const r of rows) stored.set(`${r.entity_id}:${r.seq}`, r)

    // Projected in item order from the stored documents.
    const set = yield* projectSet(
      sql,
      appends.map(([, a]) => kind.spec(a.entityId, a.ownerUserId, stored.get(`${a.entityId}:${a.seq}`)!)),
      kind.decode
    )
    const draftItem = set.draftEvent.map((k) => appends[k]![0])

    // The journal: every entry of the batch, seqs allocated in topic order. Refused when entries
    // are too large: the earliest such item (its entries are what they would be alone), and every
    // item whose own event entry is too large by more than its seqs could account for (too large
    // whatever is refused before it) — not a later item whose entry may be too large only because
    // of an earlier one (a summary).
    const appended = yield* journal.appendAll(set.drafts, now).pipe(
      Effect.catchIf(
        (e): e is JournalEntryTooLarge => e instanceof JournalEntryTooLarge,
        (e) => {
          const indexes = new Set([draftItem[e.draft]!])
          for (const o of e.others) {
            if (o.bytes > e.limit + SEQ_WIDTH_MARGIN && !SUMMARY_KINDS.has(set.drafts[o.draft]!.kind)) {
              indexes.add(draftItem[o.draft]!)
            }
          }
          return Effect.fail(new ItemTooLarge({ indexes: [...indexes], limit: e.limit }))
        }
      )
    )
    set.drafts.forEach((d, k) => {
      const i = draftItem[k]!
      const seq = appended.seqs[k]!
      ;(itemTopicSeqs[i] ??= {})[d.topic] = seq
      topicSeqs[d.topic] = Math.max(topicSeqs[d.topic] ?? 0, seq)
    })

    // Final documents (changed ones), checkpoints and the entity rows: one statement.
    yield* upsertProjection(sql, set.documents, set.checkpoints, entityRows([...new Set(cols.entityId)]))
    return { itemTopicSeqs, topicSeqs }
  })

/**
 * Every item's answer — an error, a replay (200 with the first answer), or the append's 201 with
 * `body` — and the keyed appends' answers stored for retries (one statement).
 */
export const answersOf = (
  sql: SqlClient.SqlClient,
  kind: EntityKind,
  outcomes: ReadonlyArray<Outcome>,
  body: (a: Append, i: number) => JsonObject
) =>
  Effect.gen(function*() {
    const results: Array<CommandResult | ApiError> = outcomes.map((o, i) => {
      switch (o._tag) {
        case "rejected":
          return o.error
        case "replayStored":
          return { status: 200, body: o.body }
        case "append":
          return { status: 201, body: body(o, i) }
        case "replayItem":
          return { status: 200, body: {} }
      }
    })
    outcomes.forEach((o, i) => {
      if (o._tag === "replayItem") results[i] = { status: 200, body: (results[o.index] as CommandResult).body }
    })
    const keyed: Array<[number, Append & { readonly scope: IdempotencyScope }]> = []
    outcomes.forEach((o, i) => {
      if (o._tag === "append" && o.scope !== undefined) keyed.push([i, o as Append & { scope: IdempotencyScope }])
    })
    if (keyed.length > 0) {
      yield* sql`
        INSERT INTO runtime.idempotency_keys (entity_kind, entity_id, idempotency_key, request_hash, status, response)
        SELECT ${kind}, id, k, h, 201, r FROM unnest(${textArray(keyed.map(([, a]) => a.entityId))},
          ${textArray(keyed.map(([, a]) => a.scope.key))}, ${textArray(keyed.map(([, a]) => a.scope.requestHash))},
          ${textArray(keyed.map(([i]) => JSON.stringify((results[i] as CommandResult).body)))}::jsonb[]) AS x(id, k, h, r)`
    }
    return results
  })

/** What a batch transaction answers: per item, and the batch's topic heads. */
export interface BatchResult {
  readonly results: ReadonlyArray<ItemAnswer>
  readonly topicSeqs: TopicSeqs
}

/**
 * Runs a batch transaction (`body`, given the items already refused) under `command`: an item
 * whose journal entry would not fit one frame is 413 and the batch is committed again without it.
 * Counts every item's outcome under its label. A failing statement is a 500 for every item, or
 * `rolledBack`'s error when given (rolled back: nothing committed) — which a defect inside the
 * transaction then becomes too (logged), so a group can be retried one command at a time.
 */
export const commitBatch = <R, E = never>(
  runner: CommandRunner["Service"],
  command: string,
  labels: ReadonlyArray<string>,
  body: (rejected: ReadonlyMap<number, ApiError>) => Effect.Effect<BatchResult, SqlError | ItemTooLarge, R>,
  rolledBack?: (cause: unknown) => E
) =>
  Effect.gen(function*() {
    const rejected = new Map<number, ApiError>()
    const attempt = (): Effect.Effect<BatchResult, SqlError | ItemTooLarge | E, R> =>
      rolledBack === undefined ? body(rejected) : body(rejected).pipe(
        Effect.catchDefect((defect) =>
          Effect.logError(`${command}: a defect inside the transaction; rolled back`, defect).pipe(
            Effect.andThen(Effect.fail(rolledBack(defect)))
          )
        )
      )
    let done: BatchResult | undefined
    while (done === undefined) {
      done = yield* runner.transact(command, Effect.map(attempt(), (r) => ({ status: 201, body: {}, ...r })), rolledBack).pipe(
        Effect.catchIf((e): e is ItemTooLarge => e instanceof ItemTooLarge, (e) => {
          // Only numbers cross into the answers: an error keeps the closures of the frames it was
          // created under (the attempt's rows and encodings) alive through its captured stack.
          const { indexes, limit } = e
          return Effect.sync(() => {
            for (const i of indexes) rejected.set(i, entryTooLarge(limit))
            return undefined
          })
        })
      )
    }
    // One counter update per (label, outcome), not per item.
    const counts = new Map<string, { command: string; outcome: string; n: number }>()
    done.results.forEach((r, i) => {
      const outcome = r instanceof ApiError ? r.code : r.status === 201 ? "ok" : "replayed"
      const key = `${labels[i]}\u0000${outcome}`
      const c = counts.get(key)
      if (c) c.n++
      else counts.set(key, { command: labels[i]!, outcome, n: 1 })
    })
    for (const c of counts.values()) {
      yield* Metric.update(Metric.withAttributes(commandsTotal, { command: c.command, outcome: c.outcome }), c.n)
    }
    return done
  })
