/**
 * Worker commands are group-committed: concurrent ones share a transaction, each in a savepoint
 * of its own (CommandRunner.transactAll). Against a real Postgres:
 * - random concurrent worker scripts (404s, creates and reattaches, keyed heartbeats and their
 *   retries, events, stop, a 409 after it, resume) give the same answers and write the same bytes
 *   as the same scripts one command at a time — and groups did form;
 * - a command the database refuses (a trigger) fails alone; the others of its group commit;
 * - a group whose COMMIT fails (a deferred trigger: the outcome is unknown) answers the 500 to
 *   every command that had succeeded in it, and what was answered 201 is exactly what committed.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect, Fiber, Metric, References } from "effect"
import { SqlClient } from "effect/sql"
import { ApiError } from "../../src/domain/ApiError.ts"
import type { CommandResult } from "../../src/services/CommandRunner.ts"
import { commandGroupEvents, projectionWriteFailures } from "../../src/services/Metrics.ts"
import { ProjectionOps } from "../../src/services/ProjectionOps.ts"
import { WorkerCommands } from "../../src/services/WorkerCommands.ts"
import { testServices } from "../support/TestApp.ts"
import { captureProjectionTables, holdRowLocks, raisingFunction } from "../support/WrittenTables.ts"

const resultOf = (r: CommandResult | ApiError) =>
  r instanceof ApiError ? { status: r.status, body: r.toBody() } : { status: r.status, body: r.body }

/** Everything a worker command writes, in comparable form. */
const capture = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  return {
    workers: yield* sql`
      SELECT worker_id, owner_user_id, status, last_seq::int, last_heartbeat_at, created_at FROM runtime.codex_workers
      ORDER BY worker_id`,
    events: yield* sql`
      SELECT worker_id, seq::int, owner_ordinal::int, type, payload::text, occurred_at FROM runtime.codex_worker_events
      ORDER BY worker_id, seq`,
    ...(yield* captureProjectionTables)
  }
})

const reset = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`TRUNCATE runtime.codex_worker_events, runtime.codex_workers, runtime.owner_sequences, runtime.read_models,
    runtime.projection_checkpoints, runtime.sync_stream_events, runtime.sync_topic_sequences, runtime.idempotency_keys`
})

type Step = (w: WorkerCommands["Service"]) => Effect.Effect<CommandResult, ApiError>

/** One worker's life: every kind of answer, in an order only its own script decides. */
const script = (r: number): ReadonlyArray<Step> => {
  const id = `gw${r}`
  // An owner of its own: no two scripts share a topic (whose seqs would follow the interleaving).
  const owner = `go${r}`
  const at = (s: number) => new Date(Date.parse("2026-03-01T12:00:00.000Z") + s * 1000).toISOString()
  return [
    (w) => w.heartbeat(`${id}-missing`, {}, undefined),
    (w) => w.create({ worker_id: id, owner_user_id: owner, metadata: { r } }, `req-${id}`),
    (w) => w.create({ worker_id: id, owner_user_id: owner }, undefined), // reattach: 200, nothing appended
    (w) => w.create({ worker_id: id, owner_user_id: "someone-else" }, undefined), // 409
    (w) => w.heartbeat(id, { payload: { load: r }, occurred_at: at(1), idempotency_key: "hb1" }, undefined),
    (w) => w.heartbeat(id, { payload: { load: r }, occurred_at: at(1), idempotency_key: "hb1" }, undefined), // replayed
    (w) => w.appendEvent(id, { event_type: "worker.event", payload: { step: 1, big: r % 5 === 0 ? "x".repeat(3000) : "" } }, undefined),
    (w) => w.heartbeat(id, { occurred_at: at(2) }, undefined),
    (w) => w.appendEvent(id, { event_type: "worker.request.received", payload: { q: "?" } }, undefined),
    (w) => w.stop(id, { reason: "done" }, undefined),
    (w) => w.heartbeat(id, { occurred_at: at(3) }, undefined), // 409: terminal
    (w) => w.resume(id, {}, undefined),
    (w) => w.heartbeat(id, { occurred_at: at(4) }, undefined)
  ]
}

