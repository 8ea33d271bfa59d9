/**
 * Group commit of worker event and heartbeat commands against a real Postgres. The contract: a
 * group answers and writes exactly what its commands would one after another in arrival order —
 * 404s, replayed and reused idempotency keys, 409 after a stop or a fatal error (also one earlier in
 * the same group), 413 for an entry too large for a frame, coalesced heartbeats, the authority
 * row's status, seq and latest heartbeat — and concurrent groups over shared owners cannot deadlock.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect, Metric, References } from "effect"
import { SqlClient } from "effect/sql"
import { ApiError } from "../../src/domain/ApiError.ts"
import type { JsonObject } from "../../src/domain/Json.ts"
import type { CommandResult } from "../../src/services/CommandRunner.ts"
import { requestHash } from "../../src/services/Idempotency.ts"
import { commandGroupEvents, commandsTotal, projectionWriteFailures } from "../../src/services/Metrics.ts"
import { ProjectionOps } from "../../src/services/ProjectionOps.ts"
import { WorkerCommands } from "../../src/services/WorkerCommands.ts"
import { WorkerEventBatches, type WorkerGroupItem } from "../../src/services/WorkerEventBatches.ts"
import { seeded } from "../client/support/Fakes.ts"
import { testServices } from "../support/TestApp.ts"
import {
  assertGaplessWrites,
  assertGroupedAsOneByOne,
  captureProjectionTables,
  raisingFunction
} from "../support/WrittenTables.ts"

const T0 = Date.parse("2026-03-01T12:00:00.000Z")
const at = (s: number) => new Date(T0 + s * 1000).toISOString()

type Step =
  | { readonly kind: "heartbeat"; readonly id: string; readonly body: Record<string, unknown> }
  | { readonly kind: "event"; readonly id: string; readonly body: Record<string, unknown> }

const answerOf = (r: CommandResult | ApiError) =>
  r instanceof ApiError ? { status: r.status, body: r.toBody() } : { status: r.status, body: r.body }

/** Everything worker commands write, in comparable form. */
const capture = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  return {
    workers: yield* sql`
      SELECT worker_id, owner_user_id, status, last_seq::int, last_heartbeat_at, created_at FROM runtime.codex_workers
      ORDER BY worker_id`,
    events: yield* sql`
      SELECT worker_id, seq::int, owner_ordinal::int, type, payload::text, occurred_at, request_id
      FROM runtime.codex_worker_events ORDER BY worker_id, seq`,
    ...(yield* captureProjectionTables)
  }
})

const reset = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  yield* sql`TRUNCATE runtime.codex_worker_events, runtime.codex_workers, runtime.owner_sequences, runtime.read_models,
    runtime.projection_checkpoints, runtime.sync_stream_events, runtime.sync_topic_sequences, runtime.idempotency_keys`
})

/** Workers `<prefix>0…n-1`, created one by one; the owner of worker i is `o<i % owners>`. */
const createWorkers = (prefix: string, n: number, owners: number) =>
  Effect.gen(function*() {
    const workers = yield* WorkerCommands
    const ids = Array.from({ length: n }, (_, i) => `${prefix}${i}`)
    for (const [i, id] of ids.entries()) {
      yield* workers.create({ worker_id: id, owner_user_id: `o${i % owners}` }, `create-${id}`)
    }
    return ids
  })

const run = (step: Step) =>
  Effect.gen(function*() {
    const workers = yield* WorkerCommands
    const answer = step.kind === "heartbeat"
      ? workers.heartbeat(step.id, step.body, `req-${step.id}`)
      : workers.appendEvent(step.id, step.body, `req-${step.id}`)
    return yield* answer.pipe(Effect.map(answerOf), Effect.catch((e: ApiError) => Effect.succeed(answerOf(e))))
  })

