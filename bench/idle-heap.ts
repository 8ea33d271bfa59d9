/**
 * Idle-connection memory probe: starts the daemon (as the bench does, fresh database on
 * DATABASE_URL), opens N idle authenticated subscribers (each on its own `user/idle<i>/runs`, as
 * the bench's idle scenario), and reports the daemon's RSS and V8 heap per connection. With
 * `--snapshot`, the daemon writes a heap snapshot before and after (`--heapsnapshot-signal`) and
 * the difference is summarised by (node type, constructor name) per connection.
 *
 *   node bench/idle-heap.ts [--n=2000] [--snapshot] [--keep]
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { parseArgs } from "node:util"
import WebSocket from "ws"
import { sleep } from "./lib/common.ts"
import { decodeFull, helloFrame, subscribeFrame } from "./lib/khalaWire.ts"
import { rssBytes } from "./lib/proc.ts"
import { startKhala } from "./lib/servers.ts"

const { values: flags } = parseArgs({
  options: { n: { type: "string" }, snapshot: { type: "boolean" }, keep: { type: "boolean" } },
  strict: true
})
const N = Number(flags.n ?? 2000)
const SUB = "khala.v1.proto" as const

const snapDir = fs.mkdtempSync(path.join(os.tmpdir(), "khala-heap-"))
process.env["NODE_OPTIONS"] = [
  process.env["NODE_OPTIONS"] ?? "",
  "--heapsnapshot-signal=SIGUSR2",
  `--diagnostic-dir=${snapDir}`
].join(" ").trim()

const logDir = fs.mkdtempSync(path.join(os.tmpdir(), "khala-heap-log-"))
const server = await startKhala({ core: undefined, logDir, cpuProfDir: undefined, subprotocol: SUB })
delete process.env["NODE_OPTIONS"]
const token = server.target.syncToken!

const open = (topic: string) =>
  new Promise<WebSocket>((resolve, reject) => {
    const ws = new WebSocket(server.target.wsUrl, [SUB])
    ws.binaryType = "nodebuffer"
    const t = setTimeout(() => reject(new Error(`no CaughtUp for ${topic}`)), 60_000)
    ws.once("open", () => {
      ws.send(helloFrame(SUB, token))
      ws.send(subscribeFrame(SUB, "r1", [{ topic, afterSeq: 0, epoch: "" }]))
    })
    ws.on("message", (data: Buffer) => {
      const f = decodeFull(SUB, data)
      if (f.case === "caughtUp") {
        clearTimeout(t)
        resolve(ws)
      } else if (f.case === "error" || f.case === "goodbye") {
        clearTimeout(t)
        reject(new Error(`${topic}: ${JSON.stringify(f.value)}`))
      }
    })
    ws.once("error", reject)
  })

const openMany = async (prefix: string, n: number) => {
  const out: Array<WebSocket> = []
  let next = 0
  await Promise.all(Array.from({ length: 64 }, async () => {
    while (next < n) {
      const i = next++
      out.push(await open(`user/${prefix}${i}/runs`))
    }
  }))
  return out
}

const snapshot = async (label: string): Promise<string | undefined> => {
  if (!flags.snapshot) return undefined
  const before = new Set(fs.readdirSync(snapDir))
  process.kill(server.pid, "SIGUSR2")
  // The file appears when the write starts; wait until its size is stable.
  while (true) {
    await sleep(500)
    const added = fs.readdirSync(snapDir).filter((f) => !before.has(f) && f.endsWith(".heapsnapshot"))
    if (added.length === 0) continue
    const file = path.join(snapDir, added[0]!)
    const s1 = fs.statSync(file).size
    await sleep(1500)
    if (fs.statSync(file).size === s1 && s1 > 0) {
      const named = path.join(snapDir, `${label}.heapsnapshot`)
      fs.renameSync(file, named)
      return named
    }
  }
}

/** Self size and count per (type, name) of a heap snapshot. */
const summarize = (file: string) => {
  const snap = JSON.parse(fs.readFileSync(file, "utf8")) as {
    snapshot: { meta: { node_fields: Array<string>; node_types: [Array<string>] } }
    nodes: Array<number>
    strings: Array<string>
  }
  const fields = snap.snapshot.meta.node_fields
  const types = snap.snapshot.meta.node_types[0]
  const width = fields.length
  const iType = fields.indexOf("type")
  const iName = fields.indexOf("name")
  const iSize = fields.indexOf("self_size")
  const out = new Map<string, { count: number; bytes: number }>()
  let total = 0
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + iType]!]!
    let name = type === "object" || type === "closure" || type === "native" || type === "hidden" || type === "code"
      ? snap.strings[snap.nodes[i + iName]!]!
      : ""
    if (name.length > 60) name = name.slice(0, 60)
    const key = `${type}:${name}`
    const size = snap.nodes[i + iSize]!
    total += size
    const e = out.get(key) ?? { count: 0, bytes: 0 }
    e.count++
    e.bytes += size
    out.set(key, e)
  }
  return { out, total }
}

const mem = () => rssBytes(server.pid)

try {
  // Warm-up: code paths compiled, pools opened; then closed again.
  const warm = await openMany("warm", 200)
  for (const ws of warm) ws.close()
  await sleep(3000)
  const s0 = await snapshot("before")
  await sleep(1000)
  const rss0 = mem()
  const t0 = Date.now()
  const conns = await openMany("idle", N)
  const connectS = (Date.now() - t0) / 1000
  await sleep(3000)
  const rss1 = mem()
  console.log(`${N} idle subscribers in ${connectS.toFixed(1)} s (${(N / connectS).toFixed(0)}/s)`)
  console.log(`RSS ${(rss0 / 1048576).toFixed(1)} → ${(rss1 / 1048576).toFixed(1)} MiB: ${((rss1 - rss0) / N / 1024).toFixed(1)} KB/conn`)
  const s1 = await snapshot("after")
  if (s0 && s1) {
    const a = summarize(s0)
    const b = summarize(s1)
    console.log(`heap (snapshot self sizes) ${(a.total / 1048576).toFixed(1)} → ${(b.total / 1048576).toFixed(1)} MiB: ${((b.total - a.total) / N / 1024).toFixed(2)} KB/conn`)
    const rows = [...b.out.entries()].map(([k, v]) => {
      const o = a.out.get(k) ?? { count: 0, bytes: 0 }
      return { k, count: (v.count - o.count) / N, bytes: (v.bytes - o.bytes) / N }
    }).filter((r) => Math.abs(r.bytes) >= 16).sort((x, y) => y.bytes - x.bytes)
    console.log("per connection: bytes  count  type:name")
    for (const r of rows.slice(0, 60)) console.log(`${r.bytes.toFixed(0).padStart(8)} ${r.count.toFixed(2).padStart(7)}  ${r.k}`)
    if (!flags.keep) fs.rmSync(snapDir, { recursive: true, force: true })
    else console.log(`snapshots kept in ${snapDir}`)
  }
  for (const ws of conns) ws.terminate()
} finally {
  await server.stop()
}
process.exit(0)
