/**
 * Wire codec of `/sync/v1` (SPEC §5): the two subprotocols `khala.v1.proto` (binary messages,
 * protobuf) and `khala.v1.json` (text messages, proto3 canonical JSON of the same messages, with
 * proto field names), frame decoding for the connection and frame encoding for the fanout.
 *
 * Invariants:
 * - Decoding never throws: every malformed, mistyped or oversized client frame becomes a
 *   request-scoped `ProtocolError` (`bad_request` / `payload_too_large`).
 * - Server frames are encoded once per subprotocol and the same bytes go to every subscriber.
 *   `Updates` frames are spliced from the journal's pre-encoded `Update`s (`encodedUpdate`,
 *   computed at write time) without decoding them; the result is byte-identical to `toBinary` /
 *   `toJsonString` of the same frame built as a message.
 * - `chunkUpdates` never produces a frame over `maxFrameBytes`, except for a single item that is
 *   itself too large: it goes alone in its own frame. The server must size `max_frame_bytes` so
 *   that every document fits with room to spare (above the HTTP body limit that bounds payloads).
 */
import { create, fromBinary, fromJson, toBinary, toJsonString } from "@bufbuild/protobuf"
import type { JsonValue } from "@bufbuild/protobuf"
import { Result } from "effect"
import { Buffer } from "node:buffer"
import type { Error as ErrorMessage } from "../gen/openagents/sync/v1/frames_pb.ts"
import type { ClientFrame, ServerFrame, Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import {
  ClientFrameSchema,
  ErrorSchema,
  GoodbyeSchema,
  ServerFrameSchema,
  UpdateSchema
} from "../gen/openagents/sync/v1/frames_pb.ts"
import { ProtocolError } from "./ErrorCode.ts"

// ---------------------------------------------------------------------------------------------
// Subprotocols

export const PROTO_SUBPROTOCOL = "khala.v1.proto"
export const JSON_SUBPROTOCOL = "khala.v1.json"
export const SUBPROTOCOLS = [PROTO_SUBPROTOCOL, JSON_SUBPROTOCOL] as const

export type Subprotocol = (typeof SUBPROTOCOLS)[number]

export const isSubprotocol = (u: unknown): u is Subprotocol => u === PROTO_SUBPROTOCOL || u === JSON_SUBPROTOCOL

/** Splits a `Sec-WebSocket-Protocol` header (one string, or repeated headers) into its tokens. */
export const parseSubprotocolHeader = (header: string | ReadonlyArray<string> | undefined): Array<string> =>
  (header === undefined ? [] : typeof header === "string" ? [header] : header)
    .flatMap((h) => h.split(","))
    .map((s) => s.trim())
    .filter((s) => s.length > 0)

/**
 * The subprotocol to accept: the first one of the client's list (its order of preference) that we
 * support; `undefined` ⇒ refuse the upgrade.
 */
export const selectSubprotocol = (offered: Iterable<string>): Subprotocol | undefined => {
  for (const p of offered) {
    const s = p.trim()
    if (isSubprotocol(s)) return s
  }
  return undefined
}

// ---------------------------------------------------------------------------------------------
// Sizes

/**
 * A text (JSON) message whose UTF-8 bytes exist already: replay frames cut from a replay page's
 * bytes (`chunkJoinedUpdatesJson`) go to the socket as they are, with no string in between.
 */
export class Utf8Text {
  readonly bytes: Uint8Array
  constructor(bytes: Uint8Array) {
    this.bytes = bytes
  }
  /** The text (tests, tools, and the test servers' pulled socket path, which sends strings). */
  text(): string {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset, this.bytes.byteLength).toString("utf8")
  }
}

/**
 * A server frame as it goes on the socket: binary for `khala.v1.proto`, text for `khala.v1.json`
 * (a string, or its UTF-8 bytes).
 */
export type EncodedFrame = Uint8Array | string | Utf8Text

