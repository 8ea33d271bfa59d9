/**
 * EventBodyEncoding: the binary and proto3-JSON encodings of an event body — `RunEvent` or
 * `WorkerEvent`, both `{1: id, 2: seq, 3: type, 4: google.protobuf.Struct payload, 5: Timestamp
 * occurred_at}` — written straight from the event's plain values. Byte-identical to `toBinary` and
 * to `JSON.stringify(toJson(…, { useProtoFieldName: true }))` of the message (property-tested in
 * test/domain/EventBodyEncoding.test.ts), without what makes the generic encoder slow on this hot
 * path: it converts the payload into Struct/Value messages first and grows a fresh buffer per
 * message (several ArrayBuffers per event); this writes into one reused scratch buffer
 * (ScratchWriter) and copies the result out once.
 *
 * Proto3 rules followed: scalar fields equal to their default are omitted; a set message field
 * (payload, occurred_at) is written even when empty; a oneof member (a Struct `Value`'s kind) is
 * always written; map entries (Struct fields) carry both key and value, in `Object.keys` order.
 */
import type { JsonObject, JsonValue } from "./Json.ts"
import { ScratchWriter, WIRE_I64, WIRE_LEN, WIRE_VARINT } from "./ScratchWriter.ts"

/** The id field's JSON name: `run_id` for RunEvent, `worker_id` for WorkerEvent. */
export type EventIdField = "run_id" | "worker_id"

export interface EventBodyValues {
  readonly id: string
  readonly seq: number
  readonly type: string
  readonly payload: JsonObject
  readonly occurredAtMs: number
}

const w = new ScratchWriter()

/** A `google.protobuf.Value` (its fields, without its own tag and length). */
const value = (v: JsonValue) => {
  if (v === null) {
    w.tag(1, WIRE_VARINT) // null_value = NULL_VALUE (0)
    w.varint(0)
  } else if (typeof v === "number") {
    w.tag(2, WIRE_I64)
    w.double(v)
  } else if (typeof v === "string") {
    w.tag(3, WIRE_LEN)
    w.string(v)
  } else if (typeof v === "boolean") {
    w.tag(4, WIRE_VARINT)
    w.varint(v ? 1 : 0)
  } else if (Array.isArray(v)) {
    w.tag(6, WIRE_LEN)
    const list = w.open()
    for (const item of v) {
      w.tag(1, WIRE_LEN)
      const at = w.open()
      value(item)
      w.close(at)
    }
    w.close(list)
  } else {
    w.tag(5, WIRE_LEN)
    const struct = w.open()
    structFields(v)
    w.close(struct)
  }
}

/** A `google.protobuf.Struct`'s fields: one map entry (key 1, Value 2) per key. */
const structFields = (o: JsonObject) => {
  for (const key of Object.keys(o)) {
    w.tag(1, WIRE_LEN)
    const entry = w.open()
    w.tag(1, WIRE_LEN)
    w.string(key)
    w.tag(2, WIRE_LEN)
    const at = w.open()
    value(o[key]!)
    w.close(at)
    w.close(entry)
  }
}

/** `toBinary` of the event message. */
const eventBinary = (e: EventBodyValues): Uint8Array => {
  w.reset()
  w.stringField(1, e.id)
  w.uintField(2, e.seq)
  w.stringField(3, e.type)
  w.tag(4, WIRE_LEN)
  const payload = w.open()
  structFields(e.payload)
  w.close(payload)
  const seconds = Math.floor(e.occurredAtMs / 1000)
  w.timestampField(5, seconds, (e.occurredAtMs - seconds * 1000) * 1_000_000)
  return w.finish()
}

const DAY_MS = 86_400_000
let cachedDay = Number.NaN
let cachedDate = ""
const pad2 = (n: number) => (n < 10 ? "0" : "") + n
const pad3 = (n: number) => (n < 10 ? "00" : n < 100 ? "0" : "") + n

/**
 * A Timestamp's proto3 JSON from epoch milliseconds from 0 to 9999-12-31 (no fraction digits, or
 * 3: ms precision). The date part is formatted once per day (`Date#toISOString` was a few percent
 * of the commit path: every event and summary carries times, nearly all of them on one day).
 */
export const timestampJson = (ms: number): string => {
  const day = Math.floor(ms / DAY_MS)
  if (day !== cachedDay) {
    cachedDate = new Date(day * DAY_MS).toISOString().slice(0, 11) // YYYY-MM-DDT
    cachedDay = day
  }
  let rest = ms - day * DAY_MS
  const h = Math.floor(rest / 3_600_000)
  rest -= h * 3_600_000
  const m = Math.floor(rest / 60_000)
  rest -= m * 60_000
  const s = Math.floor(rest / 1000)
  const milli = rest - s * 1000
  return `${cachedDate}${pad2(h)}:${pad2(m)}:${pad2(s)}${milli === 0 ? "" : `.${pad3(milli)}`}Z`
}

/**
 * The proto3 JSON (snake_case names) of the event message: one template when every scalar is set
 * (always, for a stored event), else field by field with leading commas, the first dropped.
 */
const eventJson = (idField: EventIdField, e: EventBodyValues): string => {
  const rest = `"payload":${JSON.stringify(e.payload)},"occurred_at":"${timestampJson(e.occurredAtMs)}"}`
  if (e.id !== "" && e.seq !== 0 && e.type !== "") {
    return `{"${idField}":${JSON.stringify(e.id)},"seq":"${e.seq}","type":${JSON.stringify(e.type)},${rest}`
  }
  let json = ""
  if (e.id !== "") json += `,"${idField}":${JSON.stringify(e.id)}`
  if (e.seq !== 0) json += `,"seq":"${e.seq}"`
  if (e.type !== "") json += `,"type":${JSON.stringify(e.type)}`
  return `{${json.slice(1)}${json === "" ? "" : ","}${rest}`
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
    w.reset() // a failed encoding must not leave bytes in front of the next one
  }
}

const hasProtoKey = (v: JsonValue): boolean => {
  if (Array.isArray(v)) return v.some(hasProtoKey)
  if (typeof v !== "object" || v === null) return false
  for (const key of Object.keys(v)) if (key === "__proto__" || hasProtoKey(v[key]!)) return true
  return false
}