const runScript = (w: WorkerCommands["Service"], steps: ReadonlyArray<Step>) =>
  Effect.forEach(steps, (step) =>
    step(w).pipe(
      Effect.map(resultOf),
      Effect.catch((e: ApiError) => Effect.succeed(resultOf(e)))
    ))

/** After a reset: eight created workers `<prefix>0…7` on owners of their own, six heartbeats each. */
const eightWorkers = (prefix: string) =>
  Effect.gen(function*() {
    yield* reset
    const workers = yield* WorkerCommands
    const ids = Array.from({ length: 8 }, (_, i) => `${prefix}${i}`)
    for (const id of ids) yield* workers.create({ worker_id: id, owner_user_id: `o-${id}` }, undefined)
    return { workers, commands: ids.flatMap((id) => Array.from({ length: 6 }, (_, k) => ({ id, k }))) }
  })

const issueAll = (
  workers: WorkerCommands["Service"],
  commands: ReadonlyArray<{ readonly id: string; readonly k: number }>,
  payload: (c: { readonly id: string; readonly k: number }) => Record<string, unknown>
) =>
  Effect.forEach(
    commands,
    (c) =>
      workers.heartbeat(c.id, { payload: payload(c) }, undefined).pipe(
        Effect.map((r): number | string => r.status),
        Effect.catch((e: ApiError) => Effect.succeed(e.code))
      ),
    { concurrency: "unbounded" }
  )

