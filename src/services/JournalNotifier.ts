/**
 * JournalNotifier: tells every node's JournalFeed which topic heads moved, after the commit.
 *
 * Why not a `pg_notify` inside the committing transaction: Postgres serialises the commits of all
 * notifying transactions on one database-wide lock that is held through the commit's WAL flush,
 * so every command waited for every other command's fsync (≈ 250 commits/s on this project's
 * reference disk, however many writers). Commands now commit without notifying and hand their
 * heads here; one fiber coalesces them (the highest seq per topic) and sends them in one statement
 * (its own transaction, with `synchronous_commit = off`: a notification is not durable anyway, so
 * there is nothing to wait for), while the next commands' fsyncs proceed in parallel.
 *
 * Guarantees: a notification still goes out only after its entries committed. One can be lost
 * (this node crashes between a commit and the flush, or the database fails the flush): the
 * JournalFeed's reconciler compares every local actor's head with the journal periodically, so
 * a lost notification costs latency (≤ two reconcile intervals), never data. The pending set is
 * bounded by `MAX_PENDING_TOPICS`; past it the set is replaced by one "resync everything" message.
 */
import { Context, Effect, Layer, Semaphore } from "effect"
import { SqlClient } from "effect/sql"
import { JOURNAL_CHANNEL } from "./Journal.ts"

/** Notification payload that makes every listener re-read every local topic's position. */
export const RESYNC_ALL_PAYLOAD = "*"

/** Topics awaiting a flush beyond which the notifier sends `RESYNC_ALL_PAYLOAD` instead. */
export const MAX_PENDING_TOPICS = 50_000

/** Topics per `pg_notify` statement (each chunk its own statement and transaction). */
const CHUNK = 5_000

interface Head {
  seq: number
  committedAtMs: number
}

export class JournalNotifier extends Context.Service<JournalNotifier, {
  /** Records the heads a transaction committed (never blocks; the flush is asynchronous). */
  readonly announce: (committedAtMs: number, heads: Iterable<readonly [topic: string, seq: number]>) => void
  /**
   * A barrier: returns once everything announced before the call has been sent (waits for a send
   * in progress, then sends the rest). Tests use it; shutdown runs it.
   */
  readonly flush: Effect.Effect<void>
}>()("khala/services/JournalNotifier") {
  static readonly layer = Layer.effect(
    JournalNotifier,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      let pending = new Map<string, Head>()
      let resyncAll = false
      let wake: (() => void) | undefined
      /** One send at a time, so `flush` also waits for the one in progress. */
      const sending = yield* Semaphore.make(1)

      const announce = (committedAtMs: number, heads: Iterable<readonly [string, number]>) => {
        for (const [topic, seq] of heads) {
          const h = pending.get(topic)
          if (h === undefined) {
            if (pending.size >= MAX_PENDING_TOPICS) {
              resyncAll = true
              pending = new Map()
              continue
            }
            pending.set(topic, { seq, committedAtMs })
          } else if (seq > h.seq) {
            h.seq = seq
            h.committedAtMs = committedAtMs
          }
        }
        const w = wake
        wake = undefined
        w?.()
      }

      // One statement per chunk, each its own transaction (one round trip instead of BEGIN, SET
      // LOCAL, the notification and COMMIT), turning synchronous_commit off for itself:
      // `set_config(…, true)` lasts until that transaction's commit, which reads it. (On Postgres 15
      // a notification-only transaction did not wait for a WAL flush before either — 100 of them:
      // one WAL sync — so this is a guarantee, not a speed-up.) A failed send re-announces all it
      // took, so a chunk that got through may be notified twice: listeners ignore a head they have.
      const send = (payloads: ReadonlyArray<string>) =>
        Effect.forEach(
          Array.from({ length: Math.ceil(payloads.length / CHUNK) }, (_, k) => payloads.slice(k * CHUNK, (k + 1) * CHUNK)),
          (chunk) =>
            sql`SELECT pg_notify(${JOURNAL_CHANNEL}, p)
                FROM (SELECT set_config('synchronous_commit', 'off', true)) AS off, unnest(${chunk}::text[]) AS p`,
          { discard: true }
        )

      /** Sends what is pending; on failure puts it back (merged with what arrived meanwhile). */
      const flushOnce = sending.withPermits(1)(Effect.suspend(() => {
        if (pending.size === 0 && !resyncAll) return Effect.void
        const taken = pending
        const takenResync = resyncAll
        pending = new Map()
        resyncAll = false
        const payloads = takenResync
          ? [RESYNC_ALL_PAYLOAD]
          : [...taken].map(([topic, h]) => `${h.seq} ${h.committedAtMs} ${topic}`)
        return send(payloads).pipe(
          Effect.tapError(() =>
            Effect.sync(() => {
              if (takenResync) resyncAll = true
              else for (const [topic, h] of taken) announce(h.committedAtMs, [[topic, h.seq]])
            })
          )
        )
      }))

      const awaitWork = Effect.callback<void>((resume) => {
        if (pending.size > 0 || resyncAll) return resume(Effect.void)
        wake = () => resume(Effect.void)
        return Effect.sync(() => {
          wake = undefined
        })
      })

      yield* Effect.forever(
        awaitWork.pipe(
          Effect.andThen(flushOnce),
          Effect.catch((e) =>
            Effect.logWarning("journal notifications could not be sent; retrying", e).pipe(
              Effect.andThen(Effect.sleep("200 millis"))
            )
          )
        )
      ).pipe(Effect.forkScoped)
      // Shutdown: what committed last is still announced (best effort, bounded).
      yield* Effect.addFinalizer(() => flushOnce.pipe(Effect.timeout("2 seconds"), Effect.ignore))

      return JournalNotifier.of({
        announce,
        flush: flushOnce.pipe(Effect.orDie)
      })
    })
  )
}
