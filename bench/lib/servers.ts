/**
 * Starting and stopping the systems under test, each pinned to the server core:
 * - Khala: the real daemon (`node src/main.ts`), fresh `KHALA_DATA_DIR` (embedded Postgres, which
 *   inherits the pinning) or a fresh database on `DATABASE_URL`; dev secrets from the data dir.
 * - raw ws and Socket.IO: bench/baselines/*.ts.
 * - NATS: a private nats-server (generated config: loopback listener, WebSocket listener without
 *   TLS, JetStream in a temp store dir) — never the system instance on :4222.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { nowMs, type SystemName, type Target } from "./common.ts"
import { HttpClient } from "./http.ts"
import { jsApi, NATS_STREAM, NatsWs } from "./natsWs.ts"
import { daemonNodeFlags } from "../../bin/node-flags.mjs"
import { freePort, HAS_TASKSET, pinned, stopChild, track } from "./proc.ts"

export interface Server {
  readonly system: SystemName
  readonly pid: number
  /** Epoch ms just before the process was spawned. */
  readonly spawnedAtMs: number
  readonly target: Target
  readonly child: ChildProcess
  readonly notes: ReadonlyArray<string>
  alive(): boolean
  stop(): Promise<void>
}

const REPO = path.resolve(new URL("../..", import.meta.url).pathname)

const alive = (c: ChildProcess) => () => c.exitCode === null && c.signalCode === null

const waitFor = async (what: string, child: ChildProcess, check: () => Promise<boolean>, timeoutMs: number, log: () => string) => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (!alive(child)()) throw new Error(`${what} exited during startup (${child.exitCode ?? child.signalCode}):\n${log()}`)
    if (await check().catch(() => false)) return
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`${what} not ready after ${timeoutMs} ms:\n${log()}`)
}

const tail = (file: string) => () => {
  try {
    return fs.readFileSync(file, "utf8").split("\n").slice(-30).join("\n")
  } catch {
    return ""
  }
}

// ---------------------------------------------------------------------------------------------
// Khala

export interface KhalaOptions {
  readonly core: string | undefined
  readonly logDir: string
  readonly cpuProfDir: string | undefined
  readonly subprotocol: "khala.v1.proto" | "khala.v1.json"
}

/** Creates a fresh database on the server of `url` and returns its URL (via @effect/sql-pg). */
const createDatabase = async (url: string, name: string, drop = false) => {
  const { PgClient } = await import("@effect/sql-pg")
  const { Effect, Redacted } = await import("effect")
  const { SqlClient } = await import("effect/sql")
  await Effect.runPromise(
    Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      yield* sql.unsafe(drop ? `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)` : `CREATE DATABASE "${name}"`)
    }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 })))
  )
}

