/**
 * The client SDK against real Khala nodes: (1) clients whose sockets are killed 20+ times at
 * random, while a node is replaced and a writer keeps appending, end with exactly the server's
 * documents and watermark = head; (2) token refresh before expiry keeps the same socket; expiry
 * without refresh ⇒ token_expired, reconnect with a new token, resume.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import WS from "ws"
import { createKhalaClient } from "../../src/client/client.ts"
import type { ClientEvent, DocumentChange, KhalaClient } from "../../src/client/client.ts"
import { documentBodyJson } from "../../src/client/codec.ts"
import type { Subprotocol } from "../../src/client/codec.ts"
import type { WebSocketConstructor } from "../../src/client/socket.ts"
import { appendRun, type Cluster, type ClusterNode, httpJson, mintToken, startCluster } from "../support/Cluster.ts"
import { chaosWebSocket } from "./support/ChaosSocket.ts"
import { seeded } from "./support/Fakes.ts"

let cluster: Cluster
const clients: Array<KhalaClient> = []

beforeAll(async () => {
  // A short clock skew so that expiry without refresh closes within the test.
  cluster = await startCluster(2, { clockSkewMs: 1_000 })
}, 120_000)
afterAll(async () => {
  for (const c of clients) await c.close()
  await cluster?.close()
})

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (what: string, pred: () => boolean, ms = 15_000) => {
  const deadline = Date.now() + ms
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(20)
  }
}

const snapshotOf = async (node: ClusterNode, topic: string, token: string) => {
  const res = await httpJson("GET", `${node.http}/sync/v1/snapshot?topic=${encodeURIComponent(topic)}`, undefined, token)
  assert.strictEqual(res.status, 200, JSON.stringify(res.body))
  return res.body as {
    epoch: string
    head_seq: number
    documents: Array<{ doc_key: string; doc_version: number; kind: string; document: unknown }>
  }
}

/** The client's topic equals the server's read model: same summaries (JSON), watermark = head. */
const assertConverged = async (client: KhalaClient, node: ClusterNode, topic: string, token: string) => {
  const snap = await snapshotOf(node, topic, token)
  await client.awaitSeq(topic, snap.head_seq, { timeoutMs: 15_000 })
  assert.deepStrictEqual(client.watermark(topic), { epoch: snap.epoch, afterSeq: snap.head_seq }, topic)
  const docs = client.documents(topic)
  const summaries = [...docs.values()].filter((d) => d.kind.endsWith(".summary"))
  assert.deepStrictEqual(
    summaries.map((d) => d.docKey).sort(),
    snap.documents.map((d) => d.doc_key).sort(),
    `${topic}: same summary documents`
  )
  for (const s of snap.documents) {
    const mine = docs.get(s.doc_key)
    assert.strictEqual(mine?.docVersion, s.doc_version, `${s.doc_key} version`)
    assert.strictEqual(mine?.kind, s.kind)
    assert.deepStrictEqual(documentBodyJson(mine!.document), s.document, `${s.doc_key} document`)
  }
  return { snap, docs }
}