/** UTF-8 byte length of a string, without encoding it. */
export const utf8ByteLength = (s: string): number => (s.length < 64 && isAscii(s) ? s.length : Buffer.byteLength(s, "utf8"))

const isAscii = (s: string): boolean => {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 0x7f) return false
  return true
}

/** Bytes a frame occupies as a WebSocket message payload (for queue accounting and limits). */
export const encodedFrameBytes = (frame: EncodedFrame): number =>
  typeof frame === "string" ? utf8ByteLength(frame) : frame instanceof Utf8Text ? frame.bytes.byteLength : frame.byteLength

// ---------------------------------------------------------------------------------------------
// Client frames (decode) — and the inverse, for test clients and the CLI

/** A decoded client frame; its `frame` oneof is always set. */
export type KnownClientFrame = ClientFrame & { readonly frame: Exclude<ClientFrame["frame"], { case: undefined }> }

/** Protobuf-es messages name the field and input; keep them, but bounded. */
const MAX_DETAIL_CHARS = 200
const detail = (e: unknown): string => {
  const m = e instanceof globalThis.Error ? e.message : String(e)
  return m.length > MAX_DETAIL_CHARS ? `${m.slice(0, MAX_DETAIL_CHARS)}…` : m
}

const badRequest = (message: string) => Result.fail(new ProtocolError({ code: "bad_request", message }))

/**
 * Decodes one client WebSocket message. Never throws.
 *
 * Checks, in order: size (`> maxFrameBytes` ⇒ `payload_too_large`), message type (binary on
 * `khala.v1.json` or text on `khala.v1.proto` ⇒ `bad_request`), syntax and schema (invalid
 * protobuf, invalid JSON, unknown JSON field, bad field value ⇒ `bad_request`), and finally an
 * unset `frame` oneof (⇒ `bad_request`). JSON accepts both proto names (`after_seq`) and
 * lowerCamelCase names (`afterSeq`), and uint64 as a string or a number. Unknown binary fields
 * are skipped (proto forward compatibility) and not retained.
 */
export const decodeClientFrame = (
  subprotocol: Subprotocol,
  data: Uint8Array | string,
  maxFrameBytes: number
): Result.Result<KnownClientFrame, ProtocolError> => {
  const size = typeof data === "string" ? utf8ByteLength(data) : data.byteLength
  if (size > maxFrameBytes) {
    return Result.fail(
      new ProtocolError({
        code: "payload_too_large",
        message: `frame of ${size} bytes exceeds max_frame_bytes ${maxFrameBytes}`
      })
    )
  }
  let frame: ClientFrame
  if (subprotocol === PROTO_SUBPROTOCOL) {
    if (typeof data === "string") return badRequest(`text message on ${PROTO_SUBPROTOCOL}: send binary protobuf frames`)
    try {
      frame = fromBinary(ClientFrameSchema, data, { readUnknownFields: false })
    } catch (e) {
      return badRequest(`invalid protobuf ClientFrame: ${detail(e)}`)
    }
  } else {
    if (typeof data !== "string") return badRequest(`binary message on ${JSON_SUBPROTOCOL}: send text JSON frames`)
    let json: JsonValue
    try {
      json = JSON.parse(data) as JsonValue
    } catch (e) {
      return badRequest(`invalid JSON: ${detail(e)}`)
    }
    try {
      frame = fromJson(ClientFrameSchema, json)
    } catch (e) {
      return badRequest(detail(e))
    }
  }
  return isKnownClientFrame(frame)
    ? Result.succeed(frame)
    : badRequest("ClientFrame has no frame set (expected one of hello, subscribe, unsubscribe, refresh_token, ping)")
}

const isKnownClientFrame = (frame: ClientFrame): frame is KnownClientFrame => frame.frame.case !== undefined

