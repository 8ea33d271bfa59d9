/**
 * TokenVerifier: verification of sync JWTs (SPEC §5 "Auth", §10 "Tokens").
 *
 * Owns the algorithm allowlist, the key sources (HS256 shared secret, RS256/ES256/EdDSA
 * keys from a JWKS URL with a Clock-driven cache and an unknown-`kid` refetch cool-down),
 * the `iss`/`aud`/`exp`/`nbf` checks with clock skew, the mapping of a verified claims set
 * to a `VerifiedToken` (user id, scopes), and the `TokenError` taxonomy. All cryptography
 * is done by `jose`; the current time always comes from Effect's `Clock`.
 */
import { Clock, Context, Effect, Layer, Option, Redacted, Result, Schema, Semaphore } from "effect"
import * as jose from "jose"
import { ConfigurationError, KhalaConfig } from "../layers/Config.ts"
import { ID_PATTERN, isValidId } from "../domain/Ids.ts"

/** Scope granting read of the caller's own topics. */
export const SCOPE_READ = "sync:read"
/** Scope granting read of every topic. */
export const SCOPE_ADMIN = "sync:admin"
/** The scopes Khala knows about (others in a token are kept but grant nothing). */
export const KNOWN_SCOPES: ReadonlyArray<string> = [SCOPE_READ, SCOPE_ADMIN]

/** User ids become part of topic names, so they share the topic id charset (SPEC §10). */
export { ID_PATTERN as USER_ID_PATTERN, isValidId as isValidUserId }

/** Algorithms accepted for the shared secret. */
export const SECRET_ALGORITHMS: ReadonlyArray<jose.JWSAlgorithm> = ["HS256"]
/** Algorithms accepted for JWKS keys. */
export const JWKS_ALGORITHMS: ReadonlyArray<jose.JWSAlgorithm> = ["RS256", "ES256", "EdDSA"]

/** Longest token we even try to parse. */
export const MAX_TOKEN_LENGTH = 16_384

export interface VerifiedToken {
  /** The `sub` claim. */
  readonly userId: string
  /** The space-separated `scope` claim, split. */
  readonly scopes: ReadonlySet<string>
  /** `sync:admin` present. */
  readonly isAdmin: boolean
  /** `sync:read` or `sync:admin` present. */
  readonly canRead: boolean
  /** `exp * 1000`. */
  readonly expiresAtMs: number
  /** `iat * 1000`, when the token carries `iat`. */
  readonly issuedAtMs?: number
}

export class TokenError extends Schema.TaggedError<TokenError>()("TokenError", {
  reason: Schema.Literals(["unauthenticated", "token_expired"]),
  message: Schema.String
}) {}

export interface TokenVerifierService {
  readonly verify: (token: string) => Effect.Effect<VerifiedToken, TokenError>
}

/** JWKS cache tuning. The defaults are what the `layer` uses. */
export interface TokenVerifierOptions {
  /** Minimum time between two fetches triggered by an unknown `kid` (default 30 s). */
  readonly jwksCooldownMs?: number
  /** Keys older than this are refetched before use (default 10 min); stale keys are kept if the refetch fails. */
  readonly jwksCacheMaxAgeMs?: number
  /** Minimum time between two fetches while the cache is empty or stale (default 1 s). */
  readonly jwksRetryIntervalMs?: number
  /** HTTP timeout of one JWKS fetch (default 5 s). */
  readonly jwksTimeoutMs?: number
}

export const defaultTokenVerifierOptions = {
  jwksCooldownMs: 30_000,
  jwksCacheMaxAgeMs: 10 * 60_000,
  jwksRetryIntervalMs: 1_000,
  jwksTimeoutMs: 5_000
} as const

const unauthenticated = (message: string) => new TokenError({ reason: "unauthenticated", message })

type LocalKeySet = ReturnType<typeof jose.createLocalJWKSet>

const isJsonWebKeySet = (value: unknown): value is jose.JSONWebKeySet =>
  typeof value === "object" && value !== null && "keys" in value && Array.isArray(value.keys)

const describeCause = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