layer(testServices({ maxFrameBytes: 4096 }), { timeout: "300 seconds" })("worker group commit", (it) => {
  describe("shared transactions", () => {
    it.effect("concurrent worker commands: the answers and bytes of the same commands one by one", () =>
      Effect.gen(function*() {
        const w = yield* WorkerCommands
        const scripts = Array.from({ length: 24 }, (_, r) => script(r))

        yield* reset
        const oneByOne = yield* Effect.forEach(scripts, (s) => runScript(w, s))
        const bySingle = yield* capture

        yield* reset
        const before = yield* Metric.value(commandGroupEvents)
        const concurrent = yield* Effect.forEach(scripts, (s) => runScript(w, s), { concurrency: "unbounded" })
        const byGroups = yield* capture
        const after = yield* Metric.value(commandGroupEvents)

        // every answer kind occurred …
        const statuses = new Set(oneByOne.flat().map((a) => a.status))
        for (const s of [200, 201, 404, 409, 413]) assert.isTrue(statuses.has(s), `status ${s} occurs`)
        // … groups did form (more commands than transactions) …
        const commands = scripts.reduce((n, s) => n + s.length, 0)
        assert.strictEqual(after.sum - before.sum, commands)
        assert.isBelow(after.count - before.count, commands / 2)
        // … and changed nothing anyone can observe
        assert.deepStrictEqual(concurrent, oneByOne)
        assert.deepStrictEqual(byGroups, bySingle)
        const ops = yield* ProjectionOps
        assert.deepStrictEqual((yield* ops.drift).drifted, [])
      }))

    it.effect("a command the database refuses fails alone; the rest of its group commits", () =>
      Effect.gen(function*() {
        const { workers, commands } = yield* eightWorkers("wpz")
        const sql = yield* SqlClient.SqlClient
        const drop = yield* raisingFunction("test_worker_poison")
        yield* sql.unsafe(`CREATE TRIGGER test_worker_poison BEFORE INSERT ON runtime.codex_worker_events FOR EACH ROW
          WHEN (NEW.payload ? 'poison') EXECUTE FUNCTION runtime.test_worker_poison()`)
        yield* Effect.gen(function*() {
          const before = yield* Metric.value(commandGroupEvents)
          const failuresBefore = yield* Metric.value(projectionWriteFailures)
          const answers = yield* issueAll(workers, commands, ({ id, k }) => id === "wpz3" && k === 2 ? { poison: true } : { k })
          const after = yield* Metric.value(commandGroupEvents)
          assert.isBelow(after.count - before.count, commands.length, "groups formed")
          const poisoned = commands.findIndex(({ id, k }) => id === "wpz3" && k === 2)
          assert.strictEqual(answers[poisoned], "internal")
          assert.deepStrictEqual(answers.filter((_, i) => i !== poisoned), commands.slice(1).map(() => 201))
          assert.strictEqual((yield* Metric.value(projectionWriteFailures)).count - failuresBefore.count, 1)
          const [n] = yield* sql<{ n: bigint }>`
            SELECT count(*) AS n FROM runtime.codex_worker_events WHERE worker_id LIKE 'wpz%'`
          assert.strictEqual(Number(n!.n), 8 + commands.length - 1)
          // Gapless per worker: the refused command left no seq behind.
          const perWorker = yield* sql<{ n: bigint; max: bigint }>`
            SELECT count(*) AS n, max(seq) AS max FROM runtime.codex_worker_events WHERE worker_id LIKE 'wpz%' GROUP BY worker_id`
          for (const r of perWorker) assert.strictEqual(Number(r.n), Number(r.max))
          const ops = yield* ProjectionOps
          assert.deepStrictEqual((yield* ops.drift).drifted, [])
        }).pipe(Effect.ensuring(drop), Effect.provideService(References.MinimumLogLevel, "None"))
      }))

    it.effect("a group whose COMMIT fails answers 500 to each command that had succeeded in it", () =>
      Effect.gen(function*() {
        const { workers, commands } = yield* eightWorkers("wlate")
        const sql = yield* SqlClient.SqlClient
        const drop = yield* raisingFunction("test_worker_late")
        yield* sql.unsafe(`CREATE CONSTRAINT TRIGGER test_worker_late AFTER INSERT ON runtime.codex_worker_events
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.payload ? 'late') EXECUTE FUNCTION runtime.test_worker_late()`)
        yield* Effect.gen(function*() {
          // Hold every worker's row lock while the commands arrive: the committer blocks on its
          // first command and the rest gather into groups, the late command in one of them.
          const holder = yield* holdRowLocks(
            `SELECT worker_id FROM runtime.codex_workers WHERE worker_id LIKE 'wlate%' ORDER BY worker_id FOR UPDATE`,
            700
          )
          const failuresBefore = yield* Metric.value(projectionWriteFailures)
          const answers = yield* issueAll(workers, commands, ({ id, k }) => id === "wlate3" && k === 2 ? { late: true } : { k })
          yield* Fiber.join(holder)
          const late = commands.findIndex(({ id, k }) => id === "wlate3" && k === 2)
          assert.strictEqual(answers[late], "internal")
          for (const a of answers) assert.include([201, "internal"], a)
          // The whole group of the late command got the 500 (at most 64 commands, at least itself
          // and the ones gathered with it while the first waited for the lock).
          const failed = answers.filter((a) => a === "internal").length
          assert.isAbove(failed, 1)
          assert.isAtMost(failed, 64)
          assert.strictEqual((yield* Metric.value(projectionWriteFailures)).count - failuresBefore.count, 1)
          // What was answered 201 is exactly what was committed: nothing twice, nothing extra.
          const [n] = yield* sql<{ n: bigint }>`
            SELECT count(*) AS n FROM runtime.codex_worker_events WHERE worker_id LIKE 'wlate%'`
          assert.strictEqual(Number(n!.n), 8 + answers.filter((a) => a === 201).length)
          const perWorker = yield* sql<{ n: bigint; max: bigint }>`
            SELECT count(*) AS n, max(seq) AS max FROM runtime.codex_worker_events WHERE worker_id LIKE 'wlate%' GROUP BY worker_id`
          for (const r of perWorker) assert.strictEqual(Number(r.n), Number(r.max))
        }).pipe(Effect.ensuring(drop), Effect.provideService(References.MinimumLogLevel, "None"))
      }))
  })
})
