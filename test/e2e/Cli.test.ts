/**
 * The `khala` CLI in-process (`main(argv, io)` with a captured `CliIO`): the command table and its
 * help, usage errors (exit 64), admin-token resolution, and the rendering and exit codes of the
 * HTTP commands against a stub operator plane on an ephemeral port (drift found ⇒ 2, HTTP error ⇒ 1).
 * The real daemon and the launcher are exercised in `Daemon.test.ts`.
 */
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { defaultDaemonUrl } from "../../src/cli/AdminCommands.ts"
import type { CliIO } from "../../src/cli/Command.ts"
import { commands, main } from "../../src/cli/khala.ts"
import { cleanup, tempDir } from "./Processes.ts"

const run = async (argv: ReadonlyArray<string>, env: Record<string, string> = {}) => {
  let stdout = ""
  let stderr = ""
  const io: CliIO = {
    stdout: (t) => void (stdout += t),
    stderr: (t) => void (stderr += t),
    env,
    stderrIsTTY: false
  }
  const code = await main(argv, io)
  return { code, stdout, stderr }
}

describe("command table and help", () => {
  it("lists every command, and each has its own help", async () => {
    const top = await run(["--help"])
    assert.strictEqual(top.code, 0)
    for (const c of commands) {
      assert.include(top.stdout, `  ${c.name}`)
      const viaFlag = await run([c.name, "--help"])
      assert.strictEqual(viaFlag.code, 0, viaFlag.stderr)
      assert.match(viaFlag.stdout, new RegExp(`^Usage: khala ${c.name}`))
      const viaHelp = await run(["help", c.name])
      assert.strictEqual(viaHelp.stdout, viaFlag.stdout)
    }
    assert.strictEqual((await run(["token", "mint", "-h"])).code, 0)
    assert.strictEqual((await run(["help", "token", "mint"])).code, 0)
  })

  it("usage errors exit 64 with the usage on stderr", async () => {
    for (const argv of [[], ["nope"], ["--nope"], ["help", "nope"], ["token"], ["token", "burn"], ["token", "mint"],
      ["token", "mint", "--user", "u", "--ttl", "soon"], ["drift", "--url"], ["drift", "extra"], ["migrate", "--force"]]) {
      const r = await run(argv)
      assert.strictEqual(r.code, 64, `${argv.join(" ")}: ${r.stderr}`)
      assert.strictEqual(r.stdout, "")
      assert.match(r.stderr, /Usage: khala/)
    }
  })

  it("derives the default daemon URL from KHALA_HOST/KHALA_PORT", () => {
    assert.strictEqual(defaultDaemonUrl({}), "http://127.0.0.1:4100")
    assert.strictEqual(defaultDaemonUrl({ KHALA_HOST: "0.0.0.0", KHALA_PORT: "5000" }), "http://127.0.0.1:5000")
    assert.strictEqual(defaultDaemonUrl({ KHALA_HOST: "::" }), "http://[::1]:4100")
    assert.strictEqual(defaultDaemonUrl({ KHALA_HOST: "10.0.0.5" }), "http://10.0.0.5:4100")
  })
})