/** Maps a `jose` verification failure to the public taxonomy, keeping the why in the message. */
const fromJoseError = (cause: unknown): TokenError => {
  if (cause instanceof jose.errors.JWTExpired) return new TokenError({ reason: "token_expired", message: "token expired" })
  if (cause instanceof jose.errors.JWTClaimValidationFailed) {
    if (cause.claim === "nbf") return unauthenticated("token not yet valid (nbf in the future)")
    if (cause.claim === "aud") return unauthenticated(`wrong or missing aud: ${cause.message}`)
    if (cause.claim === "iss") return unauthenticated(`wrong or missing iss: ${cause.message}`)
    return unauthenticated(`invalid claim ${cause.claim}: ${cause.message}`)
  }
  if (cause instanceof jose.errors.JWSSignatureVerificationFailed) return unauthenticated("bad signature")
  if (cause instanceof jose.errors.JOSEAlgNotAllowed) return unauthenticated(`alg not allowed: ${cause.message}`)
  if (cause instanceof jose.errors.JWKSNoMatchingKey) return unauthenticated("unknown kid: no matching key in the JWKS")
  if (cause instanceof jose.errors.JWKSMultipleMatchingKeys) {
    return unauthenticated("ambiguous kid: several JWKS keys match and none verified")
  }
  if (cause instanceof jose.errors.JWSInvalid || cause instanceof jose.errors.JWTInvalid) {
    return unauthenticated(`malformed token: ${cause.message}`)
  }
  if (cause instanceof jose.errors.JOSENotSupported) return unauthenticated(`unsupported token: ${cause.message}`)
  return unauthenticated(`token verification failed: ${describeCause(cause)}`)
}

const parseScopes = (claim: unknown): Result.Result<ReadonlySet<string>, TokenError> => {
  if (claim === undefined) return Result.succeed(new Set())
  if (typeof claim !== "string") return Result.fail(unauthenticated("scope claim must be a space-separated string"))
  return Result.succeed(new Set(claim.split(/\s+/).filter((s) => s.length > 0)))
}

const toVerifiedToken = (payload: jose.JWTPayload): Result.Result<VerifiedToken, TokenError> => {
  if (payload.sub === undefined || payload.sub === "") return Result.fail(unauthenticated("missing sub"))
  if (!isValidId(payload.sub)) return Result.fail(unauthenticated("invalid sub: must match [A-Za-z0-9._:-]{1,128}"))
  if (typeof payload.exp !== "number") return Result.fail(unauthenticated("missing exp"))
  const scopes = parseScopes(payload["scope"])
  if (Result.isFailure(scopes)) return Result.fail(scopes.failure)
  const isAdmin = scopes.success.has(SCOPE_ADMIN)
  const base = {
    userId: payload.sub,
    scopes: scopes.success,
    isAdmin,
    canRead: isAdmin || scopes.success.has(SCOPE_READ),
    expiresAtMs: payload.exp * 1000
  }
  return Result.succeed(typeof payload.iat === "number" ? { ...base, issuedAtMs: payload.iat * 1000 } : base)
}

const jwtVerify = (
  token: string,
  key: CryptoKey | LocalKeySet,
  options: jose.JWTVerifyOptions
): Effect.Effect<jose.JWTVerifyResult, unknown> =>
  Effect.tryPromise({
    try: (): Promise<jose.JWTVerifyResult> =>
      typeof key === "function" ? jose.jwtVerify(token, key, options) : jose.jwtVerify(token, key, options),
    catch: (cause) => cause
  })

/**
 * The shared secret as an HMAC-SHA-256 `CryptoKey`, imported once: given raw bytes, jose imports
 * them on every verification (66 → 50 µs per HS256 verification here, and its garbage, on every
 * Hello and refresh).
 */
const importHmacKey = (secret: Uint8Array<ArrayBuffer>): Effect.Effect<CryptoKey, unknown> =>
  Effect.tryPromise({
    try: () => crypto.subtle.importKey("raw", secret, { name: "HMAC", hash: "SHA-256" }, false, ["verify"]),
    catch: (cause) => cause
  })

const fetchJwks = (url: string, timeoutMs: number): Effect.Effect<LocalKeySet, string> =>
  Effect.tryPromise({
    try: async (signal) => {
      const response = await fetch(url, {
        method: "GET",
        redirect: "manual",
        headers: { accept: "application/json, application/jwk-set+json" },
        signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)])
      })
      if (response.status !== 200) {
        await response.body?.cancel()
        throw new Error(`JWKS endpoint answered HTTP ${response.status}`)
      }
      const json: unknown = await response.json()
      if (!isJsonWebKeySet(json)) throw new Error("JWKS response is not a JSON Web Key Set")
      return jose.createLocalJWKSet(json)
    },
    catch: describeCause
  })

