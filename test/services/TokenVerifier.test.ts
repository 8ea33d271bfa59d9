/**
 * Tests of TokenVerifier (HS256 and JWKS verification, claim checks, alg allowlist, JWKS cache
 * and unknown-`kid` cool-down against a real local HTTP server) and TokenIssuer (mint bounds,
 * mint → verify round trip). Time is driven by the TestClock; nothing sleeps.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Option, Redacted } from "effect"
import { TestClock } from "effect/testing"
import * as jose from "jose"
import * as http from "node:http"
import { KhalaConfig, testSettings } from "../../src/layers/Config.ts"
import type { KhalaSettings } from "../../src/layers/Config.ts"
import { TokenIssuer } from "../../src/services/TokenIssuer.ts"
import type { MintRequest } from "../../src/services/TokenIssuer.ts"
import { TokenVerifier } from "../../src/services/TokenVerifier.ts"

const NOW_MS = Date.UTC(2026, 10, 22)
const NOW_S = NOW_MS / 1000
const SECRET = Redacted.value(Option.getOrThrow(testSettings().syncJwtSecret))
const SECRET_BYTES = new TextEncoder().encode(SECRET)

const servicesLayer = (overrides: Partial<KhalaSettings> = {}) =>
  Layer.mergeAll(TokenVerifier.layer, TokenIssuer.layer).pipe(Layer.provide(KhalaConfig.layerWith(overrides)))

/** Runs `self` against a verifier and an issuer built from the test config plus `overrides`. */
const withServices = (overrides: Partial<KhalaSettings> = {}) =>
<A, E>(self: Effect.Effect<A, E, TokenVerifier | TokenIssuer>) => Effect.provide(self, servicesLayer(overrides))

const verify = (token: string) => TokenVerifier.use((v) => v.verify(token))
const verifyError = (token: string) => Effect.flip(verify(token))
const mint = (request: MintRequest) => TokenIssuer.use((i) => i.mint(request))

type Claims = Record<string, unknown>

/** Standard valid claims at NOW; an `undefined` override removes the claim. */
const claims = (overrides: Claims = {}): jose.JWTPayload => {
  const all: Claims = {
    iss: "khala",
    aud: "khala-sync",
    sub: "user-1",
    scope: "sync:read",
    iat: NOW_S,
    exp: NOW_S + 3600,
    ...overrides
  }
  return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== undefined))
}

const sign = (
  payload: jose.JWTPayload,
  key: Uint8Array | jose.CryptoKey = SECRET_BYTES,
  header: jose.CompactJWSHeaderParameters = { alg: "HS256", typ: "JWT" }
) => Effect.promise(() => new jose.SignJWT(payload).setProtectedHeader(header).sign(key))

const b64 = (value: unknown) => jose.base64url.encode(JSON.stringify(value))

interface KeyPair {
  readonly alg: "RS256" | "ES256" | "EdDSA"
  readonly kid: string
  readonly privateKey: jose.CryptoKey
  readonly publicKey: jose.CryptoKey
  readonly jwk: jose.JWK
}

const makeKey = (alg: KeyPair["alg"], kid: string) =>
  Effect.promise(async (): Promise<KeyPair> => {
    const { privateKey, publicKey } = await jose.generateKeyPair(alg, { extractable: true })
    const jwk = { ...(await jose.exportJWK(publicKey)), kid, alg, use: "sig" }
    return { alg, kid, privateKey, publicKey, jwk }
  })

const signWith = (key: KeyPair, payload: jose.JWTPayload = claims()) =>
  sign(payload, key.privateKey, { alg: key.alg, kid: key.kid, typ: "JWT" })

interface JwksServer {
  url: string
  /** What the server answers; replace to rotate keys. */
  jwks: jose.JSONWebKeySet
  status: number
  requests: number
}

/** A real JWKS endpoint on 127.0.0.1:<ephemeral>, closed with the test scope. */
const jwksServer = (keys: ReadonlyArray<KeyPair>) =>
  Effect.acquireRelease(
    Effect.callback<{ readonly state: JwksServer; readonly server: http.Server }>((resume) => {
      const state: JwksServer = { url: "", jwks: { keys: keys.map((k) => k.jwk) }, status: 200, requests: 0 }
      const server = http.createServer((_req, res) => {
        state.requests += 1
        res.writeHead(state.status, { "content-type": "application/json" })
        res.end(state.status === 200 ? JSON.stringify(state.jwks) : "{}")
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address()
        const port = typeof address === "object" && address !== null ? address.port : 0
        state.url = `http://127.0.0.1:${port}/.well-known/jwks.json`
        resume(Effect.succeed({ state, server }))
      })
    }),
    ({ server }) =>
      Effect.callback<void>((resume) => {
        server.closeAllConnections()
        server.close(() => resume(Effect.void))
      })
  ).pipe(Effect.map(({ state }) => state))

