/**
 * Errors of the HTTP surface (SPEC §6, §10 "HTTP JSON"): one tagged error whose `code` is the
 * public snake_case code; the status is derived from the code by one table, so a code can never
 * be sent with the wrong status. Rendered as `{error: {code, message, details?}}`.
 */
import { Schema } from "effect"

export const API_ERROR_STATUS = {
  invalid_request: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  run_not_found: 404,
  worker_not_found: 404,
  run_already_exists: 409,
  run_terminal: 409,
  worker_terminal: 409,
  worker_owner_conflict: 409,
  idempotency_key_reused: 409,
  payload_too_large: 413,
  internal: 500,
  unavailable: 503
} as const

export type ApiErrorCode = keyof typeof API_ERROR_STATUS

export const API_ERROR_CODES = Object.keys(API_ERROR_STATUS) as ReadonlyArray<ApiErrorCode>

export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  code: Schema.Literals(API_ERROR_CODES),
  message: Schema.String,
  details: Schema.optional(Schema.Unknown)
}) {
  get status(): number {
    return API_ERROR_STATUS[this.code]
  }
  toBody() {
    return { error: { code: this.code, message: this.message, ...(this.details === undefined ? {} : { details: this.details }) } }
  }
}

export const apiError = (code: ApiErrorCode, message: string, details?: unknown) =>
  new ApiError(details === undefined ? { code, message } : { code, message, details })
