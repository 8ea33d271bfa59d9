/**
 * The WebSocket error taxonomy (SPEC §5 "Error codes", §10 "Connection"): the one table from the
 * public snake_case name to the generated `ErrorCode` enum value, its delivery (request-scoped
 * `Error` frame vs connection-fatal `Goodbye` + close), its default `retryable` flag and its
 * WebSocket close code.
 *
 * Invariants: the enum numbering is fixed by the contract (`STALE_CURSOR = 1` … `INTERNAL = 11`);
 * the close code of a fatal error is always `4000 + enum number`; every name maps to exactly one
 * enum value and back. `ProtocolError` is the typed error the connection raises; it carries only
 * a name from this table, so no code can be sent with the wrong delivery or close code.
 */
import { Schema } from "effect"
import { ErrorCode } from "../gen/openagents/sync/v1/errors_pb.ts"

/** The public names, in enum order (index + 1 = enum number). */
export const WS_ERROR_NAMES = [
  "stale_cursor",
  "unauthenticated",
  "token_expired",
  "forbidden_topic",
  "bad_request",
  "payload_too_large",
  "rate_limited",
  "too_many_subscriptions",
  "slow_consumer",
  "server_draining",
  "internal"
] as const

export type WsErrorName = (typeof WS_ERROR_NAMES)[number]

/** The enum values of the taxonomy (everything but `UNSPECIFIED`). */
export type KnownErrorCode = Exclude<(typeof ErrorCode)[keyof typeof ErrorCode], typeof ErrorCode.UNSPECIFIED>

export interface WsErrorSpec {
  readonly name: WsErrorName
  readonly code: KnownErrorCode
  /**
   * Default delivery. `true`: `Goodbye{code}`, then close with `closeCode`. `false`: an `Error`
   * frame (with `request_id` / `topic` where known) and the socket stays open.
   */
  readonly fatal: boolean
  /**
   * Default of `Error.retryable`: whether the same request (or, for a fatal code, a reconnect that
   * resumes from the client's watermark) may succeed later without the client changing anything.
   */
  readonly retryable: boolean
  /** WebSocket close code used when the error closes the connection: 4000 + enum number. */
  readonly closeCode: number
}

const spec = (name: WsErrorName, code: KnownErrorCode, fatal: boolean, retryable: boolean): WsErrorSpec => ({
  name,
  code,
  fatal,
  retryable,
  closeCode: 4000 + code
})

/**
 * The table. Notes on the non-obvious rows:
 * - `payload_too_large` is request-scoped for a frame the server could still read; a frame the
 *   WS layer itself rejects closes with 1009 instead (outside this table).
 * - `rate_limited` is request-scoped for a single offence (`fatal: false`, retryable after
 *   `retry_after_ms`); the connection decides when repeated abuse escalates it to a `Goodbye`
 *   with `closeCode` 4007.
 * - `stale_cursor` is not retryable: the same cursor gives the same answer; the client must
 *   re-bootstrap from a snapshot (it receives `floor_seq` / `head_seq`).
 * - `slow_consumer`, `server_draining` and `internal` are retryable: reconnecting and resuming
 *   from the last applied seq loses nothing.
 */
export const WS_ERRORS: { readonly [K in WsErrorName]: WsErrorSpec } = {
  stale_cursor: spec("stale_cursor", ErrorCode.STALE_CURSOR, false, false),
  unauthenticated: spec("unauthenticated", ErrorCode.UNAUTHENTICATED, true, false),
  token_expired: spec("token_expired", ErrorCode.TOKEN_EXPIRED, true, false),
  forbidden_topic: spec("forbidden_topic", ErrorCode.FORBIDDEN_TOPIC, false, false),
  bad_request: spec("bad_request", ErrorCode.BAD_REQUEST, false, false),
  payload_too_large: spec("payload_too_large", ErrorCode.PAYLOAD_TOO_LARGE, false, false),
  rate_limited: spec("rate_limited", ErrorCode.RATE_LIMITED, false, true),
  too_many_subscriptions: spec("too_many_subscriptions", ErrorCode.TOO_MANY_SUBSCRIPTIONS, false, false),
  slow_consumer: spec("slow_consumer", ErrorCode.SLOW_CONSUMER, true, true),
  server_draining: spec("server_draining", ErrorCode.SERVER_DRAINING, true, true),
  internal: spec("internal", ErrorCode.INTERNAL, true, true)
}

const NAME_BY_CODE: ReadonlyMap<number, WsErrorName> = new Map(WS_ERROR_NAMES.map((n) => [WS_ERRORS[n].code, n]))

export const isWsErrorName = (u: unknown): u is WsErrorName => typeof u === "string" && Object.hasOwn(WS_ERRORS, u)

export const errorCodeOf = (name: WsErrorName): KnownErrorCode => WS_ERRORS[name].code

/** `undefined` for `UNSPECIFIED` and for numbers outside the taxonomy (a newer peer's code). */
export const nameOfErrorCode = (code: ErrorCode | number): WsErrorName | undefined => NAME_BY_CODE.get(code)

/** WebSocket close code of the error when it closes the connection: 4000 + enum number (4001…4011). */
export const closeCodeOf = (name: WsErrorName): number => WS_ERRORS[name].closeCode

/** Default delivery: `Goodbye` + close (`true`) or an `Error` frame on an open socket (`false`). */
export const isConnectionFatal = (name: WsErrorName): boolean => WS_ERRORS[name].fatal

export const isRetryable = (name: WsErrorName): boolean => WS_ERRORS[name].retryable

/**
 * A protocol error raised while serving a connection. The connection turns it into an `Error`
 * frame or a `Goodbye` + close (see `isConnectionFatal`; `rate_limited` escalation is its call).
 * `retryable` overrides the table default when set. Seqs are `bigint` like the generated types.
 */
export class ProtocolError extends Schema.TaggedError<ProtocolError>()("ProtocolError", {
  code: Schema.Literals(WS_ERROR_NAMES),
  message: Schema.String,
  requestId: Schema.optionalKey(Schema.String),
  topic: Schema.optionalKey(Schema.String),
  retryable: Schema.optionalKey(Schema.Boolean),
  retryAfterMs: Schema.optionalKey(Schema.Number),
  floorSeq: Schema.optionalKey(Schema.BigInt),
  headSeq: Schema.optionalKey(Schema.BigInt)
}) {
  get errorCode(): KnownErrorCode {
    return WS_ERRORS[this.code].code
  }
  get fatal(): boolean {
    return WS_ERRORS[this.code].fatal
  }
  get isRetryable(): boolean {
    return this.retryable ?? WS_ERRORS[this.code].retryable
  }
  get closeCode(): number {
    return WS_ERRORS[this.code].closeCode
  }
}

/** Shorthand: `protocolError("bad_request", "…", { requestId })`. */
export const protocolError = (
  code: WsErrorName,
  message: string,
  extra?: Omit<ConstructorParameters<typeof ProtocolError>[0], "code" | "message">
): ProtocolError => new ProtocolError({ ...extra, code, message })
