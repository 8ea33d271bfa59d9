/**
 * End-to-end: the daemon as `npm start` runs it (`node src/main.ts` on Node 24, no DATABASE_URL,
 * so embedded Postgres under a fresh KHALA_DATA_DIR and generated dev secrets), and the `khala` CLI
 * through its real launcher `bin/khala.mjs`. Covers start → ready → write → SIGTERM (exit 0, no
 * postgres left) → restart on the same data dir (data and secrets kept), the production refusal
 * without secrets, and the CLI (help, usage errors, serve, migrate, token mint, drift, reproject,
 * drain).
 *
 * The tests of the "daemon lifecycle" block run in order and share the daemon and its data dir.
 * `afterAll` kills anything still running and removes the temp dirs, also after a failure.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import * as jose from "jose"
import { afterAll, assert, describe, it } from "vitest"
import {
  cleanEnv,
  cleanup,
  type Daemon,
  exitWithin,
  freePort,
  KHALA_BIN,
  livePostgres,
  NODE24,
  runToExit,
  spawnTracked,
  startDaemon,
  stopWith,
  tempDir,
  waitReady
} from "./Processes.ts"

afterAll(cleanup, 60_000)

interface DevSecrets {
  readonly service_token: string
  readonly admin_token: string
  readonly sync_jwt_secret: string
}

const readSecrets = (dataDir: string) =>
  JSON.parse(fs.readFileSync(path.join(dataDir, "dev-secrets.json"), "utf8")) as DevSecrets

const khala = (args: ReadonlyArray<string>, env: Record<string, string> = {}, node = process.execPath) =>
  runToExit(node, [KHALA_BIN, ...args], cleanEnv(env))

const SYSTEM_NODE = "/usr/bin/node"

describe("daemon lifecycle (embedded defaults)", () => {
  const dataDir = tempDir("khala-e2e-")
  let daemon: Daemon | undefined
  let secrets: DevSecrets | undefined

  const stopCleanly = async (d: Daemon) => {
    const exit = await stopWith(d, "SIGTERM", 20_000)
    assert.isDefined(exit, `daemon did not exit within 20 s of SIGTERM:\n${d.output()}`)
    assert.strictEqual(exit!.code, 0, `exit ${JSON.stringify(exit)}:\n${d.output()}`)
    assert.deepStrictEqual(livePostgres(d.dataDir), [], "a postgres process outlived the daemon")
    assert.isFalse(fs.existsSync(path.join(d.dataDir, "pg", "postmaster.pid")), "postmaster.pid left behind")
  }

  it("starts with embedded Postgres and dev secrets, accepts a run, and exits 0 on SIGTERM", async () => {
    daemon = await startDaemon(dataDir)
    await waitReady(daemon)
    secrets = readSecrets(dataDir)
    assert.match(secrets.service_token, /^svc_/)
    assert.match(secrets.admin_token, /^adm_/)
    assert.isAtLeast(Buffer.byteLength(secrets.sync_jwt_secret), 32)
    assert.include(daemon.output(), path.join(dataDir, "dev-secrets.json"), "the log says where the secrets are")

    const res = await fetch(`${daemon.url}/internal/v1/runs/r1/events`, {
      method: "POST",
      headers: { authorization: `Bearer ${secrets.service_token}`, "content-type": "application/json" },
      body: JSON.stringify({ type: "run.created", owner_user_id: "u1" })
    })
    const body = await res.text()
    assert.strictEqual(res.status, 201, body)
    assert.include(JSON.parse(body), { run_id: "r1", seq: 1 })

    await stopCleanly(daemon)
  })

  it("restarts on the same data dir with the run and the dev secrets kept", async () => {
    assert.isDefined(secrets, "needs the previous test")
    // An operator's embedded Postgres setting is applied on top of the defaults (Postgres refuses
    // to start on a setting it does not know, so readiness is the proof it was passed).
    daemon = await startDaemon(dataDir, { KHALA_EMBEDDED_PG_SETTINGS: "work_mem=8MB" })
    await waitReady(daemon)
    assert.match(daemon.output(), /embedded postgres on [^\n]*shared_buffers=\d+MB, work_mem=8MB/)
    assert.deepStrictEqual(readSecrets(dataDir), secrets)

    const res = await fetch(`${daemon.url}/internal/v1/runs/r1`, {
      headers: { authorization: `Bearer ${secrets!.service_token}` }
    })
    const body = await res.text()
    assert.strictEqual(res.status, 200, body)
    const run = JSON.parse(body) as Record<string, unknown>
    assert.include(run, { run_id: "r1", owner_user_id: "u1", status: "created" })
    assert.strictEqual(Number(run.last_seq), 1) // a uint64: proto3 JSON may render it as a string
  })

  it("khala drift --json reports no drift on the running daemon", async () => {
    assert.isDefined(daemon, "needs the running daemon")
    const r = await khala(["drift", "--json", "--url", daemon!.url], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(r.code, 0, r.stderr)
    assert.deepStrictEqual(JSON.parse(r.stdout), { checked: 1, drifted: [] })
  })

  it("khala reproject rebuilds and keeps the epoch", async () => {
    const r = await khala(["reproject", "--json", "--url", daemon!.url], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(r.code, 0, r.stderr)
    const report = JSON.parse(r.stdout) as Record<string, unknown>
    assert.include(report, { runs: 1, workers: 0, events: 1, epoch_changed: false })
    const again = await khala(["drift", "--url", daemon!.url], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(again.code, 0, again.stderr)
    assert.match(again.stdout, /checked 1 entities: no drift/)
  })

  it("khala drift with a wrong admin token exits 1 and prints the HTTP status and code", async () => {
    const r = await khala(["drift", "--url", daemon!.url, "--admin-token", "wrong"])
    assert.strictEqual(r.code, 1)
    assert.match(r.stderr, /HTTP 401 unauthorized/)
  })

  it("khala token mint signs with the dev secret; the daemon accepts the token", async () => {
    const r = await khala(["token", "mint", "--user", "u1", "--json"], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(r.code, 0, r.stderr)
    const minted = JSON.parse(r.stdout) as { token: string; expires_at: string }
    assert.match(minted.token, /^[\w-]+\.[\w-]+\.[\w-]+$/)
    assert.match(minted.expires_at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/)
    const { payload } = await jose.jwtVerify(minted.token, new TextEncoder().encode(secrets!.sync_jwt_secret), {
      issuer: "khala",
      audience: "khala-sync"
    })
    assert.include(payload, { sub: "u1", scope: "sync:read" })

    const snap = await fetch(`${daemon!.url}/sync/v1/snapshot?topic=run/r1`, {
      headers: { authorization: `Bearer ${minted.token}` }
    })
    const body = await snap.text()
    assert.strictEqual(snap.status, 200, body)
    assert.strictEqual((JSON.parse(body) as { topic: string }).topic, "run/r1")
  })

  it("khala migrate refuses while the daemon owns the embedded Postgres", async () => {
    const r = await khala(["migrate"], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(r.code, 1)
    assert.match(r.stderr, /in use/)
    await waitReady(daemon!, 5_000) // and the daemon's database is untouched
  })

  it("exits 0 on SIGTERM again", async () => {
    await stopCleanly(daemon!)
  })

  it("khala drain --wait drains the daemon, which exits 0", async () => {
    daemon = await startDaemon(dataDir)
    await waitReady(daemon)
    const r = await khala(["drain", "--wait", "--json", "--url", daemon.url], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(r.code, 0, `${r.stderr}\n${daemon.output()}`)
    assert.deepStrictEqual(JSON.parse(r.stdout), { status: "draining", exited: true })
    const exit = await exitWithin(daemon, 20_000)
    assert.isDefined(exit, daemon.output())
    assert.strictEqual(exit!.code, 0, daemon.output())
    assert.deepStrictEqual(livePostgres(dataDir), [])
  })
})

/**
 * Starts the daemon on a fresh data dir with `env`: it must exit non-zero within 15 s, its output
 * saying each of `says`, no Postgres left running. Returns the data dir.
 */