/** Encodes a client frame (the inverse of `decodeClientFrame`; used by test clients and the CLI). */
export const encodeClientFrame = (subprotocol: Subprotocol, frame: ClientFrame): Uint8Array | string =>
  subprotocol === PROTO_SUBPROTOCOL
    ? toBinary(ClientFrameSchema, frame)
    : toJsonString(ClientFrameSchema, frame, { useProtoFieldName: true })

/** Decodes a server frame (for clients and tests). Never throws; strict like `decodeClientFrame`. */
export const decodeServerFrame = (
  subprotocol: Subprotocol,
  frame: EncodedFrame
): Result.Result<ServerFrame, ProtocolError> => {
  const data = frame instanceof Utf8Text ? frame.text() : frame
  try {
    if (subprotocol === PROTO_SUBPROTOCOL) {
      if (typeof data === "string") return badRequest(`text message on ${PROTO_SUBPROTOCOL}`)
      return Result.succeed(fromBinary(ServerFrameSchema, data))
    }
    if (typeof data !== "string") return badRequest(`binary message on ${JSON_SUBPROTOCOL}`)
    return Result.succeed(fromJson(ServerFrameSchema, JSON.parse(data) as JsonValue))
  } catch (e) {
    return badRequest(`invalid ServerFrame: ${detail(e)}`)
  }
}

// ---------------------------------------------------------------------------------------------
// Server frames (encode)

/**
 * Encodes a server frame for one subprotocol: `toBinary`, or proto3 JSON with proto field names
 * (`{"caught_up":{"topic":"run/r1","seq":"5"}}`: uint64 as decimal strings, enums by name,
 * default values omitted).
 */
export const encodeServerFrame = (subprotocol: Subprotocol, frame: ServerFrame): Uint8Array | string =>
  subprotocol === PROTO_SUBPROTOCOL
    ? toBinary(ServerFrameSchema, frame)
    : toJsonString(ServerFrameSchema, frame, { useProtoFieldName: true })

const toUint64 = (n: number | undefined): bigint =>
  n === undefined || !Number.isFinite(n) || n <= 0 ? 0n : BigInt(Math.ceil(n))

/** The `Error` message of a request-scoped error (retryable from the table unless overridden). */
export const errorMessageOf = (e: ProtocolError): ErrorMessage =>
  create(ErrorSchema, {
    code: e.errorCode,
    message: e.message,
    requestId: e.requestId ?? "",
    topic: e.topic ?? "",
    retryable: e.isRetryable,
    retryAfterMs: toUint64(e.retryAfterMs),
    floorSeq: e.floorSeq ?? 0n,
    headSeq: e.headSeq ?? 0n
  })

/** `ServerFrame{error}`: request-scoped delivery, the socket stays open. */
export const errorFrame = (e: ProtocolError): ServerFrame =>
  create(ServerFrameSchema, { frame: { case: "error", value: errorMessageOf(e) } })

/** `ServerFrame{goodbye}`: sent before closing with `e.closeCode`. */
export const goodbyeFrame = (e: ProtocolError): ServerFrame =>
  create(ServerFrameSchema, {
    frame: {
      case: "goodbye",
      value: create(GoodbyeSchema, { code: e.errorCode, message: e.message, retryAfterMs: toUint64(e.retryAfterMs) })
    }
  })

// ---------------------------------------------------------------------------------------------
// Updates: pre-encoded items spliced into frames

/** One journal entry's `Update`, encoded once at write time (stored as `update_pb` / `update_json`). */
export interface EncodedUpdate {
  /** `toBinary(UpdateSchema, update)` */
  readonly pb: Uint8Array
  /** `toJsonString(UpdateSchema, update, { useProtoFieldName: true })` */
  readonly json: string
}

export const encodedUpdate = (update: Update): EncodedUpdate => ({
  pb: toBinary(UpdateSchema, update),
  json: toJsonString(UpdateSchema, update, { useProtoFieldName: true })
})

/** The `Updates` fields other than `items`. */
export interface UpdatesHeader {
  readonly topic: string
  readonly epoch: string
  readonly replay: boolean
}

