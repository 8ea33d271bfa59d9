/**
 * Typed errors of the Khala client, shared by the Promise API (rejections, `onError` callbacks)
 * and the Effect API (`src/client/effect.ts`, typed error channels).
 */
import { Schema } from "effect"
import { WS_ERROR_NAMES } from "../domain/ErrorCode.ts"

const ErrorCodeNames = Schema.Literals(["unspecified", ...WS_ERROR_NAMES])

/** An `Error` or `Goodbye` frame from the server (docs/PROTOCOL.md §7). */
export class KhalaServerError extends Schema.TaggedError<KhalaServerError>()("KhalaServerError", {
  code: ErrorCodeNames,
  message: Schema.String,
  /** `goodbye` (connection-fatal) or `error` (request-scoped). */
  frame: Schema.Literals(["error", "goodbye"]),
  topic: Schema.optionalKey(Schema.String),
  requestId: Schema.optionalKey(Schema.String),
  retryAfterMs: Schema.optionalKey(Schema.Number)
}) {}

/** The server broke the protocol as this client sees it (seq gap, undecodable frame, …). */
export class KhalaProtocolError extends Schema.TaggedError<KhalaProtocolError>()("KhalaProtocolError", {
  message: Schema.String,
  topic: Schema.optionalKey(Schema.String)
}) {}

/** `GET /sync/v1/snapshot` failed (`status` 0 = network failure or an unreadable body). */
export class KhalaSnapshotError extends Schema.TaggedError<KhalaSnapshotError>()("KhalaSnapshotError", {
  topic: Schema.String,
  status: Schema.Number,
  message: Schema.String
}) {}

/** `getToken()` failed or threw. */
export class KhalaTokenError extends Schema.TaggedError<KhalaTokenError>()("KhalaTokenError", {
  message: Schema.String
}) {}

/** The watermark store failed to read or write (the client keeps going in memory). */
export class KhalaStoreError extends Schema.TaggedError<KhalaStoreError>()("KhalaStoreError", {
  topic: Schema.String,
  message: Schema.String
}) {}

/** An application callback (`onChange`, `onStale`, …) threw; the client caught it. */
export class KhalaCallbackError extends Schema.TaggedError<KhalaCallbackError>()("KhalaCallbackError", {
  message: Schema.String,
  topic: Schema.optionalKey(Schema.String)
}) {}

/** The client was closed. */
export class KhalaClientClosed extends Schema.TaggedError<KhalaClientClosed>()("KhalaClientClosed", {}) {}

/** `awaitSeq` on a topic without an active subscription (or one that ended while waiting). */
export class KhalaNotSubscribed extends Schema.TaggedError<KhalaNotSubscribed>()("KhalaNotSubscribed", {
  topic: Schema.String
}) {}

/** `awaitSeq` did not see the topic's applied watermark reach `seq` in time. */
export class AwaitSeqTimeout extends Schema.TaggedError<AwaitSeqTimeout>()("AwaitSeqTimeout", {
  topic: Schema.String,
  seq: Schema.Number,
  appliedSeq: Schema.Number,
  timeoutMs: Schema.Number
}) {}

/** Everything the client reports through `onError` callbacks and the `error` client event. */
export type KhalaClientError =
  | KhalaServerError
  | KhalaProtocolError
  | KhalaSnapshotError
  | KhalaTokenError
  | KhalaStoreError
  | KhalaCallbackError
  | KhalaClientClosed
  | KhalaNotSubscribed

/** A subscription ended for good: the server refused it (`forbidden_topic`, `bad_request`, …). */
export type KhalaTopicError = KhalaServerError | KhalaSnapshotError | KhalaClientClosed

/** A thrown value's message. */
export const errorMessage = (e: unknown): string => (e instanceof Error ? e.message : String(e))