export const startKhala = async (opts: KhalaOptions): Promise<Server & { readonly secrets: { service: string; admin: string } }> => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "khala-bench-"))
  const port = await freePort()
  const notes: Array<string> = []
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    KHALA_DATA_DIR: dataDir,
    KHALA_HOST: "127.0.0.1",
    KHALA_PORT: String(port),
    KHALA_MAX_CLIENT_FRAMES_PER_S: "100000",
    KHALA_RETENTION_MAX_ENTRIES_PER_TOPIC: "10000000",
    KHALA_DRAIN_TIMEOUT_MS: "3000",
    NODE_ENV: "development"
  }
  let dbName: string | undefined
  const baseUrl = process.env["DATABASE_URL"]
  if (baseUrl) {
    dbName = `khala_bench_${Date.now()}`
    await createDatabase(baseUrl, dbName)
    const u = new URL(baseUrl)
    u.pathname = `/${dbName}`
    env["DATABASE_URL"] = u.toString()
    notes.push(`Khala on DATABASE_URL (fresh database ${dbName})`)
  } else {
    delete env["DATABASE_URL"]
    notes.push("Khala with its embedded Postgres (durable: fsync on), pinned with the daemon")
  }
  // The daemon's own Node flags (as `npm start` runs it: docs/OPERATIONS.md, memory).
  const nodeArgs = [...daemonNodeFlags, ...(opts.cpuProfDir ? ["--cpu-prof", "--cpu-prof-dir", opts.cpuProfDir] : []),
    ...(process.env["BENCH_DAEMON_NODE_ARGS"]?.split(" ").filter((a) => a !== "") ?? [])]
  const { cmd, args } = pinned(opts.core, process.execPath, [...nodeArgs, "src/main.ts"])
  const logFile = path.join(opts.logDir, `khala-${port}.log`)
  const log = fs.openSync(logFile, "w")
  const spawnedAtMs = nowMs()
  const child = track(spawn(cmd, args, { cwd: REPO, env, stdio: ["ignore", log, log] }))
  fs.closeSync(log)
  const http = new HttpClient(`http://127.0.0.1:${port}`, 4)
  try {
    await waitFor("khala", child, async () => (await http.request("GET", "/readyz", undefined)).status === 200, 180_000, tail(logFile))
    const fromFile = JSON.parse(fs.readFileSync(path.join(dataDir, "dev-secrets.json"), "utf8")) as { service_token: string; admin_token: string }
    const service = process.env["KHALA_SERVICE_TOKEN"] ?? fromFile.service_token
    const admin = process.env["KHALA_ADMIN_TOKEN"] ?? fromFile.admin_token
    const r = await http.post("/api/sync/token", service, { user_id: "bench", scopes: ["sync:admin"], ttl_seconds: 6 * 3600 })
    if (r.status !== 200) throw new Error(`token mint failed: ${r.status} ${r.body}`)
    const syncToken = (JSON.parse(r.body) as { token: string }).token
    return {
      system: "khala",
      pid: child.pid!,
      spawnedAtMs,
      child,
      notes,
      secrets: { service, admin },
      target: {
        system: "khala",
        wsUrl: `ws://127.0.0.1:${port}/sync/v1`,
        httpBase: `http://127.0.0.1:${port}`,
        serviceToken: service,
        syncToken,
        subprotocol: opts.subprotocol
      },
      alive: alive(child),
      stop: async () => {
        http.close()
        await stopChild(child, 30_000)
        if (dbName && baseUrl) await createDatabase(baseUrl, dbName, true).catch(() => {})
        fs.rmSync(dataDir, { recursive: true, force: true })
      }
    }
  } catch (e) {
    http.close()
    await stopChild(child, 10_000)
    throw e
  }
}

// ---------------------------------------------------------------------------------------------
// Node baselines

const startNodeBaseline = async (system: "ws" | "socketio", script: string, core: string | undefined, logDir: string): Promise<Server> => {
  const { cmd, args } = pinned(core, process.execPath, [path.join(REPO, "bench/baselines", script), "0"])
  const spawnedAtMs = nowMs()
  const child = track(spawn(cmd, args, { cwd: REPO, stdio: ["ignore", "pipe", "pipe"] }))
  const logFile = path.join(logDir, `${system}.log`)
  const out = fs.createWriteStream(logFile)
  child.stderr!.pipe(out)
  const port = await new Promise<number>((resolve, reject) => {
    let buf = ""
    const t = setTimeout(() => reject(new Error(`${system} baseline did not start`)), 30_000)
    child.stdout!.on("data", (d: Buffer) => {
      buf += d.toString()
      const m = /READY (\d+)/.exec(buf)
      if (m) {
        clearTimeout(t)
        resolve(Number(m[1]))
      }
    })
    child.once("exit", (code) => reject(new Error(`${system} baseline exited ${code}: ${tail(logFile)()}`)))
  })
  child.stdout!.resume()
  return {
    system,
    pid: child.pid!,
    spawnedAtMs,
    child,
    notes: [],
    target: { system, wsUrl: system === "ws" ? `ws://127.0.0.1:${port}` : `http://127.0.0.1:${port}` },
    alive: alive(child),
    stop: () => stopChild(child, 5000)
  }
}

