/**
 * HTTP adapter helpers: request ids, bearer-token checks, JSON body reading and the rendering of
 * typed errors as `{error: {code, message, details?}}` with the status of their code. Routes stay
 * thin: they adapt a request, call a service, and render its result with these.
 */
import { Effect, Option, Redacted } from "effect"
import { HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpServerError } from "effect/http/HttpServerError"
import * as crypto from "node:crypto"
import { ApiError, apiError } from "../../domain/ApiError.ts"
import { parseJson } from "../../domain/SafeJson.ts"
import type { CommandResult } from "../../services/CommandRunner.ts"

export const REQUEST_ID_HEADER = "x-request-id"
const REQUEST_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/

/** The caller's `x-request-id` if well-formed, else a fresh one. */
export const requestIdOf = (req: HttpServerRequest.HttpServerRequest): string => {
  const given = req.headers[REQUEST_ID_HEADER]
  return typeof given === "string" && REQUEST_ID_PATTERN.test(given) ? given : crypto.randomUUID()
}

export const bearerToken = (req: HttpServerRequest.HttpServerRequest): string | undefined => {
  const header = req.headers["authorization"]
  if (typeof header !== "string") return undefined
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header)
  return match?.[1]
}

const digest = (s: string) => crypto.createHash("sha256").update(s).digest()

/** Constant-time comparison of a presented token with the configured one. */
export const tokenMatches = (presented: string | undefined, expected: Redacted.Redacted<string>) =>
  presented !== undefined && crypto.timingSafeEqual(digest(presented), digest(Redacted.value(expected)))

export const requireToken = (req: HttpServerRequest.HttpServerRequest, expected: Redacted.Redacted<string>, what: string) =>
  tokenMatches(bearerToken(req), expected)
    ? Effect.void
    : Effect.fail(apiError("unauthorized", `missing or invalid ${what} token`))

/** Reads a JSON body: empty ⇒ `undefined`; malformed ⇒ 400; over the body limit ⇒ 413. */
export const readJsonBody = (req: HttpServerRequest.HttpServerRequest): Effect.Effect<unknown, ApiError> =>
  req.text.pipe(
    Effect.mapError((e: HttpServerError) =>
      e.reason._tag === "RequestParseError" && e.reason.reason === "BodyTooLarge"
        ? apiError("payload_too_large", "request body is over the size limit")
        : apiError("invalid_request", "request body could not be read")
    ),
    Effect.flatMap((text) => {
      if (text.trim() === "") return Effect.succeed(undefined)
      return Effect.try({
        try: () => parseJson(text) as unknown,
        catch: () => apiError("invalid_request", "request body is not valid JSON")
      })
    })
  )

export const json = (body: unknown, status = 200) => HttpServerResponse.jsonUnsafe(body, { status })

export const renderError = (e: ApiError) => json(e.toBody(), e.status)

export const renderResult = (r: CommandResult) => json(r.body, r.status)

/** Runs a route body with a request id (span attribute + log annotation + response header). */
export const handle = <E, R>(
  body: (req: HttpServerRequest.HttpServerRequest, requestId: string) => Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
) =>
  Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const requestId = requestIdOf(req)
    yield* Effect.annotateCurrentSpan({ "khala.request_id": requestId })
    const response = yield* body(req, requestId).pipe(
      Effect.catchIf(
        (e): e is E & ApiError => e instanceof ApiError,
        (e) => Effect.succeed(renderError(e))
      ),
      Effect.annotateLogs({ request_id: requestId })
    )
    return HttpServerResponse.setHeader(response, REQUEST_ID_HEADER, requestId)
  })

export const queryParam = (req: HttpServerRequest.HttpServerRequest, name: string): string | undefined =>
  Option.getOrUndefined(Option.fromNullishOr(new URL(req.url, "http://localhost").searchParams.get(name)))
