/**
 * Child processes of the bench: servers pinned to the server core, generators to the generator
 * core (`taskset -c`, when it exists), all killed when the bench exits or fails.
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as net from "node:net"
import type { GenMessage, Job, ParentMessage } from "./common.ts"

export const HAS_TASKSET = spawnSync("taskset", ["-c", "0", "true"], { stdio: "ignore" }).status === 0

/** Core layout: server on core 0, generators (and the orchestrator) on core 1, if there are two. */
export const cores = (cpuCount: number) =>
  cpuCount >= 2 ? { server: "0", generators: "1" } : { server: undefined, generators: undefined }

const children = new Set<ChildProcess>()

export const pinned = (core: string | undefined, cmd: string, args: ReadonlyArray<string>) =>
  HAS_TASKSET && core !== undefined ? { cmd: "taskset", args: ["-c", core, cmd, ...args] } : { cmd, args: [...args] }

export const track = (child: ChildProcess) => {
  children.add(child)
  child.once("exit", () => children.delete(child))
  return child
}

/** Kills every child still running (SIGTERM, then SIGKILL after `graceMs`). */
export const killAll = async (graceMs = 3000) => {
  const alive = [...children].filter((c) => c.exitCode === null && c.signalCode === null)
  for (const c of alive) c.kill("SIGTERM")
  const deadline = Date.now() + graceMs
  while (Date.now() < deadline && alive.some((c) => c.exitCode === null && c.signalCode === null)) {
    await new Promise((r) => setTimeout(r, 50))
  }
  for (const c of alive) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL")
}

let exiting = false
export const installExitHandlers = () => {
  const killSync = () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL")
  }
  process.on("exit", killSync)
  for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    process.on(sig, () => {
      if (exiting) return
      exiting = true
      process.stderr.write(`\nbench: ${sig}, stopping children\n`)
      killAll(2000).finally(() => process.exit(130))
    })
  }
}

/** Stops one child gracefully (SIGTERM), SIGKILL after `graceMs`. */
export const stopChild = async (child: ChildProcess, graceMs: number) => {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>((r) => child.once("exit", () => r()))
  child.kill("SIGTERM")
  const t = setTimeout(() => child.kill("SIGKILL"), graceMs)
  await exited
  clearTimeout(t)
}

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = net.createServer()
    s.unref()
    s.on("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo
      s.close(() => resolve(port))
    })
  })

/** Resident set size of a process, in bytes (from /proc/<pid>/status). */
export const rssBytes = (pid: number): number => {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8")
  const m = /VmRSS:\s+(\d+) kB/.exec(status)
  return m ? Number(m[1]) * 1024 : Number.NaN
}

/** Cumulative CPU time (user + system) of a process, in ms (from /proc/<pid>/stat). */
export const cpuTimeMs = (pid: number): number => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    const ticks = Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])
    return (ticks * 1000) / 100 // CLK_TCK is 100 on Linux
  } catch {
    return Number.NaN
  }
}

// ---------------------------------------------------------------------------------------------
// Generators

const LOADGEN = new URL("../loadgen.ts", import.meta.url).pathname

export class Gen {
  readonly child: ChildProcess
  private readonly queue: Array<GenMessage> = []
  private waiters: Array<() => void> = []
  private exited: string | undefined

  constructor(core: string | undefined) {
    const genFlags = process.env["BENCH_GEN_NODE_ARGS"]?.split(" ").filter((a) => a !== "") ?? []
    const { cmd, args } = pinned(core, process.execPath, [...genFlags, LOADGEN])
    this.child = track(spawn(cmd, args, { stdio: ["ignore", "inherit", "inherit", "ipc"] }))
    this.child.on("message", (m: GenMessage) => {
      this.queue.push(m)
      this.wake()
    })
    this.child.once("exit", (code, signal) => {
      this.exited = `generator exited (${code ?? signal})`
      this.wake()
    })
  }

  private wake() {
    const w = this.waiters
    this.waiters = []
    for (const f of w) f()
  }

  send(m: ParentMessage) {
    this.child.send(m)
  }

  start(job: Job) {
    this.send({ type: "job", job })
  }

  /** Next message of `type` (an `error` message, or the process exiting, rejects). */
  async next<T extends GenMessage["type"]>(type: T, timeoutMs = 600_000): Promise<Extract<GenMessage, { type: T }>> {
    const deadline = Date.now() + timeoutMs
    while (true) {
      const i = this.queue.findIndex((m) => m.type === type || m.type === "error")
      if (i >= 0) {
        const m = this.queue.splice(i, 1)[0]!
        if (m.type === "error") throw new Error(`generator failed: ${m.message}`)
        return m as Extract<GenMessage, { type: T }>
      }
      if (this.exited) throw new Error(this.exited)
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`generator: timed out waiting for ${type}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  async result<R>(timeoutMs?: number): Promise<R> {
    return (await this.next("result", timeoutMs)).result as R
  }

  async close() {
    if (this.child.exitCode === null && this.child.connected) {
      // It exits on its own (writing a `--cpu-prof` profile, when BENCH_GEN_NODE_ARGS asks for one).
      const exited = new Promise<void>((r) => this.child.once("exit", () => r()))
      this.send({ type: "close" })
      let timer: ReturnType<typeof setTimeout> | undefined
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 3000)))])
      clearTimeout(timer)
    }
    await stopChild(this.child, 3000).catch(() => {})
  }
}

/** CPU time (ms) of a process and all its descendants (Khala: the daemon and its Postgres). */
export const treeCpuMs = (root: number): number => {
  const parent = new Map<number, number>()
  const own = new Map<number, number>()
  for (const name of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, "utf8")
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
      parent.set(Number(name), Number(fields[1]))
      own.set(Number(name), ((Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14])) * 1000) / 100)
    } catch {
      // exited meanwhile
    }
  }
  let total = 0
  for (const [pid, ms] of own) {
    let p: number | undefined = pid
    for (let depth = 0; p !== undefined && p > 1 && depth < 32; depth++) {
      if (p === root) {
        total += ms
        break
      }
      p = parent.get(p)
    }
  }
  return total
}

/** Busy time (ms, all processes) of one CPU core since boot, from /proc/stat. */
export const coreBusyMs = (core: string | undefined): number => {
  if (core === undefined) return Number.NaN
  const line = fs.readFileSync("/proc/stat", "utf8").split("\n").find((l) => l.startsWith(`cpu${core} `))
  if (!line) return Number.NaN
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  return ((total - idle) * 1000) / 100
}
