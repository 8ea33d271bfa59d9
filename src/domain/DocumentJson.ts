/**
 * DocumentJson: the proto3 JSON (snake_case field names) of the document or event an `Update`
 * carries — what the snapshot endpoint returns as `document`. Browser-safe (no Node imports): the
 * client SDK uses it too, so server and client render documents identically.
 */
import { toJson } from "@bufbuild/protobuf"
import {
  CodexWorkerSummarySchema,
  RunEventSchema,
  RunSummarySchema,
  WorkerEventSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import type { Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import type { JsonValue } from "./Json.ts"

const jsonOptions = { useProtoFieldName: true } as const

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
