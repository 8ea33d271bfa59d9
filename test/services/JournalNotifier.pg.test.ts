/**
 * JournalNotifier on its own against Postgres: announced heads reach a `LISTEN`er as
 * `"<seq> <committed_at_ms> <topic>"`, the highest seq per topic, and more topics than one
 * statement carries (5000) go out in several statements, every topic once.
 */
import { PgClient } from "@effect/sql-pg"
import { assert, describe, layer } from "@effect/vitest"
import { Effect, Queue } from "effect"
import { JOURNAL_CHANNEL } from "../../src/services/Journal.ts"
import { JournalNotifier } from "../../src/services/JournalNotifier.ts"
import { testServices } from "../support/TestApp.ts"

layer(testServices(), { timeout: "120 seconds" })("JournalNotifier", (it) => {
  describe("announce + flush", () => {
    it.effect("12,001 topics: each once with its highest seq, across several statements", () =>
      Effect.scoped(Effect.gen(function*() {
        const pg = yield* PgClient.PgClient
        const notifier = yield* JournalNotifier
        const received = yield* pg.listen(JOURNAL_CHANNEL)
        const topics = Array.from({ length: 12_001 }, (_, i) => `run/notify-${i}`)
        // One announcement (a batch's heads) naming a topic twice: the higher seq wins.
        notifier.announce(2_000, topics.flatMap((t, i) => (i % 2 === 0 ? [[t, 5], [t, 1]] as const : [[t, 1]] as const)))
        yield* notifier.flush
        const seen = new Map<string, string>()
        while (seen.size < topics.length) {
          const n = yield* Queue.take(received).pipe(Effect.timeout("20 seconds"))
          const [seq, committedAt, topic] = n.payload.split(" ")
          if (!topic!.startsWith("run/notify-")) continue
          assert.isFalse(seen.has(topic!), `${topic} notified twice`)
          seen.set(topic!, `${seq} ${committedAt}`)
        }
        topics.forEach((t, i) => assert.strictEqual(seen.get(t), i % 2 === 0 ? "5 2000" : "1 2000", t))
      })))
  })
})