/**
 * The daemon of a cost harness (`bench/*-cost.ts`): pinned to core 0 with its Postgres, logs in a
 * fresh `/tmp/<name>-*` directory, a CPU profile there with BENCH_CPU_PROF=1; the generators' core.
 */
export const startCostDaemon = async (name: string, subprotocol: "khala.v1.proto" | "khala.v1.json") => {
  const logDir = fs.mkdtempSync(path.join(os.tmpdir(), `${name}-`))
  const server = await startKhala({
    core: HAS_TASKSET ? "0" : undefined,
    logDir,
    cpuProfDir: process.env["BENCH_CPU_PROF"] === "1" ? logDir : undefined,
    subprotocol
  })
  return { server, logDir, genCore: HAS_TASKSET ? "1" : undefined }
}

export const startWs = (core: string | undefined, logDir: string) => startNodeBaseline("ws", "ws-broadcast.ts", core, logDir)
export const startSocketIo = (core: string | undefined, logDir: string) =>
  startNodeBaseline("socketio", "socketio-server.ts", core, logDir)

// ---------------------------------------------------------------------------------------------
// NATS

export const findNatsServer = (): string | undefined => {
  for (const p of ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"]) if (fs.existsSync(p)) return p
  const w = spawnSync("sh", ["-c", "command -v nats-server"], { encoding: "utf8" })
  return w.status === 0 && w.stdout.trim() ? w.stdout.trim() : undefined
}

const portOpen = (port: number) =>
  new Promise<boolean>((resolve) => {
    const s = net.connect(port, "127.0.0.1")
    s.once("connect", () => {
      s.destroy()
      resolve(true)
    })
    s.once("error", () => resolve(false))
  })

export const startNats = async (bin: string, core: string | undefined, logDir: string): Promise<Server> => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "nats-bench-"))
  const port = await freePort()
  const wsPort = await freePort()
  const conf = path.join(dir, "nats.conf")
  fs.writeFileSync(
    conf,
    `# generated by bench/lib/servers.ts
listen: "127.0.0.1:${port}"
max_payload: 1048576
write_deadline: "10s"
websocket {
  host: "127.0.0.1"
  port: ${wsPort}
  no_tls: true
  compression: false
}
jetstream {
  store_dir: "${path.join(dir, "js")}"
  max_memory_store: 1073741824
  max_file_store: 21474836480
}
`
  )
  const logFile = path.join(logDir, `nats-${port}.log`)
  const log = fs.openSync(logFile, "w")
  const { cmd, args } = pinned(core, bin, ["-c", conf])
  const spawnedAtMs = nowMs()
  const child = track(spawn(cmd, args, { stdio: ["ignore", log, log] }))
  fs.closeSync(log)
  await waitFor("nats-server", child, () => portOpen(wsPort), 30_000, tail(logFile))
  const nc = await NatsWs.connect(`ws://127.0.0.1:${wsPort}`)
  await jsApi(nc, `STREAM.CREATE.${NATS_STREAM}`, {
    name: NATS_STREAM,
    subjects: ["bench.>"],
    storage: "file",
    retention: "limits",
    discard: "old",
    max_msgs: -1,
    max_bytes: -1,
    max_age: 0,
    num_replicas: 1
  })
  nc.close()
  const version = spawnSync(bin, ["--version"], { encoding: "utf8" }).stdout.trim()
  return {
    system: "nats",
    pid: child.pid!,
    spawnedAtMs,
    child,
    notes: [`${version}: JetStream file store (default sync interval, no fsync per message); subscribers are core subscriptions on the stream subjects, replay is a push consumer`],
    target: { system: "nats", wsUrl: `ws://127.0.0.1:${wsPort}` },
    alive: alive(child),
    stop: async () => {
      await stopChild(child, 10_000)
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
}
