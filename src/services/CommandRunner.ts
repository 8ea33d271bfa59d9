/**
 * CommandRunner: the envelope of every appending command — one Postgres transaction, the commit
 * latency histogram, the outcome counter, and the mapping of unexpected database failures to a
 * typed `internal` error (counted as a projection write failure). Nothing is delivered before
 * commit: the entries the transaction appended are handed to this node's TopicHub, and their
 * topic heads to the JournalNotifier (the other nodes), only once the commit succeeded.
 */
import { Clock, Context, Effect, Layer, Metric, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { SqlError } from "effect/sql/SqlError"
import { ApiError, apiError } from "../domain/ApiError.ts"
import type { JsonObject } from "../domain/Json.ts"
import { JournalEntryTooLarge, PendingDelivery } from "./Journal.ts"
import { JournalNotifier } from "./JournalNotifier.ts"
import { commandCommitDurationMs, commandsTotal, projectionWriteFailures } from "./Metrics.ts"
import { TopicHub } from "./TopicHub.ts"

/**
 * The 413 of an event whose journal entry would not fit one frame. It names the limit, not the
 * entry's size: that depends by a few bytes on the seqs the entry would take, and a grouped
 * command must answer exactly what it would alone.
 */
export const entryTooLarge = (limit: number) =>
  apiError("payload_too_large", `the event would not fit in one sync frame of ${limit} bytes`, { limit_bytes: limit })

/** The answer to a command the database could not commit: a retryable 500. */
export const commitFailed = () => apiError("internal", "the command could not be committed; retry it")

/** Internal: a statement of a command's transaction failed (so it rolled back). */
class RolledBack extends Schema.TaggedError<RolledBack>()("RolledBack", { cause: Schema.Unknown }) {
  declare readonly cause: SqlError
}

export interface CommandResult {
  readonly status: number
  readonly body: JsonObject
}

export class CommandRunner extends Context.Service<CommandRunner, {
  /**
   * Runs `body` in one transaction. Database failures are logged and counted and become a
   * retryable 500, an oversized journal entry a 413; any other failure `E` (an ApiError, or a
   * caller's own signal) rolls the transaction back and is passed through. A caller that must tell
   * "a statement failed, so it rolled back and nothing committed" from "BEGIN or COMMIT failed, the
   * outcome is unknown" passes `rolledBack`: the first becomes its error instead of the 500.
   */
  readonly transact: <A extends CommandResult, E, R, F = never>(
    command: string,
    body: Effect.Effect<A, E | SqlError | JournalEntryTooLarge, R>,
    rolledBack?: (cause: SqlError) => F
  ) => Effect.Effect<A, E | ApiError | F, R>
}>()("khala/services/CommandRunner") {
  static readonly layer = Layer.effect(
    CommandRunner,
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const hub = yield* TopicHub
      const notifier = yield* JournalNotifier
      const failedInDatabase = (command: string, e: SqlError, what: string) =>
        Metric.update(projectionWriteFailures, 1).pipe(
          Effect.andThen(Effect.logError(`command ${command} failed in the database (${what})`, e))
        )
      const transact = <A extends CommandResult, E, R, F = never>(
        command: string,
        body: Effect.Effect<A, E | SqlError | JournalEntryTooLarge, R>,
        rolledBack?: (cause: SqlError) => F
      ): Effect.Effect<A, E | ApiError | F, R> =>
        Effect.gen(function*() {
          const start = yield* Clock.currentTimeMillis
          const pending: PendingDelivery["Service"] = { epoch: "", committedAtMs: 0, topics: new Map() }
          // Committed (the outermost transaction, when a caller's encloses this one): this node's
          // subscribers get the entries now, without a journal read, and other nodes hear of them.
          const handOver = Effect.sync(() => {
            hub.deliverCommitted(pending)
            if (pending.topics.size > 0) notifier.announce(pending.committedAtMs, headsOf(pending.topics))
          })
          const result = yield* sql.withTransaction(
            Effect.provideService(body, PendingDelivery, pending).pipe(
              Effect.tap(() => sql.afterCommit(handOver)),
              // A statement of the body failed: the transaction rolls back, nothing committed.
              Effect.catchIf((e): e is SqlError => e instanceof SqlError, (e) => Effect.fail(new RolledBack({ cause: e })))
            )
          ).pipe(
            Effect.catchIf((e): e is RolledBack => e instanceof RolledBack, (e) =>
              failedInDatabase(command, e.cause, "rolled back").pipe(
                Effect.andThen(Effect.fail(rolledBack === undefined ? commitFailed() : rolledBack(e.cause)))
              )),
            Effect.catchIf((e): e is JournalEntryTooLarge => e instanceof JournalEntryTooLarge, (e) =>
              Effect.fail(entryTooLarge(e.limit))),
            // BEGIN or COMMIT failed: whether it committed is unknown; a retry with its
            // idempotency key is safe.
            Effect.catchIf(
              (e): e is SqlError => e instanceof SqlError,
              (e) => failedInDatabase(command, e, "at BEGIN or COMMIT").pipe(Effect.andThen(Effect.fail(commitFailed())))
            ),
            Effect.tapError((e) =>
              Metric.update(
                Metric.withAttributes(commandsTotal, { command, outcome: e instanceof ApiError ? e.code : "retried" }),
                1
              )
            )
          )
          const end = yield* Clock.currentTimeMillis
          yield* Metric.update(commandCommitDurationMs, end - start)
          yield* Metric.update(
            Metric.withAttributes(commandsTotal, { command, outcome: result.status === 200 ? "replayed" : "ok" }),
            1
          )
          return result
        }).pipe(Effect.withSpan(`Command.${command}`))
      return CommandRunner.of({ transact })
    })
  )
}