export interface ChunkLimits {
  /** Most items per frame (at least 1 is always used). */
  readonly maxItems: number
  /** Most bytes per frame, the whole WebSocket message payload included. */
  readonly maxFrameBytes: number
}

// Wire format of ServerFrame{updates = 3} and Updates{topic = 1, epoch = 2, items = 3, replay = 4}.
// Tags are (field number << 3 | wire type); 2 = length-delimited, 0 = varint.
const TAG_SERVER_FRAME_UPDATES = (3 << 3) | 2
const TAG_TOPIC = (1 << 3) | 2
const TAG_EPOCH = (2 << 3) | 2
const TAG_ITEM = (3 << 3) | 2
const TAG_REPLAY = (4 << 3) | 0

const varintSize = (n: number): number => (n < 0x80 ? 1 : n < 0x4000 ? 2 : n < 0x200000 ? 3 : n < 0x10000000 ? 4 : 5)

const writeVarint = (out: Uint8Array, pos: number, n: number): number => {
  while (n > 0x7f) {
    out[pos++] = (n & 0x7f) | 0x80
    n >>>= 7
  }
  out[pos++] = n
  return pos
}

const utf8 = new TextEncoder()

/** A length-delimited field's size (single-byte tag): tag + length prefix + payload. */
const delimitedSize = (len: number): number => 1 + varintSize(len) + len

/** Sizing of one `Updates` frame in one subprotocol, item by item. */
interface FrameSizer<I> {
  /** Bytes one item adds to a frame. */
  readonly itemBytes: (item: I) => number
  /** Total frame bytes for items adding up to `itemBytes` (at least one item). */
  readonly frameBytes: (itemBytes: number) => number
}

const protoSizer = (header: UpdatesHeader): FrameSizer<Uint8Array> => {
  const fixed = stringFieldSize(header.topic) + stringFieldSize(header.epoch) + (header.replay ? 2 : 0)
  return {
    itemBytes: (item) => delimitedSize(item.byteLength),
    frameBytes: (itemBytes) => delimitedSize(fixed + itemBytes)
  }
}

const stringFieldSize = (s: string): number => (s.length === 0 ? 0 : delimitedSize(utf8ByteLength(s)))

/**
 * `ServerFrame{updates: Updates{topic, epoch, items, replay}}` in protobuf, written by hand into
 * one buffer of the exact size: the header fields, then `itemsBytes` of delimited items written by
 * `writeItems`, then `replay`. Field order and default omission follow `toBinary`, so the output
 * is byte-identical to it.
 */
const encodeFrameProto = (
  header: UpdatesHeader,
  itemsBytes: number,
  writeItems: (out: Uint8Array, pos: number) => number
): Uint8Array => {
  const topicBytes = utf8ByteLength(header.topic)
  const epochBytes = utf8ByteLength(header.epoch)
  const body = (topicBytes > 0 ? delimitedSize(topicBytes) : 0) + (epochBytes > 0 ? delimitedSize(epochBytes) : 0)
    + itemsBytes + (header.replay ? 2 : 0)
  const out = new Uint8Array(delimitedSize(body))
  out[0] = TAG_SERVER_FRAME_UPDATES
  let pos = writeVarint(out, 1, body)
  if (topicBytes > 0) pos = writeStringField(out, pos, TAG_TOPIC, header.topic, topicBytes)
  if (epochBytes > 0) pos = writeStringField(out, pos, TAG_EPOCH, header.epoch, epochBytes)
  pos = writeItems(out, pos)
  if (header.replay) {
    out[pos++] = TAG_REPLAY
    out[pos++] = 1
  }
  return out
}

