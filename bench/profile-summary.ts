/**
 * Summarises a V8 `.cpuprofile` (from `node --cpu-prof`): self time by function and by file /
 * package. `node bench/profile-summary.ts <file.cpuprofile> [top] [fromMs,toMs]`.
 */
import * as fs from "node:fs"

interface CallFrame {
  readonly functionName: string
  readonly url: string
  readonly lineNumber: number
}
interface ProfileNode {
  readonly id: number
  readonly callFrame: CallFrame
}
interface Profile {
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
  readonly startTime: number
  readonly endTime: number
}

export interface ProfileRow {
  readonly name: string
  readonly selfMs: number
  readonly percent: number
}

export interface ProfileSummary {
  readonly totalMs: number
  readonly idleMs: number
  readonly byFunction: ReadonlyArray<ProfileRow>
  readonly byFile: ReadonlyArray<ProfileRow>
}

const shortUrl = (url: string) => {
  if (!url) return "(native)"
  const u = url.replace(/^file:\/\//, "")
  const nm = u.lastIndexOf("node_modules/")
  if (nm >= 0) {
    const rest = u.slice(nm + "node_modules/".length).split("/")
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}/…/${rest[rest.length - 1]}` : `${rest[0]}/…/${rest[rest.length - 1]}`
  }
  const src = u.indexOf("/src/")
  return src >= 0 ? u.slice(src + 1) : u.startsWith("node:") ? u : u.split("/").slice(-2).join("/")
}

const pkgOf = (url: string) => {
  if (!url) return "(native / V8)"
  const u = url.replace(/^file:\/\//, "")
  const nm = u.lastIndexOf("node_modules/")
  if (nm >= 0) {
    const rest = u.slice(nm + "node_modules/".length).split("/")
    return rest[0]!.startsWith("@") ? `${rest[0]}/${rest[1]}` : rest[0]!
  }
  if (u.startsWith("node:")) return "node: (core)"
  const src = u.indexOf("/src/")
  return src >= 0 ? u.slice(src + 1) : u
}

/**
 * `window`: only samples between these offsets (ms) from the start of the profile (the process
 * start, within a few ms), e.g. to leave out startup and shutdown.
 */
export const summarize = (file: string, top = 25, window?: { readonly fromMs: number; readonly toMs: number }): ProfileSummary => {
  const p = JSON.parse(fs.readFileSync(file, "utf8")) as Profile
  const byId = new Map<number, CallFrame>()
  for (const n of p.nodes) byId.set(n.id, n.callFrame)
  const self = new Map<number, number>()
  let t = 0
  for (let i = 0; i < p.samples.length; i++) {
    const id = p.samples[i]!
    const dt = p.timeDeltas[i] ?? 0
    t += dt
    if (window && (t / 1000 < window.fromMs || t / 1000 > window.toMs)) continue
    self.set(id, (self.get(id) ?? 0) + dt)
  }
  let totalUs = 0
  let idleUs = 0
  const fnAgg = new Map<string, number>()
  const fileAgg = new Map<string, number>()
  for (const [id, us] of self) {
    const cf = byId.get(id)!
    totalUs += us
    if (cf.functionName === "(idle)") {
      idleUs += us
      continue
    }
    const key = cf.url
      ? `${cf.functionName || "(anonymous)"} ${shortUrl(cf.url)}:${cf.lineNumber + 1}`
      : cf.functionName || "(anonymous)"
    fnAgg.set(key, (fnAgg.get(key) ?? 0) + us)
    const pk = cf.url ? pkgOf(cf.url) : cf.functionName.startsWith("(") ? cf.functionName : "(native / V8)"
    fileAgg.set(pk, (fileAgg.get(pk) ?? 0) + us)
  }
  const busyUs = totalUs - idleUs
  const rows = (m: Map<string, number>) =>
    [...m.entries()]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, us]) => ({ name, selfMs: us / 1000, percent: busyUs > 0 ? (100 * us) / busyUs : 0 }))
  return { totalMs: totalUs / 1000, idleMs: idleUs / 1000, byFunction: rows(fnAgg), byFile: rows(fileAgg) }
}

export const summaryMarkdown = (s: ProfileSummary, title: string): string => {
  const lines = [
    `### ${title}`,
    "",
    `${(s.totalMs / 1000).toFixed(1)} s of samples, of which idle ${(s.idleMs / 1000).toFixed(1)} s; percentages are of the busy time. Sampling is by wall clock: with Postgres pinned to the same core, time the daemon spends preempted inside a socket write shows up as \`writeBuffer\`/\`writev\` self time.`,
    "",
    "| self ms | % busy | function |",
    "|---:|---:|---|",
    ...s.byFunction.map((r) => `| ${r.selfMs.toFixed(0)} | ${r.percent.toFixed(1)} | \`${r.name.replaceAll("|", "\\|")}\` |`),
    "",
    "| self ms | % busy | file / package |",
    "|---:|---:|---|",
    ...s.byFile.map((r) => `| ${r.selfMs.toFixed(0)} | ${r.percent.toFixed(1)} | \`${r.name}\` |`),
    ""
  ]
  return lines.join("\n")
}

if (import.meta.main) {
  const file = process.argv[2]
  if (!file) {
    process.stderr.write("usage: node bench/profile-summary.ts <file.cpuprofile> [top]\n")
    process.exit(2)
  }
  const [from, to] = (process.argv[4] ?? "").split(",").map(Number)
  const window = from !== undefined && to !== undefined && !Number.isNaN(from) && !Number.isNaN(to) ? { fromMs: from, toMs: to } : undefined
  process.stdout.write(summaryMarkdown(summarize(file, Number(process.argv[3] ?? 25), window), file))
}
