/**
 * Cross-node notifications: commits announce their heads after the commit (JournalNotifier), and
 * a notification that never comes (the committing node crashed between its commit and the
 * announcement) is made up for by the reconciler of every node that has subscribers on the topic.
 */
import { PgClient } from "@effect/sql-pg"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, ManagedRuntime, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import { KhalaConfig } from "../../src/layers/Config.ts"
import { parseFeedMessage } from "../../src/services/JournalFeed.ts"
import { Journal } from "../../src/services/Journal.ts"
import { RESYNC_ALL_PAYLOAD } from "../../src/services/JournalNotifier.ts"
import { ADMIN_TOKEN, appendRun, clusterForFile, type ClusterNode, mintToken } from "../support/Cluster.ts"
import { WsClient } from "../support/WsClient.ts"

const cluster = clusterForFile(2, { feedReconcileIntervalMs: 100 })

const metric = async (node: { http: string }, name: string) => {
  const text = await (await fetch(`${node.http}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(name))
  return line === undefined ? 0 : Number(line.split(" ").pop())
}

/** Commits a journal entry on `topic` that is never announced (as if its node died right after COMMIT). */
const appendUnannounced = async (topic: string, docKey: string) => {
  const writer = ManagedRuntime.make(
    Journal.layer.pipe(
      Layer.provideMerge(PgClient.layer({ url: Redacted.make(cluster.databaseUrl), maxConnections: 1 })),
      Layer.provide(KhalaConfig.layerWith())
    )
  )
  try {
    await writer.runPromise(Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const journal = yield* Journal
      yield* sql.withTransaction(journal.append([{
        topic,
        kind: "run.event",
        docKey,
        docVersion: 1,
        occurredAtMs: 1,
        body: { case: undefined }
      }], Date.now(), { notify: false }))
    }))
  } finally {
    await writer.dispose()
  }
}

/** A run created on node `a`, and a client on node `b` subscribed to its topic and caught up. */
const createdAndSubscribed = async (a: ClusterNode, b: ClusterNode, run: string, user: string) => {
  await appendRun(a, run, { type: "run.created", owner_user_id: user }) // seqs 1, 2
  const client = new WsClient(b.ws, "khala.v1.proto")
  await client.opened
  client.hello(await mintToken(b, user))
  client.subscribe("s", [{ topic: `run/${run}` }])
  await client.next("caughtUp")
  return client
}

describe("journal notifications", () => {
  it("parses the resync-everything message", () => {
    assert.deepStrictEqual(parseFeedMessage(RESYNC_ALL_PAYLOAD), { _tag: "ResyncAll" })
    assert.deepStrictEqual(parseFeedMessage("7 1000 run/x"), { _tag: "Entry", topic: "run/x", seq: 7, committedAtMs: 1000 })
  })

  it("delivers another node's commits, and entries whose announcement was lost", async () => {
    const [a, b] = cluster.nodes
    const client = await createdAndSubscribed(a!, b!, "nt", "u-nt")
    assert.deepStrictEqual(client.seqs("run/nt"), [1, 2])

    // Committed on node A, announced after the commit, delivered by node B.
    await appendRun(a!, "nt", { type: "run.started" }) // seqs 3, 4
    await client.until(() => client.seqs("run/nt").length === 4, 10_000, "seqs 3, 4 from the other node")

    // A commit that is never announced (as if its node died right after COMMIT).
    const wakeupsBefore = await metric(b!, "khala_feed_reconcile_wakeups_total")
    await appendUnannounced("run/nt", "run_event:nt:lost")
    await client.until(() => client.seqs("run/nt").length === 5, 10_000, "seq 5 through the reconciler")
    assert.deepStrictEqual(client.seqs("run/nt"), [1, 2, 3, 4, 5])
    assert.isAtLeast(await metric(b!, "khala_feed_reconcile_wakeups_total"), wakeupsBefore + 1)

    // Live delivery goes on after it.
    await appendRun(a!, "nt", { type: "run.step" }) // seqs 6, 7
    await client.until(() => client.seqs("run/nt").length === 7, 10_000, "seqs 6, 7")
    assert.deepStrictEqual(client.seqs("run/nt"), [1, 2, 3, 4, 5, 6, 7])
    client.close()
  }, 60_000)

  it("an epoch change makes the reconciler forget the old epoch's heads (no wakeups for entries that will not come)", async () => {
    const [a, b] = cluster.nodes
    const client = await createdAndSubscribed(a!, b!, "ne", "u-ne")
    // An entry no command wrote (seq 3), found by node B's reconciler: its heads now say 3.
    await appendUnannounced("run/ne", "run_event:ne:orphan")
    await client.until(() => client.seqs("run/ne").length === 3, 10_000, "seq 3 through the reconciler")
    await new Promise((r) => setTimeout(r, 300)) // a few ticks: the reconciler has read head 3
    const wakeups = await metric(b!, "khala_feed_reconcile_wakeups_total")
    // A rebuild drops the orphan: a new epoch whose run/ne head is 2 again.
    const rebuilt = await fetch(`${a!.http}/internal/v1/khala/projections/rebuild`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
    })
    const report = await rebuilt.json() as { epoch_changed: boolean }
    assert.isTrue(report.epoch_changed)
    await client.until((frames) => frames.some((f) => f.case === "error"), 10_000, "stale_cursor on the epoch change")
    await new Promise((r) => setTimeout(r, 1_000)) // ten reconciler ticks
    assert.strictEqual(await metric(b!, "khala_feed_reconcile_wakeups_total"), wakeups)
    client.close()
  }, 60_000)
})