/** The `Updates` frame of `items` (each copied in as-is) in protobuf, byte-identical to `toBinary`. */
export const encodeUpdatesFrameProto = (header: UpdatesHeader, items: ReadonlyArray<Uint8Array>): Uint8Array => {
  let itemsBytes = 0
  for (const item of items) itemsBytes += delimitedSize(item.byteLength)
  return encodeFrameProto(header, itemsBytes, (out, pos) => {
    for (const item of items) pos = writeDelimitedItem(out, pos, item)
    return pos
  })
}

/**
 * Items in their `Updates.items` form, back to back: each as its tag, its length and its bytes.
 * A replay page keeps its protobuf entries so (Journal `PackedPage`), which makes any run of
 * consecutive entries one byte range that a frame takes with one copy. This is the size an item
 * of `length` bytes takes in that form (tag + length prefix + bytes).
 */
export const delimitedItemSize = delimitedSize

/** Writes `item` at `pos` in delimited form; returns the position after it. */
export const writeDelimitedItem = (out: Uint8Array, pos: number, item: Uint8Array): number => {
  out[pos++] = TAG_ITEM
  pos = writeVarint(out, pos, item.byteLength)
  out.set(item, pos)
  return pos + item.byteLength
}

/** Where the item's own bytes start in its delimited form at `pos` (after tag and length). */
export const delimitedItemStart = (bytes: Uint8Array, pos: number): number => {
  pos++ // the tag
  while (bytes[pos++]! & 0x80) {
    // the length's continuation bytes
  }
  return pos
}

/**
 * `encodeUpdatesFrameProto` for items given as one range of delimited items (`delimited`, e.g. a
 * slice of a packed replay page): the same bytes, one copy of the range instead of one per item.
 */
export const encodeUpdatesFrameProtoDelimited = (header: UpdatesHeader, delimited: Uint8Array): Uint8Array =>
  encodeFrameProto(header, delimited.byteLength, (out, pos) => {
    out.set(delimited, pos)
    return pos + delimited.byteLength
  })

/**
 * `chunkUpdatesProto` for consecutive items kept in delimited form: entry k (from ≤ k < to) is
 * `delimited[ends[k − 1] ?? 0, ends[k])`. Same greedy split (at most `maxItems` items and
 * `maxFrameBytes` bytes per frame, an item too large for the budget alone in its frame) and the
 * same bytes, without an object per item.
 */
export const chunkDelimitedUpdatesProto = (
  header: UpdatesHeader,
  delimited: Uint8Array,
  ends: ArrayLike<number>,
  from: number,
  to: number,
  limits: ChunkLimits
): Array<Uint8Array> => {
  const fixed = stringFieldSize(header.topic) + stringFieldSize(header.epoch) + (header.replay ? 2 : 0)
  const maxItems = Math.max(1, Math.floor(limits.maxItems))
  const frames: Array<Uint8Array> = []
  let i = from
  while (i < to) {
    const start = i === 0 ? 0 : ends[i - 1]!
    let j = i
    while (j < to) {
      const count = j - i
      if (count > 0 && (count >= maxItems || delimitedSize(fixed + ends[j]! - start) > limits.maxFrameBytes)) break
      j++
    }
    frames.push(encodeUpdatesFrameProtoDelimited(header, delimited.subarray(start, ends[j - 1]!)))
    i = j
  }
  return frames
}

/** Writes a string field whose UTF-8 length is `bytes` (ASCII copied directly: no allocation). */
const writeStringField = (out: Uint8Array, pos: number, tag: number, s: string, bytes: number): number => {
  out[pos++] = tag
  pos = writeVarint(out, pos, bytes)
  if (bytes === s.length) {
    for (let i = 0; i < s.length; i++) out[pos + i] = s.charCodeAt(i)
  } else {
    utf8.encodeInto(s, out.subarray(pos, pos + bytes))
  }
  return pos + bytes
}

