/**
 * CommandRunner: the envelope of every appending command — one Postgres transaction, the commit
 * latency histogram, the outcome counter, and the mapping of unexpected database failures to a
 * typed `internal` error (counted as a projection write failure). Nothing is delivered before
 * commit: the entries the transaction appended are handed to this node's TopicHub, and their
 * topic heads to the JournalNotifier (the other nodes), only once the commit succeeded.
 */
import { Cause, Clock, Context, Effect, Exit, Layer, Metric, Schema } from "effect"
import { SqlClient } from "effect/sql"
import { SqlError } from "effect/sql/SqlError"
import { ApiError, apiError } from "../domain/ApiError.ts"
import type { JsonObject } from "../domain/Json.ts"
import { JournalEntryTooLarge, PendingDelivery } from "./Journal.ts"
import { JournalNotifier } from "./JournalNotifier.ts"
import { commandCommitDurationMs, commandsTotal, projectionWriteFailures } from "./Metrics.ts"
import { TopicHub } from "./TopicHub.ts"

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

/** A command of a shared transaction (`transactAll`): its name (for metrics) and its body. */
export interface GroupedCommand<A extends CommandResult> {
  readonly command: string
  readonly body: Effect.Effect<A, ApiError | SqlError | JournalEntryTooLarge>
}

/**
 * Most commands per shared transaction: each runs in a savepoint, and Postgres keeps the
 * subtransactions of a transaction in each backend's cache only up to 64 — past that, every
 * other session's visibility checks go to pg_subtrans while the transaction is open.
 */
export const MAX_SAVEPOINT_GROUP = 64

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
  /**
   * Runs up to MAX_SAVEPOINT_GROUP commands in one transaction (one COMMIT, one WAL flush), each
   * in a savepoint of its own, in order: a command that fails — its own error, or a statement the
   * database refused — is rolled back alone and answered with its error, as if it had run alone.
   * Answers are in input order and this never fails. When BEGIN or COMMIT fails the outcome is
   * unknown: every command that had succeeded is answered with the retryable 500 (idempotency
   * keys make the retry safe). Entries are handed over only after the COMMIT.
   */
  readonly transactAll: <A extends CommandResult>(
    commands: ReadonlyArray<GroupedCommand<A>>
  ) => Effect.Effect<ReadonlyArray<A | ApiError>>
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
              Effect.fail(
                apiError("payload_too_large", `the event would not fit in one sync frame (${e.bytes} > ${e.limit} bytes)`, {
                  limit_bytes: e.limit
                })
              )),
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

      const transactAll = <A extends CommandResult>(
        commands: ReadonlyArray<GroupedCommand<A>>
      ): Effect.Effect<ReadonlyArray<A | ApiError>> =>
        Effect.gen(function*() {
          const answers: Array<A | ApiError> = []
          // Each `transact` inside this transaction is a savepoint; its hand-over waits for our COMMIT.
          const outer = yield* Effect.exit(sql.withTransaction(Effect.gen(function*() {
            for (const c of commands) {
              const exit = yield* Effect.exit(transact(c.command, c.body))
              if (Exit.isSuccess(exit)) answers.push(exit.value)
              else if (Cause.hasFails(exit.cause) && !Cause.hasDies(exit.cause)) answers.push(Cause.squash(exit.cause) as ApiError)
              else {
                // A defect (a savepoint that could not be rolled back: the connection is gone).
                yield* Effect.logError(`command ${c.command} failed in a shared transaction`, exit.cause)
                answers.push(commitFailed())
              }
            }
          })))
          if (Exit.isSuccess(outer)) return answers
          const e = Cause.squash(outer.cause)
          if (e instanceof SqlError) yield* failedInDatabase(`group of ${commands.length}`, e, "at BEGIN or COMMIT")
          else yield* Effect.logError(`a shared transaction of ${commands.length} commands failed`, outer.cause)
          yield* Metric.update(
            Metric.withAttributes(commandsTotal, { command: "group", outcome: "retried" }),
            commands.length
          )
          // Commands that had failed keep their answer (rolled back either way); the rest: unknown.
          return commands.map((_, i) => {
            const a = answers[i]
            return a instanceof ApiError ? a : commitFailed()
          })
        }).pipe(Effect.withSpan("Command.group", { attributes: { "khala.commands": commands.length } }))

      return CommandRunner.of({ transact, transactAll })
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

/**
 * Parses an optional ISO-8601 `occurred_at`; defaults to `nowMs`. Times before 1970 are refused:
 * the wire carries them as unsigned milliseconds.
 */
export const occurredAt = (value: string | undefined, nowMs: number) => {
  if (value === undefined) return Effect.succeed(nowMs)
  const ms = Date.parse(value)
  return Number.isFinite(ms) && /^\d{4}-\d{2}-\d{2}T/.test(value) && ms >= 0 && ms <= MAX_OCCURRED_AT_MS
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
