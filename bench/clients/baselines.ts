/**
 * Adapters for the three peers: raw `ws` broadcast (bench/baselines/ws-broadcast.ts), Socket.IO 4
 * with connection state recovery (bench/baselines/socketio-server.ts) and NATS JetStream over its
 * WebSocket listener. Messages are the same ~300-byte JSON (`{t, n, ts, pad}`), `n` a per-topic
 * counter the subscribers check for gaps and duplicates.
 *
 * NATS: publishes are JetStream publishes (persisted in the stream, acknowledged by the server);
 * live subscribers are plain subscriptions on the stream's subjects (its fast path); replay is a
 * JetStream push consumer (deliver all, no acks) whose consumer sequence is checked.
 */
import { io as ioClient, type Socket } from "socket.io-client"
import WebSocket from "ws"
import { type BaselineMessage, marker, nowMs, pad, parseMarker, type ReplayResult, type Target } from "../lib/common.ts"
import { jsAckInfo, jsApi, NATS_STREAM, natsSubject, NatsWs } from "../lib/natsWs.ts"
import { type ClientFactory, type Publisher, type Replayer, SeqCheck, type SubConn, type SubStats, type TopicState } from "./types.ts"

const message = (topic: string, n: number, padBytes: number): BaselineMessage => ({
  t: topic,
  n,
  ts: marker(nowMs()),
  pad: pad(padBytes)
})

interface Deferred {
  readonly promise: Promise<void>
  resolve(): void
  reject(e: Error): void
}
const deferred = (): Deferred => {
  let resolve!: () => void
  let reject!: (e: Error) => void
  const promise = new Promise<void>((res, rej) => {
    resolve = res
    reject = rej
  })
  return { promise, resolve, reject }
}

const statesOf = (topics: ReadonlyArray<string>) => {
  const map = new Map<string, TopicState>()
  for (const topic of topics) map.set(topic, { topic, last: 0, messages: 0 })
  return map
}

const onMessage = (stats: SubStats, states: Map<string, TopicState>, m: BaselineMessage) => {
  const st = states.get(m.t)
  if (!st) return stats.error(`message for unexpected topic ${m.t}`)
  stats.item(st, m.n, parseMarker(m.ts), 0)
}

// ---------------------------------------------------------------------------------------------
// raw ws

export const wsClients = (target: Target): ClientFactory => {
  const subscriber = (topics: ReadonlyArray<string>, stats: SubStats): SubConn => {
    const states = statesOf(topics)
    const ready = deferred()
    let closing = false
    const ws = new WebSocket(target.wsUrl, { perMessageDeflate: false })
    ws.on("open", () => ws.send(JSON.stringify({ op: "sub", topics })))
    ws.on("message", (data: Buffer) => {
      stats.frame(data.length)
      const m = JSON.parse(data.toString("utf8")) as BaselineMessage & { op?: string }
      if (m.op !== undefined) {
        if (m.op === "subbed") ready.resolve()
        return
      }
      onMessage(stats, states, m)
    })
    ws.on("error", (e) => {
      stats.error(String(e))
      ready.reject(e)
    })
    ws.on("close", (code) => {
      if (!closing) {
        stats.error(`closed ${code}`)
        ready.reject(new Error(`closed ${code}`))
      }
    })
    return {
      ready: ready.promise,
      states: [...states.values()],
      close: () => {
        closing = true
        ws.terminate()
      }
    }
  }

  const connectAcked = async () => {
    const ws = new WebSocket(target.wsUrl, { perMessageDeflate: false })
    const acks = new Map<number, () => void>()
    let nextId = 1
    ws.on("message", (data: Buffer) => {
      const m = JSON.parse(data.toString("utf8")) as { op?: string; id?: number }
      if (m.op === "ack") {
        const f = acks.get(m.id!)
        acks.delete(m.id!)
        f?.()
      }
    })
    ws.on("error", () => {})
    await new Promise<void>((res, rej) => {
      ws.once("open", () => res())
      ws.once("error", rej)
    })
    const send = (obj: Record<string, unknown>) =>
      new Promise<void>((resolve) => {
        const id = nextId++
        acks.set(id, resolve)
        ws.send(JSON.stringify({ ...obj, ack: id }))
      })
    return { ws, send }
  }

  const publisher = async (): Promise<Publisher> => {
    const c = await connectAcked()
    return {
      setup: async () => {},
      publish: (topic, n, padBytes) => c.send({ op: "pub", topic, msg: message(topic, n, padBytes) }),
      close: () => c.ws.close()
    }
  }

  const replayer = (): Replayer => {
    let ws: WebSocket | undefined
    return {
      prepare: async () => {},
      go: (topic, expected) =>
        new Promise<ReplayResult>((resolve) => {
          const check = new SeqCheck()
          const errors: Array<string> = []
          let entries = 0
          let bytes = 0
          let t0 = 0
          const sock = new WebSocket(target.wsUrl, { perMessageDeflate: false })
          ws = sock
          sock.on("open", () => {
            t0 = nowMs()
            sock.send(JSON.stringify({ op: "replay", topic }))
          })
          sock.on("message", (data: Buffer) => {
            bytes += data.length
            const m = JSON.parse(data.toString("utf8")) as BaselineMessage & { op?: string }
            if (m.op === "caught_up") {
              const elapsedMs = nowMs() - t0
              sock.terminate()
              if (entries !== expected) errors.push(`received ${entries} of ${expected}`)
              resolve({
                entries,
                bytes,
                elapsedMs,
                gaps: check.gaps,
                duplicates: check.duplicates,
                violations: check.violations,
                complete: entries === expected,
                errors
              })
              return
            }
            entries++
            check.add(m.n)
          })
          sock.on("error", (e) => errors.push(String(e)))
        }),
      close: () => ws?.terminate()
    }
  }
  return { subscriber, publisher, replayer }
}