/** The JSON members before `items`, in field order; empty strings are omitted like protobuf-es does. */
const jsonHeadMembers = (header: UpdatesHeader): Array<string> => {
  const members: Array<string> = []
  if (header.topic.length > 0) members.push(`"topic":${JSON.stringify(header.topic)}`)
  if (header.epoch.length > 0) members.push(`"epoch":${JSON.stringify(header.epoch)}`)
  return members
}

const JSON_OPEN = `{"updates":{`
const JSON_CLOSE = `}}`
const JSON_ITEMS_OPEN = `"items":[`
const JSON_REPLAY = `"replay":true`

const jsonSizer = (header: UpdatesHeader): FrameSizer<string> => {
  const head = jsonHeadMembers(header)
  const members = head.length + 1 + (header.replay ? 1 : 0) // items is always present in a chunk
  const fixed = JSON_OPEN.length + JSON_CLOSE.length + JSON_ITEMS_OPEN.length + 1 // "]"
    + head.reduce((n, m) => n + utf8ByteLength(m), 0)
    + (header.replay ? JSON_REPLAY.length : 0)
    + (members - 1) // commas between members
  return {
    itemBytes: (item) => utf8ByteLength(item) + 1, // the item and its separating comma…
    frameBytes: (itemBytes) => fixed + itemBytes - 1 // …of which there is one fewer than items
  }
}

/**
 * `chunkUpdatesJson` for consecutive items kept as UTF-8 text, each followed by a comma: entry k
 * (from ≤ k < to) is `joined[k === 0 ? 0 : ends[k − 1] + 1, ends[k])`. Same greedy split (sizes
 * in UTF-8 bytes, as `chunkUpdatesJson` counts them) and the same text, as UTF-8 bytes: a frame's
 * items are one byte range of `joined` (the commas between them included), copied once.
 */
export const chunkJoinedUpdatesJson = (
  header: UpdatesHeader,
  joined: Uint8Array,
  ends: ArrayLike<number>,
  from: number,
  to: number,
  limits: ChunkLimits
): Array<Utf8Text> => {
  const head = jsonHeadMembers(header)
  const prefix = Buffer.from(`${JSON_OPEN}${head.map((m) => `${m},`).join("")}${JSON_ITEMS_OPEN}`, "utf8")
  const suffix = Buffer.from(`]${header.replay ? `,${JSON_REPLAY}` : ""}${JSON_CLOSE}`, "utf8")
  const fixed = prefix.byteLength + suffix.byteLength
  const maxItems = Math.max(1, Math.floor(limits.maxItems))
  const frames: Array<Utf8Text> = []
  let i = from
  while (i < to) {
    const start = i === 0 ? 0 : ends[i - 1]! + 1
    let j = i
    while (j < to) {
      const count = j - i
      if (count > 0 && (count >= maxItems || fixed + ends[j]! - start > limits.maxFrameBytes)) break
      j++
    }
    const end = ends[j - 1]!
    const out = Buffer.allocUnsafe(fixed + end - start)
    out.set(prefix, 0)
    out.set(joined.subarray(start, end), prefix.byteLength)
    out.set(suffix, prefix.byteLength + end - start)
    frames.push(new Utf8Text(out))
    i = j
  }
  return frames
}

/**
 * `ServerFrame{updates: …}` in proto3 JSON by string concatenation:
 * `{"updates":{"topic":…,"epoch":…,"items":[<item>,…],"replay":true}}`, identical to
 * `toJsonString(ServerFrameSchema, frame, { useProtoFieldName: true })` (empty topic/epoch, empty
 * items and `replay: false` are omitted).
 */
export const encodeUpdatesFrameJson = (header: UpdatesHeader, items: ReadonlyArray<string>): string => {
  const members = jsonHeadMembers(header)
  if (items.length > 0) members.push(`${JSON_ITEMS_OPEN}${items.join(",")}]`)
  if (header.replay) members.push(JSON_REPLAY)
  return `${JSON_OPEN}${members.join(",")}${JSON_CLOSE}`
}