describe("client SDK against real nodes", () => {
  it("20+ random disconnects per client and a node replacement under a steady writer: converges exactly", async () => {
    const writerNode = cluster.nodes[0]!
    const live: Array<ClusterNode> = [cluster.nodes[0]!, cluster.nodes[1]!]
    const pick = seeded(2024)
    const url = () => live[Math.floor(pick() * live.length)]!.ws
    const user = "u-chaos"
    const runs = ["chaos-1", "chaos-2", "chaos-3"]
    await appendRun(writerNode, runs[0]!, { type: "run.created", owner_user_id: user })
    const token = await mintToken(writerNode, user)
    const topics = [`run/${runs[0]}`, `user/${user}/runs`]

    const setups: ReadonlyArray<[Subprotocol, WebSocketConstructor, string]> = [
      ["khala.v1.proto", WS, "ws"],
      ["khala.v1.json", WebSocket, "global WebSocket"]
    ]
    const actors = setups.map(([subprotocol, Impl, name], i) => {
      const chaos = chaosWebSocket(Impl)
      const events: Array<ClientEvent> = []
      const seqs = new Map<string, Array<number>>()
      const resets: Array<DocumentChange> = []
      const client = createKhalaClient({
        url,
        getToken: async () => token,
        subprotocol,
        WebSocket: chaos.WebSocket,
        random: seeded(7 + i),
        backoff: { initialMs: 10, maxMs: 200, factor: 2, resetAfterMs: 1_000 },
        clientId: `chaos-${name}`
      })
      clients.push(client)
      client.onEvent((e) => events.push(e))
      for (const topic of topics) {
        seqs.set(topic, [])
        client.subscribe(topic, {
          onChange: (c) => (c.type === "upsert" ? seqs.get(topic)!.push(c.seq) : resets.push(c))
        })
      }
      return { name, client, chaos, events, seqs, resets, kills: 0 }
    })

    let writing = true
    let eventsOnRun1 = 1
    const writer = (async () => {
      for (let i = 0; i < 160; i++) {
        if (i === 40) await appendRun(writerNode, runs[1]!, { type: "run.created", owner_user_id: user })
        if (i === 80) await appendRun(writerNode, runs[2]!, { type: "run.created", owner_user_id: user })
        if (i === 120) await appendRun(writerNode, runs[1]!, { type: "run.completed" })
        await appendRun(writerNode, runs[0]!, { type: "run.step", payload: { i, text: "y".repeat(i % 50) } })
        eventsOnRun1++
        if (i % 4 === 0) await sleep(15)
      }
      await appendRun(writerNode, runs[0]!, { type: "run.completed" })
      eventsOnRun1++
      writing = false
    })()

    // Replace node B by a fresh node C while everything runs.
    const replacement = (async () => {
      await sleep(800)
      const c = await cluster.startNode({ clockSkewMs: 1_000 })
      live.push(c)
      const b = live.splice(1, 1)[0]!
      await b.stop()
    })()

    const killer = (async () => {
      const random = seeded(99)
      while (writing || actors.some((a) => a.kills < 20)) {
        await sleep(40 + Math.floor(random() * 80))
        const actor = actors[Math.floor(random() * actors.length)]!
        // Only kills of established (welcomed) connections count; kills while connecting add chaos.
        const established = actor.client.connectionId !== undefined
        if (actor.chaos.current()?.kill() === true && established) actor.kills++
      }
      await sleep(50) // a killed socket reports its close on a later timer: let the last ones land
    })()

    await Promise.all([writer, replacement, killer])
    // Every counted kill was of a welcomed connection: each is followed by a new connection.
    const connects = (a: (typeof actors)[number]) => a.events.filter((e) => e.type === "connected").length
    for (const a of actors) {
      await waitFor(`${a.name} live again`, () => a.client.state === "live" && connects(a) >= a.kills + 1)
    }
    for (const a of actors) {
      for (const topic of topics) await assertConverged(a.client, writerNode, topic, token)
      const runDocs = a.client.documents(topics[0]!)
      const eventKeys = [...runDocs.keys()].filter((k) => k.startsWith("run_event:")).sort()
      const expected = Array.from({ length: eventsOnRun1 }, (_, i) => `run_event:${runs[0]}:${i + 1}`).sort()
      assert.deepStrictEqual(eventKeys, expected, `${a.name}: every run event, once`)
      // The application saw each topic's changes in strictly increasing seq order, with no reset:
      // every resume continued exactly after the last applied seq.
      for (const [topic, s] of a.seqs) {
        for (let i = 1; i < s.length; i++) assert.isAbove(s[i]!, s[i - 1]!, `${a.name} ${topic} order`)
      }
      assert.deepStrictEqual(a.resets, [])
      const connects = a.events.filter((e) => e.type === "connected").length
      const disconnects = a.events.filter((e) => e.type === "disconnected").length
      assert.isAtLeast(a.kills, 20, a.name)
      assert.isAtLeast(disconnects, a.kills, `${a.name} saw every kill`)
      assert.isAtLeast(connects, a.kills + 1, `${a.name} reconnected after every kill`)
      assert.strictEqual(a.client.state, "live")
    }
    // The replaced node's clients moved: some client connected to the new node.
    const newNode = live.at(-1)!
    assert.isTrue(actors.some((a) => a.events.some((e) => e.type === "connected" && e.url === newNode.ws)))
  }, 60_000)

  it("refreshes a short-lived token before expiry on the same socket (no reconnect)", async () => {
    const node = cluster.nodes[0]!
    await appendRun(node, "tok-1", { type: "run.created", owner_user_id: "u-tok" })
    const chaos = chaosWebSocket(WebSocket)
    const events: Array<ClientEvent> = []
    let minted = 0
    const client = createKhalaClient({
      url: node.ws,
      getToken: async () => {
        minted++
        return await mintToken(node, "u-tok", ["sync:read"], 3)
      },
      WebSocket: chaos.WebSocket,
      backoff: { initialMs: 10, maxMs: 200, factor: 2, resetAfterMs: 1_000 }
    })
    clients.push(client)
    client.onEvent((e) => events.push(e))
    client.subscribe("run/tok-1")
    await waitFor("live", () => client.state === "live")
    const connectionId = client.connectionId
    // Beyond the first token's exp + skew (≤ 3 s + 1 s) and then some.
    for (let i = 0; i < 11; i++) {
      await sleep(500)
      await appendRun(node, "tok-1", { type: "run.step", payload: { i } })
    }
    const refreshed = events.filter((e) => e.type === "token_refreshed")
    assert.isAtLeast(refreshed.length, 3, "refreshed about every 1–1.5 s")
    assert.strictEqual(chaos.sockets.length, 1, "one socket for the whole test")
    assert.strictEqual(client.connectionId, connectionId)
    assert.deepStrictEqual(events.filter((e) => e.type === "disconnected"), [])
    assert.isAtLeast(minted, refreshed.length + 1)
    await assertConverged(client, node, "run/tok-1", await mintToken(node, "u-tok"))
    await client.close()
  }, 30_000)

  it("expiry without refresh ⇒ token_expired, reconnect with a new token, resume without loss", async () => {
    const node = cluster.nodes[0]!
    await appendRun(node, "tok-2", { type: "run.created", owner_user_id: "u-tok" })
    const chaos = chaosWebSocket(WS)
    const events: Array<ClientEvent> = []
    const tokens: Array<string> = []
    const client = createKhalaClient({
      url: node.ws,
      getToken: async () => {
        const t = await mintToken(node, "u-tok", ["sync:read"], 2)
        tokens.push(t)
        return t
      },
      refreshTokens: false,
      WebSocket: chaos.WebSocket,
      backoff: { initialMs: 10, maxMs: 200, factor: 2, resetAfterMs: 1_000 }
    })
    clients.push(client)
    client.onEvent((e) => events.push(e))
    client.subscribe("run/tok-2")
    await waitFor("live", () => client.state === "live")
    const expired = () =>
      events.some((e) => e.type === "disconnected" && e.error?._tag === "KhalaServerError" && e.error.code === "token_expired")
    let i = 0
    while (!expired()) {
      await appendRun(node, "tok-2", { type: "run.step", payload: { i: i++ } })
      await sleep(200)
      if (i > 40) assert.fail("no token_expired within 8 s")
    }
    await appendRun(node, "tok-2", { type: "run.step", payload: { after: true } })
    await waitFor("a second connection", () => events.filter((e) => e.type === "connected").length >= 2)
    assert.isAtLeast(chaos.sockets.length, 2)
    assert.isAtLeast(tokens.length, 2, "a new token for the new connection")
    assert.deepStrictEqual(events.filter((e) => e.type === "token_refreshed"), [])
    const { docs } = await assertConverged(client, node, "run/tok-2", await mintToken(node, "u-tok"))
    assert.strictEqual([...docs.keys()].filter((k) => k.startsWith("run_event:")).length, i + 2)
    await client.close()
  }, 30_000)
})
