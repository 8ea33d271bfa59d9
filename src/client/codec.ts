/**
 * Client-side wire codec of `/sync/v1` (docs/PROTOCOL.md §1–2), browser-safe: only
 * `@bufbuild/protobuf` and the generated types, no Node modules. Owns encoding `ClientFrame`s,
 * decoding `ServerFrame`s from whatever a WebSocket implementation hands over (string, ArrayBuffer,
 * typed array), the snake_case names of `ErrorCode`, and the proto3 JSON of documents.
 *
 * The server's codec (`src/domain/Protocol.ts`) is strict and pulls `node:buffer`; this one is
 * lenient where a client should be (unknown JSON fields from a newer server are ignored) and
 * never throws: every failure is a `DecodeFailure`.
 */
import { create, fromBinary, fromJson, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf"
import type { JsonValue } from "@bufbuild/protobuf"
import {
  CodexWorkerSummarySchema,
  RunEventSchema,
  RunSummarySchema,
  WorkerEventSchema
} from "../gen/openagents/sync/v1/documents_pb.ts"
import { ErrorCode } from "../gen/openagents/sync/v1/errors_pb.ts"
import { ClientFrameSchema, ServerFrameSchema } from "../gen/openagents/sync/v1/frames_pb.ts"
import type { ClientFrame, ServerFrame, Update } from "../gen/openagents/sync/v1/frames_pb.ts"
import { documentJson } from "../domain/DocumentJson.ts"
import { WORKER_TAXONOMY } from "../domain/WorkerProjection.ts"

export const PROTO_SUBPROTOCOL = "khala.v1.proto"
export const JSON_SUBPROTOCOL = "khala.v1.json"

/** The two subprotocols of `/sync/v1`; both carry the same messages. */
export type Subprotocol = typeof PROTO_SUBPROTOCOL | typeof JSON_SUBPROTOCOL

/** A client frame's `oneof frame` (always set). */
export type ClientFrameValue = Exclude<ClientFrame["frame"], { case: undefined }>

/** A decoded server frame's `oneof frame`; `case: undefined` is a frame this client does not know. */
export type ServerFrameValue = ServerFrame["frame"]

/** Encodes one client frame as a WebSocket message: binary protobuf or proto3 JSON text. */
export const encodeClientFrame = (subprotocol: Subprotocol, frame: ClientFrameValue): Uint8Array<ArrayBuffer> | string => {
  const message = create(ClientFrameSchema, { frame })
  return subprotocol === PROTO_SUBPROTOCOL
    ? toBinary(ClientFrameSchema, message)
    : toJsonString(ClientFrameSchema, message, { useProtoFieldName: true })
}

export interface DecodeFailure {
  readonly _tag: "DecodeFailure"
  readonly message: string
}

const failure = (message: string): DecodeFailure => ({ _tag: "DecodeFailure", message })

const utf8Decoder = new TextDecoder("utf-8", { fatal: false })

/** The bytes or text of a WebSocket message event's `data`, as the three runtimes deliver it. */
const asPayload = (data: unknown): Uint8Array | string | undefined => {
  if (typeof data === "string") return data
  if (data instanceof ArrayBuffer) return new Uint8Array(data)
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
  return undefined
}

/**
 * Decodes one server WebSocket message. Protobuf on `khala.v1.proto` (text is accepted only as a
 * failure), proto3 JSON on `khala.v1.json` (a binary message is decoded as UTF-8 text, which some
 * WebSocket implementations deliver). Unknown JSON fields are ignored (forward compatibility).
 */
export const decodeServerFrame = (subprotocol: Subprotocol, data: unknown): ServerFrameValue | DecodeFailure => {
  const payload = asPayload(data)
  if (payload === undefined) return failure(`unsupported WebSocket message data (${typeof data})`)
  try {
    if (subprotocol === PROTO_SUBPROTOCOL) {
      if (typeof payload === "string") return failure(`text message on ${PROTO_SUBPROTOCOL}`)
      return fromBinary(ServerFrameSchema, payload, { readUnknownFields: false }).frame
    }
    const text = typeof payload === "string" ? payload : utf8Decoder.decode(payload)
    return fromJsonString(ServerFrameSchema, text, { ignoreUnknownFields: true }).frame
  } catch (e) {
    return failure(`undecodable server frame: ${e instanceof Error ? e.message : String(e)}`)
  }
}

export const isDecodeFailure = (u: unknown): u is DecodeFailure =>
  typeof u === "object" && u !== null && "_tag" in u && u._tag === "DecodeFailure"

// ---------------------------------------------------------------------------------------------
// Error codes

/** The public error taxonomy (docs/PROTOCOL.md §7), plus `unspecified` for 0 / unknown numbers. */
export type ErrorCodeName =
  | "unspecified"
  | "stale_cursor"
  | "unauthenticated"
  | "token_expired"
  | "forbidden_topic"
  | "bad_request"
  | "payload_too_large"
  | "rate_limited"
  | "too_many_subscriptions"
  | "slow_consumer"
  | "server_draining"
  | "internal"

const ERROR_CODE_NAMES: Record<number, ErrorCodeName> = {
  [ErrorCode.STALE_CURSOR]: "stale_cursor",
  [ErrorCode.UNAUTHENTICATED]: "unauthenticated",
  [ErrorCode.TOKEN_EXPIRED]: "token_expired",
  [ErrorCode.FORBIDDEN_TOPIC]: "forbidden_topic",
  [ErrorCode.BAD_REQUEST]: "bad_request",
  [ErrorCode.PAYLOAD_TOO_LARGE]: "payload_too_large",
  [ErrorCode.RATE_LIMITED]: "rate_limited",
  [ErrorCode.TOO_MANY_SUBSCRIPTIONS]: "too_many_subscriptions",
  [ErrorCode.SLOW_CONSUMER]: "slow_consumer",
  [ErrorCode.SERVER_DRAINING]: "server_draining",
  [ErrorCode.INTERNAL]: "internal"
}

export const errorCodeName = (code: number): ErrorCodeName => ERROR_CODE_NAMES[code] ?? "unspecified"

// ---------------------------------------------------------------------------------------------
// Documents

/** The typed body of a document: the generated `Update.body` oneof. */
export type DocumentBody = Update["body"]

/**
 * proto3 JSON (snake_case field names) of a document body: exactly the `document` the snapshot
 * endpoint returns for the same document. `null` for a body this client does not know.
 */
export const documentBodyJson: (body: DocumentBody) => JsonValue = documentJson

/** Worker taxonomy kinds carried as `WorkerEvent` documents (docs/PROTOCOL.md §3). */
const WORKER_EVENT_KINDS: ReadonlySet<string> = new Set(WORKER_TAXONOMY)

/**
 * Decodes a snapshot `document` (proto3 JSON) by its `kind` into the same typed body live updates
 * carry. Unknown fields are ignored; an unknown kind is `undefined`. Throws on malformed JSON of a
 * known kind.
 */
export const documentBodyFromJson = (kind: string, json: JsonValue): DocumentBody | undefined => {
  const options = { ignoreUnknownFields: true }
  if (kind === "run.summary") return { case: "runSummary", value: fromJson(RunSummarySchema, json, options) }
  if (kind === "worker.summary") {
    return { case: "workerSummary", value: fromJson(CodexWorkerSummarySchema, json, options) }
  }
  if (kind === "run.event") return { case: "runEvent", value: fromJson(RunEventSchema, json, options) }
  if (WORKER_EVENT_KINDS.has(kind)) {
    return { case: "workerEvent", value: fromJson(WorkerEventSchema, json, options) }
  }
  return undefined
}

/** True for bodies that are immutable events (doc_version 1) rather than read-model documents. */
export const isEventBody = (body: DocumentBody): boolean => body.case === "runEvent" || body.case === "workerEvent"