/** Splices pre-encoded updates into one `Updates` frame for `subprotocol` (no size bound: see `chunkUpdates`). */
export const encodeUpdatesFrame = (
  subprotocol: Subprotocol,
  updates: UpdatesHeader & { readonly items: ReadonlyArray<EncodedUpdate> }
): Uint8Array | string =>
  subprotocol === PROTO_SUBPROTOCOL
    ? encodeUpdatesFrameProto(updates, updates.items.map((i) => i.pb))
    : encodeUpdatesFrameJson(updates, updates.items.map((i) => i.json))

/** A run of consecutive items, `items.slice(start, end)`, that makes one frame. */
export interface ChunkRange {
  readonly start: number
  readonly end: number
}

/**
 * Greedy split into consecutive ranges of at most `maxItems` items whose frame is at most
 * `maxFrameBytes`. An item too large to fit even alone gets a range of its own.
 */
const splitWith = <I>(sizer: FrameSizer<I>, items: ReadonlyArray<I>, limits: ChunkLimits): Array<ChunkRange> => {
  const maxItems = Math.max(1, Math.floor(limits.maxItems))
  const ranges: Array<ChunkRange> = []
  let start = 0
  let bytes = 0
  for (let i = 0; i < items.length; i++) {
    const b = sizer.itemBytes(items[i]!)
    const count = i - start
    if (count > 0 && (count >= maxItems || sizer.frameBytes(bytes + b) > limits.maxFrameBytes)) {
      ranges.push({ start, end: i })
      start = i
      bytes = 0
    }
    bytes += b
  }
  if (start < items.length) ranges.push({ start, end: items.length })
  return ranges
}

export const splitUpdatesProto = (header: UpdatesHeader, items: ReadonlyArray<Uint8Array>, limits: ChunkLimits) =>
  splitWith(protoSizer(header), items, limits)

export const splitUpdatesJson = (header: UpdatesHeader, items: ReadonlyArray<string>, limits: ChunkLimits) =>
  splitWith(jsonSizer(header), items, limits)

/**
 * The ranges `chunkUpdates` uses, for callers that need to know which items (hence which seqs)
 * each frame carries.
 */
export const splitUpdates = (
  subprotocol: Subprotocol,
  header: UpdatesHeader,
  items: ReadonlyArray<EncodedUpdate>,
  limits: ChunkLimits
): Array<ChunkRange> =>
  subprotocol === PROTO_SUBPROTOCOL
    ? splitUpdatesProto(header, items.map((i) => i.pb), limits)
    : splitUpdatesJson(header, items.map((i) => i.json), limits)

export const chunkUpdatesProto = (
  header: UpdatesHeader,
  items: ReadonlyArray<Uint8Array>,
  limits: ChunkLimits
): Array<Uint8Array> =>
  splitUpdatesProto(header, items, limits).map((r) => encodeUpdatesFrameProto(header, items.slice(r.start, r.end)))

export const chunkUpdatesJson = (header: UpdatesHeader, items: ReadonlyArray<string>, limits: ChunkLimits): Array<string> =>
  splitUpdatesJson(header, items, limits).map((r) => encodeUpdatesFrameJson(header, items.slice(r.start, r.end)))

/**
 * Chunks consecutive pre-encoded updates of one topic into `Updates` frames for `subprotocol`,
 * each with at most `maxItems` items and at most `maxFrameBytes` bytes (frame overhead included),
 * in order. An item larger than the budget goes alone in its own (oversized) frame. No items ⇒
 * no frames.
 */
export const chunkUpdates = (
  subprotocol: Subprotocol,
  header: UpdatesHeader,
  items: ReadonlyArray<EncodedUpdate>,
  limits: ChunkLimits
): Array<Uint8Array | string> =>
  subprotocol === PROTO_SUBPROTOCOL
    ? chunkUpdatesProto(header, items.map((i) => i.pb), limits)
    : chunkUpdatesJson(header, items.map((i) => i.json), limits)