// ---------------------------------------------------------------------------------------------
// Socket.IO

const sioConnect = (url: string): Socket =>
  ioClient(url, { transports: ["websocket"], reconnection: false, forceNew: true, perMessageDeflate: false } as never)

export const socketioClients = (target: Target): ClientFactory => {
  const subscriber = (topics: ReadonlyArray<string>, stats: SubStats): SubConn => {
    const states = statesOf(topics)
    const ready = deferred()
    let closing = false
    const s = sioConnect(target.wsUrl)
    s.on("connect", () => {
      s.emit("sub", topics, () => ready.resolve())
    })
    s.on("m", (m: BaselineMessage) => {
      stats.frame(0)
      onMessage(stats, states, m)
    })
    s.on("connect_error", (e) => {
      stats.error(String(e))
      ready.reject(e)
    })
    s.on("disconnect", (reason) => {
      if (!closing) {
        stats.error(`disconnected: ${reason}`)
        ready.reject(new Error(String(reason)))
      }
    })
    return {
      ready: ready.promise,
      states: [...states.values()],
      close: () => {
        closing = true
        s.disconnect()
      }
    }
  }

  const publisher = async (): Promise<Publisher> => {
    const s = sioConnect(target.wsUrl)
    await new Promise<void>((res, rej) => {
      s.once("connect", () => res())
      s.once("connect_error", rej)
    })
    return {
      setup: async () => {},
      publish: (topic, n, padBytes) =>
        new Promise<void>((resolve) => {
          s.emit("pub", topic, message(topic, n, padBytes), () => resolve())
        }),
      close: () => s.disconnect()
    }
  }

  /**
   * Socket.IO has no "replay from the beginning": its replay is connection state recovery. The
   * client connects, joins the room, receives one seed packet (its offset), loses its transport;
   * the entries are published while it is away; on reconnect the server restores the session
   * and sends every missed packet. That is what is timed.
   */
  const replayer = (): Replayer => {
    let s: Socket | undefined
    return {
      prepare: async (topic) => {
        const sock = sioConnect(target.wsUrl)
        s = sock
        await new Promise<void>((res, rej) => {
          sock.once("connect", () => res())
          sock.once("connect_error", rej)
        })
        await new Promise<void>((res) => sock.emit("sub", [topic], () => res()))
        const seeded = new Promise<void>((res) => sock.once("m", () => res()))
        sock.emit("pub", topic, message(topic, 0, 0))
        await seeded
        sock.io.engine.close() // a transport loss (not a disconnect()): the server keeps the session
        await new Promise((r) => setTimeout(r, 300))
      },
      go: (_topic, expected) =>
        new Promise<ReplayResult>((resolve) => {
          const sock = s!
          const check = new SeqCheck()
          const errors: Array<string> = []
          let entries = 0
          const t0 = nowMs()
          let timer: NodeJS.Timeout | undefined
          const finish = (complete: boolean) => {
            clearTimeout(timer)
            const elapsedMs = nowMs() - t0
            resolve({
              entries,
              bytes: 0,
              elapsedMs,
              gaps: check.gaps,
              duplicates: check.duplicates,
              violations: check.violations,
              complete,
              errors
            })
          }
          sock.on("connect", () => {
            if (!sock.recovered) {
              errors.push("the Socket.IO session was not recovered")
              finish(false)
            }
          })
          sock.on("m", (m: BaselineMessage) => {
            entries++
            check.add(m.n)
            if (entries === expected) finish(true)
          })
          timer = setTimeout(() => {
            errors.push(`timed out with ${entries} of ${expected}`)
            finish(false)
          }, 300_000)
          sock.connect()
        }),
      close: () => s?.disconnect()
    }
  }
  return { subscriber, publisher, replayer }
}

