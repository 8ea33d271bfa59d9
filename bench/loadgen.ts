/**
 * Load generator process (forked by bench/run.ts, pinned to the generator core). Receives one job
 * over IPC and reports back:
 *
 *   subscribe  open connections → `ready`; on `expect` wait until every subscription received its
 *              expected message count (or the timeout) → `result` (SubscribeResult); `close` ends.
 *   publish    publish (saturating a window of acknowledged publishes, or at a fixed rate) for a
 *              duration and/or a count → `result` (PublishResult).
 *   ingest     N writers, each one acknowledged publish (or one batch of `batch` events) at a time on
 *              its own topic → `result`.
 *   replay     prepare → `ready`; on `go` replay one topic from its beginning → `result`.
 */
import { Histogram, type IngestJob, type Job, nowMs, type ParentMessage, type PublishJob, type PublishResult, type SubscribeJob, type SubscribeResult, type Target } from "./lib/common.ts"
import { natsClients, socketioClients, wsClients } from "./clients/baselines.ts"
import { khalaClients } from "./clients/khala.ts"
import { type ClientFactory, type Publisher, type SubConn, SubStats } from "./clients/types.ts"

const send = (m: unknown) =>
  new Promise<void>((resolve) => {
    if (!process.send) return resolve()
    process.send(m, undefined, {}, () => resolve())
  })

const factory = (t: Target): ClientFactory => {
  switch (t.system) {
    case "khala":
      return khalaClients(t)
    case "ws":
      return wsClients(t)
    case "socketio":
      return socketioClients(t)
    case "nats":
      return natsClients(t)
  }
}

const cpuMs = (since: NodeJS.CpuUsage) => {
  const u = process.cpuUsage(since)
  return (u.user + u.system) / 1000
}

let onParent: (m: ParentMessage) => void = () => {}
process.on("message", (m: ParentMessage) => {
  if (m.type === "job") {
    run(m.job).catch(async (e: unknown) => {
      await send({ type: "error", message: e instanceof Error ? (e.stack ?? e.message) : String(e) })
      process.exit(1)
    })
  } else if (m.type === "close") {
    process.exit(0)
  } else onParent(m)
})
process.on("disconnect", () => process.exit(0))

const nextMessage = <T extends ParentMessage["type"]>(type: T) =>
  new Promise<Extract<ParentMessage, { type: T }>>((resolve) => {
    onParent = (m) => {
      if (m.type === type) resolve(m as Extract<ParentMessage, { type: T }>)
    }
  })

const run = async (job: Job) => {
  const f = factory(job.target)
  switch (job.kind) {
    case "subscribe":
      return subscribe(f, job)
    case "publish":
      return publish(f, job)
    case "ingest":
      return ingest(f, job)
    case "replay": {
      const r = f.replayer()
      await r.prepare(job.topic)
      const go = nextMessage("go")
      await send({ type: "ready", opened: 1, failed: 0, errors: [] })
      await go
      const result = await r.go(job.topic, job.expected)
      r.close()
      return send({ type: "result", result })
    }
  }
}

const subscribe = async (f: ClientFactory, job: SubscribeJob) => {
  const stats = new SubStats()
  if (job.trackDeliveries) stats.deliveries = []
  const conns: Array<SubConn> = []
  let failed = 0
  const failures: Array<string> = []
  let next = 0
  const opener = async () => {
    while (next < job.conns.length) {
      const topics = job.conns[next++]!
      try {
        const c = f.subscriber(topics, stats, job.resume)
        conns.push(c)
        await c.ready
      } catch (e) {
        failed++
        if (failures.length < 5) failures.push(String(e))
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, job.connectConcurrency) }, opener))
  // Counters start after setup (replays of earlier entries are not part of the measurement).
  const expect = nextMessage("expect")
  const cpu0 = process.cpuUsage()
  await send({ type: "ready", opened: conns.length - failed, failed, errors: failures })
  const e = await expect
  const states = conns.flatMap((c) => c.states)
  const unknown = states.filter((s) => e.counts[s.topic] === undefined)
  if (unknown.length > 0) stats.error(`no expected count for ${unknown.length} subscriptions (e.g. ${unknown[0]!.topic})`)
  const missing = () => {
    let n = 0
    for (const s of states) n += Math.max(0, (e.counts[s.topic] ?? 0) - s.messages)
    return n
  }
  const deadline = Date.now() + e.timeoutMs
  while (missing() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20))
  const left = missing()
  let ackToClient: Histogram | undefined
  let beforeAck = 0
  if (stats.deliveries && e.acks) {
    ackToClient = new Histogram()
    const d = stats.deliveries
    for (let i = 0; i < d.length; i += 2) {
      const ack = e.acks[d[i]!.toFixed(3)]
      if (ack === undefined) continue
      const ms = d[i + 1]! - ack
      if (ms < 0) beforeAck++
      ackToClient.record(Math.max(0, ms))
    }
  }
  const result: SubscribeResult = {
    conns: conns.length,
    subscriptions: states.length,
    messages: stats.messages,
    items: stats.items,
    frames: stats.frames,
    bytes: stats.bytes,
    gaps: stats.gaps,
    duplicates: stats.duplicates,
    violations: stats.violations,
    missing: left,
    complete: left === 0,
    firstRecvMs: stats.firstRecvMs,
    lastRecvMs: stats.lastRecvMs,
    lastMsgMs: stats.lastMsgMs,
    latency: stats.latency.toJSON(),
    commitLatency: stats.commitLatency.toJSON(),
    ...(ackToClient ? { ackToClient: ackToClient.toJSON(), beforeAck } : {}),
    reconnects: stats.reconnects,
    errors: stats.errors,
    cpuMs: cpuMs(cpu0)
  }
  await send({ type: "result", result })
  // stay connected until told to close (the orchestrator may still measure the server)
}

