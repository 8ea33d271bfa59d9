/**
 * The HTTP command surface against a real Postgres: every 4xx path with its exact status and
 * code, idempotent retries, topic_seqs, and the run/worker lifecycles of SPEC §2/§10.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Effect } from "effect"
import { HttpClientRequest } from "effect/http"
import { SqlClient } from "effect/sql"
import { ADMIN_TOKEN, get, HttpClient, post, testApp } from "../support/TestApp.ts"

const call = (req: HttpClientRequest.HttpClientRequest) =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const res = yield* client.execute(req)
    const text = yield* res.text
    return { status: res.status, body: text === "" ? undefined : JSON.parse(text), headers: res.headers }
  })

const errorCode = (r: { body: unknown }) => (r.body as { error?: { code?: string } }).error?.code

const runEvent = (runId: string, body: unknown, token?: string) =>
  call(post(`/internal/v1/runs/${runId}/events`, body, token ?? "test-service-token"))

/** A payload object with `levels` objects nested inside it (`levels + 1` levels in all). */
const nested = (levels: number): Record<string, unknown> => {
  let v: Record<string, unknown> = { leaf: true }
  for (let i = 0; i < levels; i++) v = { a: v }
  return v
}

layer(testApp({ maxBodyBytes: 4096 }), { timeout: "120 seconds" })("HTTP commands", (it) => {
  describe("runs", () => {
    it.effect("lifecycle: created → running → completed, then 409", () =>
      Effect.gen(function*() {
        const created = yield* runEvent("run-a", { type: "run.created", owner_user_id: "u1", payload: { model: "x" } })
        assert.strictEqual(created.status, 201)
        assert.deepStrictEqual(created.body, { run_id: "run-a", seq: 1, topic_seqs: { "run/run-a": 2, "user/u1/runs": 1 } })
        assert.match(String(created.headers["x-request-id"]), /^[0-9a-f-]{36}$/)

        const started = yield* runEvent("run-a", { type: "run.started" })
        assert.strictEqual(started.status, 201)
        assert.deepStrictEqual(started.body, { run_id: "run-a", seq: 2, topic_seqs: { "run/run-a": 4, "user/u1/runs": 2 } })
        yield* runEvent("run-a", { type: "run.step", payload: { n: 1 } })
        const done = yield* runEvent("run-a", { type: "run.completed", occurred_at: "2026-11-22T10:00:00.000Z" })
        assert.strictEqual(done.status, 201)

        const summary = yield* call(get("/internal/v1/runs/run-a"))
        assert.strictEqual(summary.status, 200)
        assert.strictEqual(summary.body.status, "completed")
        assert.strictEqual(summary.body.event_count, "4")
        assert.strictEqual(summary.body.last_seq, "4")
        assert.strictEqual(summary.body.owner_user_id, "u1")
        assert.strictEqual(summary.body.terminal_at, "2026-11-22T10:00:00Z")

        const after = yield* runEvent("run-a", { type: "run.step" })
        assert.strictEqual(after.status, 409)
        assert.strictEqual(errorCode(after), "run_terminal")
      }))

    it.effect("x-request-id is echoed and stored with the authority event", () =>
      Effect.gen(function*() {
        const res = yield* call(
          post("/internal/v1/runs/run-rid/events", { type: "run.created", owner_user_id: "u1" }).pipe(
            HttpClientRequest.setHeader("x-request-id", "req-123")
          )
        )
        assert.strictEqual(res.headers["x-request-id"], "req-123")
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ request_id: string }>`SELECT request_id FROM runtime.run_events WHERE run_id = 'run-rid'`
        assert.strictEqual(row?.request_id, "req-123")
      }))

    it.effect("4xx paths", () =>
      Effect.gen(function*() {
        const cases: Array<[Effect.Effect<{ status: number; body: unknown }, unknown, HttpClient.HttpClient>, number, string]> = [
          [runEvent("run-x", { type: "run.created", owner_user_id: "u1" }, "wrong"), 401, "unauthorized"],
          [call(post("/internal/v1/runs/run-x/events", { type: "run.created" }, null)), 401, "unauthorized"],
          [runEvent("run-x", { type: "run.created" }), 400, "invalid_request"],
          [runEvent("run-x", { type: "run.bogus" }), 400, "invalid_request"],
          [runEvent("run-x", { payload: {} }), 400, "invalid_request"],
          [runEvent("run-x", { type: "run.created", owner_user_id: "u1", payload: [1] }), 400, "invalid_request"],
          [runEvent("run-x", { type: "run.created", owner_user_id: "bad id" }), 400, "invalid_request"],
          [runEvent("run-x", { type: "run.created", owner_user_id: "u1", occurred_at: "yesterday" }), 400, "invalid_request"],
          [runEvent("run-x", { type: "run.created", owner_user_id: "u1", occurred_at: "1969-12-31T23:59:59.000Z" }), 400, "invalid_request"],
          [runEvent("bad%20id", { type: "run.created", owner_user_id: "u1" }), 400, "invalid_request"],
          [runEvent("run-x", { type: "run.started" }), 404, "run_not_found"],
          [call(get("/internal/v1/runs/nope")), 404, "run_not_found"],
          [runEvent("run-x", { type: "run.created", owner_user_id: "u1", payload: { big: "x".repeat(5000) } }), 413, "payload_too_large"],
          // payloads nest at most 32 levels (the payload object is the first)
          [runEvent("run-x", { type: "run.created", owner_user_id: "u1", payload: nested(32) }), 400, "invalid_request"],
          [call(post("/internal/v1/codex/workers", { worker_id: "w" })), 400, "invalid_request"],
          [call(get("/internal/v1/codex/workers/nope")), 404, "worker_not_found"],
          [call(post("/internal/v1/codex/workers/nope/events", { event_type: "worker.event" })), 404, "worker_not_found"],
          [call(post("/internal/v1/codex/workers/nope/heartbeat", {})), 404, "worker_not_found"],
          [call(post("/internal/v1/codex/workers/nope/stop", {})), 404, "worker_not_found"],
          [call(post("/internal/v1/codex/workers/nope/resume", {})), 404, "worker_not_found"],
          [call(post("/internal/v1/khala/projections/drift", {})), 401, "unauthorized"],
          [call(post("/api/sync/token", { user_id: "u1" }, ADMIN_TOKEN)), 401, "unauthorized"],
          [call(post("/api/sync/token", { user_id: "u 1" })), 400, "invalid_request"],
          [call(get("/sync/v1/snapshot?topic=run/x", null)), 401, "unauthorized"]
        ]
        for (const [request, status, code] of cases) {
          const res = yield* request
          assert.strictEqual(res.status, status, JSON.stringify(res.body))
          assert.strictEqual(errorCode(res), code)
        }
        // malformed JSON
        const client = yield* HttpClient.HttpClient
        const raw = yield* client.execute(
          HttpClientRequest.post("/internal/v1/runs/run-x/events").pipe(
            HttpClientRequest.bearerToken("test-service-token"),
            HttpClientRequest.bodyText("{not json", "application/json")
          )
        )
        assert.strictEqual(raw.status, 400)
        assert.strictEqual(((yield* raw.json) as { error: { code: string } }).error.code, "invalid_request")
        // 31 levels below the payload object are accepted
        const deepest = yield* runEvent("run-deep", { type: "run.created", owner_user_id: "u1", payload: nested(31) })
        assert.strictEqual(deepest.status, 201, JSON.stringify(deepest.body))
        // a second run.created is 409
        yield* runEvent("run-dup", { type: "run.created", owner_user_id: "u1" })
        const dup = yield* runEvent("run-dup", { type: "run.created", owner_user_id: "u1" })
        assert.strictEqual(dup.status, 409)
        assert.strictEqual(errorCode(dup), "run_already_exists")
        // nothing was appended by any rejected request
        const sql = yield* SqlClient.SqlClient
        const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.run_events WHERE run_id = 'run-x'`
        assert.strictEqual(Number(n!.n), 0)
      }))

    it.effect("idempotent retries return the original result and append nothing", () =>
      Effect.gen(function*() {
        const first = yield* runEvent("run-i", { type: "run.created", owner_user_id: "u2", idempotency_key: "k-create" })
        assert.strictEqual(first.status, 201)
        const retry = yield* runEvent("run-i", { type: "run.created", owner_user_id: "u2", idempotency_key: "k-create" })
        assert.strictEqual(retry.status, 200)
        assert.deepStrictEqual(retry.body, first.body)

        const step = yield* runEvent("run-i", { type: "run.step", payload: { a: 1 }, idempotency_key: "k1" })
        const again = yield* runEvent("run-i", { type: "run.step", payload: { a: 1 }, idempotency_key: "k1" })
        assert.strictEqual(again.status, 200)
        assert.deepStrictEqual(again.body, step.body)
        const reused = yield* runEvent("run-i", { type: "run.step", payload: { a: 2 }, idempotency_key: "k1" })
        assert.strictEqual(reused.status, 409)
        assert.strictEqual(errorCode(reused), "idempotency_key_reused")

        // concurrent retries of one key: one append
        const results = yield* Effect.all(
          Array.from({ length: 8 }, () => runEvent("run-i", { type: "run.step", payload: { c: 1 }, idempotency_key: "k-conc" })),
          { concurrency: "unbounded" }
        )
        assert.deepStrictEqual(results.map((r) => r.status).sort(), [200, 200, 200, 200, 200, 200, 200, 201])
        const sql = yield* SqlClient.SqlClient
        const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.run_events WHERE run_id = 'run-i'`
        assert.strictEqual(Number(n!.n), 3)
      }))
  })

  describe("run event batches", () => {
    it.effect("POST /internal/v1/runs/events/batch: per-item answers, service token required, body limit applies", () =>
      Effect.gen(function*() {
        const path = "/internal/v1/runs/events/batch"
        const events = [
          { run_id: "b-1", type: "run.created", owner_user_id: "ub" },
          { run_id: "b-1", type: "run.started" },
          { run_id: "b-2", type: "run.step" }
        ]
        assert.strictEqual((yield* call(post(path, { events }, "wrong"))).status, 401)
        const res = yield* call(post(path, { events }))
        assert.strictEqual(res.status, 200)
        assert.deepStrictEqual(res.body.results, [
          { status: 201, body: { run_id: "b-1", seq: 1, topic_seqs: { "run/b-1": 2, "user/ub/runs": 1 } } },
          { status: 201, body: { run_id: "b-1", seq: 2, topic_seqs: { "run/b-1": 4, "user/ub/runs": 2 } } },
          { status: 404, body: { error: { code: "run_not_found", message: "run b-2 does not exist", details: { run_id: "b-2" } } } }
        ])
        assert.deepStrictEqual(res.body.topic_seqs, { "run/b-1": 4, "user/ub/runs": 2 })
        const bad = yield* call(post(path, { events: [] }))
        assert.strictEqual(bad.status, 400)
        assert.strictEqual(errorCode(bad), "invalid_request")
        const big = yield* call(post(path, { events: Array.from({ length: 40 }, () => ({ ...events[1], payload: { pad: "x".repeat(100) } })) }))
        assert.strictEqual(big.status, 413)
        assert.strictEqual(errorCode(big), "payload_too_large")
      }))
  })

  describe("workers", () => {
    it.effect("create-or-reattach, taxonomy, terminal 409 until resume", () =>
      Effect.gen(function*() {
        const created = yield* call(post("/internal/v1/codex/workers", { worker_id: "w1", owner_user_id: "u3", metadata: { repo: "r" } }))
        assert.strictEqual(created.status, 201)
        assert.strictEqual(created.body.status, "created")
        assert.strictEqual(created.body.heartbeat_state, "missing")
        assert.strictEqual(created.body.heartbeat_age_ms, null)
        assert.deepStrictEqual(created.body.metadata, { repo: "r" })
        assert.deepStrictEqual(created.body.topic_seqs, { "worker/w1": 1, "user/u3/workers": 1 })

        const reattach = yield* call(post("/internal/v1/codex/workers", { worker_id: "w1", owner_user_id: "u3" }))
        assert.strictEqual(reattach.status, 200)
        assert.deepStrictEqual(reattach.body.topic_seqs, {})
        const other = yield* call(post("/internal/v1/codex/workers", { worker_id: "w1", owner_user_id: "u4" }))
        assert.strictEqual(other.status, 409)
        assert.strictEqual(errorCode(other), "worker_owner_conflict")

        const bad = yield* call(post("/internal/v1/codex/workers/w1/events", { event_type: "worker.created" }))
        assert.strictEqual(bad.status, 400)
        const started = yield* call(post("/internal/v1/codex/workers/w1/events", { event_type: "worker.started" }))
        assert.strictEqual(started.status, 201)
        assert.deepStrictEqual(started.body, { worker_id: "w1", seq: 2, topic_seqs: { "worker/w1": 3, "user/u3/workers": 2 } })

        const resumeLive = yield* call(post("/internal/v1/codex/workers/w1/resume", {}))
        assert.strictEqual(resumeLive.status, 200)
        assert.strictEqual(resumeLive.body.status, "running")

        const stopped = yield* call(post("/internal/v1/codex/workers/w1/stop", { reason: "done" }))
        assert.strictEqual(stopped.status, 200)
        assert.strictEqual(stopped.body.status, "stopped")
        for (const path of ["events", "heartbeat", "stop"]) {
          const res = yield* call(post(`/internal/v1/codex/workers/w1/${path}`, { event_type: "worker.event" }))
          assert.strictEqual(res.status, 409, path)
          assert.strictEqual(errorCode(res), "worker_terminal")
        }
        const resumed = yield* call(post("/internal/v1/codex/workers/w1/resume", {}))
        assert.strictEqual(resumed.status, 200)
        assert.strictEqual(resumed.body.status, "running")
        const event = yield* call(post("/internal/v1/codex/workers/w1/events", { event_type: "worker.event", payload: { k: "v" } }))
        assert.strictEqual(event.status, 201)

        // fatal error ⇒ failed; create with the same owner resumes it
        const fatal = yield* call(post("/internal/v1/codex/workers/w1/events", {
          event_type: "worker.error",
          payload: { message: "boom", fatal: true }
        }))
        assert.strictEqual(fatal.status, 201)
        const failed = yield* call(get("/internal/v1/codex/workers/w1"))
        assert.strictEqual(failed.body.status, "failed")
        assert.deepStrictEqual(failed.body.error.message, "boom")
        const reattached = yield* call(post("/internal/v1/codex/workers", { worker_id: "w1", owner_user_id: "u3" }))
        assert.strictEqual(reattached.status, 200)
        assert.strictEqual(reattached.body.status, "running")

        const list = yield* call(get("/internal/v1/codex/workers?owner_user_id=u3"))
        assert.strictEqual(list.status, 200)
        assert.deepStrictEqual(list.body.workers.map((w: { worker_id: string }) => w.worker_id), ["w1"])
        const none = yield* call(get("/internal/v1/codex/workers?owner_user_id=nobody"))
        assert.deepStrictEqual(none.body, { workers: [] })
      }))

    it.effect("idempotent heartbeat and worker event", () =>
      Effect.gen(function*() {
        yield* call(post("/internal/v1/codex/workers", { worker_id: "w2", owner_user_id: "u3" }))
        const hb = yield* call(post("/internal/v1/codex/workers/w2/heartbeat", { idempotency_key: "h1" }))
        const again = yield* call(post("/internal/v1/codex/workers/w2/heartbeat", { idempotency_key: "h1" }))
        assert.strictEqual(hb.status, 201)
        assert.strictEqual(again.status, 200)
        assert.deepStrictEqual(again.body, hb.body)
        const sql = yield* SqlClient.SqlClient
        const [n] = yield* sql<{ n: bigint }>`SELECT count(*) AS n FROM runtime.codex_worker_events WHERE worker_id = 'w2'`
        assert.strictEqual(Number(n!.n), 2)
      }))
  })

  describe("sync token and snapshot", () => {
    it.effect("mint a token, read a snapshot, ACL on snapshot", () =>
      Effect.gen(function*() {
        yield* runEvent("run-s", { type: "run.created", owner_user_id: "u5" })
        const minted = yield* call(post("/api/sync/token", { user_id: "u5", scopes: ["sync:read"], ttl_seconds: 60 }))
        assert.strictEqual(minted.status, 200)
        assert.match(minted.body.expires_at, /^\d{4}-\d{2}-\d{2}T/)
        const token = minted.body.token as string
        const snap = yield* call(get("/sync/v1/snapshot?topic=run/run-s", token))
        assert.strictEqual(snap.status, 200)
        assert.strictEqual(snap.body.topic, "run/run-s")
        assert.strictEqual(snap.body.head_seq, 2)
        assert.strictEqual(snap.body.floor_seq, 1)
        assert.strictEqual(typeof snap.body.epoch, "string")
        assert.strictEqual(snap.body.documents.length, 1)
        assert.strictEqual(snap.body.documents[0].doc_key, "run_summary:run-s")
        assert.strictEqual(snap.body.documents[0].kind, "run.summary")
        assert.strictEqual(snap.body.documents[0].document.status, "created")

        const user = yield* call(get("/sync/v1/snapshot?topic=user/u5/runs", token))
        assert.strictEqual(user.status, 200)
        assert.strictEqual(user.body.documents.length, 1)

        const other = yield* call(get("/sync/v1/snapshot?topic=user/u6/runs", token))
        assert.strictEqual(other.status, 403)
        const missing = yield* call(get("/sync/v1/snapshot?topic=run/does-not-exist", token))
        assert.strictEqual(missing.status, 403)
        const invalid = yield* call(get("/sync/v1/snapshot?topic=bogus/x", token))
        assert.strictEqual(invalid.status, 400)
        const badToken = yield* call(get("/sync/v1/snapshot?topic=run/run-s", token + "x"))
        assert.strictEqual(badToken.status, 401)
        // browsers on app origins: CORS on the response and on the preflight
        assert.strictEqual(snap.headers["access-control-allow-origin"], "*")
        assert.strictEqual(badToken.headers["access-control-allow-origin"], "*")
        const client = yield* HttpClient.HttpClient
        const preflight = yield* client.execute(
          HttpClientRequest.make("OPTIONS")("/sync/v1/snapshot?topic=run/run-s").pipe(
            HttpClientRequest.setHeaders({ origin: "https://app.example", "access-control-request-method": "GET" })
          )
        )
        assert.strictEqual(preflight.status, 204)
        assert.include(String(preflight.headers["access-control-allow-headers"]), "authorization")
      }))
  })

  describe("operator plane", () => {
    it.effect("health, readiness, metrics, drift with the admin token", () =>
      Effect.gen(function*() {
        assert.strictEqual((yield* call(get("/healthz", null))).status, 200)
        const ready = yield* call(get("/readyz", null))
        assert.strictEqual(ready.status, 200)
        assert.strictEqual(ready.body.status, "ready")
        const client = yield* HttpClient.HttpClient
        const metrics = yield* (yield* client.execute(HttpClientRequest.get("/metrics"))).text
        assert.include(metrics, "khala_commands_total")
        assert.include(metrics, "khala_command_commit_duration_ms")
        const drift = yield* call(post("/internal/v1/khala/projections/drift", {}, ADMIN_TOKEN))
        assert.strictEqual(drift.status, 200)
        assert.deepStrictEqual(drift.body.drifted, [])
        const service = yield* call(post("/internal/v1/khala/projections/drift", {}))
        assert.strictEqual(service.status, 401)
      }))
  })
})
