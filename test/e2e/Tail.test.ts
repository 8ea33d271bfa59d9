/**
 * End-to-end: `khala tail` through its real launcher (`bin/khala.mjs`) against a daemon started as
 * `npm start` runs it (embedded Postgres, dev secrets). The tail mints its own admin token from the
 * daemon's dev secrets; events are appended over HTTP with the service token while it runs. Covers
 * replay then live delivery in seq order without gaps (--json), `--from N` (epoch read from the
 * snapshot endpoint) and `--from N --epoch E`, a forbidden topic (exit 1), and SIGINT (exit 0);
 * usage errors (exit 64) in-process through `main`.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import type { CliIO } from "../../src/cli/Command.ts"
import { main } from "../../src/cli/khala.ts"
import {
  cleanEnv,
  cleanup,
  type Daemon,
  exitWithin,
  KHALA_BIN,
  type Spawned,
  spawnTracked,
  startDaemon,
  stopWith,
  tempDir,
  waitReady
} from "./Processes.ts"

interface TailLine {
  readonly topic: string
  readonly seq: number
  readonly kind: string
  readonly doc_key: string
  readonly doc_version: number
  readonly document: Record<string, unknown>
}

let daemon: Daemon
let serviceToken = ""

beforeAll(async () => {
  const dataDir = tempDir("khala-tail-")
  daemon = await startDaemon(dataDir)
  await waitReady(daemon)
  serviceToken = (JSON.parse(fs.readFileSync(path.join(dataDir, "dev-secrets.json"), "utf8")) as { service_token: string })
    .service_token
}, 120_000)
afterAll(cleanup, 60_000)

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const waitFor = async (what: string, p: Spawned, pred: () => boolean, ms = 20_000) => {
  const deadline = performance.now() + ms
  while (!pred()) {
    if (p.child.exitCode !== null || p.child.signalCode !== null) {
      throw new Error(`tail exited (${p.child.exitCode ?? p.child.signalCode}) while waiting for ${what}:\n${p.output()}`)
    }
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}:\n${p.output()}`)
    await sleep(25)
  }
}

/** Appends one run event over HTTP; resolves to the run topic's seq after it. */
const append = async (runId: string, body: Record<string, unknown>) => {
  const res = await fetch(`${daemon.url}/internal/v1/runs/${runId}/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${serviceToken}`, "content-type": "application/json" },
    body: JSON.stringify(body)
  })
  const text = await res.text()
  assert.oneOf(res.status, [200, 201], text)
  return (JSON.parse(text) as { topic_seqs: Record<string, number> }).topic_seqs[`run/${runId}`]!
}

const tail = (args: ReadonlyArray<string>) =>
  spawnTracked(process.execPath, [KHALA_BIN, "tail", ...args, "--url", daemon.url], cleanEnv({ KHALA_DATA_DIR: daemon.dataDir }))

const lines = (p: Spawned): Array<TailLine> =>
  p.stdout().split("\n").filter((l) => l !== "").map((l) => JSON.parse(l) as TailLine)

const lastSeq = (p: Spawned) => lines(p).at(-1)?.seq ?? 0

const interrupt = async (p: Spawned) => {
  const exit = await stopWith(p, "SIGINT", 10_000)
  assert.isDefined(exit, `tail did not exit within 10 s of SIGINT:\n${p.output()}`)
  assert.deepStrictEqual({ code: exit!.code, signal: exit!.signal }, { code: 0, signal: null }, p.output())
}

