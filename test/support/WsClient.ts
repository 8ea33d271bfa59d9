/**
 * WsClient: a real `ws` client of `/sync/v1` for tests, speaking either subprotocol through the
 * production codec. Collects every server frame; `next`/`until` wait for frames with a deadline.
 */
import { create } from "@bufbuild/protobuf"
import { Result } from "effect"
import WebSocket from "ws"
import { ClientFrameSchema, type ServerFrame } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import type { ClientFrame } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { decodeServerFrame, encodeClientFrame, type Subprotocol } from "../../src/domain/Protocol.ts"

export type Frame = ServerFrame["frame"]
export type FrameValue<K extends NonNullable<Frame["case"]>> = Extract<Frame, { case: K; value: unknown }>["value"]

export class WsClient {
  readonly ws: WebSocket
  readonly frames: Array<Frame> = []
  closed: { code: number; reason: string } | undefined
  private waiters: Array<() => void> = []
  readonly opened: Promise<void>
  readonly closedPromise: Promise<{ code: number; reason: string }>

  readonly subprotocol: Subprotocol

  constructor(url: string, subprotocol: Subprotocol) {
    this.subprotocol = subprotocol
    this.ws = new WebSocket(url, [subprotocol])
    this.ws.binaryType = "nodebuffer"
    this.opened = new Promise((resolve, reject) => {
      this.ws.once("open", () => resolve())
      this.ws.once("error", reject)
    })
    this.closedPromise = new Promise((resolve) => {
      this.ws.once("close", (code, reason) => {
        this.closed = { code, reason: reason.toString() }
        this.wake()
        resolve(this.closed)
      })
    })
    this.ws.on("error", () => {})
    this.ws.on("message", (data, isBinary) => {
      const raw = isBinary ? new Uint8Array(data as Buffer) : (data as Buffer).toString("utf8")
      const decoded = decodeServerFrame(this.subprotocol, raw)
      if (Result.isFailure(decoded)) throw new Error(`undecodable server frame: ${decoded.failure.message}`)
      this.frames.push(decoded.success.frame)
      this.wake()
    })
  }

  private wake() {
    const ws = this.waiters
    this.waiters = []
    for (const w of ws) w()
  }

  send(frame: ClientFrame["frame"]) {
    this.ws.send(encodeClientFrame(this.subprotocol, create(ClientFrameSchema, { frame })))
  }

  sendRaw(data: string | Uint8Array) {
    this.ws.send(data)
  }

  hello(token: string) {
    this.send({ case: "hello", value: { token, clientId: "test", clientVersion: "0" } as never })
  }

  subscribe(requestId: string, cursors: ReadonlyArray<{ topic: string; afterSeq?: number; epoch?: string }>) {
    this.send({
      case: "subscribe",
      value: {
        requestId,
        cursors: cursors.map((c) => ({ topic: c.topic, afterSeq: BigInt(c.afterSeq ?? 0), epoch: c.epoch ?? "" }))
      } as never
    })
  }

  /** Waits until `pred` holds over the collected frames (or the socket closed), within `ms`. */
  async until(pred: (frames: ReadonlyArray<Frame>) => boolean, ms = 10_000, what = "condition"): Promise<void> {
    const deadline = Date.now() + ms
    while (!pred(this.frames)) {
      if (this.closed) {
        if (pred(this.frames)) return
        throw new Error(`socket closed (${this.closed.code} ${this.closed.reason}) while waiting for ${what}`)
      }
      const left = deadline - Date.now()
      if (left <= 0) throw new Error(`timed out waiting for ${what}; got ${JSON.stringify(this.frames.map((f) => f.case))}`)
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left)
        this.waiters.push(() => {
          clearTimeout(t)
          resolve()
        })
      })
    }
  }

  /** Waits for the first frame of `kind` (after index `from`). */
  async next<K extends NonNullable<Frame["case"]>>(kind: K, ms = 10_000, from = 0): Promise<FrameValue<K>> {
    let found: Frame | undefined
    await this.until((fs) => {
      found = fs.slice(from).find((f) => f.case === kind)
      return found !== undefined
    }, ms, kind)
    return (found as Extract<Frame, { case: K; value: unknown }>).value as FrameValue<K>
  }

  /** Seqs received for a topic, in arrival order. */
  seqs(topic: string): Array<number> {
    const out: Array<number> = []
    for (const f of this.frames) {
      if (f.case === "updates" && f.value.topic === topic) for (const u of f.value.items) out.push(Number(u.seq))
    }
    return out
  }

  async awaitClose(ms = 10_000): Promise<{ code: number; reason: string }> {
    return await Promise.race([
      this.closedPromise,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error("socket did not close")), ms))
    ])
  }

  close() {
    this.ws.close()
  }

  terminate() {
    this.ws.terminate()
  }
}
