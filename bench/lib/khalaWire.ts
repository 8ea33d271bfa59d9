/**
 * Cheap decoding of Khala `Updates` frames for the load generator. Full protobuf decoding of every
 * frame at 10⁵–10⁶ items/s would make the generator, not the server, the bottleneck; this walks
 * only the fields the bench needs (ServerFrame.updates → Updates.items[] → Update.seq,
 * committed_at_ms, whether it carries a `run_event`, and the send-time marker inside it).
 * Every other frame type (rare) is decoded with the production codec.
 */
import { create } from "@bufbuild/protobuf"
import { Result } from "effect"
import { ClientFrameSchema, type ServerFrame } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { decodeServerFrame, encodeClientFrame } from "../../src/domain/Protocol.ts"
import { findMarker, type KhalaSubprotocol, parseMarker } from "./common.ts"

/** One item of an `Updates` frame, as the bench sees it. */
export interface ItemSink {
  (seq: number, committedAtMs: number, sentAtMs: number, isEvent: boolean): void
}

let pos = 0

const varint = (b: Buffer): number => {
  let result = 0
  let mul = 1
  while (true) {
    const byte = b[pos++]!
    result += (byte & 0x7f) * mul
    if (byte < 0x80) return result
    mul *= 128
  }
}

const skip = (b: Buffer, wireType: number) => {
  switch (wireType) {
    case 0:
      varint(b)
      return
    case 1:
      pos += 8
      return
    case 2: {
      const len = varint(b)
      pos += len
      return
    }
    case 5:
      pos += 4
      return
    default:
      throw new Error(`unsupported wire type ${wireType}`)
  }
}

const scanUpdate = (b: Buffer, end: number, sink: ItemSink) => {
  let seq = 0
  let committed = 0
  let isEvent = false
  let sent = Number.NaN
  while (pos < end) {
    const tag = varint(b)
    const field = tag >>> 3
    const wt = tag & 7
    if (field === 1 && wt === 0) seq = varint(b)
    else if (field === 7 && wt === 0) committed = varint(b)
    else if (field === 12 && wt === 2) {
      const len = varint(b)
      isEvent = true
      sent = findMarker(b, pos, pos + len)
      pos += len
    } else skip(b, wt)
  }
  sink(seq, committed, sent, isEvent)
}

/**
 * Scans a binary ServerFrame. Returns the oneof field number (3 = updates, already delivered to
 * `sink`), or 0 for an empty frame.
 */
export const scanProtoFrame = (b: Buffer, sink: ItemSink): number => {
  pos = 0
  if (b.length === 0) return 0
  const tag = varint(b)
  const field = tag >>> 3
  if (field !== 3) return field
  const len = varint(b)
  const end = pos + len
  while (pos < end) {
    const t = varint(b)
    const f = t >>> 3
    const wt = t & 7
    if (f === 3 && wt === 2) {
      const l = varint(b)
      const e = pos + l
      scanUpdate(b, e, sink)
      pos = e
    } else skip(b, wt)
  }
  return 3
}

interface JsonUpdate {
  readonly seq?: string | number
  readonly committed_at_ms?: string | number
  readonly run_event?: { readonly payload?: { readonly ts?: unknown } }
}

/** Scans a JSON ServerFrame. Returns the parsed frame (the caller handles non-updates). */
export const scanJsonFrame = (text: string, sink: ItemSink): Record<string, unknown> => {
  const o = JSON.parse(text) as Record<string, unknown>
  const u = o["updates"] as { readonly items?: ReadonlyArray<JsonUpdate> } | undefined
  if (u?.items) {
    for (const it of u.items) {
      const ev = it.run_event
      sink(Number(it.seq ?? 0), Number(it.committed_at_ms ?? 0), ev ? parseMarker(ev.payload?.ts) : Number.NaN, ev !== undefined)
    }
  }
  return o
}

/** Full decode of a (rare) non-updates frame. */
export const decodeFull = (subprotocol: KhalaSubprotocol, data: Buffer | string): ServerFrame["frame"] => {
  const r = decodeServerFrame(subprotocol, typeof data === "string" ? data : new Uint8Array(data))
  if (Result.isFailure(r)) throw new Error(`undecodable server frame: ${r.failure.message}`)
  return r.success.frame
}

export const helloFrame = (subprotocol: KhalaSubprotocol, token: string) =>
  encodeClientFrame(
    subprotocol,
    create(ClientFrameSchema, { frame: { case: "hello", value: { token, clientId: "bench", clientVersion: "0" } as never } })
  )

export const subscribeFrame = (
  subprotocol: KhalaSubprotocol,
  requestId: string,
  cursors: ReadonlyArray<{ readonly topic: string; readonly afterSeq: number; readonly epoch: string }>
) =>
  encodeClientFrame(
    subprotocol,
    create(ClientFrameSchema, {
      frame: {
        case: "subscribe",
        value: {
          requestId,
          cursors: cursors.map((c) => ({ topic: c.topic, afterSeq: BigInt(c.afterSeq), epoch: c.epoch }))
        } as never
      }
    })
  )

/** Bench topic name → Khala topic (`x` → `run/x`; names with a `/` are used as they are). */
export const khalaTopic = (topic: string) => (topic.includes("/") ? topic : `run/${topic}`)