interface JwksState {
  keys: LocalKeySet | undefined
  fetchedAtMs: number
  lastAttemptMs: number
}

/** A Clock-driven JWKS cache: refetch when stale, and on an unknown `kid` at most once per cool-down. */
const makeJwksCache = Effect.fnUntraced(function*(url: string, options: Required<TokenVerifierOptions>) {
  const lock = yield* Semaphore.make(1)
  const state: JwksState = { keys: undefined, fetchedAtMs: Number.NEGATIVE_INFINITY, lastAttemptMs: Number.NEGATIVE_INFINITY }

  const fetchNow = Effect.gen(function*() {
    state.lastAttemptMs = yield* Clock.currentTimeMillis
    const fetched = yield* Effect.result(fetchJwks(url, options.jwksTimeoutMs))
    if (Result.isSuccess(fetched)) {
      state.keys = fetched.success
      state.fetchedAtMs = yield* Clock.currentTimeMillis
      return Result.succeed(fetched.success)
    }
    yield* Effect.logWarning(`JWKS fetch from ${url} failed: ${fetched.failure}`)
    return Result.fail(fetched.failure)
  }).pipe(Effect.withSpan("TokenVerifier.fetchJwks", { attributes: { "khala.jwks.url": url } }))

  const isFresh = (now: number) => state.keys !== undefined && now - state.fetchedAtMs < options.jwksCacheMaxAgeMs

  /** Keys to verify with: cached when fresh; otherwise fetched (stale keys survive a failed refetch). */
  const current: Effect.Effect<LocalKeySet, TokenError> = Effect.gen(function*() {
    const now = yield* Clock.currentTimeMillis
    if (state.keys !== undefined && isFresh(now)) return state.keys
    return yield* lock.withPermits(1)(Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      if (state.keys !== undefined && isFresh(now)) return state.keys
      if (now - state.lastAttemptMs < options.jwksRetryIntervalMs) {
        if (state.keys !== undefined) return state.keys
        return yield* unauthenticated("jwks unavailable: last fetch failed, retrying shortly")
      }
      const fetched = yield* fetchNow
      if (Result.isSuccess(fetched)) return fetched.success
      if (state.keys !== undefined) return state.keys
      return yield* unauthenticated(`jwks unavailable: ${fetched.failure}`)
    }))
  })

  /**
   * After a `kid` was not found in `seen`: new keys if someone refreshed meanwhile or the cool-down
   * allows a refetch now, `None` if the cool-down forbids it.
   */
  const refreshForUnknownKid = (seen: LocalKeySet): Effect.Effect<Option.Option<LocalKeySet>, TokenError> =>
    lock.withPermits(1)(Effect.gen(function*() {
      if (state.keys !== undefined && state.keys !== seen) return Option.some(state.keys)
      const now = yield* Clock.currentTimeMillis
      if (now - state.lastAttemptMs < options.jwksCooldownMs) return Option.none()
      const fetched = yield* fetchNow
      if (Result.isSuccess(fetched)) return Option.some(fetched.success)
      return yield* unauthenticated(`unknown kid, and the JWKS refetch failed: ${fetched.failure}`)
    }))

  return { current, refreshForUnknownKid }
})