const jwksOnly = (server: JwksServer): Partial<KhalaSettings> => ({
  syncJwtSecret: Option.none(),
  syncJwksUrl: Option.some(server.url)
})

describe("TokenVerifier (HS256)", () => {
  it.effect("accepts a valid token and parses scopes", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const read = yield* verify(yield* sign(claims()))
      assert.strictEqual(read.userId, "user-1")
      assert.deepStrictEqual([...read.scopes], ["sync:read"])
      assert.isTrue(read.canRead)
      assert.isFalse(read.isAdmin)
      assert.strictEqual(read.expiresAtMs, (NOW_S + 3600) * 1000)
      assert.strictEqual(read.issuedAtMs, NOW_MS)

      const admin = yield* verify(yield* sign(claims({ scope: "  sync:admin   other:thing " })))
      assert.deepStrictEqual([...admin.scopes].sort(), ["other:thing", "sync:admin"])
      assert.isTrue(admin.isAdmin)
      assert.isTrue(admin.canRead)

      const noIat = yield* verify(yield* sign(claims({ iat: undefined })))
      assert.isUndefined(noIat.issuedAtMs)
    }).pipe(withServices()))

  it.effect("a token with neither sync:read nor sync:admin verifies with canRead false", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      for (const scope of ["other:scope", "", undefined]) {
        const t = yield* verify(yield* sign(claims({ scope })))
        assert.isFalse(t.canRead)
        assert.isFalse(t.isAdmin)
      }
    }).pipe(withServices()))

  it.effect("rejects a non-string scope claim", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const e = yield* verifyError(yield* sign(claims({ scope: ["sync:read"] })))
      assert.strictEqual(e.reason, "unauthenticated")
      assert.include(e.message, "scope")
    }).pipe(withServices()))

  it.effect("rejects a bad signature", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const other = new TextEncoder().encode("another-secret-0123456789abcdef0123456789")
      const e = yield* verifyError(yield* sign(claims(), other))
      assert.strictEqual(e._tag, "TokenError")
      assert.strictEqual(e.reason, "unauthenticated")
      assert.include(e.message, "bad signature")

      const good = yield* sign(claims())
      const [h, p, s] = good.split(".")
      const tampered = `${h}.${b64({ ...claims(), sub: "someone-else" })}.${s}`
      assert.notStrictEqual(p, tampered.split(".")[1])
      assert.include((yield* verifyError(tampered)).message, "bad signature")
    }).pipe(withServices()))

  it.effect("rejects a wrong or missing aud", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const wrong = yield* verifyError(yield* sign(claims({ aud: "other-audience" })))
      assert.strictEqual(wrong.reason, "unauthenticated")
      assert.include(wrong.message, "aud")
      const missing = yield* verifyError(yield* sign(claims({ aud: undefined })))
      assert.include(missing.message, "aud")
    }).pipe(withServices()))

  it.effect("rejects a wrong or missing iss", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const wrong = yield* verifyError(yield* sign(claims({ iss: "evil" })))
      assert.strictEqual(wrong.reason, "unauthenticated")
      assert.include(wrong.message, "iss")
      const missing = yield* verifyError(yield* sign(claims({ iss: undefined })))
      assert.include(missing.message, "iss")
    }).pipe(withServices()))

  it.effect("honours configured issuer and audience", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const t = yield* verify(yield* sign(claims({ iss: "https://auth.example", aud: ["x", "sync-aud"] })))
      assert.strictEqual(t.userId, "user-1")
      const e = yield* verifyError(yield* sign(claims()))
      assert.strictEqual(e.reason, "unauthenticated")
    }).pipe(withServices({ syncIssuer: "https://auth.example", syncAudience: "sync-aud" })))

  it.effect("expiry is token_expired, driven by the TestClock, with the clock skew honoured", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const token = yield* sign(claims({ exp: NOW_S + 60 }))
      assert.strictEqual((yield* verify(token)).expiresAtMs, (NOW_S + 60) * 1000)

      yield* TestClock.adjust("61 seconds") // past exp, within the 30 s skew
      assert.strictEqual((yield* verify(token)).userId, "user-1")
      yield* TestClock.adjust("28 seconds") // exp + 29 s
      assert.strictEqual((yield* verify(token)).userId, "user-1")

      yield* TestClock.adjust("2 seconds") // exp + 31 s
      const e = yield* verifyError(token)
      assert.strictEqual(e._tag, "TokenError")
      assert.strictEqual(e.reason, "token_expired")
    }).pipe(withServices()))

  it.effect("with zero skew a token is expired at exp", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const token = yield* sign(claims({ exp: NOW_S + 10 }))
      yield* TestClock.adjust("9 seconds")
      yield* verify(token)
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* verifyError(token)).reason, "token_expired")
    }).pipe(withServices({ clockSkewMs: 0 })))

  it.effect("a token that is already expired at mint time is token_expired", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const e = yield* verifyError(yield* sign(claims({ iat: NOW_S - 7200, exp: NOW_S - 3600 })))
      assert.strictEqual(e.reason, "token_expired")
    }).pipe(withServices()))

  it.effect("nbf in the future is unauthenticated; nbf within the skew is accepted", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const future = yield* sign(claims({ nbf: NOW_S + 60 }))
      const e = yield* verifyError(future)
      assert.strictEqual(e.reason, "unauthenticated")
      assert.include(e.message, "nbf")

      yield* verify(yield* sign(claims({ nbf: NOW_S + 20 }))) // 20 s ahead < 30 s skew

      yield* TestClock.adjust("31 seconds") // now the first one is within the skew too
      yield* verify(future)
    }).pipe(withServices()))

  it.effect("exp is required", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const e = yield* verifyError(yield* sign(claims({ exp: undefined })))
      assert.strictEqual(e.reason, "unauthenticated")
      assert.include(e.message, "exp")
    }).pipe(withServices()))

  it.effect("rejects alg none (hand-built unsecured token)", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      for (const alg of ["none", "None", "NONE"]) {
        const token = `${b64({ alg, typ: "JWT" })}.${b64(claims())}.`
        const e = yield* verifyError(token)
        assert.strictEqual(e.reason, "unauthenticated")
        assert.include(e.message.toLowerCase(), "none")
      }
    }).pipe(withServices()))

  it.effect("rejects algorithms outside the allowlist", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const hs512 = yield* sign(claims(), SECRET_BYTES, { alg: "HS512" })
      const e = yield* verifyError(hs512)
      assert.strictEqual(e.reason, "unauthenticated")
      assert.include(e.message, "alg HS512 not allowed")
      const forged = `${b64({ alg: "PS256" })}.${b64(claims())}.c2ln`
      assert.include((yield* verifyError(forged)).message, "alg PS256 not allowed")
    }).pipe(withServices()))

  it.effect("rejects malformed tokens", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      for (const token of ["", "abc", "a.b.c", `${b64({ typ: "JWT" })}.${b64(claims())}.sig`, "x".repeat(20_000)]) {
        const e = yield* verifyError(token)
        assert.strictEqual(e.reason, "unauthenticated")
        assert.include(e.message, "malformed")
      }
    }).pipe(withServices()))

  it.effect("requires a valid sub", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const missing = yield* verifyError(yield* sign(claims({ sub: undefined })))
      assert.strictEqual(missing.reason, "unauthenticated")
      assert.include(missing.message, "missing sub")
      for (const sub of ["user/1", "user 1", "ümlaut", "a".repeat(129), "run/x", 12345, ["user-1"]]) {
        const e = yield* verifyError(yield* sign(claims({ sub })))
        assert.strictEqual(e.reason, "unauthenticated")
        assert.include(e.message, "invalid sub")
      }
      const ok = yield* verify(yield* sign(claims({ sub: `a.b_c:d-E9${"x".repeat(118)}` })))
      assert.strictEqual(ok.userId.length, 128)
    }).pipe(withServices()))

  it.effect("with no key configured every verification fails", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const e = yield* verifyError(yield* sign(claims()))
      assert.strictEqual(e.reason, "unauthenticated")
      assert.strictEqual(e.message, "no verification key configured")
    }).pipe(withServices({ syncJwtSecret: Option.none(), syncJwksUrl: Option.none() })))

  it.effect("a JWKS URL that is not http(s) fails the layer", () =>
    Effect.gen(function*() {
      const e = yield* Effect.flip(Layer.build(servicesLayer({ syncJwksUrl: Option.some("file:///etc/passwd") })))
      assert.strictEqual(e._tag, "ConfigurationError")
    }))
})

