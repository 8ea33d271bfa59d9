/**
 * Baseline: a plain `ws` topic broadcast server — what a team would write in an afternoon.
 * One WebSocket frame per message, JSON control messages, no persistence except an in-memory
 * log for topics named `rp*` (so the replay scenario has something to compare with).
 *
 *   client → server  {"op":"sub","topics":[…]}                  ← {"op":"subbed"}
 *                    {"op":"pub","topic":t,"msg":{…},"ack":id?}  ← {"op":"ack","id":id} (if ack)
 *                    {"op":"replay","topic":t}                   ← every retained message, then
 *                                                                  {"op":"caught_up","n":count}
 *   server → client  the message JSON, one frame each
 *
 * Usage: node bench/baselines/ws-broadcast.ts <port>   (prints `READY <port>` when listening)
 */
import { WebSocketServer, type WebSocket } from "ws"

const port = Number(process.argv[2] ?? 0)
const topics = new Map<string, Set<WebSocket>>()
const logs = new Map<string, Array<string>>()

const wss = new WebSocketServer({ host: "127.0.0.1", port, perMessageDeflate: false, clientTracking: false, maxPayload: 1 << 20 })

interface ClientMessage {
  readonly op: string
  readonly topic?: string
  readonly topics?: ReadonlyArray<string>
  readonly msg?: unknown
  readonly ack?: number
}

wss.on("connection", (ws) => {
  const mine = new Set<string>()
  ws.on("message", (data) => {
    let m: ClientMessage
    try {
      m = JSON.parse(data.toString()) as ClientMessage
    } catch {
      return
    }
    switch (m.op) {
      case "sub":
        for (const t of m.topics ?? []) {
          let set = topics.get(t)
          if (!set) topics.set(t, (set = new Set()))
          set.add(ws)
          mine.add(t)
        }
        ws.send("{\"op\":\"subbed\"}")
        return
      case "pub": {
        const topic = m.topic ?? ""
        const s = JSON.stringify(m.msg)
        const set = topics.get(topic)
        if (set) for (const c of set) c.send(s)
        if (topic.startsWith("rp")) {
          let log = logs.get(topic)
          if (!log) logs.set(topic, (log = []))
          log.push(s)
        }
        if (m.ack !== undefined) ws.send(`{"op":"ack","id":${m.ack}}`)
        return
      }
      case "replay": {
        const log = logs.get(m.topic ?? "") ?? []
        for (const s of log) ws.send(s)
        ws.send(`{"op":"caught_up","n":${log.length}}`)
        return
      }
    }
  })
  ws.on("error", () => {})
  ws.on("close", () => {
    for (const t of mine) topics.get(t)?.delete(ws)
  })
})

wss.on("listening", () => {
  const address = wss.address()
  process.stdout.write(`READY ${typeof address === "string" || address === null ? address : address.port}\n`)
})

const stop = () => {
  wss.close()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
process.on("disconnect", stop)