/** Builds the service from `KhalaConfig`; fails with `ConfigurationError` on an unusable JWKS URL. */
export const makeTokenVerifier = Effect.fnUntraced(function*(options: TokenVerifierOptions = {}) {
  const config = yield* KhalaConfig
  const tuning: Required<TokenVerifierOptions> = { ...defaultTokenVerifierOptions, ...options }
  const secretBytes = Option.map(config.syncJwtSecret, (s) => new TextEncoder().encode(Redacted.value(s)))
  const secret = Option.isSome(secretBytes)
    ? Option.some(yield* importHmacKey(secretBytes.value).pipe(
      Effect.mapError((cause) => new ConfigurationError({ message: `KHALA_SYNC_JWT_SECRET is unusable: ${describeCause(cause)}` }))
    ))
    : Option.none<CryptoKey>()
  const jwksUrl = config.syncJwksUrl
  if (Option.isSome(jwksUrl)) {
    const parsed = URL.canParse(jwksUrl.value) ? new URL(jwksUrl.value) : undefined
    if (parsed === undefined || (parsed.protocol !== "https:" && parsed.protocol !== "http:")) {
      return yield* new ConfigurationError({ message: `KHALA_SYNC_JWKS_URL is not an http(s) URL: ${jwksUrl.value}` })
    }
  }
  const jwks = Option.isSome(jwksUrl) ? Option.some(yield* makeJwksCache(jwksUrl.value, tuning)) : Option.none()

  const claimOptions = (nowMs: number, algorithms: ReadonlyArray<jose.JWSAlgorithm>): jose.JWTVerifyOptions => ({
    algorithms: [...algorithms],
    issuer: config.syncIssuer,
    audience: config.syncAudience,
    clockTolerance: config.clockSkewMs / 1000,
    currentDate: new Date(nowMs),
    requiredClaims: ["exp"]
  })

  const verify = Effect.fn("TokenVerifier.verify")(function*(token: string) {
    if (Option.isNone(secret) && Option.isNone(jwks)) return yield* unauthenticated("no verification key configured")
    if (token.length === 0) return yield* unauthenticated("malformed token: empty")
    if (token.length > MAX_TOKEN_LENGTH) return yield* unauthenticated("malformed token: too long")
    const header = yield* Effect.try({
      try: () => jose.decodeProtectedHeader(token),
      catch: (cause) => unauthenticated(`malformed token: ${describeCause(cause)}`)
    })
    const alg = header.alg
    if (typeof alg !== "string") return yield* unauthenticated("malformed token: header has no alg")
    yield* Effect.annotateCurrentSpan({ "khala.token.alg": alg })
    if (alg.toLowerCase() === "none") return yield* unauthenticated("alg none is never accepted")
    const nowMs = yield* Clock.currentTimeMillis

    let result: jose.JWTVerifyResult
    if (SECRET_ALGORITHMS.includes(alg)) {
      if (Option.isNone(secret)) return yield* unauthenticated(`alg ${alg} not allowed: no shared secret is configured`)
      result = yield* jwtVerify(token, secret.value, claimOptions(nowMs, SECRET_ALGORITHMS)).pipe(
        Effect.mapError(fromJoseError)
      )
    } else if (JWKS_ALGORITHMS.includes(alg)) {
      if (Option.isNone(jwks)) return yield* unauthenticated(`alg ${alg} not allowed: no JWKS is configured`)
      const keys = yield* jwks.value.current
      const options = claimOptions(nowMs, JWKS_ALGORITHMS)
      const first = yield* Effect.result(jwtVerify(token, keys, options))
      if (Result.isSuccess(first)) {
        result = first.success
      } else if (first.failure instanceof jose.errors.JWKSNoMatchingKey) {
        const refreshed = yield* jwks.value.refreshForUnknownKid(keys)
        if (Option.isNone(refreshed)) return yield* unauthenticated("unknown kid (JWKS refetch cooling down)")
        result = yield* jwtVerify(token, refreshed.value, options).pipe(Effect.mapError(fromJoseError))
      } else {
        return yield* fromJoseError(first.failure)
      }
    } else {
      return yield* unauthenticated(`alg ${alg} not allowed`)
    }

    const verified = toVerifiedToken(result.payload)
    if (Result.isFailure(verified)) return yield* verified.failure
    return verified.success
  })

  return { verify } satisfies TokenVerifierService
})

export class TokenVerifier extends Context.Service<TokenVerifier, TokenVerifierService>()(
  "khala/services/TokenVerifier"
) {
  /** Reads `KhalaConfig` (secret and/or JWKS URL, issuer, audience, clock skew). */
  static readonly layer = Layer.effect(TokenVerifier, Effect.map(makeTokenVerifier(), (s) => TokenVerifier.of(s)))

  /** Same as `layer` with tuned JWKS cache timings. */
  static readonly layerWithOptions = (options: TokenVerifierOptions) =>
    Layer.effect(TokenVerifier, Effect.map(makeTokenVerifier(options), (s) => TokenVerifier.of(s)))
}
