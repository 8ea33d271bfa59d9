/**
 * TokenIssuer: minting of HS256 sync JWTs (SPEC §6 `POST /api/sync/token`, §10 "Tokens").
 *
 * Owns request validation (user id, scopes, ttl bounds), the claims Khala puts in a token
 * (`iss`, `aud`, `sub`, space-separated `scope`, `iat`, `exp`, random `jti`) and the
 * `TokenMintError` taxonomy. Signing is done by `jose` with the configured shared secret;
 * times come from Effect's `Clock`. JWKS-only deployments cannot mint.
 */
import { Clock, Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as jose from "jose"
import * as crypto from "node:crypto"
import { KhalaConfig } from "../layers/Config.ts"
import { isValidUserId, KNOWN_SCOPES, SCOPE_READ } from "./TokenVerifier.ts"

/** Lifetime of a token minted without `ttlSeconds` (capped by `tokenMaxTtlSeconds`). */
export const DEFAULT_TOKEN_TTL_SECONDS = 3600
/** Scopes of a token minted without `scopes`. */
export const DEFAULT_TOKEN_SCOPES: ReadonlyArray<string> = [SCOPE_READ]

export interface MintRequest {
  readonly userId: string
  readonly scopes?: ReadonlyArray<string>
  readonly ttlSeconds?: number
}

export interface MintedToken {
  readonly token: string
  /** `exp * 1000`. */
  readonly expiresAtMs: number
}

export class TokenMintError extends Schema.TaggedError<TokenMintError>()("TokenMintError", {
  reason: Schema.Literals(["invalid_request", "not_configured"]),
  message: Schema.String
}) {}

export interface TokenIssuerService {
  readonly mint: (request: MintRequest) => Effect.Effect<MintedToken, TokenMintError>
}

const invalid = (message: string) => new TokenMintError({ reason: "invalid_request", message })

/** Builds the service from `KhalaConfig`. */
export const makeTokenIssuer = Effect.fnUntraced(function*() {
  const config = yield* KhalaConfig
  const secret = Option.map(config.syncJwtSecret, (s) => new TextEncoder().encode(Redacted.value(s)))
  const maxTtl = config.tokenMaxTtlSeconds
  const defaultTtl = Math.min(DEFAULT_TOKEN_TTL_SECONDS, maxTtl)

  const mint = Effect.fn("TokenIssuer.mint")(function*(request: MintRequest) {
    if (Option.isNone(secret)) {
      return yield* new TokenMintError({
        reason: "not_configured",
        message: "no KHALA_SYNC_JWT_SECRET is configured; this deployment cannot mint tokens"
      })
    }
    if (!isValidUserId(request.userId)) return yield* invalid("user_id must match [A-Za-z0-9._:-]{1,128}")
    const requested = request.scopes ?? DEFAULT_TOKEN_SCOPES
    if (requested.length === 0) return yield* invalid(`scopes must not be empty (allowed: ${KNOWN_SCOPES.join(", ")})`)
    const unknown = requested.filter((s) => !KNOWN_SCOPES.includes(s))
    if (unknown.length > 0) {
      return yield* invalid(`unknown scope ${JSON.stringify(unknown[0])} (allowed: ${KNOWN_SCOPES.join(", ")})`)
    }
    const ttl = request.ttlSeconds ?? defaultTtl
    if (!Number.isSafeInteger(ttl) || ttl <= 0) return yield* invalid("ttl_seconds must be a positive integer")
    if (ttl > maxTtl) return yield* invalid(`ttl_seconds must be at most ${maxTtl}`)

    const nowMs = yield* Clock.currentTimeMillis
    const iat = Math.floor(nowMs / 1000)
    const exp = iat + ttl
    const jti = yield* Effect.sync(() => crypto.randomUUID())
    yield* Effect.annotateCurrentSpan({ "khala.user_id": request.userId, "khala.token.ttl_s": ttl })
    const token = yield* Effect.tryPromise({
      try: () =>
        new jose.SignJWT({ scope: [...new Set(requested)].join(" ") })
          .setProtectedHeader({ alg: "HS256", typ: "JWT" })
          .setIssuer(config.syncIssuer)
          .setAudience(config.syncAudience)
          .setSubject(request.userId)
          .setIssuedAt(iat)
          .setExpirationTime(exp)
          .setJti(jti)
          .sign(secret.value),
      catch: (cause) => cause
    }).pipe(Effect.orDie) // signing with a configured HMAC key cannot fail short of a bug
    return { token, expiresAtMs: exp * 1000 }
  })

  return { mint } satisfies TokenIssuerService
})

export class TokenIssuer extends Context.Service<TokenIssuer, TokenIssuerService>()("khala/services/TokenIssuer") {
  /** Reads `KhalaConfig` (secret, issuer, audience, max ttl). */
  static readonly layer = Layer.effect(TokenIssuer, Effect.map(makeTokenIssuer(), (s) => TokenIssuer.of(s)))
}
