/**
 * EventBodyEncoding: the binary and proto3-JSON encodings of an event body — `RunEvent` or
 * `WorkerEvent`, both `{1: id, 2: seq, 3: type, 4: google.protobuf.Struct payload, 5: Timestamp
 * occurred_at}` — written straight from the event's plain values. Byte-identical to `toBinary` and
 * to `JSON.stringify(toJson(…, { useProtoFieldName: true }))` of the message (property-tested in
 * test/domain/EventBodyEncoding.test.ts), without what makes the generic encoder slow on this hot
 * path: it converts the payload into Struct/Value messages first and grows a fresh buffer per
 * message (several ArrayBuffers per event); this writes into one reused scratch buffer and copies
 * the result out once.
 *
 * Proto3 rules followed: scalar fields equal to their default are omitted; a set message field
 * (payload, occurred_at) is written even when empty; a oneof member (a Struct `Value`'s kind) is
 * always written; map entries (Struct fields) carry both key and value, in `Object.keys` order.
 */
import type { JsonObject, JsonValue } from "./Json.ts"

/** The id field's JSON name: `run_id` for RunEvent, `worker_id` for WorkerEvent. */
export type EventIdField = "run_id" | "worker_id"

export interface EventBodyValues {
  readonly id: string
  readonly seq: number
  readonly type: string
  readonly payload: JsonObject
  readonly occurredAtMs: number
}

const LEN = 2
const VARINT = 0
const I64 = 1

let buf = new Uint8Array(4096)
let view = new DataView(buf.buffer)
let pos = 0
const utf8 = new TextEncoder()

const ensure = (n: number) => {
  if (pos + n <= buf.length) return
  let size = buf.length * 2
  while (size < pos + n) size *= 2
  const next = new Uint8Array(size)
  next.set(buf.subarray(0, pos))
  buf = next
  view = new DataView(buf.buffer)
}

/** A varint of a non-negative integer below 2^53. */
const varint = (v: number) => {
  ensure(8)
  while (v > 0x7f) {
    buf[pos++] = (v % 0x80) | 0x80
    v = Math.floor(v / 0x80)
  }
  buf[pos++] = v
}

const tag = (field: number, wireType: number) => varint((field << 3) | wireType)

const string = (s: string) => {
  const n = s.length
  ensure(n * 3 + 5)
  // One length byte reserved; ASCII is copied as is, anything else goes through the encoder.
  const start = pos
  pos++
  let i = 0
  for (; i < n; i++) {
    const c = s.charCodeAt(i)
    if (c > 0x7f) break
    buf[pos++] = c
  }
  if (i < n) pos += utf8.encodeInto(s.slice(i), buf.subarray(pos)).written
  closeLength(start)
}

/** Fixes the length prefix reserved at `start` (one byte), moving the payload if it needs more. */
const closeLength = (start: number) => {
  const len = pos - start - 1
  if (len < 0x80) {
    buf[start] = len
    return
  }
  let bytes = 1
  for (let v = len; v > 0x7f; v = Math.floor(v / 0x80)) bytes++
  ensure(bytes - 1)
  buf.copyWithin(start + bytes, start + 1, pos)
  let v = len
  let p = start
  while (v > 0x7f) {
    buf[p++] = (v % 0x80) | 0x80
    v = Math.floor(v / 0x80)
  }
  buf[p] = v
  pos += bytes - 1
}

const open = () => {
  ensure(1)
  return pos++
}

/** A `google.protobuf.Value` (its fields, without its own tag and length). */
const value = (v: JsonValue) => {
  if (v === null) {
    tag(1, VARINT) // null_value = NULL_VALUE (0)
    varint(0)
  } else if (typeof v === "number") {
    tag(2, I64)
    ensure(8)
    view.setFloat64(pos, v, true)
    pos += 8
  } else if (typeof v === "string") {
    tag(3, LEN)
    string(v)
  } else if (typeof v === "boolean") {
    tag(4, VARINT)
    varint(v ? 1 : 0)
  } else if (Array.isArray(v)) {
    tag(6, LEN)
    const list = open()
    for (const item of v) {
      tag(1, LEN)
      const at = open()
      value(item)
      closeLength(at)
    }
    closeLength(list)
  } else {
    tag(5, LEN)
    const struct = open()
    structFields(v)
    closeLength(struct)
  }
}

/** A `google.protobuf.Struct`'s fields: one map entry (key 1, Value 2) per key. */
const structFields = (o: JsonObject) => {
  for (const key of Object.keys(o)) {
    tag(1, LEN)
    const entry = open()
    tag(1, LEN)
    string(key)
    tag(2, LEN)
    const at = open()
    value(o[key]!)
    closeLength(at)
    closeLength(entry)
  }
}

/** `toBinary` of the event message. */
const eventBinary = (e: EventBodyValues): Uint8Array => {
  pos = 0
  if (e.id !== "") {
    tag(1, LEN)
    string(e.id)
  }
  if (e.seq !== 0) {
    tag(2, VARINT)
    varint(e.seq)
  }
  if (e.type !== "") {
    tag(3, LEN)
    string(e.type)
  }
  tag(4, LEN)
  const payload = open()
  structFields(e.payload)
  closeLength(payload)
  tag(5, LEN)
  const ts = open()
  const seconds = Math.floor(e.occurredAtMs / 1000)
  const nanos = (e.occurredAtMs - seconds * 1000) * 1_000_000
  if (seconds !== 0) {
    tag(1, VARINT)
    varint(seconds)
  }
  if (nanos !== 0) {
    tag(2, VARINT)
    varint(nanos)
  }
  closeLength(ts)
  return buf.slice(0, pos)
}

/** A Timestamp's proto3 JSON from epoch milliseconds (0, or 3 fraction digits: ms precision). */
export const timestampJson = (ms: number): string => {
  const iso = new Date(ms).toISOString()
  return ms % 1000 === 0 ? iso.replace(".000Z", "Z") : iso
}

/** The proto3 JSON (snake_case names) of the event message. */
const eventJson = (idField: EventIdField, e: EventBodyValues): string => {
  let json = "{"
  let sep = ""
  if (e.id !== "") {
    json += `"${idField}":${JSON.stringify(e.id)}`
    sep = ","
  }
  if (e.seq !== 0) {
    json += `${sep}"seq":"${e.seq}"`
    sep = ","
  }
  if (e.type !== "") {
    json += `${sep}"type":${JSON.stringify(e.type)}`
    sep = ","
  }
  return `${json}${sep}"payload":${JSON.stringify(e.payload)},"occurred_at":"${timestampJson(e.occurredAtMs)}"}`
}

/**
 * Both encodings of an event body. Payloads the fast path does not cover (a `__proto__` key,
 * which a generic decoder treats specially, or an occurred_at outside 0 … 9999-12-31) are for the
 * caller to encode generically: `undefined`.
 */
export const encodeEventBody = (
  idField: EventIdField,
  e: EventBodyValues
): { readonly pb: Uint8Array; readonly json: string } | undefined => {
  if (!(e.occurredAtMs >= 0 && e.occurredAtMs <= 253_402_300_799_999) || hasProtoKey(e.payload)) return undefined
  try {
    return { pb: eventBinary(e), json: eventJson(idField, e) }
  } finally {
    pos = 0
  }
}

const hasProtoKey = (v: JsonValue): boolean => {
  if (Array.isArray(v)) return v.some(hasProtoKey)
  if (typeof v !== "object" || v === null) return false
  for (const key of Object.keys(v)) if (key === "__proto__" || hasProtoKey(v[key]!)) return true
  return false
}
