/**
 * Group commit across nodes: two nodes over one database, each grouping its own concurrent worker
 * heartbeats and events and run events, over owners they share. A group takes its locks in one
 * global order (entity rows by id, owner ordinals, topic heads), so the nodes' groups cannot wait
 * on each other in a cycle — the savepoint groups of an earlier attempt did, and stalled into a
 * deadlock error. This checks the outcome under real concurrency (every command 201, no
 * transaction failed in the database, gapless writes); it cannot force the interleaving that would
 * expose a wrong lock order (a mutation test reversing the owner order passed it: the window is a
 * single short statement), which the ordering in BatchedAppend and the batches argues instead.
 */
import { PgClient } from "@effect/sql-pg"
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { type Cluster, clusterForFile, httpJson } from "../support/Cluster.ts"
import { assertGaplessWrites } from "../support/WrittenTables.ts"

const cluster = clusterForFile(2)

/**
 * Sum and count of `khala_command_group_events` (commands, transactions) and the transactions that
 * failed in the database (a deadlock would be one: its group then falls back to one command at a
 * time, so every answer can still be 201).
 */
const groupEvents = async (node: { http: string }) => {
  const text = await (await fetch(`${node.http}/metrics`)).text()
  const value = (name: string) => Number(text.split("\n").find((l) => l.startsWith(name))?.split(" ").pop() ?? 0)
  return {
    commands: value("khala_command_group_events_sum"),
    transactions: value("khala_command_group_events_count"),
    failures: value("khala_projection_write_failures_total")
  }
}

describe("group commit across nodes", () => {
  it("concurrent groups on two nodes over shared workers, runs and owners: every command 201, gapless writes", async () => {
    const [a, b] = cluster.nodes as [Cluster["nodes"][0], Cluster["nodes"][0]]
    const workers = Array.from({ length: 12 }, (_, i) => `xw${i}`)
    const runs = Array.from({ length: 12 }, (_, i) => `xr${i}`)
    for (const [i, id] of workers.entries()) {
      const res = await httpJson("POST", `${a.http}/internal/v1/codex/workers`, { worker_id: id, owner_user_id: `xo${i % 3}` })
      assert.strictEqual(res.status, 201, JSON.stringify(res.body))
    }
    for (const [i, id] of runs.entries()) {
      const res = await httpJson("POST", `${b.http}/internal/v1/runs/${id}/events`, { type: "run.created", owner_user_id: `xo${i % 3}` })
      assert.strictEqual(res.status, 201, JSON.stringify(res.body))
    }
    // (the nodes of this test share one process, hence one metrics registry: counted together)
    const before = await groupEvents(a)
    // 600 commands at once, alternating nodes. Each node writes its own half of the workers and
    // runs, and the halves share every owner: the two nodes' groups lock disjoint entity rows and
    // then the same owner rows (the case where an order mismatch deadlocks rather than waits).
    const commands = Array.from({ length: 600 }, (_, k) => {
      const node = k % 2 === 0 ? a : b
      const i = (k % 2) * 6 + ((k * 7) % 6)
      return k % 3 === 0
        ? httpJson("POST", `${node.http}/internal/v1/runs/${runs[i]}/events`, { type: "run.step", payload: { k } })
        : k % 3 === 1
        ? httpJson("POST", `${node.http}/internal/v1/codex/workers/${workers[i]}/heartbeat`, { payload: { k } })
        : httpJson("POST", `${node.http}/internal/v1/codex/workers/${workers[i]}/events`, { event_type: "worker.event", payload: { k } })
    })
    const answers = await Promise.all(commands)
    assert.deepStrictEqual(answers.map((r) => r.status), answers.map(() => 201), JSON.stringify(answers.find((r) => r.status !== 201)))
    // groups did form (fewer transactions than commands)
    const after = await groupEvents(a)
    assert.strictEqual(after.commands - before.commands, 600)
    assert.isBelow(after.transactions - before.transactions, 600)
    assert.strictEqual(after.failures - before.failures, 0, "a transaction failed in the database")
    await Effect.runPromise(Effect.gen(function*() {
      assert.strictEqual(yield* assertGaplessWrites("workers", assert), 12 + 400)
      assert.strictEqual(yield* assertGaplessWrites("runs", assert), 12 + 200)
    }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(cluster.databaseUrl), maxConnections: 2 }))))
  }, 120_000)
})