const refusedStart = async (env: Record<string, string>, says: ReadonlyArray<string>) => {
  const dataDir = tempDir("khala-e2e-refused-")
  const daemon = await startDaemon(dataDir, env)
  const exit = await exitWithin(daemon, 15_000)
  assert.isDefined(exit, `still running 15 s later:\n${daemon.output()}`)
  assert.notStrictEqual(exit!.code, 0)
  for (const text of says) assert.include(daemon.output(), text)
  assert.deepStrictEqual(livePostgres(dataDir), [])
  return dataDir
}

describe("production mode", () => {
  it("refuses to start without explicit secrets, naming them", async () => {
    const dataDir = await refusedStart({ NODE_ENV: "production" }, ["KHALA_SERVICE_TOKEN", "KHALA_ADMIN_TOKEN", "KHALA_SYNC_JWT_SECRET"])
    assert.isFalse(fs.existsSync(path.join(dataDir, "dev-secrets.json")), "no dev secrets in production")
  })
})

describe("embedded Postgres settings", () => {
  it("a malformed KHALA_EMBEDDED_PG_SETTINGS stops the start with a message naming it", async () => {
    await refusedStart({ KHALA_EMBEDDED_PG_SETTINGS: "shared_buffers" }, [`KHALA_EMBEDDED_PG_SETTINGS: "shared_buffers" is not name=value`])
  })
})

