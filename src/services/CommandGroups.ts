/**
 * CommandGroups: group commit of concurrent single-event commands (run events, worker events and
 * heartbeats), on top of GroupCommit's queue.
 *
 * A command that finds a committer idle commits alone, in its own transaction and under its
 * request's span. Commands arriving while both committers are busy gather and go together through
 * a set-based transaction (`together`: RunEventBatches / WorkerEventBatches), which answers and
 * writes exactly what the commands would have one after another in arrival order. When a statement
 * of that shared transaction fails, it rolled back and nothing of the group committed; that may be
 * one command's doing (a row the database refuses) or not (the connection dropped), so each
 * command is then committed alone, in arrival order, and a poison command fails only itself. After
 * FALLBACK_FAILURES lone failures in a row the database is taken to be down and the rest get the
 * same answer (a retryable 500) at once instead of each waiting to fail. When the outcome is
 * unknown (BEGIN or COMMIT failed) every command of the group gets the 500 and none is committed
 * again here: a retry with its idempotency key is safe. A defect inside the shared transaction
 * (a bug in one command's processing) rolls it back like a failed statement; a command that dies
 * alone is answered a retryable 500. A command issued inside a caller's transaction joins it.
 */
import { Effect, Metric, Option, Schema, type Scope, type Tracer } from "effect"
import { SqlClient } from "effect/sql"
import { ApiError } from "../domain/ApiError.ts"
import { type CommandResult, commitFailed } from "./CommandRunner.ts"
import { makeGroupCommitter } from "./GroupCommit.ts"
import { commandGroupEvents } from "./Metrics.ts"

/** One command's answer inside a group: what it would answer alone, or its typed error. */
export type ItemAnswer = CommandResult | ApiError

/**
 * A statement of a group's transaction failed, or the code running inside it died (a defect): the
 * transaction rolled back, nothing committed.
 */
export class StatementFailed extends Schema.TaggedError<StatementFailed>()("StatementFailed", {
  cause: Schema.Unknown
}) {}

/** Group transactions committing at once (each holds one pooled connection while it commits). */
const GROUP_COMMIT_WORKERS = 2
/** Lone commits failing in the database in a row after which a failed group's rest fails at once. */
const FALLBACK_FAILURES = 3

export interface CommandGroups<P> {
  /**
   * Commits `item` — alone, grouped with concurrent ones, or inside the caller's transaction when
   * there is one (tools, tests: it joins it, as one command always did) — and answers what it
   * would answer alone.
   */
  readonly submit: (item: P) => Effect.Effect<CommandResult, ApiError>
}

/** A queued command and the span of the request that sent it (a command alone is traced under it). */
interface Pending<P> {
  readonly item: P
  readonly span: Tracer.AnySpan | undefined
}

export const makeCommandGroups = <P extends { readonly now: number }>(options: {
  /** Most commands in one group. */
  readonly maxGroup: number
  /** One command in its own transaction (or the caller's). */
  readonly alone: (item: P) => Effect.Effect<CommandResult, ApiError>
  /**
   * Many commands in one set-based transaction, committed at `now`: answers in input order.
   * `StatementFailed` when a statement failed or the transaction's code died (rolled back either
   * way); an `ApiError` when BEGIN or COMMIT failed (the outcome is unknown).
   */
  readonly together: (items: ReadonlyArray<P>, now: number) => Effect.Effect<ReadonlyArray<ItemAnswer>, ApiError | StatementFailed>
}): Effect.Effect<CommandGroups<P>, never, Scope.Scope | SqlClient.SqlClient> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    // One command, traced under its request; its error is its answer. One that dies (a bug: a
    // defect, not a typed error) is answered a retryable 500 and logged: it must not take the
    // rest of its group with it.
    const alone = ({ item, span }: Pending<P>): Effect.Effect<ItemAnswer> =>
      options.alone(item).pipe(
        span === undefined ? (e) => e : Effect.withParentSpan(span),
        Effect.catch((e: ApiError) => Effect.succeed(e)),
        Effect.catchDefect((defect) =>
          Effect.logError("a command failed with a defect; answered 500", defect).pipe(Effect.as(commitFailed()))
        )
      )

    const oneByOne = (items: ReadonlyArray<Pending<P>>, groupError: ApiError) =>
      Effect.gen(function*() {
        const answers: Array<ItemAnswer> = []
        let failuresInARow = 0
        for (const item of items) {
          if (failuresInARow >= FALLBACK_FAILURES) {
            answers.push(groupError)
            continue
          }
          const answer = yield* alone(item)
          failuresInARow = answer instanceof ApiError && answer.code === "internal" ? failuresInARow + 1 : 0
          answers.push(answer)
        }
        return answers
      })

    const committer = yield* makeGroupCommitter<Pending<P>, ItemAnswer, never>({
      workers: GROUP_COMMIT_WORKERS,
      maxGroup: options.maxGroup,
      // Commands waiting for a group beyond which new ones wait to be queued (HTTP backpressure).
      capacity: 4 * options.maxGroup,
      commit: (pending) =>
        Metric.update(commandGroupEvents, pending.length).pipe(Effect.andThen(
          pending.length === 1
            ? Effect.map(alone(pending[0]!), (a): ReadonlyArray<ItemAnswer> => [a])
            // Committed at the latest of its commands' request times (the injected clock's).
            : options.together(pending.map((p) => p.item), pending.reduce((t, p) => Math.max(t, p.item.now), 0)).pipe(
              Effect.catchTag("StatementFailed", (e) =>
                Effect.logWarning(
                  `a group of ${pending.length} commands was rolled back (a statement or one command's processing failed); committing them one at a time`,
                  e.cause
                ).pipe(Effect.andThen(oneByOne(pending, commitFailed())))),
              Effect.catch((e: ApiError) => Effect.succeed(pending.map(() => e)))
            )
        ))
    })

    const submit = (item: P) =>
      Effect.gen(function*() {
        if (Option.isSome(yield* Effect.serviceOption(sql.transactionService))) return yield* options.alone(item)
        const span = Option.getOrUndefined(yield* Effect.option(Effect.currentSpan))
        const answer = yield* committer.submit({ item, span })
        if (answer instanceof ApiError) return yield* answer
        return answer
      })
    return { submit }
  })