/** A random stream of worker commands over shared workers and owners, every kind of answer mixed in. */
const randomSteps = (rand: () => number, n: number): Array<Step> => {
  const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(rand() * xs.length)]!
  const ids = ["x0", "x1", "x2", "x3", "x-missing"]
  const steps: Array<Step> = []
  for (let i = 0; i < n; i++) {
    // a retry: an exact copy of an earlier command (replayed if it was keyed and accepted)
    if (steps.length > 0 && rand() < 0.12) {
      steps.push(structuredClone(pick(steps)))
      continue
    }
    const id = rand() < 0.05 ? "x-missing" : pick(ids.slice(0, 4))
    const body: Record<string, unknown> = { occurred_at: at(Math.floor(rand() * 60)) }
    if (rand() < 0.4) body["idempotency_key"] = pick(["k0", "k1", "k2"])
    if (rand() < 0.5) body["payload"] = { i, note: pick(["a", "ü", "\u00e9"]), ...(rand() < 0.03 ? { big: "x".repeat(5000) } : {}) }
    const r = rand()
    if (r < 0.5) {
      steps.push({ kind: "heartbeat", id, body })
      continue
    }
    body["event_type"] = r < 0.53
      ? "worker.stopped"
      : r < 0.56
      ? "worker.error"
      : pick(["worker.started", "worker.event", "worker.event", "worker.request.received", "worker.error"])
    if (body["event_type"] === "worker.error") body["payload"] = { message: "m", fatal: r < 0.56 }
    steps.push({ kind: "event", id, body })
  }
  return steps
}

/** The validated group item of a step (what WorkerCommands hands the committer). */
const itemOf = (step: Step): WorkerGroupItem => {
  const { idempotency_key, occurred_at, payload } = step.body as {
    idempotency_key?: string
    occurred_at: string
    payload?: Record<string, unknown>
  }
  const command = step.kind === "heartbeat" ? "worker.heartbeat" : "worker.event"
  return {
    workerId: step.id,
    type: step.kind === "heartbeat" ? "worker.heartbeat" : step.body["event_type"] as WorkerGroupItem["type"],
    payload: (payload ?? {}) as WorkerGroupItem["payload"],
    occurredAtMs: Date.parse(occurred_at),
    scope: idempotency_key === undefined
      ? undefined
      : { entityKind: "worker", entityId: step.id, key: idempotency_key, requestHash: requestHash(command, step.body) },
    requestId: `req-${step.id}`
  }
}

