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
  RunSummarySchema
} from "../gen/openagents/sync/v1/documents_pb.ts"

export const PROJECTION_VERSION = 1

export const sha256Hex = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex")

export { encodeRunSummary } from "./RunSummaryEncoding.ts"
export const decodeRunSummary = (bytes: Uint8Array) => fromBinary(RunSummarySchema, bytes)
export const encodeWorkerSummary = (doc: CodexWorkerSummary) => toBinary(CodexWorkerSummarySchema, doc)
export const decodeWorkerSummary = (bytes: Uint8Array) => fromBinary(CodexWorkerSummarySchema, bytes)

const jsonOptions = { useProtoFieldName: true } as const

export const runSummaryJson = (doc: RunSummary) => toJson(RunSummarySchema, doc, jsonOptions)
export const workerSummaryJson = (doc: CodexWorkerSummary) => toJson(CodexWorkerSummarySchema, doc, jsonOptions)

export { documentJson } from "./DocumentJson.ts"
