/**
 * The batched run-event path against a real Postgres. Its contract: a batch answers and writes
 * exactly what the single-event command would, sent item by item in the same order. The property
 * test replays random command streams (valid and invalid items, lifecycle violations, reused and
 * replayed idempotency keys, runs created mid-batch) both ways on the same database and compares
 * every answer and every written byte: authority events, documents, checkpoints, journal entries
 * (their encoded wire bytes included), topic heads and stored idempotent responses.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect, Fiber, Metric, References } from "effect"
import { SqlClient } from "effect/sql"
import { ApiError } from "../../src/domain/ApiError.ts"
import type { CommandResult } from "../../src/services/CommandRunner.ts"
import { commandGroupEvents, projectionWriteFailures } from "../../src/services/Metrics.ts"
import { ProjectionOps } from "../../src/services/ProjectionOps.ts"
import { RunCommands } from "../../src/services/RunCommands.ts"
import { type BatchItemResult, MAX_BATCH_EVENTS, RunEventBatches } from "../../src/services/RunEventBatches.ts"
import { seeded } from "../client/support/Fakes.ts"
import { testServices } from "../support/TestApp.ts"
import {
  assertGaplessWrites,
  assertGroupedAsOneByOne,
  captureProjectionTables,
  holdRowLocks,
  raisingFunction
} from "../support/WrittenTables.ts"

type Item = Record<string, unknown> & { run_id: unknown }

const T0 = Date.parse("2026-03-01T12:00:00.000Z")

/** A random stream of run commands, mostly valid, with every kind of rejection mixed in. */
const randomItems = (rand: () => number, n: number): Array<Item> => {
  const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(rand() * xs.length)]!
  const runs = ["r0", "r1", "r2", "r3", "r4", "r5"]
  const steps = ["run.started", "run.step", "run.step", "run.step", "run.step", "run.step", "run.step"]
  const ends = ["run.completed", "run.failed", "run.canceled"]
  const seen = new Set<string>()
  const items: Array<Item> = []
  for (let i = 0; i < n; i++) {
    // a retry: an exact copy of an earlier item (replayed if it was keyed and accepted)
    if (items.length > 0 && rand() < 0.12) {
      items.push(structuredClone(pick(items)))
      continue
    }
    const run_id = pick(runs)
    const r = rand()
    const type = !seen.has(run_id) ? (r < 0.8 ? "run.created" : pick(steps))
      : r < 0.05 ? "run.created" : r < 0.12 ? pick(ends) : pick(steps)
    if (type === "run.created") seen.add(run_id)
    const item: Item = {
      run_id,
      type,
      occurred_at: new Date(T0 + Math.floor(rand() * 100_000)).toISOString(),
      payload: { i, note: pick(["a", "b", "ü", "\u00e9\u00e8"]), nested: { k: rand() < 0.5 ? [1, 2.5, null] : { z: true, a: "x" } } }
    }
    if (type === "run.created") item["owner_user_id"] = pick(["u0", "u1", "u1"])
    if (rand() < 0.4) item["idempotency_key"] = pick(["k0", "k1", "k2"])
    const bad = rand()
    if (bad < 0.02) item["type"] = "run.bogus"
    else if (bad < 0.03) item["run_id"] = "bad id"
    else if (bad < 0.04) item["run_id"] = 42
    else if (bad < 0.05 && type === "run.created") delete item["owner_user_id"]
    else if (bad < 0.06) item["payload"] = [1, 2]
    items.push(item)
  }
  return items
}

const resultOf = (r: CommandResult | ApiError): BatchItemResult =>
  r instanceof ApiError ? { status: r.status, body: r.toBody() } : { status: r.status as 200 | 201, body: r.body }

/** Everything a command writes, in comparable form. */
const capture = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  return {
    runs: yield* sql`SELECT run_id, owner_user_id, status, last_seq::int, created_at FROM runtime.runs ORDER BY run_id`,
    events: yield* sql`
      SELECT run_id, seq::int, owner_ordinal::int, type, payload::text, occurred_at FROM runtime.run_events
      ORDER BY run_id, seq`,
    ...(yield* captureProjectionTables)
  }
})

const reset = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`TRUNCATE runtime.run_events, runtime.runs, runtime.owner_sequences, runtime.read_models,
    runtime.projection_checkpoints, runtime.sync_stream_events, runtime.sync_topic_sequences, runtime.idempotency_keys`
})

/** After a reset: eight runs `<prefix>0…7`, each on an owner of its own, and six commands per run. */
const eightRuns = (prefix: string) =>
  Effect.gen(function*() {
    yield* reset
    const runs = yield* RunCommands
    const ids = Array.from({ length: 8 }, (_, i) => `${prefix}${i}`)
    for (const id of ids) yield* runs.appendEvent(id, { type: "run.created", owner_user_id: `o-${id}` }, undefined)
    return { runs, commands: ids.flatMap((id) => Array.from({ length: 6 }, (_, k) => ({ id, k }))) }
  })

