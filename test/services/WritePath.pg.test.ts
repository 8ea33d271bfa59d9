/**
 * The write path against a real Postgres, through the services (SPEC §1.3, §1.5, §2, §4, §10):
 * - replay: random multi-user histories submitted through the commands; drop-and-replay gives
 *   byte-identical documents and the same journal, and keeps the epoch; drift finds a tampered
 *   read model; a journal that no longer matches the authority history gets a new epoch;
 * - concurrency: entity seqs and per-topic journal seqs stay gapless under contention;
 * - rollback: a command that fails after its authority event, read model and journal rows were
 *   written leaves no trace (no row, no seq gap, no notification);
 * - heartbeat state from the injected clock (TestClock), and heartbeat-burst convergence;
 * - edge cases found while writing these (they fail on the current code, see their comments):
 *   drift blind to document bytes, jsonb-unstorable payloads answered as a retryable 500, and
 *   payload keys decoded differently by a replay (V8 JSON.parse escaped-key bug).
 */
import { clone, create } from "@bufbuild/protobuf"
import { PgClient } from "@effect/sql-pg"
import { assert, describe, layer } from "@effect/vitest"
import { Arbitrary, Effect, Queue, References } from "effect"
import { SqlClient } from "effect/sql"
import { TestClock } from "effect/testing"
import type { ApiError } from "../../src/domain/ApiError.ts"
import { decodeWorkerSummary, encodeRunSummary, encodeWorkerSummary } from "../../src/domain/Documents.ts"
import type { JsonObject } from "../../src/domain/Json.ts"
import { projectRunHistory, type RunEventRecord } from "../../src/domain/RunProjection.ts"
import { projectWorkerHistory, type WorkerEventRecord } from "../../src/domain/WorkerProjection.ts"
import { CodexWorkerSummarySchema, WorkerErrorSchema } from "../../src/gen/openagents/sync/v1/documents_pb.ts"
import { KhalaConfig } from "../../src/layers/Config.ts"
import type { CommandResult } from "../../src/services/CommandRunner.ts"
import { JOURNAL_CHANNEL } from "../../src/services/Journal.ts"
import { JournalNotifier } from "../../src/services/JournalNotifier.ts"
import { ProjectionOps } from "../../src/services/ProjectionOps.ts"
import { RunCommands } from "../../src/services/RunCommands.ts"
import { WorkerCommands } from "../../src/services/WorkerCommands.ts"
import {
  interleave,
  rawWorld,
  type RunOp,
  type WorkerOp,
  workerOpEvent,
  worldEntities,
  type WorldStep
} from "../support/Histories.ts"
import { testServices } from "../support/TestApp.ts"

// ---------------------------------------------------------------------------------------------
// helpers

const T0 = Date.parse("2026-03-01T12:00:00.000Z")
const iso = (ms: number) => new Date(ms).toISOString()

const topicSeqsOf = (r: CommandResult) => r.body["topic_seqs"] as Record<string, number>

/** Everything the projector writes, in comparable form (bytea as hex, bigints as numbers). */
const capture = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const models = yield* sql<{ doc_key: string; doc_version: bigint; document: string; doc_hash: string }>`
    SELECT doc_key, doc_version, encode(document, 'hex') AS document, doc_hash
    FROM runtime.read_models ORDER BY doc_key`
  const journal = yield* sql<
    { topic: string; seq: bigint; kind: string; doc_key: string; doc_version: bigint; body_md5: string }
  >`
    SELECT topic, seq, kind, doc_key, doc_version, encode(body_md5, 'hex') AS body_md5
    FROM runtime.sync_stream_events ORDER BY topic, seq`
  const heads = yield* sql<{ topic: string; head_seq: bigint; floor_seq: bigint }>`
    SELECT topic, head_seq, floor_seq FROM runtime.sync_topic_sequences ORDER BY topic`
  const [epoch] = yield* sql<{ epoch: string }>`SELECT epoch FROM runtime.sync_journal_epoch`
  return {
    models: models.map((m) => ({ ...m, doc_version: Number(m.doc_version) })),
    journal: journal.map((j) => ({ ...j, seq: Number(j.seq), doc_version: Number(j.doc_version) })),
    heads: heads.map((h) => ({ topic: h.topic, head_seq: Number(h.head_seq), floor_seq: Number(h.floor_seq) })),
    epoch: epoch!.epoch
  }
})
type Capture = Effect.Success<typeof capture>

/** Every journal topic holds exactly seqs 1..head_seq, and its sequence row says so. */
const assertJournalGapless = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const rows = yield* sql<{ topic: string; n: bigint; min: bigint; max: bigint; head_seq: bigint | null; floor_seq: bigint | null }>`
    SELECT e.topic, count(*) AS n, min(e.seq) AS min, max(e.seq) AS max, s.head_seq, s.floor_seq
    FROM runtime.sync_stream_events e LEFT JOIN runtime.sync_topic_sequences s USING (topic)
    GROUP BY e.topic, s.head_seq, s.floor_seq`
  for (const r of rows) {
    assert.strictEqual(Number(r.min), 1, r.topic)
    assert.strictEqual(Number(r.max), Number(r.n), `${r.topic}: ${r.n} entries up to seq ${r.max}`)
    assert.strictEqual(Number(r.head_seq), Number(r.max), `${r.topic}: head_seq`)
    assert.strictEqual(Number(r.floor_seq), 1, `${r.topic}: floor_seq`)
  }
  const [orphans] = yield* sql<{ n: bigint }>`
    SELECT count(*) AS n FROM runtime.sync_topic_sequences s
    WHERE NOT EXISTS (SELECT 1 FROM runtime.sync_stream_events e WHERE e.topic = s.topic)`
  assert.strictEqual(Number(orphans!.n), 0, "sequence rows without entries")
})