// ---------------------------------------------------------------------------------------------
// NATS JetStream over WebSocket

export const natsClients = (target: Target): ClientFactory => {
  const subscriber = (topics: ReadonlyArray<string>, stats: SubStats): SubConn => {
    const states = statesOf(topics)
    let nc: NatsWs | undefined
    let closing = false
    const ready = (async () => {
      nc = await NatsWs.connect(target.wsUrl)
      const c = nc
      let lastFrames = 0
      for (const topic of topics) {
        c.sub(natsSubject(topic), (_subject, _reply, payload) => {
          // one clock read per WebSocket frame (NATS packs many messages into one)
          if (c.framesIn !== lastFrames) {
            lastFrames = c.framesIn
            stats.frame(0)
          }
          onMessage(stats, states, JSON.parse(payload.toString("utf8")) as BaselineMessage)
        })
      }
      c.ws.on("close", () => {
        if (!closing) stats.error(`NATS connection closed: ${c.errors.join("; ")}`)
      })
      await c.flush()
    })()
    return {
      ready,
      states: [...states.values()],
      close: () => {
        closing = true
        nc?.ws.terminate()
      }
    }
  }

  const publisher = async (): Promise<Publisher> => {
    const nc = await NatsWs.connect(target.wsUrl)
    return {
      setup: async () => {},
      publish: async (topic, n, padBytes) => {
        const r = nc.replyTo()
        nc.pub(natsSubject(topic), JSON.stringify(message(topic, n, padBytes)), r.subject)
        const ack = JSON.parse((await r.answer).toString()) as { error?: unknown }
        if (ack.error) throw new Error(`JetStream publish: ${JSON.stringify(ack.error)}`)
      },
      close: () => nc.close()
    }
  }

  const replayer = (): Replayer => {
    let nc: NatsWs | undefined
    return {
      prepare: async () => {},
      go: async (topic, expected) => {
        const c = await NatsWs.connect(target.wsUrl)
        nc = c
        const check = new SeqCheck()
        const errors: Array<string> = []
        let entries = 0
        const inbox = `_INBOX.replay.${process.pid}.${Math.random().toString(36).slice(2)}`
        const done = deferred()
        let t1 = 0
        c.sub(inbox, (_subject, reply, payload) => {
          entries++
          const info = jsAckInfo(reply)
          check.add(info.dseq)
          const m = JSON.parse(payload.toString("utf8")) as BaselineMessage
          if (m.t !== topic) errors.push(`unexpected topic ${m.t}`)
          if (entries === expected) {
            t1 = nowMs()
            done.resolve()
          }
        })
        await c.flush()
        const t0 = nowMs()
        await jsApi(c, `CONSUMER.CREATE.${NATS_STREAM}`, {
          stream_name: NATS_STREAM,
          config: {
            deliver_subject: inbox,
            deliver_policy: "all",
            ack_policy: "none",
            replay_policy: "instant",
            filter_subject: natsSubject(topic),
            inactive_threshold: 60_000_000_000
          }
        })
        const timer = setTimeout(() => done.reject(new Error(`timed out with ${entries} of ${expected}`)), 300_000)
        try {
          await done.promise
        } catch (e) {
          errors.push(String(e))
        }
        clearTimeout(timer)
        const elapsedMs = (t1 || nowMs()) - t0
        c.close()
        return {
          entries,
          bytes: c.bytesIn,
          elapsedMs,
          gaps: check.gaps,
          duplicates: check.duplicates,
          violations: check.violations,
          complete: entries === expected,
          errors
        }
      },
      close: () => nc?.close()
    }
  }
  return { subscriber, publisher, replayer }
}