describe("khala CLI launcher", () => {
  it("--help exits 0 on Node 24", async () => {
    const r = await khala(["--help"])
    assert.strictEqual(r.code, 0, r.stderr)
    assert.match(r.stdout, /Usage: khala <command>/)
    for (const command of ["serve", "migrate", "token", "drift", "reproject", "drain"]) assert.include(r.stdout, command)
  })

  it.skipIf(!fs.existsSync(SYSTEM_NODE))("--help exits 0 when started by the system Node", async () => {
    const version = await runToExit(SYSTEM_NODE, ["--version"], cleanEnv())
    const r = await khala(["--help"], {}, SYSTEM_NODE)
    assert.strictEqual(r.code, 0, `${version.stdout} ${r.stderr}`)
    assert.match(r.stdout, /Usage: khala <command>/)
    const sub = await khala(["drift", "--help"], {}, SYSTEM_NODE)
    assert.strictEqual(sub.code, 0, sub.stderr)
    assert.match(sub.stdout, /Usage: khala drift/)
  })

  it("unknown commands and flags print usage on stderr and exit 64", async () => {
    const unknown = await khala(["frobnicate"])
    assert.strictEqual(unknown.code, 64)
    assert.match(unknown.stderr, /unknown command "frobnicate"[\s\S]*Usage: khala/)
    assert.strictEqual(unknown.stdout, "")
    const flag = await khala(["drift", "--frobnicate"])
    assert.strictEqual(flag.code, 64)
    assert.match(flag.stderr, /Usage: khala drift/)
  })

  it("forwards SIGTERM to the daemon under `khala serve` and exits 0", async () => {
    const dataDir = tempDir("khala-e2e-serve-")
    const port = String(await freePort())
    const serve = spawnTracked(NODE24, [KHALA_BIN, "serve"], cleanEnv({ KHALA_DATA_DIR: dataDir, KHALA_PORT: port }))
    await waitReady({ ...serve, port: Number(port), dataDir, url: `http://127.0.0.1:${port}` })
    const exit = await stopWith(serve, "SIGTERM", 20_000)
    assert.isDefined(exit, serve.output())
    assert.strictEqual(exit!.code, 0, serve.output())
    assert.deepStrictEqual(livePostgres(dataDir), [])
  })

  it("khala migrate applies the migrations to a fresh data dir, then is up to date", async () => {
    const dataDir = tempDir("khala-e2e-migrate-")
    const first = await khala(["migrate"], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(first.code, 0, first.stderr)
    assert.match(first.stdout, /applied \d+ migration\(s\)[\s\S]*1_runtime_schema/)
    const second = await khala(["migrate", "--json"], { KHALA_DATA_DIR: dataDir })
    assert.strictEqual(second.code, 0, second.stderr)
    const report = JSON.parse(second.stdout) as { applied: Array<string>; latest: string }
    assert.deepStrictEqual(report.applied, [])
    assert.match(report.latest, /^\d+_\w+$/)
    assert.deepStrictEqual(livePostgres(dataDir), [])
    // It needs the database only: no dev secrets were generated for it.
    assert.isFalse(fs.existsSync(path.join(dataDir, "dev-secrets.json")))
  })

  it("khala migrate under NODE_ENV=production needs no secrets", async () => {
    const dataDir = tempDir("khala-e2e-migrate-prod-")
    const r = await khala(["migrate", "--json"], { KHALA_DATA_DIR: dataDir, NODE_ENV: "production" })
    assert.strictEqual(r.code, 0, r.stderr)
    assert.match((JSON.parse(r.stdout) as { latest: string }).latest, /^\d+_\w+$/)
    assert.deepStrictEqual(livePostgres(dataDir), [])
  })
})