/** Every command issued at once; each answer is its status or its error code. */
const issueAll = (
  runs: RunCommands["Service"],
  commands: ReadonlyArray<{ readonly id: string; readonly k: number }>,
  payload: (c: { readonly id: string; readonly k: number }) => Record<string, unknown>
) =>
  Effect.forEach(
    commands,
    (c) =>
      runs.appendEvent(c.id, { type: "run.step", payload: payload(c) }, undefined).pipe(
        Effect.map((r): number | string => r.status),
        Effect.catch((e: ApiError) => Effect.succeed(e.code))
      ),
    { concurrency: "unbounded" }
  )

layer(testServices({ maxFrameBytes: 4096 }), { timeout: "300 seconds" })("run event batches", (it) => {
  describe("equivalence with the single-event command", () => {
    it.effect("random command streams in random batches: the same answers and the same bytes written", () =>
      Effect.gen(function*() {
        const runs = yield* RunCommands
        const batches = yield* RunEventBatches
        for (let seed = 1; seed <= 30; seed++) {
          const rand = seeded(seed)
          const items = randomItems(rand, 20 + Math.floor(rand() * 60))
          // an oversized payload now and then: 413 for that item only
          if (seed % 5 === 0) (items[Math.floor(rand() * items.length)]!["payload"] as Record<string, unknown>)["big"] = "x".repeat(5000)

          yield* reset
          const single: Array<BatchItemResult> = []
          for (const item of items) {
            const runId = typeof item.run_id === "string" ? item.run_id : "?"
            single.push(
              resultOf(
                typeof item.run_id === "string"
                  ? yield* runs.appendEvent(runId, item, "req-1").pipe(Effect.catch((e: ApiError) => Effect.succeed(e)))
                  : new ApiError({ code: "invalid_request", message: "each event needs a run_id string" })
              )
            )
          }
          const bySingle = yield* capture

          yield* reset
          const batched: Array<BatchItemResult> = []
          for (let from = 0; from < items.length;) {
            const size = 1 + Math.floor(rand() * 25)
            const res = yield* batches.append({ events: items.slice(from, from + size) }, "req-1")
            assert.strictEqual(res.status, 200)
            batched.push(...(res.body["results"] as unknown as Array<BatchItemResult>))
            from += size
          }
          const byBatch = yield* capture

          // same answers (validation messages included), item by item
          assert.strictEqual(batched.length, single.length)
          for (let i = 0; i < single.length; i++) {
            assert.deepStrictEqual(batched[i], single[i], `seed ${seed}, item ${i}: ${JSON.stringify(items[i])}`)
          }
          assert.deepStrictEqual(byBatch.events, bySingle.events, `seed ${seed}: events`)
          assert.deepStrictEqual(byBatch.runs, bySingle.runs, `seed ${seed}: runs`)
          assert.deepStrictEqual(byBatch.owners, bySingle.owners, `seed ${seed}: owner ordinals`)
          assert.deepStrictEqual(byBatch.models, bySingle.models, `seed ${seed}: documents`)
          assert.deepStrictEqual(byBatch.checkpoints, bySingle.checkpoints, `seed ${seed}: checkpoints`)
          assert.deepStrictEqual(byBatch.journal, bySingle.journal, `seed ${seed}: journal`)
          assert.deepStrictEqual(byBatch.heads, bySingle.heads, `seed ${seed}: heads`)
          assert.deepStrictEqual(byBatch.keys, bySingle.keys, `seed ${seed}: idempotency keys`)
          // and a rebuild from the authority history reproduces the batch's projection exactly
          const ops = yield* ProjectionOps
          assert.deepStrictEqual((yield* ops.drift).drifted, [], `seed ${seed}: drift`)
        }
      }))
  })

  describe("envelope", () => {
    it.effect("an empty, oversized or malformed batch is 400 and writes nothing", () =>
      Effect.gen(function*() {
        yield* reset
        const batches = yield* RunEventBatches
        for (const body of [undefined, {}, { events: [] }, { events: "x" }, { events: Array.from({ length: MAX_BATCH_EVENTS + 1 }, () => ({})) }]) {
          const err = yield* Effect.flip(batches.append(body, undefined))
          assert.strictEqual(err.code, "invalid_request", JSON.stringify(body)?.slice(0, 40))
        }
        const sql = yield* SqlClient.SqlClient
        const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.run_events`
        assert.strictEqual(Number(n!.n), 0)
      }))

    it.effect("a retry of a keyed batch appends nothing and answers 200 per item, also through the single endpoint", () =>
      Effect.gen(function*() {
        yield* reset
        const batches = yield* RunEventBatches
        const runs = yield* RunCommands
        const events = [
          { run_id: "k-run", type: "run.created", owner_user_id: "u9", idempotency_key: "c" },
          { run_id: "k-run", type: "run.step", payload: { n: 1 }, idempotency_key: "s1" }
        ]
        const first = yield* batches.append({ events }, undefined)
        const again = yield* batches.append({ events }, undefined)
        const results = (r: CommandResult) => r.body["results"] as unknown as Array<BatchItemResult>
        assert.deepStrictEqual(results(first).map((r) => r.status), [201, 201])
        assert.deepStrictEqual(results(again).map((r) => r.status), [200, 200])
        assert.deepStrictEqual(results(again).map((r) => r.body), results(first).map((r) => r.body))
        const viaSingle = yield* runs.appendEvent("k-run", events[1]!, undefined)
        assert.strictEqual(viaSingle.status, 200)
        assert.deepStrictEqual(viaSingle.body, results(first)[1]!.body)
        const sql = yield* SqlClient.SqlClient
        const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.run_events WHERE run_id = 'k-run'`
        assert.strictEqual(Number(n!.n), 2)
      }))
  })

  describe("concurrency", () => {
    it.effect("concurrent single commands are group-committed with the answers and bytes of the same commands one by one", () =>
      Effect.gen(function*() {
        const runs = yield* RunCommands
        // One script per run (its own owner, so no two scripts share a topic): a 404 first, then
        // create, a keyed start and its retry (replayed), steps, an end, and a step after it (409).
        const scripts = Array.from({ length: 24 }, (_, r) => {
          const id = `g${r}`
          const bodies: Array<[string, Record<string, unknown>]> = [
            [`g${r}-missing`, { type: "run.step" }],
            [id, { type: "run.created", owner_user_id: `go${r}` }],
            [id, { type: "run.started", idempotency_key: "k1" }],
            [id, { type: "run.started", idempotency_key: "k1" }],
            [id, { type: "run.step", payload: { r, i: 1 } }],
            [id, { type: "run.step", payload: { r, i: 2, big: r % 6 === 0 ? "x".repeat(5000) : "" } }],
            [id, { type: "run.step", payload: { r, i: 3 }, idempotency_key: "k2" }],
            [id, { type: "run.completed" }],
            [id, { type: "run.step" }]
          ]
          return bodies
        })
        const runScript = (script: ReadonlyArray<[string, Record<string, unknown>]>) =>
          Effect.forEach(script, ([id, body]) =>
            runs.appendEvent(id, body, `req-${id}`).pipe(
              Effect.map(resultOf),
              Effect.catch((e: ApiError) => Effect.succeed(resultOf(e)))
            ))

        yield* assertGroupedAsOneByOne(assert, scripts, runScript, reset, capture)
      }))

    it.effect("a command the database refuses fails alone: its group is retried one command at a time", () =>
      Effect.gen(function*() {
        const { runs, commands } = yield* eightRuns("pz")
        const sql = yield* SqlClient.SqlClient
        // A row the database refuses (as a constraint or trigger of an operator's might).
        const drop = yield* raisingFunction("test_poison")
        yield* sql.unsafe(`CREATE TRIGGER test_poison BEFORE INSERT ON runtime.run_events FOR EACH ROW
          WHEN (NEW.payload ? 'poison') EXECUTE FUNCTION runtime.test_poison()`)
        yield* Effect.gen(function*() {
          const before = yield* Metric.value(commandGroupEvents)
          const failuresBefore = yield* Metric.value(projectionWriteFailures)
          const answers = yield* issueAll(runs, commands, ({ id, k }) => id === "pz3" && k === 2 ? { poison: true } : { k })
          const after = yield* Metric.value(commandGroupEvents)
          assert.isBelow(after.count - before.count, commands.length, "groups formed")
          // Counted as write failures: the failed group transaction and the poison command alone.
          assert.strictEqual((yield* Metric.value(projectionWriteFailures)).count - failuresBefore.count, 2)
          const poisoned = commands.findIndex(({ id, k }) => id === "pz3" && k === 2)
          assert.strictEqual(answers[poisoned], "internal")
          assert.deepStrictEqual(answers.filter((_, i) => i !== poisoned), commands.slice(1).map(() => 201))
          const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.run_events WHERE run_id LIKE 'pz%'`
          assert.strictEqual(Number(n!.n), 8 + commands.length - 1)

          // Every insert refused (as if the database were down): each failed group tries at most
          // three commands alone before answering the rest, rather than one transaction each.
          yield* sql.unsafe(`CREATE SEQUENCE runtime.test_attempts`)
          yield* raisingFunction("test_poison", "PERFORM nextval(''runtime.test_attempts'');")
          yield* sql.unsafe(`CREATE TRIGGER test_down BEFORE INSERT ON runtime.run_events FOR EACH ROW
            EXECUTE FUNCTION runtime.test_poison()`)
          const groupsBefore = yield* Metric.value(commandGroupEvents)
          const down = yield* issueAll(runs, commands, ({ k }) => ({ k, down: true }))
          const groupsAfter = yield* Metric.value(commandGroupEvents)
          assert.deepStrictEqual(down, commands.map(() => "internal"))
          const transactions = groupsAfter.count - groupsBefore.count
          const [attempts] = yield* sql<{ n: bigint }>`SELECT last_value AS n FROM runtime.test_attempts`
          assert.isAtMost(Number(attempts!.n), transactions * 4, "a failed group tries at most 3 commands alone")
          assert.isBelow(Number(attempts!.n), commands.length + transactions)
        }).pipe(
          Effect.ensuring(drop),
          Effect.ensuring(sql.unsafe(`DROP SEQUENCE IF EXISTS runtime.test_attempts`).pipe(Effect.orDie)),
          Effect.provideService(References.MinimumLogLevel, "None")
        )
      }))

    it.effect("a group whose COMMIT fails (outcome unknown) is not committed again one by one", () =>
      Effect.gen(function*() {
        const { runs, commands } = yield* eightRuns("late")
        const sql = yield* SqlClient.SqlClient
        // A deferred constraint trigger fails at COMMIT, after every statement succeeded.
        const drop = yield* raisingFunction("test_late")
        yield* sql.unsafe(`CREATE CONSTRAINT TRIGGER test_late AFTER INSERT ON runtime.run_events
          DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.payload ? 'late') EXECUTE FUNCTION runtime.test_late()`)
        yield* Effect.gen(function*() {
          // Hold every run's row lock while the commands arrive: the two workers block on their
          // first commands and the rest gather into one group, the late command among them.
          const holder = yield* holdRowLocks(
            `SELECT run_id FROM runtime.runs WHERE run_id LIKE 'late%' ORDER BY run_id FOR UPDATE`,
            700
          )
          const before = yield* Metric.value(commandGroupEvents)
          const answers = yield* issueAll(runs, commands, ({ id, k }) => id === "late3" && k === 2 ? { late: true } : { k })
          yield* Fiber.join(holder)
          const after = yield* Metric.value(commandGroupEvents)
          const late = commands.findIndex(({ id, k }) => id === "late3" && k === 2)
          assert.strictEqual(answers[late], "internal")
          for (const a of answers) assert.include([201, "internal"], a)
          // The late command's whole group got the 500: with the outcome unknown, none of it was
          // committed again alone (the groups: two lone commands, then the rest together).
          assert.isAtMost(after.count - before.count, 4)
          assert.isAtLeast(answers.filter((a) => a === "internal").length, commands.length - 4)
          // What was answered 201 is exactly what was committed: nothing twice, nothing extra.
          const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.run_events WHERE run_id LIKE 'late%'`
          assert.strictEqual(Number(n!.n), 8 + answers.filter((a) => a === 201).length)
          const perRun = yield* sql<{ n: bigint; max: bigint }>`
            SELECT count(*) AS n, max(seq) AS max FROM runtime.run_events WHERE run_id LIKE 'late%' GROUP BY run_id`
          for (const r of perRun) assert.strictEqual(Number(r.n), Number(r.max))
        }).pipe(Effect.ensuring(drop), Effect.provideService(References.MinimumLogLevel, "None"))
      }))

    it.effect("concurrent batches and single commands over shared runs and owners: no deadlock, gapless seqs", () =>
      Effect.gen(function*() {
        yield* reset
        const batches = yield* RunEventBatches
        const runs = yield* RunCommands
        const ids = Array.from({ length: 6 }, (_, i) => `c${i}`)
        yield* batches.append({
          events: ids.map((id, i) => ({ run_id: id, type: "run.created", owner_user_id: `o${i % 2}` }))
        }, undefined)
        const rand = seeded(7)
        const work = Array.from({ length: 24 }, (_, w) =>
          w % 3 === 0
            ? runs.appendEvent(ids[w % ids.length]!, { type: "run.step", payload: { w } }, undefined).pipe(Effect.asVoid)
            : batches.append({
              // each batch names its runs in a random order: the service sorts its locks
              events: Array.from({ length: 30 }, (_, k) => ({
                run_id: ids[Math.floor(rand() * ids.length)]!,
                type: "run.step",
                payload: { w, k }
              }))
            }, undefined).pipe(Effect.asVoid))
        yield* Effect.all(work, { concurrency: "unbounded" })

        assert.strictEqual(yield* assertGaplessWrites("runs", assert), 6 + 8 + 16 * 30)
        const ops = yield* ProjectionOps
        assert.deepStrictEqual((yield* ops.drift).drifted, [])
      }))
  })
})
