/**
 * Stale-cursor re-bootstrap end to end, on a node that keeps 5 entries per topic: a client with
 * an old persisted watermark (and a fresh one) connects after compaction, gets `stale_cursor`,
 * bootstraps from `GET /sync/v1/snapshot`, is notified, resubscribes from the snapshot's head and
 * converges, live updates included. Also the Effect API on a real node.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { createKhalaClient } from "../../src/client/client.ts"
import type { ClientEvent, ConnectionState, DocumentChange, KhalaClient, RebootstrapInfo } from "../../src/client/client.ts"
import { documentBodyJson } from "../../src/client/codec.ts"
import { makeKhala } from "../../src/client/effect.ts"
import { AwaitSeqTimeout } from "../../src/client/errors.ts"
import { memoryStore } from "../../src/client/store.ts"
import { ADMIN_TOKEN, appendRun, type Cluster, type ClusterNode, httpJson, mintToken, startCluster } from "../support/Cluster.ts"

let cluster: Cluster
let node: ClusterNode
const clients: Array<KhalaClient> = []

beforeAll(async () => {
  cluster = await startCluster(1, { retentionMaxEntriesPerTopic: 5, retentionIntervalMs: 3_600_000 })
  node = cluster.nodes[0]!
}, 120_000)
afterAll(async () => {
  for (const c of clients) await c.close()
  await cluster?.close()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (what: string, pred: () => boolean, ms = 10_000) => {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

const snapshotOf = async (topic: string, token: string) => {
  const res = await httpJson("GET", `${node.http}/sync/v1/snapshot?topic=${encodeURIComponent(topic)}`, undefined, token)
  assert.strictEqual(res.status, 200, JSON.stringify(res.body))
  return res.body as {
    epoch: string
    head_seq: number
    floor_seq: number
    documents: Array<{ doc_key: string; doc_version: number; kind: string; document: unknown }>
  }
}

/** A run with `steps` steps (2 journal entries per event on run/<id>), then compaction. */
const compactedRun = async (runId: string, user: string, steps: number) => {
  await appendRun(node, runId, { type: "run.created", owner_user_id: user })
  for (let i = 0; i < steps; i++) await appendRun(node, runId, { type: "run.step", payload: { i } })
  const token = await mintToken(node, user)
  const before = await snapshotOf(`run/${runId}`, token)
  const compacted = await httpJson("POST", `${node.http}/internal/v1/khala/compact`, {}, ADMIN_TOKEN)
  assert.strictEqual(compacted.status, 200, JSON.stringify(compacted.body))
  const after = await snapshotOf(`run/${runId}`, token)
  assert.isAbove(after.floor_seq, 3, "entries 1..3 were compacted away")
  return { token, epoch: before.epoch, head: after.head_seq }
}

const assertMatchesSnapshot = async (client: KhalaClient, topic: string, token: string) => {
  const snap = await snapshotOf(topic, token)
  await client.awaitSeq(topic, snap.head_seq, { timeoutMs: 10_000 })
  assert.deepStrictEqual(client.watermark(topic), { epoch: snap.epoch, afterSeq: snap.head_seq })
  for (const d of snap.documents) {
    const mine = client.documents(topic).get(d.doc_key)
    assert.strictEqual(mine?.docVersion, d.doc_version)
    assert.deepStrictEqual(documentBodyJson(mine!.document), d.document)
  }
  return snap
}

describe("stale_cursor re-bootstrap (retention 5 entries per topic)", () => {
  it("an old client re-bootstraps from the snapshot after compaction, is notified, and converges", async () => {
    const topic = "run/stale-1"
    const { token, epoch, head } = await compactedRun("stale-1", "u-stale", 9)
    const store = memoryStore({ [topic]: { epoch, afterSeq: 2 } })
    const events: Array<ClientEvent> = []
    const states: Array<ConnectionState> = []
    const changes: Array<DocumentChange> = []
    const notified: Array<RebootstrapInfo> = []
    const client = createKhalaClient({ url: node.ws, getToken: async () => token, store })
    clients.push(client)
    client.onEvent((e) => events.push(e))
    client.onStateChange((s) => states.push(s))
    client.subscribe(topic, { onChange: (c) => changes.push(c), onStale: (i) => notified.push(i) })

    await waitFor("the re-bootstrap", () => notified.length === 1)
    assert.deepStrictEqual(notified[0], {
      topic,
      reason: "stale_cursor",
      previous: { epoch, afterSeq: 2 },
      epoch,
      headSeq: head,
      floorSeq: head - 4
    })
    assert.isTrue(events.some((e) => e.type === "rebootstrapped" && e.topic === topic))
    // stale_cursor is handled by the client (not reported as an error)
    assert.isFalse(events.some((e) => e.type === "error"))
    const reset = changes.find((c) => c.type === "reset")
    assert.strictEqual(reset?.type === "reset" ? reset.reason : "", "stale_cursor")
    assert.include(states, "stale")
    await waitFor("live", () => client.state === "live")
    // Only the summary survives compaction: the documents are the snapshot's.
    assert.deepStrictEqual([...client.documents(topic).keys()], ["run_summary:stale-1"])
    await assertMatchesSnapshot(client, topic, token)

    // Live from the snapshot's head on: new entries arrive and apply.
    const appended = await appendRun(node, "stale-1", { type: "run.completed" })
    await client.awaitSeq(topic, appended.topic_seqs[topic]!, { timeoutMs: 10_000 })
    const snap = await assertMatchesSnapshot(client, topic, token)
    assert.strictEqual(snap.head_seq, head + 2)
    const summary = client.documents(topic).get("run_summary:stale-1")?.document
    assert.strictEqual(summary?.case === "runSummary" ? summary.value.status : "", "completed")
    assert.isTrue(client.documents(topic).has("run_event:stale-1:11"))
    await client.flush()
    assert.deepStrictEqual(await store.get(topic), { epoch, afterSeq: head + 2 })
  })

  it("Effect API: a fresh client on a compacted topic streams the snapshot reset, then live changes", async () => {
    const topic = "run/stale-2"
    const { token, head } = await compactedRun("stale-2", "u-stale", 4)
    const result = await Effect.runPromise(
      Effect.gen(function*() {
        const khala = yield* makeKhala({ url: node.ws, getToken: async () => token, subprotocol: "khala.v1.json" })
        // startImmediately: the stream subscribes before this fiber goes on (no sleep needed)
        const collected = yield* khala.changes(topic).pipe(
          Stream.take(3),
          Stream.runCollect,
          Effect.forkChild({ startImmediately: true })
        )
        yield* khala.awaitSeq(topic, head, "10 seconds")
        const timeout = yield* khala.awaitSeq(topic, head + 100, "200 millis").pipe(Effect.flip)
        const appended = yield* Effect.promise(() => appendRun(node, "stale-2", { type: "run.step", payload: { n: 1 } }))
        yield* khala.awaitSeq(topic, appended.topic_seqs[topic]!, "10 seconds")
        return { changes: yield* Fiber.join(collected), timeout, state: yield* khala.state }
      }).pipe(Effect.scoped)
    )
    const [reset, ...live] = result.changes
    assert.strictEqual(reset?.type === "reset" ? reset.reason : "", "stale_cursor")
    assert.deepStrictEqual(live.map((c) => (c.type === "upsert" ? [c.seq, c.document.kind] : [])), [
      [head + 1, "run.event"],
      [head + 2, "run.summary"]
    ])
    assert.instanceOf(result.timeout, AwaitSeqTimeout)
    assert.strictEqual(result.state, "live")
  })
})