describe("khala tail", () => {
  it("--json: replays, then prints live appends in seq order without gaps; SIGINT exits 0", async () => {
    await append("r1", { type: "run.created", owner_user_id: "u1" })
    const p = tail(["run/r1", "--json"])
    await waitFor("caught up", p, () => /caught up at seq 2, live/.test(p.stderr()))
    assert.match(p.stderr(), /locally minted sync:admin token/)

    let head = 0
    for (const type of ["run.started", "run.step", "run.step", "run.step", "run.completed"]) {
      head = await append("r1", { type, payload: { n: head } })
    }
    assert.strictEqual(head, 12)
    await waitFor(`seq ${head}`, p, () => lastSeq(p) >= head)
    const got = lines(p)
    assert.deepStrictEqual(got.map((l) => l.seq), Array.from({ length: head }, (_, i) => i + 1))
    for (const l of got) {
      assert.strictEqual(l.topic, "run/r1")
      if (l.seq % 2 === 1) {
        assert.include(l, { kind: "run.event", doc_key: `run_event:r1:${(l.seq + 1) / 2}`, doc_version: 1 })
      } else {
        assert.include(l, { kind: "run.summary", doc_key: "run_summary:r1", doc_version: l.seq / 2 })
      }
    }
    assert.include(got.at(-1)!.document, { run_id: "r1", status: "completed", last_event_type: "run.completed" })
    await interrupt(p)
  })

  it("--from N starts after N (epoch from the snapshot endpoint, or --epoch)", async () => {
    await append("r2", { type: "run.created", owner_user_id: "u1" })
    await append("r2", { type: "run.started" })
    const p = tail(["run/r2", "--json", "--from", "2"])
    await waitFor("seq 4", p, () => lastSeq(p) >= 4)
    assert.deepStrictEqual(lines(p).map((l) => l.seq), [3, 4])
    const head = await append("r2", { type: "run.step" })
    await waitFor(`seq ${head}`, p, () => lastSeq(p) >= head)
    assert.deepStrictEqual(lines(p).map((l) => l.seq), [3, 4, 5, 6])
    const epoch = /subscribed run\/r2: epoch (\S+),/.exec(p.stderr())?.[1]
    assert.isDefined(epoch, p.stderr())
    await interrupt(p)

    const q = tail(["run/r2", "--json", "--from", "5", "--epoch", epoch!, "--json-wire"])
    await waitFor("seq 6", q, () => lastSeq(q) >= 6)
    assert.deepStrictEqual(lines(q).map((l) => l.seq), [6])
    assert.notMatch(q.stderr(), /re-bootstrapped/)
    await interrupt(q)
  })

  it("exits 1 with the reason on a forbidden topic", async () => {
    const p = tail(["run/r1", "--user", "someone-else"])
    const exit = await exitWithin(p, 20_000)
    assert.strictEqual(exit?.code, 1, p.output())
    assert.match(p.stderr(), /khala tail: error: run\/r1: forbidden_topic/)
    assert.strictEqual(p.stdout(), "")
  })
})

describe("khala tail usage", () => {
  const run = async (argv: ReadonlyArray<string>) => {
    let stdout = ""
    let stderr = ""
    const io: CliIO = { stdout: (t) => void (stdout += t), stderr: (t) => void (stderr += t), env: {}, stderrIsTTY: false }
    return { code: await main(argv, io), stdout, stderr }
  }

  it("usage errors exit 64 with the usage on stderr, before connecting or minting", async () => {
    for (const argv of [["tail"], ["tail", "run/"], ["tail", "runs/r1"], ["tail", "run/r1", "extra"],
      ["tail", "run/r1", "--from", "-1"], ["tail", "run/r1", "--from", "x"], ["tail", "run/r1", "--epoch", "e"],
      ["tail", "run/r1", "--proto", "--json-wire"], ["tail", "run/r1", "--token", "t", "--user", "u"],
      ["tail", "run/r1", "--url", "ftp://x"], ["tail", "run/r1", "--nope"]]) {
      const r = await run(argv)
      assert.strictEqual(r.code, 64, `${argv.join(" ")}: ${r.stderr}`)
      assert.strictEqual(r.stdout, "")
      assert.match(r.stderr, /Usage: khala tail TOPIC/)
    }
  })

  it("without --token, refuses to mint when there are no secrets (exit 1)", async () => {
    const dataDir = tempDir("khala-tail-empty-")
    const r = await run(["tail", "run/r1", "--data-dir", dataDir, "--url", "ws://127.0.0.1:1/sync/v1"])
    assert.strictEqual(r.code, 1, r.stderr)
    assert.match(r.stderr, /cannot mint a token: no KHALA_SYNC_JWT_SECRET/)
    assert.isFalse(fs.existsSync(path.join(dataDir, "dev-secrets.json")), "no dev secrets were created")
  })
})
