/**
 * CPU of the commit path's in-memory part — projecting run events and encoding their journal
 * entries (`projectStep`, `bodyEncoder`, `encodeUpdate`, `bodyMd5`, the stored hash of each
 * entity's last step) — per event, without a database, in one process:
 *
 *   node bench/encode-cost.ts [one|spread] [repo]
 *
 * `one`: batches of 500 events on one run; `spread`: batches of 1000 events over 1000 runs (the
 * many-topics shape). `repo` (default: this checkout) is the tree whose `src/` is measured, so two
 * worktrees can be compared on the same box. Prints the median and minimum of seven rounds of 20
 * batches (after 20 to warm up). Pin it (`taskset -c 1`) for steadier figures.
 */
import * as path from "node:path"

const shape = process.argv[2] ?? "one"
const repo = path.resolve(process.argv[3] ?? path.join(import.meta.dirname, ".."))
const P = await import(path.join(repo, "src/services/Projector.ts"))
const U = await import(path.join(repo, "src/domain/UpdateEncoding.ts"))
const J = await import(path.join(repo, "src/services/Journal.ts"))

const size = shape === "one" ? 500 : 1000
const pad = "p".repeat(200)

const batch = (b: number): number => {
  const docs = new Map<string, { readonly hash: string }>()
  const now = 1_765_000_000_000 + b * 1000
  const encode = U.bodyEncoder()
  const hashes = new Map<unknown, Uint8Array>()
  let bytes = 0
  for (let k = 0; k < size; k++) {
    const runId = shape === "one" ? "r0" : `r${k}`
    const event = {
      runId,
      ownerUserId: `o-${runId}`,
      seq: b * size + k + 2,
      type: "run.step",
      payload: { ts: `@@T${now};`, n: k, pad },
      occurredAtMs: now
    }
    const spec = P.runProjectionSpec(event)
    const step = P.projectStep(spec, docs.get(spec.docKey))
    docs.set(spec.docKey, step)
    for (const d of step.drafts) {
      const body = encode(d.body, d.bodyPb)
      const header = { seq: k + 1, kind: d.kind, docKey: d.docKey, docVersion: d.docVersion, schemaVersion: 1, occurredAtMs: d.occurredAtMs, committedAtMs: now }
      const entry = U.encodeUpdate(header, body)
      if (!hashes.has(body)) hashes.set(body, J.bodyMd5(body.pb))
      bytes += entry.pb.length + entry.json.length
    }
  }
  for (const d of docs.values()) bytes += d.hash.length // stored with each entity's last step
  return bytes
}

for (let i = 0; i < 20; i++) batch(i)
const rounds: Array<number> = []
for (let r = 0; r < 7; r++) {
  const start = process.cpuUsage()
  for (let i = 0; i < 20; i++) batch(i)
  const used = process.cpuUsage(start)
  rounds.push((used.user + used.system) / (20 * size))
}
rounds.sort((a, b) => a - b)
console.log(`${shape} (${repo}): project + encode ${rounds[3]!.toFixed(2)} µs per event (median of 7; min ${rounds[0]!.toFixed(2)})`)
