/**
 * A minimal NATS client over the server's WebSocket listener, on the same `ws` library the other
 * generators use (so all systems are driven by the same socket code and a cheap parser).
 * Supports what the bench needs: CONNECT, PUB (with reply), SUB/UNSUB, MSG/HMSG, PING/PONG,
 * request/reply (JetStream API) and JetStream publish acknowledgements.
 *
 * Outgoing protocol lines are coalesced per event-loop turn into one WebSocket message, as the
 * official clients do.
 */
import WebSocket from "ws"

export type MsgHandler = (subject: string, reply: string, payload: Buffer) => void

const CRLF = Buffer.from("\r\n")

export class NatsWs {
  readonly ws: WebSocket
  private buf: Buffer = Buffer.alloc(0)
  private out: Array<Buffer | string> = []
  private flushScheduled = false
  private readonly subs = new Map<number, MsgHandler>()
  private nextSid = 1
  private pongWaiters: Array<() => void> = []
  private readonly inboxPrefix = `_INBOX.${Math.random().toString(36).slice(2)}${process.pid}`
  private nextReq = 1
  private readonly pending = new Map<string, (payload: Buffer) => void>()
  private inboxSid = 0
  closed = false
  errors: Array<string> = []
  bytesIn = 0
  framesIn = 0

  private constructor(ws: WebSocket) {
    this.ws = ws
  }

  static connect(url: string): Promise<NatsWs> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false })
      ws.binaryType = "nodebuffer"
      const c = new NatsWs(ws)
      let gotInfo = false
      ws.on("message", (data: Buffer) => {
        c.bytesIn += data.length
        c.framesIn++
        if (!gotInfo) {
          gotInfo = true
          c.raw(`CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1,"lang":"bench","version":"0"}\r\n`)
          c.flush().then(() => resolve(c), reject)
          // the INFO frame may carry more (it does not in practice)
          const i = data.indexOf(CRLF)
          if (i >= 0 && i + 2 < data.length) c.onData(data.subarray(i + 2))
          return
        }
        c.onData(data)
      })
      ws.once("error", (e) => {
        c.errors.push(String(e))
        reject(e)
      })
      ws.on("close", (code, reason) => {
        c.closed = true
        if (code !== 1000 && code !== 1005) c.errors.push(`closed ${code} ${reason.toString()}`)
        for (const w of c.pongWaiters) w()
        c.pongWaiters = []
      })
    })
  }

  private raw(s: string | Buffer) {
    this.out.push(s)
    if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(() => this.writeOut())
    }
  }

  private writeOut() {
    this.flushScheduled = false
    if (this.out.length === 0 || this.closed) return
    const parts = this.out.map((p) => (typeof p === "string" ? Buffer.from(p) : p))
    this.out = []
    this.ws.send(Buffer.concat(parts))
  }

  /** Bytes queued in the socket (for publisher flow control). */
  get bufferedAmount() {
    return this.ws.bufferedAmount
  }

  pub(subject: string, payload: string | Buffer, reply = "") {
    const body = typeof payload === "string" ? Buffer.from(payload) : payload
    this.raw(`PUB ${subject}${reply ? ` ${reply}` : ""} ${body.length}\r\n`)
    this.raw(body)
    this.raw(CRLF)
  }

  sub(subject: string, handler: MsgHandler): number {
    const sid = this.nextSid++
    this.subs.set(sid, handler)
    this.raw(`SUB ${subject} ${sid}\r\n`)
    return sid
  }

  unsub(sid: number) {
    this.subs.delete(sid)
    this.raw(`UNSUB ${sid}\r\n`)
  }

  /** Resolves when the server answered a PING sent after everything queued so far. */
  flush(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) return resolve()
      this.pongWaiters.push(resolve)
      this.raw("PING\r\n")
    })
  }

  /** A reply subject whose answer resolves the returned promise. */
  replyTo(): { readonly subject: string; readonly answer: Promise<Buffer> } {
    if (this.inboxSid === 0) {
      this.inboxSid = this.sub(`${this.inboxPrefix}.*`, (subject, _reply, payload) => {
        const f = this.pending.get(subject)
        if (f) {
          this.pending.delete(subject)
          f(payload)
        }
      })
    }
    const subject = `${this.inboxPrefix}.${this.nextReq++}`
    const answer = new Promise<Buffer>((resolve) => this.pending.set(subject, resolve))
    return { subject, answer }
  }

  async request(subject: string, payload: string, timeoutMs = 10_000): Promise<Buffer> {
    const r = this.replyTo()
    this.pub(subject, payload, r.subject)
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`NATS request ${subject} timed out`)), timeoutMs)
    })
    try {
      return await Promise.race([r.answer, timeout])
    } finally {
      clearTimeout(timer)
    }
  }

  close() {
    this.writeOut()
    this.closed = true
    this.ws.close()
  }

  private onData(data: Buffer) {
    const b = this.buf.length === 0 ? data : Buffer.concat([this.buf, data])
    let p = 0
    while (p < b.length) {
      const eol = b.indexOf(CRLF, p)
      if (eol < 0) break
      const c0 = b[p]!
      if (c0 === 0x4d /* M */ || c0 === 0x48 /* H */) {
        // MSG <subject> <sid> [reply] <#bytes> | HMSG <subject> <sid> [reply] <#hdr> <#total>
        const line = b.toString("latin1", p, eol)
        const parts = line.split(" ")
        const isH = c0 === 0x48
        const total = Number(parts[parts.length - 1])
        const hdr = isH ? Number(parts[parts.length - 2]) : 0
        const nArgs = parts.length - (isH ? 2 : 1)
        const subject = parts[1]!
        const sid = Number(parts[2])
        const reply = nArgs === 4 ? parts[3]! : ""
        const start = eol + 2
        if (b.length < start + total + 2) break
        const handler = this.subs.get(sid)
        if (handler) handler(subject, reply, b.subarray(start + hdr, start + total))
        p = start + total + 2
        continue
      }
      const line = b.toString("latin1", p, eol)
      p = eol + 2
      if (line === "PING") this.raw("PONG\r\n")
      else if (line === "PONG") {
        const w = this.pongWaiters.shift()
        if (w) w()
      } else if (line.startsWith("-ERR")) this.errors.push(line)
      // +OK and INFO are ignored
    }
    this.buf = p >= b.length ? Buffer.alloc(0) : Buffer.from(b.subarray(p))
  }
}

/** JetStream API call; throws on an API error. */
export const jsApi = async (nc: NatsWs, subject: string, body: unknown): Promise<Record<string, unknown>> => {
  const r = JSON.parse((await nc.request(`$JS.API.${subject}`, JSON.stringify(body))).toString()) as Record<string, unknown>
  if (r["error"]) throw new Error(`JetStream ${subject}: ${JSON.stringify(r["error"])}`)
  return r
}

export const NATS_STREAM = "BENCH"
export const natsSubject = (topic: string) => `bench.${topic}`

/** Parses the consumer sequence and pending count from a JetStream push message reply subject. */
export const jsAckInfo = (reply: string): { readonly dseq: number; readonly pending: number } => {
  const t = reply.split(".")
  // $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>            (9 tokens)
  // $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>.<rnd> (12)
  if (t.length >= 12) return { dseq: Number(t[8]), pending: Number(t[10]) }
  return { dseq: Number(t[6]), pending: Number(t[8]) }
}
