/**
 * Khala adapter: subscribers over `/sync/v1` (either subprotocol; one topic per connection),
 * publishers through the HTTP command path (`run.step` appends; one command per publish, or
 * coalesced into batch requests, two in flight, when `target.batch` is set), replay from seq 0.
 *
 * Bench topic `x` is the run `x` (Khala topic `run/x`, owned by user `o-x`). Every published
 * `run.step` yields two entries on `run/x` (the event and the run summary); the bench counts the
 * event as "the message" and checks the gapless per-topic seq over all entries.
 */
import WebSocket from "ws"
import { marker, nowMs, pad, type ReplayResult, type Target } from "../lib/common.ts"
import { HttpClient } from "../lib/http.ts"
import { decodeFull, helloFrame, khalaTopic, scanJsonUpdatesFrame, scanProtoFrame, subscribeFrame } from "../lib/khalaWire.ts"
import { type ClientFactory, type Publisher, type Replayer, SeqCheck, type SubConn, type SubStats, type TopicState } from "./types.ts"

const SLOW_CONSUMER_CLOSE = 4009

const runPath = (topic: string) => `/internal/v1/runs/${encodeURIComponent(topic)}/events`
const BATCH_PATH = "/internal/v1/runs/events/batch"
const WORKERS_PATH = "/internal/v1/codex/workers"
/**
 * Two batches in flight: one commits while the daemon validates and projects the next, so
 * Postgres' fsync and the daemon's CPU overlap. (Two batches may touch the same run; the server
 * orders them by their row locks, and the bench checks seqs, not publish order.)
 */
const MAX_BATCHES_IN_FLIGHT = 2

