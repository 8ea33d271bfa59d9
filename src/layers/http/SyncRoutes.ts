/**
 * Sync-lane HTTP routes: `POST /api/sync/token` (service token; mints a sync JWT) and
 * `GET /sync/v1/snapshot?topic=` (sync JWT; the topic's documents and the head_seq they reflect,
 * so subscribing with `after_seq = head_seq` loses nothing).
 */
import { timestampFromMs, TimestampSchema } from "@bufbuild/protobuf/wkt"
import { toJson } from "@bufbuild/protobuf"
import { Effect, Metric, Schema } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { apiError } from "../../domain/ApiError.ts"
import { decodeBody, orInternal } from "../../services/CommandRunner.ts"
import { authFailures, tokenMintFailures } from "../../services/Metrics.ts"
import { ReadModels } from "../../services/ReadModels.ts"
import { TokenIssuer } from "../../services/TokenIssuer.ts"
import { TopicAccess } from "../../services/TopicAccess.ts"
import { TokenVerifier } from "../../services/TokenVerifier.ts"
import { KhalaConfig } from "../Config.ts"
import { bearerToken, handle, json, queryParam, readJsonBody, requireToken } from "./HttpSupport.ts"

const CORS_HEADERS = { "access-control-allow-origin": "*", "access-control-expose-headers": "x-request-id" }

const withCors = <E, R>(route: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>) =>
  Effect.map(route, HttpServerResponse.setHeaders(CORS_HEADERS))

export const MintTokenBody = Schema.Struct({
  user_id: Schema.String,
  scopes: Schema.optionalKey(Schema.Array(Schema.String)),
  ttl_seconds: Schema.optionalKey(Schema.Number)
})

export const SyncRoutes = HttpRouter.use(Effect.fn(function*(router) {
  const config = yield* KhalaConfig
  const issuer = yield* TokenIssuer
  const verifier = yield* TokenVerifier
  const access = yield* TopicAccess
  const readModels = yield* ReadModels

  yield* router.add("POST", "/api/sync/token", handle((req) =>
    Effect.gen(function*() {
      yield* requireToken(req, config.serviceToken, "service")
      const body = yield* decodeBody(MintTokenBody, yield* readJsonBody(req))
      const minted = yield* issuer.mint({
        userId: body.user_id,
        ...(body.scopes === undefined ? {} : { scopes: body.scopes }),
        ...(body.ttl_seconds === undefined ? {} : { ttlSeconds: body.ttl_seconds })
      }).pipe(
        Effect.tapError(() => Metric.update(tokenMintFailures, 1)),
        Effect.mapError((e) =>
          e.reason === "not_configured" ? apiError("unavailable", e.message) : apiError("invalid_request", e.message)
        )
      )
      return json({
        token: minted.token,
        expires_at: toJson(TimestampSchema, timestampFromMs(minted.expiresAtMs))
      })
    })))

  // Browsers call the snapshot from app origins with a bearer token (no cookies), so any origin
  // may read it; the preflight allows the Authorization header.
  yield* router.add("OPTIONS", "/sync/v1/snapshot", Effect.succeed(
    HttpServerResponse.empty({ status: 204 }).pipe(HttpServerResponse.setHeaders({
      ...CORS_HEADERS,
      "access-control-allow-methods": "GET, OPTIONS",
      "access-control-allow-headers": "authorization, content-type, x-request-id",
      "access-control-max-age": "600"
    }))
  ))
  yield* router.add("GET", "/sync/v1/snapshot", withCors(handle((req) =>
    Effect.gen(function*() {
      const token = bearerToken(req)
      if (token === undefined) return yield* apiError("unauthorized", "missing sync token")
      const principal = yield* verifier.verify(token).pipe(
        Effect.tapError((e) => Metric.update(Metric.withAttributes(authFailures, { code: e.reason }), 1)),
        Effect.mapError((e) => apiError("unauthorized", e.message, { reason: e.reason }))
      )
      const name = queryParam(req, "topic")
      if (name === undefined) return yield* apiError("invalid_request", "the topic query parameter is required")
      const topic = yield* orInternal(access.authorize(principal, name)).pipe(
        Effect.catchTag("TopicDenied", (e) =>
          Effect.fail(
            e.reason === "bad_request"
              ? apiError("invalid_request", e.message, { topic: name })
              : apiError("forbidden", e.message, { topic: name })
          ))
      )
      return json(yield* orInternal(readModels.snapshot(topic)))
    }))))
}))