const topicSeqs = (topic: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const rows = yield* sql<{ seq: bigint }>`SELECT seq FROM runtime.sync_stream_events WHERE topic = ${topic} ORDER BY seq`
    return rows.map((r) => Number(r.seq))
  })

const headOf = (topic: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<{ head_seq: bigint }>`SELECT head_seq FROM runtime.sync_topic_sequences WHERE topic = ${topic}`
    return row === undefined ? 0 : Number(row.head_seq)
  })

/**
 * A fresh TestClock for one test. The shared layer is built WITHOUT the test services
 * (`excludeTestServices`): otherwise the connection pool's background fibers would sleep on the
 * TestClock, and moving it years ahead (`setTime`) would replay every pool timer in between.
 */
const clocked = <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.provide(self, TestClock.layer())

const range = (from: number, to: number) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

/** The topic_seqs of several commands never repeat a seq on a topic. */
const assertDistinctTopicSeqs = (results: ReadonlyArray<CommandResult>) => {
  const byTopic = new Map<string, Array<number>>()
  for (const r of results) {
    for (const [topic, seq] of Object.entries(topicSeqsOf(r))) byTopic.set(topic, [...(byTopic.get(topic) ?? []), seq])
  }
  for (const [topic, seqs] of byTopic) assert.strictEqual(new Set(seqs).size, seqs.length, `${topic}: ${seqs.join(",")}`)
  return byTopic
}

// ---------------------------------------------------------------------------------------------
// submitting a planned history through the commands (payloads are already jsonb-storable)

const submit = (step: WorldStep) =>
  Effect.gen(function*() {
    const runs = yield* RunCommands
    const workers = yield* WorkerCommands
    yield* TestClock.setTime(step.atMs)
    const occurred_at = iso(step.atMs)
    if (step.entity === "run") {
      const op: RunOp = step.op
      const body = op.type === "run.created"
        ? { type: op.type, payload: op.payload, owner_user_id: step.owner, occurred_at }
        : { type: op.type, payload: op.payload, occurred_at }
      const res = yield* runs.appendEvent(step.id, body, undefined)
      assert.strictEqual(res.status, 201)
      return res
    }
    const op: WorkerOp = step.op
    switch (op.kind) {
      case "create": {
        const res = yield* workers.create({ worker_id: step.id, owner_user_id: step.owner, metadata: op.metadata }, undefined)
        assert.strictEqual(res.status, 201)
        return res
      }
      case "event": {
        const res = yield* workers.appendEvent(
          step.id,
          { event_type: op.type, payload: op.payload, occurred_at },
          undefined
        )
        assert.strictEqual(res.status, 201)
        return res
      }
      case "heartbeat": {
        const res = yield* workers.heartbeat(step.id, { payload: op.payload, occurred_at }, undefined)
        assert.strictEqual(res.status, 201)
        return res
      }
      case "stop": {
        const res = yield* workers.stop(step.id, op.reason === undefined ? {} : { reason: op.reason }, undefined)
        assert.strictEqual(res.status, 200)
        assert.strictEqual(res.body["status"], "stopped")
        return res
      }
      case "resume":
      case "resume-live": {
        const res = op.via === "resume"
          ? yield* workers.resume(step.id, {}, undefined)
          : yield* workers.create({ worker_id: step.id, owner_user_id: step.owner }, undefined)
        assert.strictEqual(res.status, 200)
        if (op.kind === "resume") {
          assert.strictEqual(res.body["status"], "running")
          assert.notDeepEqual(topicSeqsOf(res), {})
        } else {
          assert.include(["created", "running"], res.body["status"])
          assert.deepStrictEqual(topicSeqsOf(res), {}, "resuming a live worker appends nothing")
        }
        return res
      }
    }
  })

/** The summaries the pure projection gives for the planned (submitted) histories. */
const expectedRunSummary = (steps: ReadonlyArray<WorldStep>, runId: string) => {
  const records: Array<RunEventRecord> = []
  for (const s of steps) {
    if (s.entity !== "run" || s.id !== runId) continue
    records.push({ runId, ownerUserId: s.owner, seq: records.length + 1, type: s.op.type, payload: {}, occurredAtMs: s.atMs })
  }
  return projectRunHistory(records)!
}

const expectedWorkerSummary = (steps: ReadonlyArray<WorldStep>, workerId: string) => {
  const records: Array<WorkerEventRecord> = []
  for (const s of steps) {
    if (s.entity !== "worker" || s.id !== workerId) continue
    const event = workerOpEvent(s.op)
    if (!event) continue
    // metadata / error messages depend on jsonb key order; compared without them
    const payload: JsonObject = event.type === "worker.error" ? { fatal: event.payload["fatal"] === true } : {}
    records.push({ workerId, ownerUserId: s.owner, seq: records.length + 1, type: event.type, payload, occurredAtMs: s.atMs })
  }
  return projectWorkerHistory(records)!
}

/** A worker summary without the payload-derived parts (metadata, error message). */
const workerShape = (bytes: Uint8Array) => {
  const doc = clone(CodexWorkerSummarySchema, decodeWorkerSummary(bytes))
  doc.metadata = undefined
  if (doc.error) doc.error = create(WorkerErrorSchema, { ...doc.error, message: "" })
  return Buffer.from(encodeWorkerSummary(doc)).toString("hex")
}

const readModelBytes = (docKey: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const [row] = yield* sql<{ document: Uint8Array }>`SELECT document FROM runtime.read_models WHERE doc_key = ${docKey}`
    assert.isDefined(row, docKey)
    return row!.document
  })

// ---------------------------------------------------------------------------------------------

