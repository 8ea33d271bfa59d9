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
import { BinaryReader, WireType } from "@bufbuild/protobuf/wire"
import {
  CodexWorkerSummarySchema,
  RunEventSchema,
  WorkerEventSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import type { Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import type { Timestamp } from "@bufbuild/protobuf/wkt"
import { documentJson } from "./DocumentJson.ts"
import { encodeEventBody, type EventIdField } from "./EventBodyEncoding.ts"
import { encodeRunSummary, runSummaryJsonText } from "./RunSummaryEncoding.ts"
import type { JsonObject } from "./Json.ts"
import { ScratchWriter, WIRE_LEN } from "./ScratchWriter.ts"
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
      return encodeRunSummary(body.value)
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
  if (fast !== undefined) return { ...BODY_FIELDS[body.case], ...fast }
  const json = body.case === "runSummary" ? runSummaryJsonText(body.value) : undefined
  return { ...BODY_FIELDS[body.case], pb: pb ?? bodyBinary(body), json: json ?? JSON.stringify(documentJson(body)) }
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

/** One writer for every encoding (synchronous; `finish` copies out and resets). */
const writer = new ScratchWriter()

/** header + encoded body → the stored `Update` encodings (proto3: zero scalars are omitted). */
const encodeUpdateWith = (h: UpdateHeader, body: EncodedBody | undefined): EncodedUpdate => {
  const w = writer
  w.reset()
  w.uintField(1, h.seq)
  w.stringField(2, h.kind)
  w.stringField(3, h.docKey)
  w.uintField(4, h.docVersion)
  w.uintField(5, h.schemaVersion)
  w.uintField(6, h.occurredAtMs)
  w.uintField(7, h.committedAtMs)
  if (body) {
    w.tag(body.field, WIRE_LEN)
    w.bytes(body.pb)
  }
  return { pb: w.finish(), json: updateJson(h, body) }
}

/**
 * The `Update`'s proto3 JSON. A journal entry has every header field set, and one template then
 * builds it (V8 sizes a multi-part template once: about half the garbage of field-by-field
 * concatenation); otherwise each present field is appended with a leading comma, the first dropped.
 */
const updateJson = (h: UpdateHeader, body: EncodedBody | undefined): string => {
  if (
    body !== undefined && h.seq !== 0 && h.kind !== "" && h.docKey !== "" && h.docVersion !== 0 && h.schemaVersion !== 0 &&
    h.occurredAtMs !== 0 && h.committedAtMs !== 0
  ) {
    return `{"seq":"${h.seq}","kind":${JSON.stringify(h.kind)},"doc_key":${JSON.stringify(h.docKey)},"doc_version":"${h.docVersion}",\
"schema_version":${h.schemaVersion},"occurred_at_ms":"${h.occurredAtMs}","committed_at_ms":"${h.committedAtMs}",\
"${body.jsonName}":${body.json}}`
  }
  let json = ""
  if (h.seq !== 0) json += `,"seq":"${h.seq}"`
  if (h.kind !== "") json += `,"kind":${JSON.stringify(h.kind)}`
  if (h.docKey !== "") json += `,"doc_key":${JSON.stringify(h.docKey)}`
  if (h.docVersion !== 0) json += `,"doc_version":"${h.docVersion}"`
  if (h.schemaVersion !== 0) json += `,"schema_version":${h.schemaVersion}`
  if (h.occurredAtMs !== 0) json += `,"occurred_at_ms":"${h.occurredAtMs}"`
  if (h.committedAtMs !== 0) json += `,"committed_at_ms":"${h.committedAtMs}"`
  if (body !== undefined) json += `,"${body.jsonName}":${body.json}`
  return `{${json.slice(1)}}`
}

/** header + encoded body → the stored `Update` encodings (proto3: zero scalars are omitted). */
export const encodeUpdate = (h: UpdateHeader, body: EncodedBody | undefined): EncodedUpdate => {
  try {
    return encodeUpdateWith(h, body)
  } catch (e) {
    writer.reset() // a failed encoding must not leave bytes in front of the next one
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
