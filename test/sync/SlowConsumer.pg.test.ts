/**
 * Backpressure with real sockets: a subscriber that stops reading is evicted with slow_consumer
 * while a healthy subscriber of the same topic keeps receiving everything, and the evicted one
 * can resume from its watermark without loss.
 */
import { assert, describe, it } from "@effect/vitest"
import type { Socket } from "node:net"
import { ADMIN_TOKEN, appendRun, clusterForFile, httpJson, mintToken } from "../support/Cluster.ts"
import { WsClient } from "../support/WsClient.ts"

const cluster = clusterForFile(1, { outboundQueueMaxBytes: 64 * 1024, slowConsumerGraceMs: 300 })

describe("slow consumer", () => {
  it("is evicted without slowing a healthy subscriber of the same topic", async () => {
    const [node] = cluster.nodes
    await appendRun(node!, "slow", { type: "run.created", owner_user_id: "u-slow" })
    const token = await mintToken(node!, "u-slow")

    const healthy = new WsClient(node!.ws, "khala.v1.proto")
    const slow = new WsClient(node!.ws, "khala.v1.json")
    await Promise.all([healthy.opened, slow.opened])
    for (const c of [healthy, slow]) {
      c.hello(token)
      c.subscribe("s", [{ topic: "run/slow" }])
      await c.next("caughtUp")
    }
    // The slow client stops reading from its TCP socket.
    const slowSocket = (slow.ws as unknown as { _socket: Socket })._socket
    slowSocket.pause()

    // Enough bytes to overflow the kernel's loopback buffers and then the 64 KiB outbound bound.
    const payload = { blob: "y".repeat(60_000) }
    let head = 0
    for (let i = 0; i < 150; i++) {
      const r = await appendRun(node!, "slow", { type: "run.step", payload: { ...payload, i } })
      head = r.topic_seqs["run/slow"]!
    }
    // The healthy subscriber kept pace: it has everything as soon as the writer is done.
    await healthy.until(() => healthy.seqs("run/slow").at(-1) === head, 2_000, "healthy subscriber caught up")
    const seqs = healthy.seqs("run/slow")
    assert.deepStrictEqual(seqs, Array.from({ length: head }, (_, i) => i + 1))

    const metrics = await httpJson("GET", `${node!.http}/internal/v1/khala/fanout/metrics?topic_limit=5`, undefined, ADMIN_TOKEN)
    assert.strictEqual(metrics.status, 200)
    const topic = metrics.body.topics.find((t: { topic: string }) => t.topic === "run/slow")
    assert.isAtLeast(topic.slow_consumer_evictions, 1)
    assert.strictEqual(topic.subscribers, 1)

    // The slow client's socket is gone (destroyed after its Goodbye could not be flushed).
    slowSocket.resume()
    const closed = await slow.awaitClose(10_000)
    assert.include([4009, 1006], closed.code)
    // It resumes from its watermark and gets exactly the rest.
    const applied = slow.seqs("run/slow")
    const last = applied.at(-1) ?? 0
    applied.forEach((s, i) => assert.strictEqual(s, i + 1))
    const resumed = new WsClient(node!.ws, "khala.v1.json")
    await resumed.opened
    resumed.hello(token)
    const epoch = (slow.frames.find((f) => f.case === "subscribed")!.value as { topics: Array<{ epoch: string }> }).topics[0]!.epoch
    resumed.subscribe("r", [{ topic: "run/slow", afterSeq: last, epoch }])
    await resumed.until(() => resumed.seqs("run/slow").at(-1) === head, 20_000, "resumed to head")
    assert.deepStrictEqual(resumed.seqs("run/slow"), Array.from({ length: head - last }, (_, i) => last + 1 + i))
    healthy.close()
    resumed.close()
  }, 60_000)
})