export const khalaClients = (target: Target): ClientFactory => {
  const subprotocol = target.subprotocol ?? "khala.v1.proto"
  const token = target.syncToken!

  const subscriber = (topics: ReadonlyArray<string>, stats: SubStats, resume: boolean): SubConn => {
    if (topics.length !== 1) throw new Error("the Khala bench client subscribes to one topic per connection")
    const topic = khalaTopic(topics[0]!)
    // keyed by the bench topic name, as the publisher's counts are
    const st: TopicState = { topic: topics[0]!, last: 0, messages: 0 }
    let epoch = ""
    let closing = false
    let ws: WebSocket | undefined
    let readyDone = false
    let resolveReady!: () => void
    let rejectReady!: (e: Error) => void
    const ready = new Promise<void>((res, rej) => {
      resolveReady = res
      rejectReady = rej
    })
    const fail = (msg: string) => {
      stats.error(msg)
      if (!readyDone) {
        readyDone = true
        rejectReady(new Error(msg))
      }
    }
    const onItem = (seq: number, committed: number, sent: number) => stats.item(st, seq, sent, committed)

    const handleControl = (frame: ReturnType<typeof decodeFull>) => {
      switch (frame.case) {
        case "welcome":
          ws!.send(subscribeFrame(subprotocol, "s", [{ topic, afterSeq: st.last, epoch }]))
          return
        case "subscribed":
          epoch = frame.value.topics[0]?.epoch ?? epoch
          return
        case "caughtUp":
          if (!readyDone) {
            readyDone = true
            resolveReady()
          }
          return
        case "error":
          fail(`error ${frame.value.code} ${frame.value.message}`)
          return
        case "goodbye":
          if (frame.value.code !== 9) stats.error(`goodbye ${frame.value.code} ${frame.value.message}`)
          return
        default:
          return
      }
    }

    const connect = () => {
      const sock = new WebSocket(target.wsUrl, [subprotocol], { perMessageDeflate: false })
      ws = sock
      sock.binaryType = "nodebuffer"
      sock.on("open", () => sock.send(helloFrame(subprotocol, token)))
      sock.on("message", (data: Buffer, isBinary: boolean) => {
        stats.frame(data.length)
        if (isBinary) {
          if (scanProtoFrame(data, onItem) !== 3) handleControl(decodeFull(subprotocol, data))
        } else if (!scanJsonUpdatesFrame(data, onItem)) handleControl(decodeFull(subprotocol, data.toString("utf8")))
      })
      sock.on("error", (e) => stats.error(`socket error: ${String(e)}`))
      sock.on("close", (code, reason) => {
        if (closing) return
        if (resume && readyDone && (code === SLOW_CONSUMER_CLOSE || code === 1006)) {
          stats.reconnects++
          setTimeout(connect, 20)
          return
        }
        fail(`closed ${code} ${reason.toString()}`)
      })
    }
    connect()
    return {
      ready,
      states: [st],
      close: () => {
        closing = true
        ws?.terminate()
      }
    }
  }

  const publisher = async (): Promise<Publisher> => {
    const http = new HttpClient(target.httpBase!, 256)
    const service = target.serviceToken!
    const stepJson = (n: number, padBytes: number, ts: number) =>
      `"type":"run.step","payload":{"ts":"${marker(ts)}","n":${n},"pad":"${pad(padBytes)}"}`
    const batchOf = (events: ReadonlyArray<string>) => `{"events":[${events.join(",")}]}`

    /** Posts one batch; resolves per item (an item's error rejects only that item). */
    const postBatch = async (body: string, count: number): Promise<Array<string | undefined>> => {
      const r = await http.request("POST", BATCH_PATH, service, body)
      if (r.status !== 200) throw new Error(`batch: ${r.status} ${r.body.slice(0, 200)}`)
      const results = (JSON.parse(r.body) as { results: Array<{ status: number; body: unknown }> }).results
      if (results.length !== count) throw new Error(`batch: ${results.length} results for ${count} events`)
      return results.map((x) => (x.status === 201 ? undefined : `${x.status} ${JSON.stringify(x.body).slice(0, 200)}`))
    }

    // Group commit on the client side: publishes that arrive while a batch is in flight wait for
    // the next one. An idle publisher sends at once (a batch of one), so this adds no latency.
    interface Pending {
      readonly json: string
      readonly ts: number
      readonly resolve: (ts: number) => void
      readonly reject: (e: Error) => void
    }
    const queue: Array<Pending> = []
    let inFlight = 0
    const flush = () => {
      if (inFlight >= MAX_BATCHES_IN_FLIGHT || queue.length === 0) return
      inFlight++
      const items = queue.splice(0, target.batch!)
      postBatch(batchOf(items.map((p) => p.json)), items.length).then(
        (errors) => items.forEach((p, i) => (errors[i] === undefined ? p.resolve(p.ts) : p.reject(new Error(errors[i])))),
        (e: unknown) => items.forEach((p) => p.reject(e instanceof Error ? e : new Error(String(e))))
      ).finally(() => {
        inFlight--
        flush()
      })
    }

    return {
      setup: async (topics, concurrency) => {
        const creates = topics.map((t) => ({ run_id: t, type: "run.created", owner_user_id: `o-${t}` }))
        const chunks: Array<typeof creates> = []
        for (let i = 0; i < creates.length; i += 500) chunks.push(creates.slice(i, i + 500))
        let next = 0
        const worker = async () => {
          while (next < chunks.length) {
            const chunk = chunks[next++]!
            const errors = await postBatch(JSON.stringify({ events: chunk }), chunk.length)
            errors.forEach((err, i) => {
              if (err !== undefined && !err.includes("run_already_exists")) throw new Error(`creating run ${chunk[i]!.run_id}: ${err}`)
            })
          }
        }
        await Promise.all(Array.from({ length: Math.min(concurrency, chunks.length) }, worker))
      },
      publish: target.batch
        ? (topic, n, padBytes) =>
          new Promise<number>((resolve, reject) => {
            const ts = nowMs()
            queue.push({ json: `{"run_id":${JSON.stringify(topic)},${stepJson(n, padBytes, ts)}}`, ts, resolve, reject })
            flush()
          })
        : async (topic, n, padBytes) => {
          const ts = nowMs()
          const r = await http.request("POST", runPath(topic), service, `{${stepJson(n, padBytes, ts)}}`)
          if (r.status !== 201) throw new Error(`append ${topic}: ${r.status} ${r.body.slice(0, 200)}`)
          return ts
        },
      publishMany: async (topic, n, count, padBytes) => {
        const ts = nowMs()
        const id = JSON.stringify(topic)
        const events = Array.from({ length: count }, (_, k) => `{"run_id":${id},${stepJson(n + k, padBytes, ts)}}`)
        const errors = await postBatch(batchOf(events), count)
        const failed = errors.filter((e) => e !== undefined)
        if (failed.length > 0) throw new Error(`batch append ${topic}: ${failed.length} failed, e.g. ${failed[0]}`)
      },
      setupWorkers: async (ids, concurrency) => {
        let next = 0
        const worker = async () => {
          while (next < ids.length) {
            const id = ids[next++]!
            const r = await http.request("POST", WORKERS_PATH, service, JSON.stringify({ worker_id: id, owner_user_id: `o-${id}` }))
            if (r.status !== 201 && r.status !== 200) throw new Error(`creating worker ${id}: ${r.status} ${r.body.slice(0, 200)}`)
          }
        }
        await Promise.all(Array.from({ length: Math.min(concurrency, ids.length) }, worker))
      },
      heartbeat: async (id, n, padBytes) => {
        const r = await http.request("POST", `${WORKERS_PATH}/${encodeURIComponent(id)}/heartbeat`, service, `{"payload":{"n":${n},"pad":"${pad(padBytes)}"}}`)
        if (r.status !== 201) throw new Error(`heartbeat ${id}: ${r.status} ${r.body.slice(0, 200)}`)
      },
      close: () => http.close()
    }
  }

  const replayer = (): Replayer => {
    let ws: WebSocket | undefined
    return {
      prepare: async () => {},
      go: (topic, _expected) =>
        new Promise<ReplayResult>((resolve) => {
          const kt = khalaTopic(topic)
          const check = new SeqCheck()
          const errors: Array<string> = []
          let entries = 0
          let bytes = 0
          let t0 = 0
          let done = false
          const finish = (complete: boolean) => {
            if (done) return
            done = true
            const elapsedMs = t0 === 0 ? Number.NaN : nowMs() - t0
            ws?.terminate()
            resolve({ entries, bytes, elapsedMs, gaps: check.gaps, duplicates: check.duplicates, violations: check.violations, complete, errors })
          }
          const sock = new WebSocket(target.wsUrl, [subprotocol], { perMessageDeflate: false })
          ws = sock
          sock.binaryType = "nodebuffer"
          sock.on("open", () => sock.send(helloFrame(subprotocol, token)))
          const onItem = (seq: number) => {
            entries++
            check.add(seq)
          }
          sock.on("message", (data: Buffer, isBinary: boolean) => {
            bytes += data.length
            let frame: ReturnType<typeof decodeFull> | undefined
            if (isBinary) {
              if (scanProtoFrame(data, onItem) !== 3) frame = decodeFull(subprotocol, data)
            } else if (!scanJsonUpdatesFrame(data, onItem)) frame = decodeFull(subprotocol, data.toString("utf8"))
            if (!frame) return
            if (frame.case === "welcome") {
              t0 = nowMs()
              bytes = 0
              sock.send(subscribeFrame(subprotocol, "r", [{ topic: kt, afterSeq: 0, epoch: "" }]))
            } else if (frame.case === "caughtUp") {
              if (Number(frame.value.seq) !== check.last) errors.push(`caught_up.seq ${frame.value.seq} != last seq ${check.last}`)
              finish(true)
            } else if (frame.case === "error" || frame.case === "goodbye") {
              errors.push(`${frame.case} ${frame.value.code} ${frame.value.message}`)
              finish(false)
            }
          })
          sock.on("error", (e) => errors.push(String(e)))
          sock.on("close", (code) => {
            if (!done) {
              errors.push(`closed ${code}`)
              finish(false)
            }
          })
        }),
      close: () => ws?.terminate()
    }
  }

  return { subscriber, publisher, replayer }
}

