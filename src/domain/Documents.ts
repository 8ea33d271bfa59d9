/**
 * Documents: binary encoding and hashing of read-model documents, and the proto3 JSON of any
 * `Update.body`. The stored bytes are `toBinary` of the typed message; since projections build
 * messages deterministically (fixed field order, sorted map keys, jsonb-canonical Structs), equal
 * histories give byte-identical documents, which is what the drift check and rebuild compare.
 */
import { fromBinary, toBinary, toJson } from "@bufbuild/protobuf"
import { createHash } from "node:crypto"
import {
  type CodexWorkerSummary,
  CodexWorkerSummarySchema,
  type RunSummary,
  RunSummarySchema,
  RunEventSchema,
  WorkerEventSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import type { Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import type { JsonValue } from "./Json.ts"

export const PROJECTION_VERSION = 1

export const sha256Hex = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

export const encodeRunSummary = (doc: RunSummary) => toBinary(RunSummarySchema, doc)
export const decodeRunSummary = (bytes: Uint8Array) => fromBinary(RunSummarySchema, bytes)
export const encodeWorkerSummary = (doc: CodexWorkerSummary) => toBinary(CodexWorkerSummarySchema, doc)
export const decodeWorkerSummary = (bytes: Uint8Array) => fromBinary(CodexWorkerSummarySchema, bytes)

const jsonOptions = { useProtoFieldName: true } as const

export const runSummaryJson = (doc: RunSummary) => toJson(RunSummarySchema, doc, jsonOptions)
export const workerSummaryJson = (doc: CodexWorkerSummary) => toJson(CodexWorkerSummarySchema, doc, jsonOptions)

/** proto3 JSON (snake_case field names) of the document or event an Update carries. */
export const documentJson = (body: Update["body"]): JsonValue => {
  switch (body.case) {
    case "runSummary":
      return toJson(RunSummarySchema, body.value, jsonOptions)
    case "workerSummary":
      return toJson(CodexWorkerSummarySchema, body.value, jsonOptions)
    case "runEvent":
      return toJson(RunEventSchema, body.value, jsonOptions)
    case "workerEvent":
      return toJson(WorkerEventSchema, body.value, jsonOptions)
    case undefined:
      return null
  }
}