layer(testServices(), { timeout: "600 seconds", excludeTestServices: true })("write path (Postgres)", (it) => {
  describe("concurrency", () => {
    const N = 12

    it.effect(`${N} concurrent writers on one run: gapless entity and journal seqs`, () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const runs = yield* RunCommands
        const sql = yield* SqlClient.SqlClient
        yield* runs.appendEvent("c-run", { type: "run.created", owner_user_id: "c-u1" }, undefined)
        const results = yield* Effect.all(
          range(1, N).map((i) =>
            runs.appendEvent("c-run", { type: i === 1 ? "run.started" : "run.step", payload: { i } }, undefined)
          ),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(results.map((r) => r.status), results.map(() => 201))
        assert.deepStrictEqual(results.map((r) => r.body["seq"] as number).sort((a, b) => a - b), range(2, N + 1))
        const seqs = yield* sql<{ seq: bigint }>`SELECT seq FROM runtime.run_events WHERE run_id = 'c-run' ORDER BY seq`
        assert.deepStrictEqual(seqs.map((r) => Number(r.seq)), range(1, N + 1))
        // run/<id>: 2 entries per command (event + summary); user topic: 1 summary per command
        assert.deepStrictEqual(yield* topicSeqs("run/c-run"), range(1, 2 * (N + 1)))
        assert.deepStrictEqual(yield* topicSeqs("user/c-u1/runs"), range(1, N + 1))
        assert.strictEqual(yield* headOf("run/c-run"), 2 * (N + 1))
        assert.strictEqual(yield* headOf("user/c-u1/runs"), N + 1)
        const byTopic = assertDistinctTopicSeqs(results)
        assert.deepStrictEqual([...byTopic.get("user/c-u1/runs")!].sort((a, b) => a - b), range(2, N + 1))
        // the run row and the summary agree with the history
        const [run] = yield* sql<{ last_seq: bigint; status: string }>`SELECT last_seq, status FROM runtime.runs WHERE run_id = 'c-run'`
        assert.strictEqual(Number(run!.last_seq), N + 1)
        assert.strictEqual(run!.status, "running")
        const summary = yield* runs.get("c-run")
        assert.strictEqual(summary["event_count"], String(N + 1))
        assert.strictEqual(summary["last_seq"], String(N + 1))
        yield* assertJournalGapless
      })))

    it.effect(`${N} concurrent writers on one worker: gapless entity and journal seqs`, () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const workers = yield* WorkerCommands
        const sql = yield* SqlClient.SqlClient
        yield* workers.create({ worker_id: "c-w", owner_user_id: "c-u2" }, undefined)
        const kinds = ["worker.event", "worker.request.received", "worker.heartbeat", "worker.started"] as const
        const results = yield* Effect.all(
          range(1, N).map((i) =>
            i % 3 === 0
              ? workers.heartbeat("c-w", { occurred_at: iso(T0 + i * 20_000) }, undefined)
              : workers.appendEvent("c-w", { event_type: kinds[i % kinds.length]!, payload: { i } }, undefined)
          ),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(results.map((r) => r.status), results.map(() => 201))
        assert.deepStrictEqual(results.map((r) => r.body["seq"] as number).sort((a, b) => a - b), range(2, N + 1))
        const seqs = yield* sql<{ seq: bigint }>`SELECT seq FROM runtime.codex_worker_events WHERE worker_id = 'c-w' ORDER BY seq`
        assert.deepStrictEqual(seqs.map((r) => Number(r.seq)), range(1, N + 1))
        const workerTopic = yield* topicSeqs("worker/c-w")
        const userTopic = yield* topicSeqs("user/c-u2/workers")
        assert.deepStrictEqual(workerTopic, range(1, workerTopic.length))
        assert.deepStrictEqual(userTopic, range(1, userTopic.length))
        assert.strictEqual(yield* headOf("worker/c-w"), workerTopic.length)
        assert.strictEqual(yield* headOf("user/c-u2/workers"), userTopic.length)
        // every taxonomy event is journaled on the worker topic
        const [events] = yield* sql<{ n: bigint }>`
          SELECT count(*) AS n FROM runtime.sync_stream_events WHERE topic = 'worker/c-w' AND kind <> 'worker.summary'`
        assert.strictEqual(Number(events!.n), N)
        assertDistinctTopicSeqs(results)
        const [row] = yield* sql<{ last_seq: bigint; last_heartbeat_at: Date }>`
          SELECT last_seq, last_heartbeat_at FROM runtime.codex_workers WHERE worker_id = 'c-w'`
        assert.strictEqual(Number(row!.last_seq), N + 1)
        // last_heartbeat_at is the latest heartbeat, whatever the commit order was
        assert.strictEqual(row!.last_heartbeat_at.getTime(), T0 + Math.floor(N / 3) * 3 * 20_000)
        yield* assertJournalGapless
      })))

    it.effect("concurrent writers on different runs of one user contend on user/<uid>/runs without gaps", () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const runs = yield* RunCommands
        const sql = yield* SqlClient.SqlClient
        const ids = range(1, 10).map((i) => `c-multi-${i}`)
        const created = yield* Effect.all(
          ids.map((id) => runs.appendEvent(id, { type: "run.created", owner_user_id: "c-u3" }, undefined)),
          { concurrency: "unbounded" }
        )
        const steps = yield* Effect.all(
          [...ids, ...ids].map((id, i) =>
            runs.appendEvent(id, { type: i < ids.length ? "run.started" : "run.step", payload: { i } }, undefined)
          ),
          { concurrency: "unbounded" }
        )
        const all = [...created, ...steps]
        assert.deepStrictEqual(all.map((r) => r.status), all.map(() => 201))
        const total = ids.length * 3
        const byTopic = assertDistinctTopicSeqs(all)
        assert.deepStrictEqual([...byTopic.get("user/c-u3/runs")!].sort((a, b) => a - b), range(1, total))
        assert.deepStrictEqual(yield* topicSeqs("user/c-u3/runs"), range(1, total))
        assert.strictEqual(yield* headOf("user/c-u3/runs"), total)
        for (const id of ids) {
          const seqs = yield* sql<{ seq: bigint }>`SELECT seq FROM runtime.run_events WHERE run_id = ${id} ORDER BY seq`
          assert.deepStrictEqual(seqs.map((r) => Number(r.seq)), [1, 2, 3], id)
          assert.deepStrictEqual(yield* topicSeqs(`run/${id}`), range(1, 6), id)
        }
        // the per-owner ordinal (the replay order) is gapless too
        const ordinals = yield* sql<{ owner_ordinal: bigint }>`
          SELECT e.owner_ordinal FROM runtime.run_events e JOIN runtime.runs r USING (run_id)
          WHERE r.owner_user_id = 'c-u3' ORDER BY e.owner_ordinal`
        assert.deepStrictEqual(ordinals.map((r) => Number(r.owner_ordinal)), range(1, total))
        // the user topic's seq order is the owner's commit order: entry k is the summary written by ordinal k
        const journal = yield* sql<{ seq: bigint; doc_key: string; doc_version: bigint }>`
          SELECT seq, doc_key, doc_version FROM runtime.sync_stream_events WHERE topic = 'user/c-u3/runs' ORDER BY seq`
        const byOrdinal = yield* sql<{ run_id: string; seq: bigint }>`
          SELECT e.run_id, e.seq FROM runtime.run_events e JOIN runtime.runs r USING (run_id)
          WHERE r.owner_user_id = 'c-u3' ORDER BY e.owner_ordinal`
        assert.deepStrictEqual(
          journal.map((j) => `${j.doc_key}@${j.doc_version}`),
          byOrdinal.map((e) => `run_summary:${e.run_id}@${e.seq}`)
        )
        yield* assertJournalGapless
      })))
  })

  describe("rollback", () => {
    it.effect("a command failing after its writes leaves no row, no seq gap and no notification", () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const runs = yield* RunCommands
        const workers = yield* WorkerCommands
        const sql = yield* SqlClient.SqlClient
        const pg = yield* PgClient.PgClient
        // Announcements go out after each commit, coalesced per topic; `flush` is the barrier that
        // keeps the earlier tests' ones out of this listener and each command's apart.
        const notifier = yield* JournalNotifier
        yield* notifier.flush
        const notes = yield* pg.listen(JOURNAL_CHANNEL)
        const announced = <A>(command: Effect.Effect<A, ApiError>) => Effect.tap(command, () => notifier.flush)

        const ok1 = yield* announced(runs.appendEvent("rb-ok-1", { type: "run.created", owner_user_id: "rb-u" }, undefined))
        // entities that exist before the trigger: their next command fails
        const ok2 = yield* announced(runs.appendEvent("rb-boom-existing", { type: "run.created", owner_user_id: "rb-u" }, undefined))
        const ok3 = yield* announced(workers.create({ worker_id: "rb-boom-worker", owner_user_id: "rb-u" }, undefined))

        yield* sql.unsafe(`CREATE FUNCTION runtime.test_boom() RETURNS trigger LANGUAGE plpgsql AS
          'BEGIN RAISE EXCEPTION ''boom (test trigger)''; END'`)
        yield* sql.unsafe(`CREATE TRIGGER test_boom BEFORE INSERT ON runtime.projection_checkpoints FOR EACH ROW
          WHEN (NEW.entity_id LIKE 'rb-boom%') EXECUTE FUNCTION runtime.test_boom()`)
        const dropTrigger = sql.unsafe(`DROP TRIGGER IF EXISTS test_boom ON runtime.projection_checkpoints`).pipe(
          Effect.andThen(sql.unsafe(`DROP FUNCTION IF EXISTS runtime.test_boom()`)),
          Effect.orDie
        )

        yield* Effect.gen(function*() {
          const before = yield* capture
          const ownerBefore = yield* sql<{ stream: string; last_ordinal: bigint }>`
            SELECT stream, last_ordinal FROM runtime.owner_sequences WHERE owner_user_id = 'rb-u' ORDER BY stream`
          const userHead = yield* headOf("user/rb-u/runs")
          assert.strictEqual(userHead, 2)

          const failures: Array<ApiError> = [
            yield* Effect.flip(runs.appendEvent("rb-boom", { type: "run.created", owner_user_id: "rb-u" }, undefined)),
            yield* Effect.flip(runs.appendEvent("rb-boom-existing", { type: "run.step", payload: { x: 1 } }, undefined)),
            yield* Effect.flip(workers.heartbeat("rb-boom-worker", {}, undefined)),
            yield* Effect.flip(workers.appendEvent("rb-boom-worker", { event_type: "worker.started" }, undefined)),
            yield* Effect.flip(workers.create({ worker_id: "rb-boom-new", owner_user_id: "rb-u" }, undefined))
          ]
          for (const e of failures) {
            assert.strictEqual(e._tag, "ApiError")
            assert.strictEqual(e.code, "internal")
            assert.strictEqual(e.status, 500)
          }

          // no trace: authority, read models, checkpoints, journal, sequences, ordinals
          const [authority] = yield* sql<{ runs: bigint; events: bigint; workers: bigint; wevents: bigint }>`
            SELECT (SELECT count(*) FROM runtime.runs WHERE run_id = 'rb-boom') AS runs,
                   (SELECT count(*) FROM runtime.run_events WHERE run_id LIKE 'rb-boom%') AS events,
                   (SELECT count(*) FROM runtime.codex_workers WHERE worker_id = 'rb-boom-new') AS workers,
                   (SELECT count(*) FROM runtime.codex_worker_events WHERE worker_id LIKE 'rb-boom%') AS wevents`
          assert.deepStrictEqual(
            { runs: Number(authority!.runs), events: Number(authority!.events), workers: Number(authority!.workers), wevents: Number(authority!.wevents) },
            { runs: 0, events: 1, workers: 0, wevents: 1 }
          )
          const [rows] = yield* sql<{ run: string; worker: string; hb: Date | null }>`
            SELECT (SELECT status || ':' || last_seq FROM runtime.runs WHERE run_id = 'rb-boom-existing') AS run,
                   (SELECT status || ':' || last_seq FROM runtime.codex_workers WHERE worker_id = 'rb-boom-worker') AS worker,
                   (SELECT last_heartbeat_at FROM runtime.codex_workers WHERE worker_id = 'rb-boom-worker') AS hb`
          assert.deepStrictEqual(rows, { run: "created:1", worker: "created:1", hb: null })
          const after = yield* capture
          assert.deepStrictEqual(after, before, "read models, journal, heads and epoch unchanged")
          const [checkpoints] = yield* sql<{ n: bigint }>`
            SELECT count(*) AS n FROM runtime.projection_checkpoints WHERE entity_id IN ('rb-boom', 'rb-boom-new')`
          assert.strictEqual(Number(checkpoints!.n), 0)
          assert.strictEqual(yield* headOf("run/rb-boom"), 0)
          assert.strictEqual(yield* headOf("user/rb-u/runs"), userHead)
          const ownerAfter = yield* sql<{ stream: string; last_ordinal: bigint }>`
            SELECT stream, last_ordinal FROM runtime.owner_sequences WHERE owner_user_id = 'rb-u' ORDER BY stream`
          assert.deepStrictEqual(ownerAfter, ownerBefore)
        }).pipe(
          // the expected failures are logged by CommandRunner as errors; keep the output clean
          Effect.provideService(References.MinimumLogLevel, "None"),
          Effect.ensuring(dropTrigger)
        )

        // the next successful command gets the next gapless seq
        const ok4 = yield* announced(runs.appendEvent("rb-ok-2", { type: "run.created", owner_user_id: "rb-u" }, undefined))
        assert.strictEqual(topicSeqsOf(ok4)["user/rb-u/runs"], 3)
        const ok5 = yield* announced(runs.appendEvent("rb-boom-existing", { type: "run.step" }, undefined))
        assert.strictEqual(ok5.body["seq"], 2)
        assert.deepStrictEqual(topicSeqsOf(ok5), { "run/rb-boom-existing": 4, "user/rb-u/runs": 4 })
        assert.deepStrictEqual(yield* topicSeqs("user/rb-u/runs"), [1, 2, 3, 4])

        // LISTEN: exactly the successful commands' "<seq> … <topic>", in commit order; a notification
        // of a failed command would have been delivered before the later successful ones.
        // (The payload is "<seq> <committed_at_ms> <topic>"; only seq and topic are compared.)
        const expected = [ok1, ok2, ok3, ok4, ok5].flatMap((r) =>
          Object.entries(topicSeqsOf(r)).map(([topic, seq]) => `${seq} ${topic}`)
        )
        const received: Array<string> = []
        while (received.length < expected.length) {
          const n = yield* Queue.take(notes)
          assert.strictEqual(n.channel, JOURNAL_CHANNEL)
          const parts = n.payload.split(" ")
          received.push(`${parts[0]} ${parts[parts.length - 1]}`)
        }
        assert.deepStrictEqual(received, expected)
        assert.isFalse(received.some((p) => p.includes("rb-boom-new") || p.endsWith(" run/rb-boom")))

        // Only after commit: a command inside a still-open transaction has not notified yet. A marker
        // NOTIFY committed meanwhile on another connection arrives first; the command's own
        // notifications follow once the enclosing transaction commits.
        const inside = yield* sql.withTransaction(Effect.gen(function*() {
          const r = yield* runs.appendEvent("rb-ok-3", { type: "run.created", owner_user_id: "rb-u" }, undefined)
          yield* pg.notify(JOURNAL_CHANNEL, "marker (test)")
          assert.strictEqual((yield* Queue.take(notes)).payload, "marker (test)")
          return r
        }))
        const late = Object.entries(topicSeqsOf(inside)).map(([topic, seq]) => `${seq} ${topic}`)
        assert.deepStrictEqual(late, ["2 run/rb-ok-3", "5 user/rb-u/runs"])
        const afterCommit: Array<string> = []
        while (afterCommit.length < late.length) {
          const parts = (yield* Queue.take(notes)).payload.split(" ")
          afterCommit.push(`${parts[0]} ${parts[parts.length - 1]}`)
        }
        assert.deepStrictEqual(afterCommit, late)
        yield* assertJournalGapless
      })))
  })

  describe("heartbeat state (TestClock)", () => {
    it.effect("missing → fresh → fresh at exactly stale_after → stale at +1 ms → fresh", () =>
      clocked(Effect.gen(function*() {
        const workers = yield* WorkerCommands
        const config = yield* KhalaConfig
        const staleAfter = config.workerHeartbeatStaleAfterMs
        assert.strictEqual(staleAfter, 60_000)
        yield* TestClock.setTime(T0)

        const views = Effect.gen(function*() {
          const one = yield* workers.get("hb-w")
          const list = yield* workers.list("hb-u")
          const listed = (list["workers"] as Array<JsonObject>).find((w) => w["worker_id"] === "hb-w")
          assert.isDefined(listed)
          const pick = (s: JsonObject): Record<string, unknown> => ({
            heartbeat_state: s["heartbeat_state"],
            heartbeat_age_ms: s["heartbeat_age_ms"],
            heartbeat_stale_after_ms: s["heartbeat_stale_after_ms"],
            last_heartbeat_at: s["last_heartbeat_at"]
          })
          assert.deepStrictEqual(pick(listed!), pick(one), "get and list agree")
          return pick(one)
        })

        const created = yield* workers.create({ worker_id: "hb-w", owner_user_id: "hb-u" }, undefined)
        assert.strictEqual(created.status, 201)
        assert.strictEqual(created.body["heartbeat_state"], "missing")
        assert.strictEqual(created.body["heartbeat_age_ms"], null)
        assert.strictEqual(created.body["heartbeat_stale_after_ms"], staleAfter)
        assert.deepStrictEqual(yield* views, {
          heartbeat_state: "missing",
          heartbeat_age_ms: null,
          heartbeat_stale_after_ms: staleAfter,
          last_heartbeat_at: undefined
        })
        // time passing without heartbeats: still missing (create is not a heartbeat)
        yield* TestClock.adjust(staleAfter + 1)
        assert.strictEqual((yield* views).heartbeat_state, "missing")

        const t1 = T0 + staleAfter + 1
        assert.strictEqual((yield* workers.heartbeat("hb-w", {}, undefined)).status, 201)
        assert.deepStrictEqual(yield* views, {
          heartbeat_state: "fresh",
          heartbeat_age_ms: 0,
          heartbeat_stale_after_ms: staleAfter,
          last_heartbeat_at: iso(t1)
        })
        yield* TestClock.adjust(staleAfter)
        assert.deepStrictEqual(yield* views, {
          heartbeat_state: "fresh",
          heartbeat_age_ms: staleAfter,
          heartbeat_stale_after_ms: staleAfter,
          last_heartbeat_at: iso(t1)
        })
        yield* TestClock.adjust(1)
        assert.deepStrictEqual(yield* views, {
          heartbeat_state: "stale",
          heartbeat_age_ms: staleAfter + 1,
          heartbeat_stale_after_ms: staleAfter,
          last_heartbeat_at: iso(t1)
        })
        const t2 = t1 + staleAfter + 1
        yield* workers.heartbeat("hb-w", {}, undefined)
        assert.deepStrictEqual(yield* views, {
          heartbeat_state: "fresh",
          heartbeat_age_ms: 0,
          heartbeat_stale_after_ms: staleAfter,
          last_heartbeat_at: iso(t2)
        })
      })))

    it.effect("a burst of 20 heartbeats 100 ms apart converges on the user topic; the authority keeps the exact last one", () =>
      clocked(Effect.gen(function*() {
        const workers = yield* WorkerCommands
        const sql = yield* SqlClient.SqlClient
        yield* TestClock.setTime(T0)
        yield* workers.create({ worker_id: "hb-burst", owner_user_id: "hb-u2" }, undefined)
        yield* workers.appendEvent("hb-burst", { event_type: "worker.started" }, undefined)
        const summaries = (topic: string) =>
          sql<{ n: bigint }>`
            SELECT count(*) AS n FROM runtime.sync_stream_events WHERE topic = ${topic} AND kind = 'worker.summary'`.pipe(
            Effect.map(([r]) => Number(r!.n))
          )
        const userBefore = yield* summaries("user/hb-u2/workers")
        const workerBefore = yield* summaries("worker/hb-burst")
        const [versionBefore] = yield* sql<{ doc_version: bigint }>`
          SELECT doc_version FROM runtime.read_models WHERE doc_key = 'codex_worker_summary:hb-burst'`

        const results: Array<CommandResult> = []
        for (let i = 0; i < 20; i++) {
          if (i > 0) yield* TestClock.adjust(100)
          results.push(yield* workers.heartbeat("hb-burst", { payload: { i } }, undefined))
        }
        const last = T0 + 19 * 100
        const userNew = (yield* summaries("user/hb-u2/workers")) - userBefore
        assert.isAtLeast(userNew, 1)
        assert.isAtMost(userNew, 2, "the burst converges to at most 2 summary updates")
        assert.strictEqual((yield* summaries("worker/hb-burst")) - workerBefore, userNew)
        const [versionAfter] = yield* sql<{ doc_version: bigint }>`
          SELECT doc_version FROM runtime.read_models WHERE doc_key = 'codex_worker_summary:hb-burst'`
        assert.strictEqual(Number(versionAfter!.doc_version) - Number(versionBefore!.doc_version), userNew)
        // coalesced heartbeats append their event only, no user-topic entry
        assert.strictEqual(results.filter((r) => "user/hb-u2/workers" in topicSeqsOf(r)).length, userNew)
        const [events] = yield* sql<{ n: bigint }>`
          SELECT count(*) AS n FROM runtime.sync_stream_events WHERE topic = 'worker/hb-burst' AND kind = 'worker.heartbeat'`
        assert.strictEqual(Number(events!.n), 20)
        // the authority row keeps the exact last heartbeat, and the snapshot reports it
        const [row] = yield* sql<{ last_heartbeat_at: Date }>`
          SELECT last_heartbeat_at FROM runtime.codex_workers WHERE worker_id = 'hb-burst'`
        assert.strictEqual(row!.last_heartbeat_at.getTime(), last)
        const snapshot = yield* workers.get("hb-burst")
        assert.strictEqual(snapshot["last_heartbeat_at"], iso(last))
        assert.strictEqual(snapshot["heartbeat_state"], "fresh")
        assert.strictEqual(snapshot["heartbeat_age_ms"], 0)
        yield* assertJournalGapless
      })))
  })

  describe("replay", () => {
    let iteration = 0
    const World = Arbitrary.schema(rawWorld({ users: [2, 3], runs: [1, 3], workers: [1, 2], steps: 8, burst: 5 }))

    it.effect.prop(
      "random multi-user histories: rebuild is byte-identical and keeps the epoch; drift and a broken journal are detected",
      { world: World },
      ({ world }) =>
        clocked(Effect.gen(function*() {
          const prefix = `p${iteration++}-`
          const ops = yield* ProjectionOps
          const runs = yield* RunCommands
          const workers = yield* WorkerCommands
          const sql = yield* SqlClient.SqlClient
          const entities = worldEntities(world, prefix)
          const steps = interleave(world, entities)
          for (const step of steps) yield* submit(step)

          // the commands' documents are the pure projections of what was submitted
          for (const e of entities) {
            if (e.entity === "run") {
              const bytes = yield* readModelBytes(`run_summary:${e.id}`)
              const expected = expectedRunSummary(steps, e.id)
              assert.strictEqual(Buffer.from(bytes).toString("hex"), Buffer.from(encodeRunSummary(expected)).toString("hex"), e.id)
              assert.strictEqual((yield* runs.get(e.id))["status"], expected.status)
            } else {
              const bytes = yield* readModelBytes(`codex_worker_summary:${e.id}`)
              const expected = expectedWorkerSummary(steps, e.id)
              assert.strictEqual(workerShape(bytes), workerShape(encodeWorkerSummary(expected)), e.id)
              assert.strictEqual((yield* workers.get(e.id))["status"], expected.status)
            }
          }
          yield* assertJournalGapless
          assert.deepStrictEqual((yield* ops.drift).drifted, [])

          // drop and replay: byte-identical documents, the same journal, the same epoch
          const before: Capture = yield* capture
          const [authority] = yield* sql<{ n: bigint }>`
            SELECT (SELECT count(*) FROM runtime.run_events) + (SELECT count(*) FROM runtime.codex_worker_events) AS n`
          const report = yield* ops.rebuild()
          assert.strictEqual(report.epoch_changed, false)
          assert.strictEqual(report.epoch, before.epoch)
          assert.strictEqual(report.events, Number(authority!.n))
          assert.strictEqual(report.journal_entries, before.journal.length)
          const rebuilt = yield* capture
          assert.deepStrictEqual(rebuilt.models, before.models)
          assert.deepStrictEqual(rebuilt.journal, before.journal)
          assert.deepStrictEqual(rebuilt.heads, before.heads)
          assert.strictEqual(rebuilt.epoch, before.epoch)

          // drift: exactly the tampered entity is reported
          const victim = entities.find((e) => e.entity === "worker")!
          const victimKey = `codex_worker_summary:${victim.id}`
          const [original] = yield* sql<{ doc_hash: string }>`SELECT doc_hash FROM runtime.read_models WHERE doc_key = ${victimKey}`
          yield* sql`UPDATE runtime.read_models SET document = decode('0a0178', 'hex'), doc_hash = 'tampered'
            WHERE doc_key = ${victimKey}`
          const drift = yield* ops.drift
          assert.deepStrictEqual(drift.drifted.map((d) => [d.entity_kind, d.entity_id]), [["worker", victim.id]])
          assert.strictEqual(drift.drifted[0]!.read_model_hash, "tampered")
          assert.strictEqual(drift.drifted[0]!.expected_hash, original!.doc_hash)
          assert.strictEqual(drift.drifted[0]!.checkpoint_hash, original!.doc_hash)
          // a rebuild repairs it; the journal was intact, so the epoch stays
          const repaired = yield* ops.rebuild()
          assert.strictEqual(repaired.epoch_changed, false)
          assert.deepStrictEqual((yield* capture).models, before.models)
          assert.deepStrictEqual((yield* ops.drift).drifted, [])

          // a journal that no longer matches the authority history: lost tail + a head beyond it
          const topic = `run/${entities.find((e) => e.entity === "run")!.id}`
          const head = yield* headOf(topic)
          yield* sql`DELETE FROM runtime.sync_stream_events WHERE topic = ${topic} AND seq > ${head - 1}`
          yield* sql`UPDATE runtime.sync_topic_sequences SET head_seq = head_seq + 3 WHERE topic = ${topic}`
          const renewed = yield* ops.rebuild()
          assert.strictEqual(renewed.epoch_changed, true)
          assert.notStrictEqual(renewed.epoch, before.epoch)
          const after = yield* capture
          assert.strictEqual(after.epoch, renewed.epoch)
          assert.deepStrictEqual(after.models, before.models)
          assert.deepStrictEqual(after.journal, before.journal)
          assert.deepStrictEqual(after.heads, before.heads)
          yield* assertJournalGapless
        })),
      // size bounds the random payloads (journal entries must fit one sync frame)
      { timeout: 300_000, arbitrary: { runs: 6, size: 12, maxShrinks: 8 } }
    )
  })

  describe("edge cases", () => {
    it.effect("drift detects a read model whose stored bytes changed even though its doc_hash column did not", () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const runs = yield* RunCommands
        const ops = yield* ProjectionOps
        const sql = yield* SqlClient.SqlClient
        yield* runs.appendEvent("edge-drift", { type: "run.created", owner_user_id: "edge-u" }, undefined)
        yield* runs.appendEvent("edge-drift", { type: "run.started" }, undefined)
        assert.deepStrictEqual((yield* ops.drift).drifted, [])
        // the bytes clients are served (snapshot, GET) no longer match the projection; the hash column does
        yield* sql`UPDATE runtime.read_models SET document = decode('0a0178', 'hex') WHERE doc_key = 'run_summary:edge-drift'`
        const drift = yield* ops.drift
        // restore before asserting, so the rest of the file runs on a consistent database
        yield* ops.rebuild()
        assert.deepStrictEqual(drift.drifted.map((d) => d.entity_id), ["edge-drift"])
      })))

    it.effect("a history longer than a rebuild page (set-based pages) rebuilds byte-identical, epoch kept", () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const runs = yield* RunCommands
        const workers = yield* WorkerCommands
        const ops = yield* ProjectionOps
        const sql = yield* SqlClient.SqlClient
        yield* runs.appendEvent("long-a", { type: "run.created", owner_user_id: "long-u" }, undefined)
        yield* runs.appendEvent("long-b", { type: "run.created", owner_user_id: "long-u" }, undefined)
        yield* workers.create({ worker_id: "long-w", owner_user_id: "long-u" }, undefined)
        // 1,300 run events over two runs (pages of 1,000 split runs mid-history), status changes
        // inside pages and at a boundary, repeated identical summaries, worker events between them.
        for (let i = 0; i < 1300; i++) {
          const run = i % 3 === 0 ? "long-b" : "long-a"
          const type = i === 2 || i === 999 ? "run.started" : "run.step"
          yield* runs.appendEvent(run, { type, payload: { i, same: i % 7 === 0 } }, undefined)
          if (i % 10 === 0) {
            yield* workers.appendEvent("long-w", { event_type: "worker.event", payload: { i } }, undefined)
            yield* TestClock.adjust(1)
          }
        }
        yield* runs.appendEvent("long-b", { type: "run.completed" }, undefined)
        const before: Capture = yield* capture
        const report = yield* ops.rebuild()
        const [authority] = yield* sql<{ n: bigint }>`
          SELECT (SELECT count(*) FROM runtime.run_events) + (SELECT count(*) FROM runtime.codex_worker_events) AS n`
        assert.strictEqual(report.events, Number(authority!.n))
        assert.strictEqual(report.epoch_changed, false)
        const rebuilt = yield* capture
        assert.deepStrictEqual(rebuilt.models, before.models)
        assert.deepStrictEqual(rebuilt.journal, before.journal)
        assert.deepStrictEqual(rebuilt.heads, before.heads)
        assert.deepStrictEqual((yield* ops.drift).drifted, [])
        yield* assertJournalGapless
      })), { timeout: 120_000 })

    it.effect("a JSON payload Postgres jsonb cannot store (NUL, lone surrogate) is a 400, not a retryable 500", () =>
      clocked(Effect.gen(function*() {
        yield* TestClock.setTime(T0)
        const runs = yield* RunCommands
        const workers = yield* WorkerCommands
        yield* runs.appendEvent("edge-json", { type: "run.created", owner_user_id: "edge-u" }, undefined)
        yield* workers.create({ worker_id: "edge-json-w", owner_user_id: "edge-u" }, undefined)
        const codes: Array<string> = []
        for (const payload of [{ s: "a\u0000b" }, { "k\u0000": 1 }, { s: "\ud800" }]) {
          const run = yield* Effect.flip(runs.appendEvent("edge-json", { type: "run.step", payload }, undefined)).pipe(
            Effect.provideService(References.MinimumLogLevel, "None")
          )
          const worker = yield* Effect.flip(
            workers.appendEvent("edge-json-w", { event_type: "worker.event", payload }, undefined)
          ).pipe(Effect.provideService(References.MinimumLogLevel, "None"))
          codes.push(run.code, worker.code)
        }
        assert.deepStrictEqual(codes, codes.map(() => "invalid_request"))
      })))
  })

  // Last in the file: it leaves a document that later parses may decode either way. The random
  // histories above never carry keys JSON escapes (see `plainKeys`), so the process has not parsed a
  // "\\" key before this test.
  describe("runtime", () => {
    it.effect("replay reads back the payload keys the live projection saw (JSON.parse escaped-key cache)", () =>
      clocked(Effect.gen(function*() {
        // Node 24's V8 (nodejs/node#63785, crbug 521080746): once JSON.parse has built an object whose
        // key chain ends in "\\", a later escaped key at the same place in the chain ("\"", "\n",
        // "\t", …) decodes as "\\". Rows are decoded with JSON.parse, so the projector's input depends
        // on what the process parsed before: the live projection and a replay read different payloads.
        yield* TestClock.setTime(T0)
        const workers = yield* WorkerCommands
        const ops = yield* ProjectionOps
        const sql = yield* SqlClient.SqlClient
        const document = sql<{ d: string }>`
          SELECT encode(document, 'hex') AS d FROM runtime.read_models WHERE doc_key = 'codex_worker_summary:v8-victim'`
        // jsonb orders keys by length, then bytes: "", " ", "!", then the escaped key
        const sent = { "": 0, " ": 0, "!": 0, "\"": 1 }
        yield* workers.create({ worker_id: "v8-victim", owner_user_id: "v8-u", metadata: sent }, undefined)
        assert.deepStrictEqual((yield* workers.get("v8-victim"))["metadata"], sent)
        const [before] = yield* document
        // an ordinary client payload whose key chain ends in "\\" (its row is decoded with JSON.parse)
        yield* workers.create(
          { worker_id: "v8-other", owner_user_id: "v8-u", metadata: { "": 0, " ": 0, "!": 0, "\\": 1 } },
          undefined
        )
        const drift = yield* ops.drift
        const report = yield* ops.rebuild()
        const [after] = yield* document
        const metadata = (yield* workers.get("v8-victim"))["metadata"]
        assert.deepStrictEqual(drift.drifted.map((d) => d.entity_id), [], "the drift check recomputed another document")
        assert.deepStrictEqual(metadata, sent, "the replayed document lost the key the client sent")
        assert.strictEqual(after!.d, before!.d)
        assert.strictEqual(report.epoch_changed, false)
      })))
  })
})
