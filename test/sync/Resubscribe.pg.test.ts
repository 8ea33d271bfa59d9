/**
 * Subscribe → Unsubscribe → Subscribe of one topic in quick succession (a UI double-mount): after
 * `Unsubscribed`, nothing of the old subscription may arrive, and the new one gets each seq exactly
 * once, in order. The window in which an old subscription's hand-over to the topic actor is still
 * in flight is not forced here (it depends on scheduling), so this guards the sequence as a whole;
 * the drop itself is `Subscriber.offer` returning early once a subscription is deactivated.
 */
import { assert, describe, it } from "@effect/vitest"
import { appendRun, clusterForFile, mintToken } from "../support/Cluster.ts"
import { type Frame, WsClient } from "../support/WsClient.ts"

const cluster = clusterForFile(1)

describe("resubscribe", () => {
  it("no stray or duplicate entries across unsubscribe/resubscribe", async () => {
    const [node] = cluster.nodes
    await appendRun(node!, "re", { type: "run.created", owner_user_id: "u-re" })
    for (let i = 0; i < 20; i++) await appendRun(node!, "re", { type: "run.step", payload: { i } })
    const token = await mintToken(node!, "u-re")
    for (const subprotocol of ["khala.v1.proto", "khala.v1.json"] as const) {
      const c = new WsClient(node!.ws, subprotocol)
      await c.opened
      c.hello(token)
      await c.next("welcome")
      for (let round = 0; round < 20; round++) {
        c.subscribe(`s${round}`, [{ topic: "run/re" }])
        c.send({ case: "unsubscribe", value: { requestId: `u${round}`, topics: ["run/re"] } as never })
      }
      c.subscribe("final", [{ topic: "run/re" }])
      const writer = (async () => {
        for (let i = 0; i < 5; i++) await appendRun(node!, "re", { type: "run.step", payload: { late: i } })
      })()
      await writer
      const head = 42 + 10 * (subprotocol === "khala.v1.proto" ? 1 : 2)
      await c.until((fs) => afterFinal(fs).some((f) => f.case === "updates" && seqsOf([f]).at(-1) === head), 15_000, "final subscription at head")
      await c.until((fs) => afterFinal(fs).some((f) => f.case === "caughtUp"), 15_000, "final CaughtUp")
      // Nothing after the last Unsubscribed belongs to an earlier subscription.
      const after = afterFinal(c.frames)
      assert.deepStrictEqual(seqsOf(after), Array.from({ length: head }, (_, i) => i + 1))
      assert.strictEqual(after.filter((f) => f.case === "caughtUp").length, 1)
      c.close()
    }
  }, 60_000)
})

const afterFinal = (frames: ReadonlyArray<Frame>) => {
  const i = frames.findIndex((f) => f.case === "subscribed" && f.value.requestId === "final")
  return i < 0 ? [] : frames.slice(i + 1)
}

const seqsOf = (frames: ReadonlyArray<Frame>) =>
  frames.flatMap((f) => (f.case === "updates" ? f.value.items.map((u) => Number(u.seq)) : []))