describe("TokenVerifier (JWKS)", () => {
  it.effect("verifies RS256, ES256 and EdDSA tokens from a JWKS endpoint", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const keys = [yield* makeKey("RS256", "rsa-1"), yield* makeKey("ES256", "ec-1"), yield* makeKey("EdDSA", "ed-1")]
      const server = yield* jwksServer(keys)
      yield* Effect.gen(function*() {
        for (const key of keys) {
          const t = yield* verify(yield* signWith(key, claims({ sub: `user-${key.kid}`, scope: "sync:admin" })))
          assert.strictEqual(t.userId, `user-${key.kid}`)
          assert.isTrue(t.isAdmin)
        }
        assert.strictEqual(server.requests, 1) // one fetch, then the cache
        // a token signed by a key that is not in the JWKS but reuses a published kid
        const impostor = yield* makeKey("RS256", "rsa-1")
        assert.include((yield* verifyError(yield* signWith(impostor))).message, "bad signature")
        // the JWKS path applies the same claim checks
        assert.strictEqual((yield* verifyError(yield* signWith(keys[0]!, claims({ aud: "x" })))).reason, "unauthenticated")
        yield* TestClock.adjust("2 hours")
        assert.strictEqual((yield* verifyError(yield* signWith(keys[1]!))).reason, "token_expired")
      }).pipe(withServices(jwksOnly(server)))
    }))

  it.effect("HS256 is never verified with a JWKS public key (alg confusion)", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const rsa = yield* makeKey("RS256", "rsa-1")
      const server = yield* jwksServer([rsa])
      const pem = yield* Effect.promise(() => jose.exportSPKI(rsa.publicKey))
      const candidates = [new TextEncoder().encode(pem), new TextEncoder().encode(JSON.stringify(rsa.jwk))]
      const n = rsa.jwk.n
      if (n !== undefined) candidates.push(new TextEncoder().encode(n))
      // JWKS only: HS256 is not an accepted algorithm at all
      yield* Effect.gen(function*() {
        for (const secret of candidates) {
          for (const header of [{ alg: "HS256" }, { alg: "HS256", kid: "rsa-1" }]) {
            const e = yield* verifyError(yield* sign(claims(), secret, header))
            assert.strictEqual(e.reason, "unauthenticated")
            assert.include(e.message, "alg HS256 not allowed")
          }
        }
        yield* verify(yield* signWith(rsa)) // the real key still works
      }).pipe(withServices(jwksOnly(server)))
      // secret and JWKS: HS256 goes to the shared secret only
      yield* Effect.gen(function*() {
        for (const secret of candidates) {
          const e = yield* verifyError(yield* sign(claims(), secret, { alg: "HS256", kid: "rsa-1" }))
          assert.include(e.message, "bad signature")
        }
        assert.strictEqual((yield* verify(yield* sign(claims()))).userId, "user-1")
        assert.strictEqual((yield* verify(yield* signWith(rsa))).userId, "user-1")
      }).pipe(withServices({ syncJwksUrl: Option.some(server.url) }))
    }))

  it.effect("an asymmetric token without a JWKS configured is rejected", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const rsa = yield* makeKey("RS256", "rsa-1")
      const e = yield* verifyError(yield* signWith(rsa))
      assert.strictEqual(e.reason, "unauthenticated")
      assert.include(e.message, "alg RS256 not allowed")
    }).pipe(withServices()))

  it.effect("unknown kid refetches the JWKS, at most once per cool-down", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const key1 = yield* makeKey("ES256", "k1")
      const key2 = yield* makeKey("ES256", "k2")
      const key3 = yield* makeKey("ES256", "k3")
      const server = yield* jwksServer([key1])
      yield* Effect.gen(function*() {
        yield* verify(yield* signWith(key1))
        assert.strictEqual(server.requests, 1)

        // rotation: the IdP starts serving k2, and a k2 token arrives after the cool-down
        yield* TestClock.adjust("31 seconds")
        server.jwks = { keys: [key1.jwk, key2.jwk] }
        const t = yield* verify(yield* signWith(key2, claims({ sub: "rotated" })))
        assert.strictEqual(t.userId, "rotated")
        assert.strictEqual(server.requests, 2)

        // another unknown kid within the cool-down: no fetch, unauthenticated
        const k3token = yield* signWith(key3)
        const e = yield* verifyError(k3token)
        assert.strictEqual(e.reason, "unauthenticated")
        assert.include(e.message, "unknown kid")
        // a flood of unknown kids, concurrently, still does not reach the endpoint
        const flood = yield* Effect.forEach(
          Array.from({ length: 25 }, (_, i) => i),
          (i) => Effect.flatMap(sign(claims(), key3.privateKey, { alg: "ES256", kid: `bogus-${i}` }), verifyError),
          { concurrency: "unbounded" }
        )
        assert.isTrue(flood.every((err) => err.reason === "unauthenticated"))
        assert.strictEqual(server.requests, 2)
        // known kids keep working from the cache
        yield* verify(yield* signWith(key1))
        assert.strictEqual(server.requests, 2)

        // after the cool-down an unknown kid may refetch once more
        yield* TestClock.adjust("30 seconds")
        server.jwks = { keys: [key1.jwk, key2.jwk, key3.jwk] }
        assert.strictEqual((yield* verify(k3token)).userId, "user-1")
        assert.strictEqual(server.requests, 3)
      }).pipe(withServices(jwksOnly(server)))
    }))

  it.effect("an unknown kid right after the first fetch waits for the cool-down", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const key1 = yield* makeKey("EdDSA", "k1")
      const key2 = yield* makeKey("EdDSA", "k2")
      const server = yield* jwksServer([key1])
      yield* Effect.gen(function*() {
        yield* verify(yield* signWith(key1))
        server.jwks = { keys: [key2.jwk] }
        const token = yield* signWith(key2)
        assert.include((yield* verifyError(token)).message, "unknown kid")
        assert.strictEqual(server.requests, 1)
        yield* TestClock.adjust("30 seconds")
        yield* verify(token)
        assert.strictEqual(server.requests, 2)
        // key1 is gone from the new set
        yield* TestClock.adjust("30 seconds")
        assert.include((yield* verifyError(yield* signWith(key1))).message, "unknown kid")
        assert.strictEqual(server.requests, 3)
      }).pipe(withServices(jwksOnly(server)))
    }))

  it.effect("keys are refetched after the cache max age; stale keys survive a failing endpoint", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const key1 = yield* makeKey("RS256", "k1")
      const server = yield* jwksServer([key1])
      yield* Effect.gen(function*() {
        const token = yield* signWith(key1, claims({ exp: NOW_S + 86_400 }))
        yield* verify(token)
        yield* TestClock.adjust("9 minutes")
        yield* verify(token)
        assert.strictEqual(server.requests, 1)
        yield* TestClock.adjust("2 minutes") // 11 min: stale
        yield* verify(token)
        assert.strictEqual(server.requests, 2)

        server.status = 500
        yield* TestClock.adjust("11 minutes")
        assert.strictEqual((yield* verify(token)).userId, "user-1") // stale keys are still used
        assert.strictEqual(server.requests, 3)
        yield* verify(token) // within the retry interval: no new fetch
        assert.strictEqual(server.requests, 3)
        yield* TestClock.adjust("2 seconds")
        yield* verify(token)
        assert.strictEqual(server.requests, 4)
      }).pipe(withServices(jwksOnly(server)))
    }))

  it.effect("an unreachable JWKS endpoint is unauthenticated (jwks unavailable)", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const key1 = yield* makeKey("RS256", "k1")
      const server = yield* jwksServer([key1])
      server.status = 503
      yield* Effect.gen(function*() {
        const e = yield* verifyError(yield* signWith(key1))
        assert.strictEqual(e.reason, "unauthenticated")
        assert.include(e.message, "jwks unavailable")
        assert.include(e.message, "503")
        const again = yield* verifyError(yield* signWith(key1))
        assert.include(again.message, "jwks unavailable")
        assert.strictEqual(server.requests, 1) // retry interval protects the endpoint
        server.status = 200
        yield* TestClock.adjust("1 second")
        yield* verify(yield* signWith(key1))
        assert.strictEqual(server.requests, 2)
      }).pipe(withServices(jwksOnly(server)))
    }))
})

