/**
 * UpdateEncoding: the write-time encoding of a journal entry's `Update`, without building the
 * message. Produces exactly `toBinary(UpdateSchema, u)` and `toJsonString(UpdateSchema, u,
 * { useProtoFieldName: true })` (test/domain/UpdateEncoding.test.ts checks byte equality), but
 * encodes the body (the document or event) once: a summary written to its entity topic and its
 * user topic, or the same document in many entries of a batch, is encoded a single time and
 * spliced behind each entry's header. `bodyBytesOf` finds the body's bytes again in a stored
 * `Update` (the journal's body hash, computed at write time from the body's bytes, is
 * recomputed from them for rows written before the hash existed).
 */
import { toBinary } from "@bufbuild/protobuf"
import { BinaryReader, BinaryWriter, WireType } from "@bufbuild/protobuf/wire"
import {
  CodexWorkerSummarySchema,
  RunEventSchema,
  RunSummarySchema,
  WorkerEventSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import type { Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import type { Timestamp } from "@bufbuild/protobuf/wkt"
import { documentJson } from "./DocumentJson.ts"
import { encodeEventBody, type EventIdField } from "./EventBodyEncoding.ts"
import type { JsonObject } from "./Json.ts"
import type { EncodedUpdate } from "./Protocol.ts"

/** The scalar fields of an `Update` (numbers: all well inside 2^53). */
export interface UpdateHeader {
  readonly seq: number
  readonly kind: string
  readonly docKey: string
  readonly docVersion: number
  readonly schemaVersion: number
  readonly occurredAtMs: number
  readonly committedAtMs: number
}

/** An encoded `Update.body`: its oneof field, binary and proto3 JSON. */
export interface EncodedBody {
  readonly field: number
  readonly jsonName: string
  readonly pb: Uint8Array
  readonly json: string
}

const BODY_FIELDS = {
  runSummary: { field: 10, jsonName: "run_summary" },
  workerSummary: { field: 11, jsonName: "worker_summary" },
  runEvent: { field: 12, jsonName: "run_event" },
  workerEvent: { field: 13, jsonName: "worker_event" }
} as const

const bodyBinary = (body: Update["body"]): Uint8Array => {
  switch (body.case) {
    case "runSummary":
      return toBinary(RunSummarySchema, body.value)
    case "workerSummary":
      return toBinary(CodexWorkerSummarySchema, body.value)
    case "runEvent":
      return toBinary(RunEventSchema, body.value)
    case "workerEvent":
      return toBinary(WorkerEventSchema, body.value)
    case undefined:
      return new Uint8Array(0)
  }
}

/**
 * Encodes a body once; `undefined` for an Update without one. `pb`: its binary encoding if the
 * caller has it already (it must be `toBinary` of the same message).
 */
export const encodeBody = (body: Update["body"], pb?: Uint8Array): EncodedBody | undefined => {
  if (body.case === undefined) return undefined
  const fast = body.case === "runEvent"
    ? eventBodyOf("run_id", body.value.runId, body.value)
    : body.case === "workerEvent"
    ? eventBodyOf("worker_id", body.value.workerId, body.value)
    : undefined
  return fast === undefined
    ? { ...BODY_FIELDS[body.case], pb: pb ?? bodyBinary(body), json: JSON.stringify(documentJson(body)) }
    : { ...BODY_FIELDS[body.case], ...fast }
}

/** An event message through EventBodyEncoding's direct path, when its values fit it. */
const eventBodyOf = (
  idField: EventIdField,
  id: string,
  e: { readonly seq: bigint; readonly type: string; readonly payload?: JsonObject | undefined; readonly occurredAt?: Timestamp | undefined }
) => {
  if (e.payload === undefined || e.occurredAt === undefined || e.occurredAt.nanos % 1_000_000 !== 0) return undefined
  if (e.seq > BigInt(Number.MAX_SAFE_INTEGER)) return undefined
  const occurredAtMs = Number(e.occurredAt.seconds) * 1000 + e.occurredAt.nanos / 1_000_000
  return encodeEventBody(idField, { id, seq: Number(e.seq), type: e.type, payload: e.payload, occurredAtMs })
}

/** A per-append memo: the same document object is encoded once. */
export const bodyEncoder = () => {
  const memo = new Map<object, EncodedBody | undefined>()
  return (body: Update["body"], pb?: Uint8Array): EncodedBody | undefined => {
    if (body.case === undefined) return undefined
    let encoded = memo.get(body.value)
    if (encoded === undefined) {
      encoded = encodeBody(body, pb)
      memo.set(body.value, encoded)
    }
    return encoded
  }
}

/** One writer for every encoding (synchronous; `finish` copies out and resets): its buffer has grown once. */
const writer = new BinaryWriter()

/** header + encoded body → the stored `Update` encodings (proto3: zero scalars are omitted). */
const encodeUpdateWith = (h: UpdateHeader, body: EncodedBody | undefined): EncodedUpdate => {
  const w = writer
  let json = "{"
  let sep = ""
  const u64 = (field: number, name: string, v: number) => {
    if (v === 0) return
    w.tag(field, WireType.Varint).uint64(v)
    json += `${sep}"${name}":"${v}"`
    sep = ","
  }
  const str = (field: number, name: string, v: string) => {
    if (v === "") return
    w.tag(field, WireType.LengthDelimited).string(v)
    json += `${sep}"${name}":${JSON.stringify(v)}`
    sep = ","
  }
  u64(1, "seq", h.seq)
  str(2, "kind", h.kind)
  str(3, "doc_key", h.docKey)
  u64(4, "doc_version", h.docVersion)
  if (h.schemaVersion !== 0) {
    w.tag(5, WireType.Varint).uint32(h.schemaVersion)
    json += `${sep}"schema_version":${h.schemaVersion}`
    sep = ","
  }
  u64(6, "occurred_at_ms", h.occurredAtMs)
  u64(7, "committed_at_ms", h.committedAtMs)
  if (body) {
    w.tag(body.field, WireType.LengthDelimited).bytes(body.pb)
    json += `${sep}"${body.jsonName}":${body.json}`
  }
  return { pb: w.finish(), json: json + "}" }
}

/** header + encoded body → the stored `Update` encodings (proto3: zero scalars are omitted). */
export const encodeUpdate = (h: UpdateHeader, body: EncodedBody | undefined): EncodedUpdate => {
  try {
    return encodeUpdateWith(h, body)
  } catch (e) {
    writer.finish() // a failed encoding must not leave bytes in front of the next one
    throw e
  }
}

const BODY_FIELD_NUMBERS: ReadonlySet<number> = new Set(Object.values(BODY_FIELDS).map((b) => b.field))
const NO_BODY = new Uint8Array(0)

/** The body's encoded bytes inside an encoded `Update` (empty when it has none). */
export const bodyBytesOf = (updatePb: Uint8Array): Uint8Array => {
  const r = new BinaryReader(updatePb)
  let body: Uint8Array = NO_BODY
  while (r.pos < r.len) {
    const [field, wireType] = r.tag()
    if (wireType === WireType.LengthDelimited && BODY_FIELD_NUMBERS.has(field)) body = r.bytes()
    else r.skip(wireType, field)
  }
  return body
}
