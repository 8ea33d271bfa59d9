/**
 * Browser-safe entry point of the Khala client SDK (`khala/client`): the Promise/callback client,
 * the Effect API, watermark stores that need no Node modules, typed errors, the backoff schedule
 * and the document helpers. The Node file store is NOT exported here: import
 * `src/client/fileStore.ts` by its own path.
 */
export { createKhalaClient, CLIENT_VERSION } from "./client.ts"
export type {
  AwaitSeqOptions,
  ClientEvent,
  ConnectionState,
  DocumentChange,
  KhalaClient,
  KhalaClientOptions,
  RebootstrapInfo,
  ResetReason,
  SubscribeOptions
} from "./client.ts"
export { backoffDelay, defaultBackoff, realScheduler, refreshDelay } from "./backoff.ts"
export type { BackoffOptions, Scheduler, TimerHandle } from "./backoff.ts"
export {
  decodeServerFrame,
  documentBodyFromJson,
  documentBodyJson,
  encodeClientFrame,
  errorCodeName,
  JSON_SUBPROTOCOL,
  PROTO_SUBPROTOCOL
} from "./codec.ts"
export type { DocumentBody, ErrorCodeName, Subprotocol } from "./codec.ts"
export {
  AwaitSeqTimeout,
  KhalaCallbackError,
  KhalaClientClosed,
  KhalaNotSubscribed,
  KhalaProtocolError,
  KhalaServerError,
  KhalaSnapshotError,
  KhalaStoreError,
  KhalaTokenError
} from "./errors.ts"
export type { KhalaClientError, KhalaTopicError } from "./errors.ts"
export { fromClient, Khala, makeKhala } from "./effect.ts"
export type { AwaitSeqError, KhalaService } from "./effect.ts"
export { jwtClaims, jwtExpiresAtMs } from "./jwt.ts"
export { deriveSnapshotUrl, fetchSnapshot, parseSnapshot } from "./snapshot.ts"
export type { FetchLike, TopicSnapshot } from "./snapshot.ts"
export type { CloseEventLike, MessageEventLike, WebSocketConstructor, WebSocketLike } from "./socket.ts"
export { documentJson, TopicState } from "./state.ts"
export type { ApplyOutcome, KhalaDocument, UpdateLike } from "./state.ts"
export { FRESH_WATERMARK, localStorageStore, memoryStore } from "./store.ts"
export type { StorageLike, Watermark, WatermarkStore } from "./store.ts"
