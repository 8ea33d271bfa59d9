/**
 * Commit cost per event, repeatable: `node bench/commit-cost.ts [rounds=3] [seconds=5] [shapes=batched,many-topics]`.
 *
 * Starts the daemon as the benchmark does (its own embedded Postgres or a fresh database on
 * DATABASE_URL; daemon and Postgres pinned to core 0, the generator to core 1) and, `rounds` times
 * each, drives the two commit shapes of `npm run bench` with no subscribers:
 *   - `batched`: one writer appending 500-event batches to one run (`ingest (batched) ×1`);
 *   - `many-topics`: one `run.step` per event round-robin over 1000 runs, coalesced by the
 *     batching publisher (two batches in flight), as in `many topics`.
 * Per round: events/s, and the CPU of the daemon and of Postgres (their process tree; with
 * DATABASE_URL Postgres is not a child and shows as 0) per event. CPU per event is the figure to
 * compare across code changes: on a shared, noisy machine it moves much less than throughput.
 * Env: BENCH_DAEMON_NODE_ARGS (extra daemon flags), BENCH_CPU_PROF=1 (daemon profile in the log dir).
 */
import type { PublishResult } from "./lib/common.ts"
import { cpuTimeMs, Gen, installExitHandlers, killAll, treeCpuMs } from "./lib/proc.ts"
import { startCostDaemon } from "./lib/servers.ts"

installExitHandlers()
const rounds = Number(process.argv[2] ?? 3)
const durationMs = Number(process.argv[3] ?? 5) * 1000
const shapes = (process.argv[4] ?? "batched,many-topics").split(",")
const { server, logDir, genCore } = await startCostDaemon("khala-commit-cost", "khala.v1.proto")
// The many-topics publisher coalesces into batch requests of ≤ 1000 events, as `npm run bench` does.
const batching = { ...server.target, batch: 1000 }
console.log(`logs in ${logDir}`)

const manyTopics = Array.from({ length: 1000 }, (_, i) => `cc-${Date.now().toString(36)}-${i}`)

const measure = async (shape: "batched" | "many-topics", round: number) => {
  const g = new Gen(genCore)
  // CPU is read around the whole job: the generator's start and, for `batched`, the creation of
  // its one run are in it (small against seconds of load). The many-topics runs are created once,
  // before the first round.
  const cpu = { tree: treeCpuMs(server.pid), daemon: cpuTimeMs(server.pid) }
  if (shape === "batched") {
    g.start({ kind: "ingest", target: server.target, writers: 1, durationMs, topicPrefix: `cc-b${round}-${Date.now().toString(36)}`, padBytes: 200, batch: 500 })
  } else {
    g.start({ kind: "publish", target: batching, topics: manyTopics, mode: "saturate", durationMs, window: 1000, padBytes: 200, setup: false })
  }
  const r = await g.result<PublishResult>()
  const tree = treeCpuMs(server.pid) - cpu.tree
  const daemon = cpuTimeMs(server.pid) - cpu.daemon
  await g.close()
  if (r.errors > 0) {
    console.log(`${shape} round ${round}: ${r.errors} errors: ${r.errorSamples.join("; ")}`)
    process.exitCode = 1
  }
  const seconds = (r.endMs - r.startMs) / 1000
  const perEvent = (ms: number) => ((ms * 1000) / r.published).toFixed(1)
  console.log(
    `${shape.padEnd(11)} round ${round}: ${r.published} events in ${seconds.toFixed(2)} s = ${(r.published / seconds).toFixed(0)} events/s; ` +
      `CPU per event: daemon ${perEvent(daemon)} µs, Postgres ${perEvent(tree - daemon)} µs, together ${perEvent(tree)} µs`
  )
}

try {
  // Create the many-topics runs once, outside any measured round.
  const setup = new Gen(genCore)
  setup.start({ kind: "publish", target: batching, topics: manyTopics, mode: "saturate", count: manyTopics.length, window: 1000, padBytes: 200, setup: true })
  await setup.result<PublishResult>()
  await setup.close()
  for (let i = 0; i < rounds; i++) {
    if (shapes.includes("batched")) await measure("batched", i)
    if (shapes.includes("many-topics")) await measure("many-topics", i)
  }
} finally {
  await server.stop()
  await killAll()
}
