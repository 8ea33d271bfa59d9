/**
 * Replay cost from Postgres, repeatable: `node bench/replay-cost.ts [entries=100000] [replays=4]`.
 *
 * Starts the daemon as the benchmark does (its own embedded Postgres or a fresh database on
 * DATABASE_URL; daemon and Postgres pinned to core 0, generators to core 1, with
 * KHALA_REPLAY_CACHE_BYTES=0 so that every replay reads Postgres), loads one topic with `entries`
 * entries through the batching publisher, then replays it from seq 0 `replays` times. Per replay:
 * wall time until `CaughtUp`, and the CPU of daemon and Postgres (their process tree; with
 * DATABASE_URL Postgres is not a child and shows as 0). Replay 0 is the first read of freshly
 * written rows (`npm run bench`'s "replay time"); the later ones read the same rows again.
 * Env: BENCH_SUBPROTOCOL (`khala.v1.proto`, the default, or `khala.v1.json`), BENCH_DAEMON_NODE_ARGS
 * (extra daemon flags), BENCH_CPU_PROF=1 (daemon profile in the log dir).
 */
import { nowMs, type PublishResult, type ReplayResult } from "./lib/common.ts"
import { cpuTimeMs, Gen, installExitHandlers, killAll, treeCpuMs } from "./lib/proc.ts"
import { startCostDaemon } from "./lib/servers.ts"

installExitHandlers()
const entries = Number(process.argv[2] ?? 100_000)
const replays = Number(process.argv[3] ?? 4)
process.env["KHALA_REPLAY_CACHE_BYTES"] = "0"
const { server, logDir, genCore } = await startCostDaemon(
  "khala-replay-cost",
  process.env["BENCH_SUBPROTOCOL"] === "khala.v1.json" ? "khala.v1.json" : "khala.v1.proto"
)
try {
  const topic = `rc-${Date.now().toString(36)}`
  // run.created and each run.step add two entries (event + run summary) to run/<id>.
  const commits = Math.ceil((entries - 2) / 2)
  const expected = 2 + 2 * commits
  const loader = new Gen(genCore)
  const t0 = Date.now()
  loader.start({ kind: "publish", target: server.target, topics: [topic], mode: "saturate", count: commits, firstN: 0, window: 1000, padBytes: 200, setup: true })
  const loaded = await loader.result<PublishResult>()
  await loader.close()
  if (loaded.errors > 0) throw new Error(`${loaded.errors} loads failed: ${loaded.errorSamples.join("; ")}`)
  console.log(`loaded ${expected} entries (${loaded.published} commits) in ${((Date.now() - t0) / 1000).toFixed(1)} s; logs in ${logDir}`)
  for (let i = 0; i < replays; i++) {
    const g = new Gen(genCore)
    g.start({ kind: "replay", target: server.target, topic, expected })
    await g.next("ready")
    const tree0 = treeCpuMs(server.pid)
    const daemon0 = cpuTimeMs(server.pid)
    const startMs = Math.round(nowMs() - server.spawnedAtMs)
    g.send({ type: "go" })
    const r = await g.result<ReplayResult>()
    const tree = treeCpuMs(server.pid) - tree0
    const daemon = cpuTimeMs(server.pid) - daemon0
    await g.close()
    const ok = r.complete && r.entries === expected && r.gaps + r.duplicates === 0
    console.log(
      `replay ${i}: ${r.entries} entries ${ok ? "complete" : "INCOMPLETE OR OUT OF ORDER"} in ${(r.elapsedMs / 1000).toFixed(3)} s; ` +
        `CPU daemon ${daemon.toFixed(0)} ms, Postgres ${(tree - daemon).toFixed(0)} ms ` +
        `(${startMs}–${Math.round(nowMs() - server.spawnedAtMs)} ms after the daemon was spawned: --trace-gc times are close)`
    )
    if (!ok) process.exitCode = 1
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
} finally {
  await server.stop()
  await killAll()
}
