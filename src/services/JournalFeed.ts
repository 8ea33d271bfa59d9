/**
 * JournalFeed: this node's single `LISTEN khala_journal` connection. Committed heads are announced
 * as `"<seq> <committed_at_ms> <topic>"` (after the commit, by the JournalNotifier of the node that
 * committed); a rebuild notifies `"! <epoch>"`; `"*"` asks every node to re-read every position.
 * Notifications carry positions only — the journal is the source of the data — so a lost
 * notification costs latency, never data: after every (re)connect all actors re-read their
 * position, and the reconciler compares every local actor's head with the journal every
 * `feedReconcileIntervalMs`; an actor still below the head read one interval earlier missed a
 * notification (its node crashed between commit and announcement, or the listener silently
 * stalled) and is woken.
 */
import { PgClient } from "@effect/sql-pg"
import { Clock, Deferred, Duration, Effect, Layer, Metric, Queue, Schedule } from "effect"
import { SqlClient } from "effect/sql"
import { KhalaConfig } from "../layers/Config.ts"
import { JOURNAL_CHANNEL } from "./Journal.ts"
import { RESYNC_ALL_PAYLOAD } from "./JournalNotifier.ts"
import { feedReconcileWakeups, projectionLagMs } from "./Metrics.ts"
import { TopicHub } from "./TopicHub.ts"

export type FeedMessage =
  | { readonly _tag: "Entry"; readonly topic: string; readonly seq: number; readonly committedAtMs: number }
  | { readonly _tag: "Epoch"; readonly epoch: string }
  | { readonly _tag: "ResyncAll" }

export const parseFeedMessage = (payload: string): FeedMessage | undefined => {
  if (payload === RESYNC_ALL_PAYLOAD) return { _tag: "ResyncAll" }
  if (payload.startsWith("! ")) return { _tag: "Epoch", epoch: payload.slice(2) }
  const a = payload.indexOf(" ")
  const b = payload.indexOf(" ", a + 1)
  if (a <= 0 || b <= a) return undefined
  const seq = Number(payload.slice(0, a))
  const committedAtMs = Number(payload.slice(a + 1, b))
  const topic = payload.slice(b + 1)
  if (!Number.isSafeInteger(seq) || !Number.isFinite(committedAtMs) || topic.length === 0) return undefined
  return { _tag: "Entry", topic, seq, committedAtMs }
}

export const JournalFeedLive = Layer.effectDiscard(
  Effect.gen(function*() {
    const pg = yield* PgClient.PgClient
    const hub = yield* TopicHub
    const ready = yield* Deferred.make<void>()
    /** Bumped on every epoch change the listener hears (the reconciler's heads go stale). */
    let reconcileGeneration = 0

    const session = Effect.scoped(
      Effect.gen(function*() {
        const notifications = yield* pg.listen(JOURNAL_CHANNEL)
        yield* hub.resyncAll(undefined)
        yield* Deferred.succeed(ready, undefined)
        while (true) {
          const batch = yield* Queue.takeAll(notifications)
          const now = yield* Clock.currentTimeMillis
          let lag: number | undefined
          for (const n of batch) {
            const message = parseFeedMessage(n.payload)
            if (message === undefined) continue
            if (message._tag === "Epoch") {
              // The reconciler's heads are of the old epoch: forget them (see below).
              reconcileGeneration++
              yield* hub.resyncAll(message.epoch)
            }
            else if (message._tag === "ResyncAll") yield* hub.resyncAll(undefined)
            else {
              yield* hub.notify(message.topic, message.seq)
              lag = now - message.committedAtMs
            }
          }
          if (lag !== undefined) yield* Metric.update(projectionLagMs, Math.max(0, lag))
        }
      })
    )

    yield* session.pipe(
      Effect.tapError((e) => Effect.logWarning("journal listener lost; reconnecting", e)),
      Effect.retry(Schedule.min([Schedule.exponential("100 millis"), Schedule.spaced("5 seconds")])),
      Effect.forkScoped
    )
    yield* Deferred.await(ready)

    // ---- reconciler: heads read at the previous tick; an actor still below one missed it.
    const sql = yield* SqlClient.SqlClient
    const { feedReconcileIntervalMs } = yield* KhalaConfig
    let previous = new Map<string, number>()
    let previousGeneration = reconcileGeneration
    const reconcile = Effect.gen(function*() {
      const local = hub.heads()
      // An epoch change since the last read (a rebuild may have lowered heads): its heads say
      // nothing about this epoch, and would wake actors for entries that will not come.
      if (local.length === 0 || previousGeneration !== reconcileGeneration) previous = new Map()
      if (local.length === 0) return
      for (const [topic, head] of local) {
        const seen = previous.get(topic)
        if (seen !== undefined && head < seen) {
          yield* hub.notify(topic, seen)
          yield* Metric.update(feedReconcileWakeups, 1)
        }
      }
      const generation = reconcileGeneration
      const rows = yield* sql<{ topic: string; head_seq: bigint }>`
        SELECT topic, head_seq FROM runtime.sync_topic_sequences
        WHERE topic = ANY(${local.map(([t]) => t)}::text[])`
      previous = new Map(rows.map((r) => [r.topic, Number(r.head_seq)]))
      previousGeneration = generation
    })
    yield* reconcile.pipe(
      Effect.catch((e) => Effect.logWarning("journal reconcile failed; will retry", e)),
      Effect.repeat(Schedule.spaced(Duration.millis(feedReconcileIntervalMs))),
      Effect.forkScoped
    )
  }).pipe(Effect.withSpan("JournalFeed.start"))
)
