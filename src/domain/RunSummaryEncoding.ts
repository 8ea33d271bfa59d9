/**
 * RunSummaryEncoding: the binary and proto3-JSON encodings of a `RunSummary` document, written
 * straight from the message's fields. Every run event projects a new summary, which is stored
 * (binary) and journaled twice (binary and JSON), so the generic `toBinary`/`toJson` — a
 * reflective walk, a Timestamp message per time and a fresh buffer per message — were a
 * noticeable share of the commit path. Byte-identical to `toBinary` and to
 * `JSON.stringify(toJson(…, { useProtoFieldName: true }))` (property-tested in
 * test/domain/RunSummaryEncoding.test.ts).
 *
 * Covered: counters below 2^53 and times from 0 to 9999-12-31 with millisecond nanos (what the
 * projection produces). Anything else is `undefined`, for the caller to encode generically.
 */
import { toBinary } from "@bufbuild/protobuf"
import type { Timestamp } from "@bufbuild/protobuf/wkt"
import { type RunSummary, RunSummarySchema } from "../gen/openagents/sync/v1/documents_pb.ts"
import { timestampJson } from "./EventBodyEncoding.ts"
import { ScratchWriter } from "./ScratchWriter.ts"

const w = new ScratchWriter()

const MAX_SECONDS = 253_402_300_799n // 9999-12-31T23:59:59Z
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER)

const coveredTime = (t: Timestamp | undefined): boolean =>
  t === undefined || (t.seconds >= 0n && t.seconds <= MAX_SECONDS && t.nanos >= 0 && t.nanos % 1_000_000 === 0 && t.nanos < 1e9)

const covered = (doc: RunSummary): boolean =>
  doc.eventCount <= MAX_SAFE && doc.lastSeq <= MAX_SAFE && coveredTime(doc.createdAt) && coveredTime(doc.updatedAt) &&
  coveredTime(doc.terminalAt)

const timestampField = (field: number, t: Timestamp | undefined) => {
  if (t !== undefined) w.timestampField(field, Number(t.seconds), t.nanos)
}

const binary = (doc: RunSummary): Uint8Array => {
  w.reset()
  w.stringField(1, doc.runId)
  w.stringField(2, doc.ownerUserId)
  w.stringField(3, doc.status)
  w.uintField(4, Number(doc.eventCount))
  w.uintField(5, Number(doc.lastSeq))
  w.stringField(6, doc.lastEventType)
  timestampField(7, doc.createdAt)
  timestampField(8, doc.updatedAt)
  timestampField(9, doc.terminalAt)
  return w.finish()
}

const timeJson = (t: Timestamp) => `"${timestampJson(Number(t.seconds) * 1000 + t.nanos / 1_000_000)}"`

const json = (doc: RunSummary): string => {
  let out = ""
  if (doc.runId !== "") out += `,"run_id":${JSON.stringify(doc.runId)}`
  if (doc.ownerUserId !== "") out += `,"owner_user_id":${JSON.stringify(doc.ownerUserId)}`
  if (doc.status !== "") out += `,"status":${JSON.stringify(doc.status)}`
  if (doc.eventCount !== 0n) out += `,"event_count":"${doc.eventCount}"`
  if (doc.lastSeq !== 0n) out += `,"last_seq":"${doc.lastSeq}"`
  if (doc.lastEventType !== "") out += `,"last_event_type":${JSON.stringify(doc.lastEventType)}`
  if (doc.createdAt !== undefined) out += `,"created_at":${timeJson(doc.createdAt)}`
  if (doc.updatedAt !== undefined) out += `,"updated_at":${timeJson(doc.updatedAt)}`
  if (doc.terminalAt !== undefined) out += `,"terminal_at":${timeJson(doc.terminalAt)}`
  return `{${out.slice(1)}}`
}

/** `toBinary(RunSummarySchema, doc)`, or `undefined` outside the covered values. */
export const runSummaryBinary = (doc: RunSummary): Uint8Array | undefined => {
  if (!covered(doc)) return undefined
  try {
    return binary(doc)
  } finally {
    w.reset() // a failed encoding must not leave bytes in front of the next one
  }
}

/** `toBinary(RunSummarySchema, doc)`: through the direct encoder when it covers the values. */
export const encodeRunSummary = (doc: RunSummary): Uint8Array => runSummaryBinary(doc) ?? toBinary(RunSummarySchema, doc)

/** The proto3 JSON text of `doc`, or `undefined` outside the covered values. */
export const runSummaryJsonText = (doc: RunSummary): string | undefined => (covered(doc) ? json(doc) : undefined)
