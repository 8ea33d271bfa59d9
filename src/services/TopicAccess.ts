/**
 * TopicAccess: the ACL of SPEC §3/§10. Ownership is checked against the authority tables, never
 * trusted from the client. A topic whose entity does not exist, or is someone else's, is
 * `forbidden_topic` (existence is not revealed); `sync:admin` may read any well-formed topic.
 */
import { Context, Effect, Layer, Schema } from "effect"
import { SqlClient } from "effect/sql"
import type { SqlError } from "effect/sql/SqlError"
import type { Principal } from "../domain/Principal.ts"
import { parseTopic, type Topic } from "../domain/Topic.ts"

export class TopicDenied extends Schema.TaggedError<TopicDenied>()("TopicDenied", {
  reason: Schema.Literals(["bad_request", "forbidden_topic"]),
  topic: Schema.String,
  message: Schema.String
}) {}

export class TopicAccess extends Context.Service<TopicAccess, {
  /** Resolves and authorises a topic name for a principal. */
  readonly authorize: (principal: Principal, topic: string) => Effect.Effect<Topic, TopicDenied | SqlError>
}>()("khala/services/TopicAccess") {
  static readonly layer = Layer.effect(
    TopicAccess,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const ownerOf = (topic: Topic) => {
        switch (topic._tag) {
          case "Run":
            return sql<{ owner_user_id: string }>`SELECT owner_user_id FROM runtime.runs WHERE run_id = ${topic.runId}`
              .pipe(Effect.map(([r]) => r?.owner_user_id))
          case "Worker":
            return sql<{ owner_user_id: string }>`
              SELECT owner_user_id FROM runtime.codex_workers WHERE worker_id = ${topic.workerId}`
              .pipe(Effect.map(([r]) => r?.owner_user_id))
          case "UserRuns":
          case "UserWorkers":
            return Effect.succeed(topic.userId)
        }
      }
      const authorize = Effect.fn("TopicAccess.authorize")(function*(principal: Principal, name: string) {
        const topic = parseTopic(name)
        if (!topic) {
          return yield* new TopicDenied({ reason: "bad_request", topic: name, message: `invalid topic name: ${name}` })
        }
        if (principal.isAdmin) return topic
        const denied = new TopicDenied({ reason: "forbidden_topic", topic: name, message: `not allowed to read ${name}` })
        if (!principal.canRead) return yield* denied
        const owner = yield* ownerOf(topic)
        if (owner !== principal.userId) return yield* denied
        return topic
      })
      return TopicAccess.of({ authorize })
    })
  )
}