/** Publishes with at most `window` acknowledged publishes in flight, for a duration or a count. */
const publish = async (f: ClientFactory, job: PublishJob) => {
  const pub = await f.publisher()
  const s0 = nowMs()
  if (job.setup) await pub.setup(job.topics, 32)
  const setupMs = nowMs() - s0
  const result = await drive(pub, job)
  pub.close()
  await send({ type: "result", result: { ...result, setupMs } })
}

const drive = async (pub: Publisher, job: PublishJob): Promise<Omit<PublishResult, "setupMs">> => {
  const counts: Record<string, number> = {}
  const issuedN: Record<string, number> = {}
  for (const t of job.topics) {
    counts[t] = 0
    issuedN[t] = job.firstN ?? 0
  }
  const ack = new Histogram()
  const acks: Record<string, number> | undefined = job.trackAcks ? {} : undefined
  let published = 0
  let errors = 0
  const errorSamples: Array<string> = []
  let rr = 0
  let issued = 0
  const cpu0 = process.cpuUsage()
  const startMs = nowMs()
  let endMs = startMs
  const stopAt = job.durationMs === undefined ? Number.POSITIVE_INFINITY : startMs + job.durationMs
  const maxCount = job.count ?? Number.POSITIVE_INFINITY
  const one = async () => {
    const topic = job.topics[rr++ % job.topics.length]!
    const n = ++issuedN[topic]!
    issued++
    const t0 = nowMs()
    try {
      const sent = await pub.publish(topic, n, job.padBytes)
      published++
      counts[topic]!++
      const t1 = nowMs()
      if (acks && typeof sent === "number") acks[sent.toFixed(3)] = t1
      ack.record(t1 - t0)
      if (t1 > endMs) endMs = t1
    } catch (e) {
      errors++
      if (errorSamples.length < 5) errorSamples.push(String(e))
    }
  }
  if (job.mode === "saturate") {
    const worker = async () => {
      while (issued < maxCount && nowMs() < stopAt) await one()
    }
    await Promise.all(Array.from({ length: job.window }, worker))
  } else {
    const rate = job.rate ?? 100
    const inflight = new Set<Promise<void>>()
    while (issued < maxCount && nowMs() < stopAt) {
      const due = Math.floor(((nowMs() - startMs) * rate) / 1000) + 1
      while (issued < due && issued < maxCount && inflight.size < job.window) {
        const p = one()
        inflight.add(p)
        p.finally(() => inflight.delete(p))
      }
      const nextDue = startMs + ((issued) * 1000) / rate
      await new Promise((r) => setTimeout(r, Math.max(0, nextDue - nowMs())))
    }
    await Promise.all(inflight)
  }
  return { counts, published, startMs, endMs, errors, errorSamples, ackLatency: ack.toJSON(), ...(acks ? { acks } : {}), cpuMs: cpuMs(cpu0) }
}

/** N writers, each with one acknowledged publish (or batch) in flight on its own topic. */
const ingest = async (f: ClientFactory, job: IngestJob) => {
  const topics = Array.from({ length: job.writers }, (_, i) => `${job.topicPrefix}-${i}`)
  const pubs = await Promise.all(topics.map(() => f.publisher()))
  const s0 = nowMs()
  if (job.workerHeartbeats) await pubs[0]!.setupWorkers!(topics, 32)
  else await pubs[0]!.setup(topics, 32)
  const setupMs = nowMs() - s0
  const counts: Record<string, number> = {}
  const ack = new Histogram()
  let published = 0
  let errors = 0
  const errorSamples: Array<string> = []
  const cpu0 = process.cpuUsage()
  const startMs = nowMs()
  const stopAt = startMs + job.durationMs
  let endMs = startMs
  await Promise.all(topics.map(async (topic, i) => {
    const pub = pubs[i]!
    let n = 0
    while (nowMs() < stopAt) {
      const t0 = nowMs()
      try {
        if (job.workerHeartbeats) {
          await pub.heartbeat!(topic, ++n, job.padBytes)
          published++
        } else if (job.batch) {
          await pub.publishMany!(topic, n + 1, job.batch, job.padBytes)
          n += job.batch
          published += job.batch
        } else {
          await pub.publish(topic, ++n, job.padBytes)
          published++
        }
        const t1 = nowMs()
        ack.record(t1 - t0)
        if (t1 > endMs) endMs = t1
      } catch (e) {
        errors++
        if (errorSamples.length < 5) errorSamples.push(String(e))
      }
    }
    counts[topic] = n
  }))
  for (const p of pubs) p.close()
  const result: PublishResult = {
    counts,
    published,
    startMs,
    endMs,
    errors,
    errorSamples,
    ackLatency: ack.toJSON(),
    setupMs,
    cpuMs: cpuMs(cpu0)
  }
  await send({ type: "result", result })
}