layer(testServices({ maxFrameBytes: 4096 }), { timeout: "300 seconds" })("worker event batches", (it) => {
  describe("equivalence with one command at a time", () => {
    it.effect("random command streams in random groups: the same answers and the same bytes written", () =>
      Effect.gen(function*() {
        const batches = yield* WorkerEventBatches
        for (let seed = 1; seed <= 25; seed++) {
          const rand = seeded(seed)
          const steps = randomSteps(rand, 20 + Math.floor(rand() * 60))

          yield* reset
          yield* createWorkers("x", 4, 2)
          const single = yield* Effect.forEach(steps, run)
          const bySingle = yield* capture

          yield* reset
          yield* createWorkers("x", 4, 2)
          const grouped: Array<ReturnType<typeof answerOf>> = []
          for (let from = 0; from < steps.length;) {
            const size = 1 + Math.floor(rand() * 25)
            const answers = yield* batches.commitGroup(steps.slice(from, from + size).map(itemOf), 0)
            grouped.push(...answers.map(answerOf))
            from += size
          }
          const byGroups = yield* capture

          for (let i = 0; i < single.length; i++) {
            assert.deepStrictEqual(grouped[i], single[i], `seed ${seed}, step ${i}: ${JSON.stringify(steps[i])}`)
          }
          for (const table of Object.keys(bySingle) as Array<keyof typeof bySingle>) {
            assert.deepStrictEqual(byGroups[table], bySingle[table], `seed ${seed}: ${table}`)
          }
          const ops = yield* ProjectionOps
          assert.deepStrictEqual((yield* ops.drift).drifted, [], `seed ${seed}: drift`)
        }
      }))

    it.effect("concurrent worker commands are group-committed with the answers and bytes of the same commands one by one", () =>
      Effect.gen(function*() {
        // One script per worker, each on an owner of its own (so no two scripts share a topic, and
        // arrival order across scripts cannot change a seq; shared owners are the next test's):
        // heartbeats that coalesce and ones that do not, a keyed event
        // and its retry, a key reused with another body, an entry too large for a frame, a
        // non-fatal error, then for some workers a stop or a fatal error and commands after it.
        const scripts = Array.from({ length: 18 }, (_, w): Array<Step> => {
          const id = `w${w}`
          const end: Array<Step> = w % 3 === 0
            ? [{ kind: "event", id, body: { event_type: "worker.stopped", occurred_at: at(60) } }]
            : w % 3 === 1
            ? [{ kind: "event", id, body: { event_type: "worker.error", payload: { fatal: true, message: "x" }, occurred_at: at(61) } }]
            : []
          return [
            { kind: "heartbeat", id: `${id}-missing`, body: {} },
            { kind: "event", id, body: { event_type: "worker.started", occurred_at: at(1) } },
            { kind: "heartbeat", id, body: { occurred_at: at(2), payload: { w } } },
            { kind: "heartbeat", id, body: { occurred_at: at(5) } },
            { kind: "heartbeat", id, body: { occurred_at: at(15), idempotency_key: "hb" } },
            { kind: "heartbeat", id, body: { occurred_at: at(15), idempotency_key: "hb" } },
            { kind: "heartbeat", id, body: { occurred_at: at(16), idempotency_key: "hb" } },
            { kind: "event", id, body: { event_type: "worker.event", payload: { w, big: w % 5 === 0 ? "x".repeat(5000) : "" } } },
            { kind: "event", id, body: { event_type: "worker.request.received", payload: { w }, occurred_at: at(30) } },
            { kind: "heartbeat", id, body: { occurred_at: at(12) } },
            { kind: "event", id, body: { event_type: "worker.error", payload: { message: "transient" }, occurred_at: at(40) } },
            ...end,
            { kind: "heartbeat", id, body: { occurred_at: at(70) } },
            { kind: "event", id, body: { event_type: "worker.event", payload: { late: true }, idempotency_key: "late" } }
          ]
        })
        const oneByOne = yield* assertGroupedAsOneByOne(
          assert,
          scripts,
          (script) => Effect.forEach(script, run),
          Effect.andThen(reset, createWorkers("w", 18, 18)),
          capture
        )
        // the scripts exercised what they meant to
        const statuses = new Set(oneByOne.flat().map((a) => a.status))
        for (const s of [200, 201, 404, 409, 413]) assert.isTrue(statuses.has(s), `some answer is ${s}`)
      }))
  })

  describe("concurrency", () => {
    it.effect("concurrent groups over shared owners, in random orders, with single commands: no deadlock, gapless seqs", () =>
      Effect.gen(function*() {
        yield* reset
        const ids = yield* createWorkers("c", 8, 2)
        const batches = yield* WorkerEventBatches
        const workers = yield* WorkerCommands
        const rand = seeded(11)
        const item = (id: string, k: number): WorkerGroupItem =>
          k % 2 === 0
            ? { workerId: id, type: "worker.heartbeat", payload: { k }, occurredAtMs: T0 + k * 1000, scope: undefined, requestId: undefined }
            : { workerId: id, type: "worker.event", payload: { k }, occurredAtMs: T0 + k, scope: undefined, requestId: undefined }
        const work = Array.from({ length: 30 }, (_, w) =>
          w % 3 === 0
            ? workers.heartbeat(ids[w % ids.length]!, { payload: { w } }, undefined).pipe(Effect.asVoid)
            // each group names its workers in a random order: the service sorts its locks
            : batches.commitGroup(
              Array.from({ length: 20 }, (_, k) => item(ids[Math.floor(rand() * ids.length)]!, k)),
              T0
            ).pipe(
              Effect.tap((answers) => Effect.sync(() => assert.isTrue(answers.every((a) => !(a instanceof ApiError))))),
              Effect.asVoid
            ))
        yield* Effect.all(work, { concurrency: "unbounded" })

        assert.strictEqual(yield* assertGaplessWrites("workers", assert), 8 + 10 + 20 * 20)
        const sql = yield* SqlClient.SqlClient
        // the authority row keeps the latest heartbeat any group carried
        const [latest] = yield* sql<{ ok: boolean }>`
          SELECT bool_and(w.last_heartbeat_at = h.at) AS ok FROM runtime.codex_workers w
          JOIN (SELECT worker_id, max(occurred_at) AS at FROM runtime.codex_worker_events
                WHERE type = 'worker.heartbeat' GROUP BY worker_id) h USING (worker_id)`
        assert.isTrue(latest!.ok)
        const ops = yield* ProjectionOps
        assert.deepStrictEqual((yield* ops.drift).drifted, [])
      }))

    it.effect("a command the database refuses fails alone: its group is retried one command at a time", () =>
      Effect.gen(function*() {
        yield* reset
        const ids = yield* createWorkers("pz", 6, 3)
        const sql = yield* SqlClient.SqlClient
        const batches = yield* WorkerEventBatches
        const drop = yield* raisingFunction("test_poison")
        yield* sql.unsafe(`CREATE TRIGGER test_poison BEFORE INSERT ON runtime.codex_worker_events FOR EACH ROW
          WHEN (NEW.payload ? 'poison') EXECUTE FUNCTION runtime.test_poison()`)
        yield* Effect.gen(function*() {
          // A group straight to the service: its statement fails, so the whole group rolled back.
          const refused = yield* batches.commitGroup(
            ids.map((id) => ({
              workerId: id,
              type: "worker.event" as const,
              payload: id === "pz2" ? { poison: true } : {},
              occurredAtMs: T0,
              scope: undefined,
              requestId: undefined
            })),
            T0
          ).pipe(Effect.flip)
          assert.strictEqual(refused._tag, "StatementFailed")
          const [none] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.codex_worker_events WHERE type = 'worker.event'`
          assert.strictEqual(Number(none!.n), 0)

          // Through the commands: groups form, the poison command alone fails.
          const workers = yield* WorkerCommands
          const before = yield* Metric.value(commandGroupEvents)
          const failuresBefore = yield* Metric.value(projectionWriteFailures)
          const commands = ids.flatMap((id) => Array.from({ length: 6 }, (_, k) => ({ id, k })))
          const answers = yield* Effect.forEach(
            commands,
            ({ id, k }) =>
              workers.appendEvent(id, {
                event_type: "worker.event",
                payload: id === "pz3" && k === 2 ? { poison: true } : { k }
              }, undefined).pipe(
                Effect.map((r): number | string => r.status),
                Effect.catch((e: ApiError) => Effect.succeed(e.code))
              ),
            { concurrency: "unbounded" }
          )
          const after = yield* Metric.value(commandGroupEvents)
          assert.isBelow(after.count - before.count, commands.length, "groups formed")
          const poisoned = commands.findIndex(({ id, k }) => id === "pz3" && k === 2)
          assert.strictEqual(answers[poisoned], "internal")
          assert.deepStrictEqual(answers.filter((_, i) => i !== poisoned), commands.slice(1).map(() => 201))
          assert.isAtLeast((yield* Metric.value(projectionWriteFailures)).count - failuresBefore.count, 2)
          const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.codex_worker_events WHERE type = 'worker.event'`
          assert.strictEqual(Number(n!.n), commands.length - 1)
        }).pipe(Effect.ensuring(drop), Effect.provideService(References.MinimumLogLevel, "None"))
      }))

    it.effect("413s: the earliest oversized item is refused first, so a later one that fits alone is not refused", () =>
      Effect.gen(function*() {
        // A worker.error whose event entry is too large but whose summary (carrying its message)
        // just fits, then a small event of the same worker: its summary would carry the message
        // only had the error been accepted. An event of another worker of the same owner goes
        // first, so the owner's topic is the journal's first (it once found the later item's
        // summary before the earlier item's event). Found in review.
        const batches = yield* WorkerEventBatches
        const item = (workerId: string, type: WorkerGroupItem["type"], payload: JsonObject, s: number): WorkerGroupItem => ({
          workerId,
          type,
          payload,
          occurredAtMs: T0 + s,
          scope: undefined,
          requestId: undefined
        })
        const group = [
          item("y1", "worker.event", {}, 0),
          item("y0", "worker.error", { message: "m".repeat(2524), pad: "p".repeat(3500) }, 1),
          item("y0", "worker.request.received", {}, 2)
        ]
        yield* reset
        yield* createWorkers("y", 2, 1)
        const single: Array<ReturnType<typeof answerOf>> = []
        for (const g of group) {
          single.push(yield* run({ kind: "event", id: g.workerId, body: { event_type: g.type, payload: g.payload, occurred_at: new Date(g.occurredAtMs).toISOString() } }))
        }
        const bySingle = yield* capture
        yield* reset
        yield* createWorkers("y", 2, 1)
        const grouped = (yield* batches.commitGroup(group.map((g) => ({ ...g, requestId: `req-${g.workerId}` })), 0)).map(answerOf)
        assert.deepStrictEqual(single.map((a) => a.status), [201, 413, 201])
        assert.deepStrictEqual(grouped, single)
        assert.deepStrictEqual(yield* capture, bySingle)
      }))

    it.effect("many oversized events in one group are refused together, not one retry each", () =>
      Effect.gen(function*() {
        yield* reset
        const ids = yield* createWorkers("big", 4, 2)
        const batches = yield* WorkerEventBatches
        const before = yield* Metric.value(Metric.withAttributes(commandsTotal, { command: "worker.group", outcome: "retried" }))
        const group = Array.from({ length: 60 }, (_, k): WorkerGroupItem => ({
          workerId: ids[k % ids.length]!,
          type: "worker.event",
          payload: k % 3 === 0 ? { k } : { k, big: "x".repeat(6000) },
          occurredAtMs: T0 + k,
          scope: undefined,
          requestId: undefined
        }))
        const answers = yield* batches.commitGroup(group, 0)
        assert.deepStrictEqual(answers.map((a) => a instanceof ApiError ? a.code : a.status), group.map((g) => "big" in g.payload ? "payload_too_large" : 201))
        const after = yield* Metric.value(Metric.withAttributes(commandsTotal, { command: "worker.group", outcome: "retried" }))
        assert.strictEqual(after.count - before.count, 1, "one retry refuses all forty")
      }))

    it.effect("a command whose processing dies fails alone; its group is retried one command at a time", () =>
      Effect.gen(function*() {
        yield* reset
        const ids = yield* createWorkers("d", 20, 3)
        const workers = yield* WorkerCommands
        // A payload no JSON request can carry (a BigInt): stored, it throws inside the transaction.
        const answers = yield* Effect.forEach(ids, (id, i) =>
          (i === 10
            ? workers.appendEvent(id, { event_type: "worker.event", payload: { n: 1n } }, undefined)
            : workers.heartbeat(id, { payload: { i } }, undefined)).pipe(
              Effect.map((r): number | string => r.status),
              Effect.catch((e: ApiError) => Effect.succeed(e.code))
            ), { concurrency: "unbounded" })
        assert.deepStrictEqual(answers, ids.map((_, i) => i === 10 ? "internal" : 201))
        const sql = yield* SqlClient.SqlClient
        const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.codex_worker_events WHERE type = 'worker.heartbeat'`
        assert.strictEqual(Number(n!.n), 19)
      }).pipe(Effect.provideService(References.MinimumLogLevel, "None")))

    it.effect("a keyed command stored by a group replays through a lone command, and a reused key is 409", () =>
      Effect.gen(function*() {
        yield* reset
        const [id] = yield* createWorkers("k", 1, 1)
        const batches = yield* WorkerEventBatches
        const workers = yield* WorkerCommands
        const body = { payload: { n: 1 }, occurred_at: at(3), idempotency_key: "once" }
        const scope = { entityKind: "worker" as const, entityId: id!, key: "once", requestHash: requestHash("worker.heartbeat", body) }
        const [first, again] = yield* batches.commitGroup([
          { workerId: id!, type: "worker.heartbeat", payload: { n: 1 }, occurredAtMs: T0 + 3000, scope, requestId: undefined },
          { workerId: id!, type: "worker.heartbeat", payload: { n: 1 }, occurredAtMs: T0 + 3000, scope, requestId: undefined }
        ], T0)
        assert.strictEqual((first as CommandResult).status, 201)
        assert.deepStrictEqual(again, { status: 200, body: (first as CommandResult).body })
        const replay = yield* workers.heartbeat(id!, body, undefined)
        assert.deepStrictEqual(replay, { status: 200, body: (first as CommandResult).body })
        const reused = yield* workers.heartbeat(id!, { ...body, payload: { n: 2 } }, undefined).pipe(Effect.flip)
        assert.strictEqual(reused.code, "idempotency_key_reused")
      }))
  })
})
