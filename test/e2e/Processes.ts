/**
 * Process harness for the end-to-end tests: spawns the REAL entry points (`node src/main.ts` as
 * `npm start` runs it, and `bin/khala.mjs`) with a clean environment, waits for readiness with a
 * bounded deadline, stops them with a signal and measures how they exit, and checks that no
 * embedded postgres outlives its daemon. Every spawned child and temp dir is tracked so `cleanup()`
 * (called from `afterAll`) can kill and remove them even when a test failed half-way.
 */
import { type ChildProcess, spawn } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { daemonNodeFlags } from "../../bin/node-flags.mjs"

export const ROOT = path.resolve(import.meta.dirname, "..", "..")
/** The Node 24 that `npm start` uses (`node_modules/.bin` is first on PATH under npm scripts). */
export const NODE24 = path.join(ROOT, "node_modules", ".bin", "node")
export const KHALA_BIN = path.join(ROOT, "bin", "khala.mjs")

const children = new Set<ChildProcess>()
const tempDirs = new Set<string>()

export const tempDir = (prefix: string) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix))
  tempDirs.add(dir)
  return dir
}

/** A port that was free a moment ago (listen on 0, read it, close). */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = net.createServer()
    server.on("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo
      server.close(() => resolve(port))
    })
  })

/**
 * The test runner's environment without anything that would change what the daemon does:
 * no DATABASE_URL (embedded Postgres), no KHALA_* settings or secrets, no OTLP exporter.
 */
export const cleanEnv = (overrides: Record<string, string> = {}): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (key === "DATABASE_URL" || key.startsWith("KHALA_") || key.startsWith("OTEL_")) continue
    env[key] = value
  }
  env.NODE_ENV = "development"
  return { ...env, ...overrides }
}

export interface Exited {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
}

export interface Spawned {
  readonly child: ChildProcess
  readonly exited: Promise<Exited>
  /** stdout and stderr interleaved, as received so far. */
  readonly output: () => string
  readonly stdout: () => string
  readonly stderr: () => string
}

export const spawnTracked = (command: string, args: ReadonlyArray<string>, env: NodeJS.ProcessEnv): Spawned => {
  const child = spawn(command, [...args], { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] })
  children.add(child)
  let all = ""
  let out = ""
  let err = ""
  child.stdout!.on("data", (d: Buffer) => {
    out += d
    all += d
  })
  child.stderr!.on("data", (d: Buffer) => {
    err += d
    all += d
  })
  const exited = new Promise<Exited>((resolve) => {
    child.once("error", (error) => {
      all += `\nspawn error: ${error.message}`
      resolve({ code: null, signal: null })
    })
    child.once("close", (code, signal) => {
      children.delete(child)
      resolve({ code, signal })
    })
  })
  return { child, exited, output: () => all, stdout: () => out, stderr: () => err }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Resolves to the exit, or to `undefined` if the process is still running after `ms`. */
export const exitWithin = (p: Spawned, ms: number) =>
  Promise.race([p.exited, sleep(ms).then(() => undefined)])

export interface Daemon extends Spawned {
  readonly port: number
  readonly dataDir: string
  readonly url: string
}

/** Spawns the daemon exactly as `npm start` does: `node src/main.ts` on Node 24 with its flags. */
export const startDaemon = async (dataDir: string, extraEnv: Record<string, string> = {}): Promise<Daemon> => {
  const port = await freePort()
  const env = cleanEnv({ KHALA_DATA_DIR: dataDir, KHALA_PORT: String(port), KHALA_HOST: "127.0.0.1", ...extraEnv })
  const spawned = spawnTracked(NODE24, [...daemonNodeFlags, "src/main.ts"], env) // as `npm start`
  return { ...spawned, port, dataDir, url: `http://127.0.0.1:${port}` }
}

/** Polls `GET /readyz` until 200; fails early if the process exits, or after `deadlineMs`. */
export const waitReady = async (daemon: Daemon, deadlineMs = 60_000) => {
  const started = performance.now()
  let exited: Exited | undefined
  void daemon.exited.then((e) => (exited = e))
  let last = "no answer yet"
  while (performance.now() - started < deadlineMs) {
    if (exited) throw new Error(`daemon exited (${JSON.stringify(exited)}) before ready:\n${daemon.output()}`)
    try {
      const res = await fetch(`${daemon.url}/readyz`, { signal: AbortSignal.timeout(2_000) })
      last = `${res.status} ${await res.text()}`
      if (res.status === 200) return performance.now() - started
    } catch (error) {
      last = String(error)
    }
    await sleep(200)
  }
  throw new Error(`daemon not ready within ${deadlineMs} ms (last /readyz: ${last}):\n${daemon.output()}`)
}

/** Sends `signal` and waits up to `ms` for the exit; `undefined` if it did not exit in time. */
export const stopWith = async (p: Spawned, signal: NodeJS.Signals, ms: number) => {
  const started = performance.now()
  p.child.kill(signal)
  const exit = await exitWithin(p, ms)
  return exit === undefined ? undefined : { ...exit, ms: performance.now() - started }
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as { code?: unknown }).code === "EPERM"
  }
}

/**
 * Postgres processes still running on `<dataDir>/pg`: the pid in postmaster.pid if it is alive,
 * plus (on Linux) any process whose command line names that directory.
 */
export const livePostgres = (dataDir: string): Array<number> => {
  const pgDir = path.resolve(dataDir, "pg")
  const pids = new Set<number>()
  try {
    const pid = Number(fs.readFileSync(path.join(pgDir, "postmaster.pid"), "utf8").split("\n")[0])
    if (pid > 0 && alive(pid)) pids.add(pid)
  } catch {}
  if (process.platform === "linux") {
    for (const entry of fs.readdirSync("/proc")) {
      if (!/^[0-9]+$/.test(entry)) continue
      try {
        const cmdline = fs.readFileSync(`/proc/${entry}/cmdline`, "utf8").replaceAll("\0", " ")
        if (cmdline.includes("postgres") && cmdline.includes(pgDir)) pids.add(Number(entry))
      } catch {}
    }
  }
  return [...pids]
}

/** Runs a command to completion (bounded), collecting output. */
export const runToExit = async (
  command: string,
  args: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv,
  timeoutMs = 60_000
) => {
  const p = spawnTracked(command, args, env)
  const exit = await exitWithin(p, timeoutMs)
  if (exit === undefined) {
    p.child.kill("SIGKILL")
    throw new Error(`${command} ${args.join(" ")} did not finish within ${timeoutMs} ms:\n${p.output()}`)
  }
  return { ...exit, stdout: p.stdout(), stderr: p.stderr() }
}

/** Kills whatever is still running (SIGTERM, then SIGKILL) and removes the temp dirs. */
export const cleanup = async () => {
  await Promise.all([...children].map(async (child) => {
    const closed = new Promise((r) => child.once("close", r))
    child.kill("SIGTERM")
    const done = await Promise.race([closed.then(() => true), sleep(10_000).then(() => false)])
    if (!done) {
      child.kill("SIGKILL")
      await Promise.race([closed, sleep(5_000)])
    }
  }))
  // A SIGKILLed daemon's postgres is stopped by its watchdog shortly after; give it a moment.
  for (const dir of tempDirs) {
    for (let i = 0; i < 50 && livePostgres(dir).length > 0; i++) await sleep(100)
    fs.rmSync(dir, { recursive: true, force: true })
  }
  tempDirs.clear()
}
