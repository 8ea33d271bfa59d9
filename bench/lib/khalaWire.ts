/**
 * Cheap decoding of Khala `Updates` frames for the load generator. Full decoding of every frame
 * (protobuf, or `JSON.parse`) at 10⁵–10⁶ items/s would make the generator, not the server, the
 * bottleneck; this walks only the fields the bench needs (ServerFrame.updates → Updates.items[] →
 * Update.seq, committed_at_ms, whether it carries a `run_event`, and the send-time marker inside
 * it), in protobuf frames and, as bytes, in JSON ones. Every other frame type (rare) is decoded
 * with the production codec.
 */
import { create } from "@bufbuild/protobuf"
import { Result } from "effect"
import { ClientFrameSchema, type ServerFrame } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { decodeServerFrame, encodeClientFrame } from "../../src/domain/Protocol.ts"
import { findMarker, type KhalaSubprotocol } from "./common.ts"

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

// ---- JSON frames, scanned as bytes: the same fields as the protobuf scan, no JSON.parse (which
// builds every item's objects and strings, and at a few hundred thousand entries a second made the
// generator, not the server, the limit of the JSON fanout rows).

const QUOTE = 0x22
const BACKSLASH = 0x5c
const OPEN_OBJECT = 0x7b
const CLOSE_OBJECT = 0x7d
const OPEN_ARRAY = 0x5b
const CLOSE_ARRAY = 0x5d
const COMMA = 0x2c
const COLON = 0x3a
const UPDATES_OPEN = Buffer.from('{"updates":{', "latin1")
const KEY_ITEMS = Buffer.from("items", "latin1")
const KEY_SEQ = Buffer.from("seq", "latin1")
const KEY_COMMITTED = Buffer.from("committed_at_ms", "latin1")
const KEY_RUN_EVENT = Buffer.from("run_event", "latin1")

const fail = (b: Buffer, at: number, what: string): never => {
  throw new Error(`unexpected JSON frame at byte ${at} (${what}): ${b.toString("utf8", Math.max(0, at - 40), at + 40)}`)
}

/**
 * Index after the closing quote of the string whose opening quote is at `start`. Short strings
 * (keys, most values) are walked byte by byte, cheaper than a native call each; past that, quotes
 * are found with `indexOf` (a payload's long strings), an escaped one told by the backslashes
 * before it.
 */
const stringEnd = (b: Buffer, start: number): number => {
  let i = start + 1
  const walked = Math.min(b.length, i + 32)
  while (i < walked) {
    const c = b[i++]!
    if (c === QUOTE) return i
    if (c === BACKSLASH) i++ // the escaped byte (`\"`, `\\`, or the first of `\uXXXX`) is never the end
  }
  // Here `i` is not inside an escape: a quote at q is escaped iff an odd run of backslashes in
  // [i, q) ends right before it.
  while (true) {
    const q = b.indexOf(QUOTE, i)
    if (q < 0) return fail(b, start, "unterminated string")
    let backslashes = 0
    for (let k = q - 1; k >= i && b[k] === BACKSLASH; k--) backslashes++
    if (backslashes % 2 === 0) return q + 1
    i = q + 1
  }
}

/** Index after the value starting at `start` (the server's JSON has no whitespace). */
const valueEnd = (b: Buffer, start: number): number => {
  const c = b[start]
  if (c === QUOTE) return stringEnd(b, start)
  if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
    let depth = 0
    let i = start
    while (i < b.length) {
      const x = b[i]!
      if (x === QUOTE) {
        i = stringEnd(b, i)
        continue
      }
      if (x === OPEN_OBJECT || x === OPEN_ARRAY) depth++
      else if (x === CLOSE_OBJECT || x === CLOSE_ARRAY) {
        if (--depth === 0) return i + 1
      }
      i++
    }
    return fail(b, start, "unterminated value")
  }
  let i = start
  while (i < b.length && b[i] !== COMMA && b[i] !== CLOSE_OBJECT && b[i] !== CLOSE_ARRAY) i++
  return i
}

/** The key whose quoted form spans [start, end) is `key`. */
const isKey = (b: Buffer, start: number, end: number, key: Buffer): boolean => {
  if (end - start - 2 !== key.length) return false
  for (let k = 0; k < key.length; k++) if (b[start + 1 + k] !== key[k]) return false
  return true
}

/** A uint64 written as a JSON string (`"12"`, proto3 JSON) or number, in [start, end). */
const uintValue = (b: Buffer, start: number, end: number): number => {
  let n = 0
  for (let i = start; i < end; i++) {
    const c = b[i]!
    if (c >= 0x30 && c <= 0x39) n = n * 10 + (c - 0x30)
    else if (c !== QUOTE) return fail(b, i, "not an unsigned integer")
  }
  return n
}

/** Scans the members of one Update object starting at its `{`; returns the index after its `}`. */
const scanJsonUpdate = (b: Buffer, start: number, sink: ItemSink): number => {
  let seq = 0
  let committed = 0
  let isEvent = false
  let sent = Number.NaN
  let i = start + 1
  if (b[i] === CLOSE_OBJECT) i++
  else {
    while (true) {
      if (b[i] !== QUOTE) fail(b, i, "key expected")
      const keyEnd = stringEnd(b, i)
      if (b[keyEnd] !== COLON) fail(b, keyEnd, "colon expected")
      const v = keyEnd + 1
      const end = valueEnd(b, v)
      if (isKey(b, i, keyEnd, KEY_SEQ)) seq = uintValue(b, v, end)
      else if (isKey(b, i, keyEnd, KEY_COMMITTED)) committed = uintValue(b, v, end)
      else if (isKey(b, i, keyEnd, KEY_RUN_EVENT)) {
        isEvent = true
        sent = findMarker(b, v, end)
      }
      i = end
      if (b[i] === COMMA) i++
      else if (b[i] === CLOSE_OBJECT) {
        i++
        break
      } else fail(b, i, "comma or } expected")
    }
  }
  sink(seq, committed, sent, isEvent)
  return i
}

/**
 * Scans a JSON ServerFrame as bytes. An `updates` frame has its items delivered to `sink` (as
 * `scanProtoFrame` does) and gives true; any other frame gives false (the caller decodes it).
 */
export const scanJsonUpdatesFrame = (b: Buffer, sink: ItemSink): boolean => {
  if (b.length < UPDATES_OPEN.length || b.compare(UPDATES_OPEN, 0, UPDATES_OPEN.length, 0, UPDATES_OPEN.length) !== 0) {
    return false
  }
  let i = UPDATES_OPEN.length
  if (b[i] === CLOSE_OBJECT) return true
  while (true) {
    if (b[i] !== QUOTE) fail(b, i, "key expected")
    const keyEnd = stringEnd(b, i)
    if (b[keyEnd] !== COLON) fail(b, keyEnd, "colon expected")
    let v = keyEnd + 1
    if (isKey(b, i, keyEnd, KEY_ITEMS)) {
      if (b[v] !== OPEN_ARRAY) fail(b, v, "[ expected")
      v++
      if (b[v] === CLOSE_ARRAY) v++
      else {
        while (true) {
          if (b[v] !== OPEN_OBJECT) fail(b, v, "item expected")
          v = scanJsonUpdate(b, v, sink)
          if (b[v] === COMMA) v++
          else if (b[v] === CLOSE_ARRAY) {
            v++
            break
          } else fail(b, v, ", or ] expected")
        }
      }
      i = v
    } else i = valueEnd(b, v)
    if (b[i] === COMMA) i++
    else if (b[i] === CLOSE_OBJECT) return true
    else fail(b, i, "comma or } expected")
  }
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