describe("HTTP commands against a stub operator plane", () => {
  const ADMIN = "adm_stub"
  let server: http.Server
  let url = ""
  let driftBody: unknown = { checked: 0, drifted: [] }
  const seen: Array<string> = []

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      seen.push(`${req.method} ${req.url}`)
      res.setHeader("content-type", "application/json")
      if (req.headers.authorization !== `Bearer ${ADMIN}`) {
        res.statusCode = 401
        return res.end(JSON.stringify({ error: { code: "unauthorized", message: "missing or invalid admin token" } }))
      }
      if (req.url === "/internal/v1/khala/projections/drift") return res.end(JSON.stringify(driftBody))
      if (req.url === "/internal/v1/khala/projections/rebuild") {
        return res.end(JSON.stringify({
          runs: 2, workers: 1, events: 9, journal_entries: 14, epoch: "e2", epoch_changed: true, duration_ms: 12
        }))
      }
      if (req.url === "/internal/v1/khala/drain") {
        res.statusCode = 202
        return res.end(JSON.stringify({ status: "draining" }))
      }
      res.statusCode = 404
      res.end(JSON.stringify({ error: { code: "not_found", message: "no route" } }))
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
  })
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve))
    await cleanup()
  })

  it("drift: 0 without drift, 2 with drift (listing it), JSON on --json", async () => {
    driftBody = { checked: 3, drifted: [] }
    const clean = await run(["drift", "--url", url, "--admin-token", ADMIN])
    assert.strictEqual(clean.code, 0, clean.stderr)
    assert.strictEqual(clean.stdout, "checked 3 entities: no drift\n")

    driftBody = {
      checked: 3,
      drifted: [{
        entity_kind: "run",
        entity_id: "r9",
        expected_hash: "aaaaaaaaaaaaaaaa",
        read_model_hash: "bbbbbbbbbbbbbbbb",
        checkpoint_hash: "aaaaaaaaaaaaaaaa",
        checkpoint_seq: 3,
        last_seq: 4
      }]
    }
    const drifted = await run(["drift", "--url", url, "--admin-token", ADMIN])
    assert.strictEqual(drifted.code, 2)
    assert.match(drifted.stdout, /checked 3 entities: 1 drifted\n  run r9: last_seq 4, read model bbbbbbbbbbbb, checkpoint_seq 3/)
    const json = await run(["drift", "--json", "--url", url, "--admin-token", ADMIN])
    assert.strictEqual(json.code, 2)
    assert.deepStrictEqual(JSON.parse(json.stdout), driftBody)
  })

  it("finds the admin token in KHALA_ADMIN_TOKEN or the dev secrets of the data dir", async () => {
    driftBody = { checked: 0, drifted: [] }
    assert.strictEqual((await run(["drift", "--url", url], { KHALA_ADMIN_TOKEN: ADMIN })).code, 0)
    const dataDir = tempDir("khala-cli-")
    fs.writeFileSync(path.join(dataDir, "dev-secrets.json"), JSON.stringify({ admin_token: ADMIN }))
    assert.strictEqual((await run(["drift", "--url", url], { KHALA_DATA_DIR: dataDir })).code, 0)
    assert.strictEqual((await run(["drift", "--url", url, "--data-dir", dataDir])).code, 0)
    const missing = await run(["drift", "--url", url, "--data-dir", path.join(dataDir, "nope")])
    assert.strictEqual(missing.code, 1)
    assert.match(missing.stderr, /no admin token/)
  })

  it("HTTP and network errors exit 1 with the status and error code", async () => {
    const denied = await run(["reproject", "--url", url, "--admin-token", "wrong"])
    assert.strictEqual(denied.code, 1)
    assert.match(denied.stderr, /HTTP 401 unauthorized: missing or invalid admin token \(admin token from --admin-token\)/)
    const notFound = await run(["drift", "--url", `${url}/prefix`, "--admin-token", ADMIN])
    assert.strictEqual(notFound.code, 1)
    assert.match(notFound.stderr, /HTTP 404 not_found/)
    const unreachable = await run(["drift", "--url", "http://127.0.0.1:1", "--admin-token", ADMIN])
    assert.strictEqual(unreachable.code, 1)
    assert.match(unreachable.stderr, /cannot reach khala at http:\/\/127\.0\.0\.1:1/)
  })

  it("reproject and drain print summaries", async () => {
    const re = await run(["reproject", "--url", url, "--admin-token", ADMIN])
    assert.strictEqual(re.code, 0, re.stderr)
    assert.match(re.stdout, /reprojected 2 runs and 1 workers: 9 events replayed into 14 journal entries in 12 ms/)
    assert.match(re.stdout, /epoch changed to e2/)
    const drain = await run(["drain", "--url", url, "--admin-token", ADMIN])
    assert.strictEqual(drain.code, 0, drain.stderr)
    assert.strictEqual(drain.stdout, `khala at ${url} is draining; it exits once its connections are closed\n`)
    assert.include(seen, "POST /internal/v1/khala/drain")
  })
})