describe("TokenIssuer", () => {
  it.effect("mint then verify round-trips", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS + 123)
      const minted = yield* mint({ userId: "user-42", scopes: ["sync:read", "sync:admin", "sync:read"], ttlSeconds: 600 })
      assert.strictEqual(minted.expiresAtMs, (NOW_S + 600) * 1000)
      const t = yield* verify(minted.token)
      assert.strictEqual(t.userId, "user-42")
      assert.deepStrictEqual([...t.scopes], ["sync:read", "sync:admin"])
      assert.isTrue(t.isAdmin)
      assert.strictEqual(t.expiresAtMs, minted.expiresAtMs)
      assert.strictEqual(t.issuedAtMs, NOW_MS)

      const header = jose.decodeProtectedHeader(minted.token)
      assert.strictEqual(header.alg, "HS256")
      const payload = jose.decodeJwt(minted.token)
      assert.strictEqual(payload.iss, "khala")
      assert.strictEqual(payload.aud, "khala-sync")
      assert.strictEqual(payload.scope, "sync:read sync:admin")
      assert.isString(payload.jti)
      const other = jose.decodeJwt((yield* mint({ userId: "user-42" })).token)
      assert.notStrictEqual(other.jti, payload.jti)

      // the minted token is accepted until exp + skew (600 s + 30 s) under the TestClock
      yield* TestClock.adjust("629 seconds")
      yield* verify(minted.token)
      yield* TestClock.adjust("1 second")
      assert.strictEqual((yield* verifyError(minted.token)).reason, "token_expired")
    }).pipe(withServices()))

  it.effect("defaults: scope sync:read, ttl 3600 s", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const minted = yield* mint({ userId: "u1" })
      assert.strictEqual(minted.expiresAtMs, NOW_MS + 3600 * 1000)
      const t = yield* verify(minted.token)
      assert.deepStrictEqual([...t.scopes], ["sync:read"])
      assert.isTrue(t.canRead)
      assert.isFalse(t.isAdmin)
    }).pipe(withServices()))

  it.effect("the default ttl is capped by tokenMaxTtlSeconds", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      assert.strictEqual((yield* mint({ userId: "u1" })).expiresAtMs, NOW_MS + 60_000)
    }).pipe(withServices({ tokenMaxTtlSeconds: 60 })))

  it.effect("ttl bounds", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const max = testSettings().tokenMaxTtlSeconds
      assert.strictEqual((yield* mint({ userId: "u1", ttlSeconds: max })).expiresAtMs, NOW_MS + max * 1000)
      assert.strictEqual((yield* mint({ userId: "u1", ttlSeconds: 1 })).expiresAtMs, NOW_MS + 1000)
      for (const ttlSeconds of [0, -1, 1.5, max + 1, Number.NaN, Number.POSITIVE_INFINITY]) {
        const e = yield* Effect.flip(mint({ userId: "u1", ttlSeconds }))
        assert.strictEqual(e._tag, "TokenMintError")
        assert.strictEqual(e.reason, "invalid_request")
        assert.include(e.message, "ttl_seconds")
      }
    }).pipe(withServices()))

  it.effect("rejects unknown or empty scopes", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      for (const scopes of [["sync:write"], ["sync:read", "admin"], ["SYNC:READ"], []]) {
        const e = yield* Effect.flip(mint({ userId: "u1", scopes }))
        assert.strictEqual(e.reason, "invalid_request")
        assert.include(e.message, "scope")
      }
    }).pipe(withServices()))

  it.effect("rejects invalid user ids", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      for (const userId of ["", "user/1", "a b", "x".repeat(129)]) {
        const e = yield* Effect.flip(mint({ userId }))
        assert.strictEqual(e.reason, "invalid_request")
        assert.include(e.message, "user_id")
      }
    }).pipe(withServices()))

  it.effect("without a secret (JWKS only) minting is not_configured", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const e = yield* Effect.flip(mint({ userId: "u1" }))
      assert.strictEqual(e._tag, "TokenMintError")
      assert.strictEqual(e.reason, "not_configured")
    }).pipe(withServices({ syncJwtSecret: Option.none(), syncJwksUrl: Option.some("https://idp.example/jwks.json") })))

  it.effect("uses the configured issuer and audience", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(NOW_MS)
      const minted = yield* mint({ userId: "u1" })
      const payload = jose.decodeJwt(minted.token)
      assert.strictEqual(payload.iss, "iss-x")
      assert.strictEqual(payload.aud, "aud-y")
      yield* verify(minted.token)
    }).pipe(withServices({ syncIssuer: "iss-x", syncAudience: "aud-y" })))
})