function* headsOf(topics: ReadonlyMap<string, ReadonlyArray<{ readonly seq: number }>>) {
  for (const [topic, entries] of topics) {
    if (entries.length > 0) yield [topic, entries[entries.length - 1]!.seq] as const
  }
}

/** Decodes an unknown body with a Schema; failures become 400 `invalid_request`. */
export const decodeBody = <S extends Schema.Decoder<unknown>>(schema: S, body: unknown) =>
  Schema.decodeUnknownEffect(schema)(body).pipe(
    Effect.mapError((e) => apiError("invalid_request", e.message))
  ) as Effect.Effect<S["Type"], ApiError, S["DecodingServices"]>

/** Latest accepted `occurred_at` (9999-12-31T23:59:59.999Z); the earliest is the Unix epoch. */
const MAX_OCCURRED_AT_MS = 253_402_300_799_999

/** An ISO-8601 `occurred_at` in ms, or `undefined` when it is not one `occurredAt` accepts. */
export const occurredAtMs = (value: string): number | undefined => {
  const ms = Date.parse(value)
  return Number.isFinite(ms) && /^\d{4}-\d{2}-\d{2}T/.test(value) && ms >= 0 && ms <= MAX_OCCURRED_AT_MS ? ms : undefined
}

/**
 * Parses an optional ISO-8601 `occurred_at`; defaults to `nowMs`. Times before 1970 are refused:
 * the wire carries them as unsigned milliseconds.
 */
export const occurredAt = (value: string | undefined, nowMs: number) => {
  if (value === undefined) return Effect.succeed(nowMs)
  const ms = occurredAtMs(value)
  return ms !== undefined
    ? Effect.succeed(ms)
    : Effect.fail(
      apiError("invalid_request", "occurred_at must be an ISO-8601 timestamp from 1970-01-01T00:00:00Z on", {
        occurred_at: value
      })
    )
}

/** Maps a database failure on a read path to a typed 500. */
export const orInternal = <A, E>(eff: Effect.Effect<A, E | SqlError>) =>
  Effect.catchIf(
    eff,
    (e): e is SqlError => e instanceof SqlError,
    (e) =>
      Effect.logError("read failed in the database", e).pipe(
        Effect.andThen(Effect.fail(apiError("internal", "the database is unavailable; retry")))
      )
  ) as Effect.Effect<A, Exclude<E, SqlError> | ApiError>
