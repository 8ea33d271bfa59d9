/**
 * End-to-end crash recovery: the daemon (as `npm start` runs it, embedded Postgres) is killed with
 * SIGKILL mid-stream and restarted on the same data dir and port. An SDK client keeps its
 * subscription through the outage; the writer retries failed appends with the same idempotency
 * key. Afterwards the client applied every entry exactly once, in order, and its documents equal
 * the server's snapshot.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { createKhalaClient, memoryStore } from "../../src/client/index.ts"
import { cleanup, type Daemon, startDaemon, stopWith, tempDir, waitReady } from "./Processes.ts"

afterAll(cleanup, 60_000)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe("kill -9 and restart", () => {
  it("clients resume without loss or duplicate application", async () => {
    const dataDir = tempDir("khala-kill-")
    let daemon: Daemon = await startDaemon(dataDir)
    await waitReady(daemon)
    const port = daemon.port
    const base = `http://127.0.0.1:${port}`
    const secrets = JSON.parse(fs.readFileSync(path.join(dataDir, "dev-secrets.json"), "utf8")) as { service_token: string }
    const post = async (p: string, body: unknown) => {
      const res = await fetch(`${base}${p}`, {
        method: "POST",
        headers: { authorization: `Bearer ${secrets.service_token}`, "content-type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(5_000)
      })
      return { status: res.status, body: (await res.json()) as Record<string, unknown> }
    }
    /** Appends with retries through the outage; the idempotency key makes retries safe. */
    const append = async (body: Record<string, unknown>, key: string) => {
      for (let attempt = 0; attempt < 400; attempt++) {
        const r = await post("/internal/v1/runs/k1/events", { ...body, idempotency_key: key }).catch(() => undefined)
        if (r && (r.status === 201 || r.status === 200)) return r.body
        await sleep(100)
      }
      throw new Error(`append ${key} never succeeded`)
    }

    await append({ type: "run.created", owner_user_id: "u-kill" }, "create")
    const applied: Array<number> = []
    const client = createKhalaClient({
      url: `ws://127.0.0.1:${port}/sync/v1`,
      getToken: async () => {
        const r = await post("/api/sync/token", { user_id: "u-kill", ttl_seconds: 600 })
        if (r.status !== 200) throw new Error(`mint ${r.status}`)
        return r.body["token"] as string
      },
      store: memoryStore(),
      backoff: { initialMs: 50, maxMs: 500 }
    })
    client.subscribe("run/k1", {
      onChange: (change) => {
        if (change.type === "upsert") applied.push(change.seq)
      }
    })

    for (let i = 0; i < 30; i++) await append({ type: "run.step", payload: { i } }, `step-${i}`)
    // Crash: no drain, no Goodbye, Postgres stopped by the watchdog.
    const killed = await stopWith(daemon, "SIGKILL", 10_000)
    assert.isDefined(killed)
    const writer = (async () => {
      for (let i = 30; i < 60; i++) await append({ type: "run.step", payload: { i } }, `step-${i}`)
    })()
    await sleep(500)
    // Same data dir and port (startDaemon's own url names a fresh port: poll ours).
    const restarted = await startDaemon(dataDir, { KHALA_PORT: String(port) })
    daemon = { ...restarted, port, url: base }
    await waitReady(daemon)
    await writer
    const done = await append({ type: "run.completed" }, "done")
    const head = (done["topic_seqs"] as Record<string, number>)["run/k1"]!
    await client.awaitSeq("run/k1", head, { timeoutMs: 30_000 })

    // Every entry applied exactly once, in order.
    assert.deepStrictEqual(applied, Array.from({ length: head }, (_, i) => i + 1))
    const snapshotRes = await fetch(`${base}/sync/v1/snapshot?topic=run/k1`, {
      headers: { authorization: `Bearer ${(await post("/api/sync/token", { user_id: "u-kill" })).body["token"]}` }
    })
    const snapshot = (await snapshotRes.json()) as { head_seq: number; documents: Array<{ doc_key: string; doc_version: number }> }
    assert.strictEqual(snapshot.head_seq, head)
    const local = client.documents("run/k1")
    for (const d of snapshot.documents) assert.strictEqual(local.get(d.doc_key)?.docVersion, d.doc_version, d.doc_key)
    assert.strictEqual(client.watermark("run/k1")?.afterSeq, head)
    await client.close()
    await stopWith(daemon, "SIGTERM", 15_000)
  }, 180_000)
})
