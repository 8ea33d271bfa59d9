/**
 * JournalFeed: this node's single `LISTEN khala_journal` connection. Commits notify
 * `"<seq> <committed_at_ms> <topic>"` (inside their transaction, so only after commit); a rebuild
 * notifies `"! <epoch>"`. Notifications carry positions only — the journal is the source of the
 * data — so a lost notification costs latency, never data: after every (re)connect all actors
 * re-read their position.
 */
import { PgClient } from "@effect/sql-pg"
import { Clock, Deferred, Effect, Layer, Metric, Queue, Schedule } from "effect"
import { JOURNAL_CHANNEL } from "./Journal.ts"
import { projectionLagMs } from "./Metrics.ts"
import { TopicHub } from "./TopicHub.ts"

export type FeedMessage =
  | { readonly _tag: "Entry"; readonly topic: string; readonly seq: number; readonly committedAtMs: number }
  | { readonly _tag: "Epoch"; readonly epoch: string }

export const parseFeedMessage = (payload: string): FeedMessage | undefined => {
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
            if (message._tag === "Epoch") yield* hub.resyncAll(message.epoch)
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
  }).pipe(Effect.withSpan("JournalFeed.start"))
)
