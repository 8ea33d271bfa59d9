/**
 * Resume correctness under load (both subprotocols) and multi-node delivery: a writer appends
 * continuously while clients connect, drop at random points and resume from their last applied
 * seq; every client must end with exactly the topic's seq sequence 1..head, no gap, no duplicate.
 */
import { assert, describe, it } from "@effect/vitest"
import { appendRun, clusterForFile, httpJson, mintToken } from "../support/Cluster.ts"
import { WsClient } from "../support/WsClient.ts"
import type { Subprotocol } from "../../src/domain/Protocol.ts"

const cluster = clusterForFile(2)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A client that keeps resuming until it has applied `target()` and the writer is done. */
const resumingClient = async (options: {
  readonly urls: ReadonlyArray<string>
  readonly subprotocol: Subprotocol
  readonly topic: string
  readonly token: string
  readonly done: () => boolean
  readonly target: () => number
  readonly random: () => number
}) => {
  const applied: Array<number> = []
  let epoch = ""
  let sessions = 0
  while (true) {
    const last = applied.length > 0 ? applied[applied.length - 1]! : 0
    const url = options.urls[sessions % options.urls.length]!
    sessions++
    const client = new WsClient(url, options.subprotocol)
    await client.opened
    client.hello(options.token)
    client.subscribe("r", [{ topic: options.topic, afterSeq: last, epoch }])
    const subscribed = await client.next("subscribed")
    epoch = subscribed.topics[0]!.epoch
    // Drop after a random number of delivered entries, or stay until the end.
    const dropAfter = options.random() < 0.8 ? Math.floor(options.random() * 40) : Number.POSITIVE_INFINITY
    const session: Array<number> = []
    while (true) {
      const got = client.seqs(options.topic)
      if (got.length > session.length) session.push(...got.slice(session.length))
      if (session.length >= dropAfter) break
      if (options.done() && session.length > 0 && session[session.length - 1]! >= options.target()) break
      if (options.done() && last >= options.target() && client.frames.some((f) => f.case === "caughtUp")) break
      await client.until((fs) => fs.length > 0 && client.seqs(options.topic).length > session.length || options.done(), 2000)
        .catch(() => undefined)
    }
    client.terminate()
    // Every session must continue exactly where the client left off.
    session.forEach((seq, i) => assert.strictEqual(seq, last + 1 + i, `session ${sessions} out of order`))
    applied.push(...session)
    if (options.done() && (applied[applied.length - 1] ?? 0) >= options.target()) return { applied, sessions }
  }
}

describe("resume under load", () => {
  it("50 clients that drop and resume end with the full seq sequence (proto and json, two nodes)", async () => {
    const [a, b] = cluster.nodes
    await appendRun(a!, "load", { type: "run.created", owner_user_id: "u-load" })
    const token = await mintToken(a!, "u-load")
    let finished = false
    let head = 2
    const writer = (async () => {
      for (let i = 0; i < 150; i++) {
        const r = await appendRun(i % 2 === 0 ? a! : b!, "load", { type: "run.step", payload: { i, text: "x".repeat(100) } })
        head = Math.max(head, r.topic_seqs["run/load"]!)
        if (i % 10 === 0) await sleep(5)
      }
      finished = true
    })()
    let seed = 42
    const random = () => {
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed / 2147483648
    }
    const clients = Array.from({ length: 50 }, (_, i) =>
      resumingClient({
        urls: [a!.ws, b!.ws],
        subprotocol: i % 2 === 0 ? "khala.v1.proto" : "khala.v1.json",
        topic: "run/load",
        token,
        done: () => finished,
        target: () => head,
        random
      }))
    await writer
    const results = await Promise.all(clients)
    const position = await httpJson("GET", `${a!.http}/sync/v1/snapshot?topic=run/load`, undefined, token)
    const expected = Array.from({ length: position.body.head_seq }, (_, i) => i + 1)
    assert.strictEqual(position.body.head_seq, 302)
    for (const r of results) assert.deepStrictEqual(r.applied, expected)
    const totalSessions = results.reduce((n, r) => n + r.sessions, 0)
    assert.isAbove(totalSessions, 100, "clients should have reconnected many times")
  }, 180_000)

  it("a client on node B receives entries committed through node A, and moves from A to B without loss", async () => {
    const [a, b] = cluster.nodes
    await appendRun(a!, "multi", { type: "run.created", owner_user_id: "u-multi" })
    const token = await mintToken(a!, "u-multi")
    const onB = new WsClient(b!.ws, "khala.v1.proto")
    await onB.opened
    onB.hello(token)
    onB.subscribe("s", [{ topic: "run/multi" }])
    await onB.next("caughtUp")
    await appendRun(a!, "multi", { type: "run.step", payload: { n: 1 } })
    await onB.until(() => onB.seqs("run/multi").length === 4, 10_000, "live entries from node A")
    assert.deepStrictEqual(onB.seqs("run/multi"), [1, 2, 3, 4])

    const onA = new WsClient(a!.ws, "khala.v1.json")
    await onA.opened
    onA.hello(token)
    onA.subscribe("s", [{ topic: "run/multi" }])
    const sub = await onA.next("subscribed")
    await onA.until(() => onA.seqs("run/multi").length >= 2, 10_000, "first entries on A")
    const lastOnA = onA.seqs("run/multi")[1]!
    onA.terminate()
    await appendRun(a!, "multi", { type: "run.step", payload: { n: 2 } })
    const moved = new WsClient(b!.ws, "khala.v1.json")
    await moved.opened
    moved.hello(token)
    moved.subscribe("s", [{ topic: "run/multi", afterSeq: lastOnA, epoch: sub.topics[0]!.epoch }])
    await moved.until(() => moved.seqs("run/multi").at(-1) === 6, 10_000, "resumed entries on B")
    assert.deepStrictEqual(moved.seqs("run/multi"), [3, 4, 5, 6])
    onB.close()
    moved.close()
  }, 60_000)
})
