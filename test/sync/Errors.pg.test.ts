/**
 * The error surface of `/sync/v1` (SPEC §3, §5, §10), driven by real `ws` clients on real nodes,
 * on both subprotocols: auth failures (Goodbye + close 4000 + code), valid JWKS tokens, topic ACL
 * and names, malformed / oversized frames, upgrade refusal, subscription and rate limits, cursor
 * rules, retention (`stale_cursor` after compaction) and epoch changes after a rebuild.
 *
 * Every request-scoped error is checked to leave the socket open (a Ping still gets its Pong), and
 * after every test of the main cluster a healthy subscribed client on each node must still receive
 * live entries (appended during and after the abuse) with no gap.
 */
import { create } from "@bufbuild/protobuf"
import { PgClient } from "@effect/sql-pg"
import { afterAll, afterEach, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Option, Redacted } from "effect"
import { SqlClient } from "effect/sql"
import * as jose from "jose"
import { createServer, type Server } from "node:http"
import { type AddressInfo, connect } from "node:net"
import WebSocket from "ws"
import { ErrorCode } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import {
  ClientFrameSchema,
  PingSchema,
  RefreshTokenSchema,
  SubscribeSchema,
  UnsubscribeSchema
} from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { encodeClientFrame, type Subprotocol } from "../../src/domain/Protocol.ts"
import {
  ADMIN_TOKEN,
  appendRun,
  type Cluster,
  type ClusterNode,
  httpJson,
  mintToken,
  startCluster
} from "../support/Cluster.ts"
import { type Frame, type FrameValue, WsClient } from "../support/WsClient.ts"

// ---------------------------------------------------------------------------------------------
// Fixtures

const SECRET = "test-sync-secret-0123456789abcdef0123456789"
const ISSUER = "khala"
const AUDIENCE = "khala-sync"
const MAX_FRAME_BYTES = 4096
const MAX_FRAMES_PER_S = 20
const MAX_SUBSCRIPTIONS = 3
const SUBPROTOCOLS: ReadonlyArray<Subprotocol> = ["khala.v1.proto", "khala.v1.json"]
const tagOf = (sp: Subprotocol) => (sp === "khala.v1.proto" ? "p" : "j")

const nowS = () => Math.floor(Date.now() / 1000)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

interface Claims {
  readonly sub?: string
  readonly scope?: string
  readonly iss?: string
  readonly aud?: string
  readonly exp?: number | null
  readonly nbf?: number
  readonly iat?: number
}

const claimsOf = (c: Claims): jose.JWTPayload => {
  const payload: jose.JWTPayload = {
    sub: c.sub ?? "u-auth",
    scope: c.scope ?? "sync:read",
    iss: c.iss ?? ISSUER,
    aud: c.aud ?? AUDIENCE,
    iat: c.iat ?? nowS()
  }
  if (c.exp !== null) payload.exp = c.exp ?? nowS() + 3600
  if (c.nbf !== undefined) payload.nbf = c.nbf
  if (c.scope === "") delete payload.scope
  return payload
}

/** An HS256 token signed with `secret` (the cluster's secret unless told otherwise). */
const hsToken = (c: Claims = {}, secret: string | Uint8Array = SECRET, kid?: string) =>
  new jose.SignJWT(claimsOf(c))
    .setProtectedHeader({ alg: "HS256", typ: "JWT", ...(kid === undefined ? {} : { kid }) })
    .sign(typeof secret === "string" ? new TextEncoder().encode(secret) : secret)

const b64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url")

/** `alg: none`, built by hand (jose refuses to sign it). */
const noneToken = (c: Claims = {}) => `${b64url({ alg: "none", typ: "JWT" })}.${b64url(claimsOf(c))}.`

interface JwksKey {
  readonly alg: "RS256" | "ES256" | "EdDSA"
  readonly kid: string
  readonly privateKey: CryptoKey
  readonly publicJwk: jose.JWK
  readonly publicPem: string
}

const makeKey = async (alg: JwksKey["alg"], kid: string): Promise<JwksKey> => {
  const { privateKey, publicKey } = alg === "EdDSA"
    ? await jose.generateKeyPair("EdDSA", { crv: "Ed25519", extractable: true })
    : await jose.generateKeyPair(alg, { extractable: true })
  const publicJwk = { ...(await jose.exportJWK(publicKey)), kid, alg, use: "sig" }
  return { alg, kid, privateKey, publicJwk, publicPem: await jose.exportSPKI(publicKey) }
}

const signWith = (key: JwksKey, c: Claims = {}, kid: string = key.kid) =>
  new jose.SignJWT(claimsOf(c)).setProtectedHeader({ alg: key.alg, typ: "JWT", kid }).sign(key.privateKey)

// ---------------------------------------------------------------------------------------------
// Client helpers

const clients: Array<WsClient> = []

/** Opens a client (registered for cleanup); with a token, sends Hello and awaits Welcome. */
const open = async (node: ClusterNode, sp: Subprotocol, token?: string) => {
  const c = new WsClient(node.ws, sp)
  clients.push(c)
  await c.opened
  if (token !== undefined) {
    c.hello(token)
    await c.next("welcome", 5000)
  }
  return c
}

const ping = (c: WsClient, nonce: string) => c.send({ case: "ping", value: create(PingSchema, { nonce }) })

const pongs = (c: WsClient) => c.frames.flatMap((f) => (f.case === "pong" ? [f.value.nonce] : []))
const errors = (c: WsClient) => c.frames.flatMap((f) => (f.case === "error" ? [f.value] : []))
const framesOf = <K extends NonNullable<Frame["case"]>>(c: WsClient, kind: K) =>
  c.frames.flatMap((f) => (f.case === kind ? [f.value as FrameValue<K>] : []))

let nonceCounter = 0
/** Proves the socket is open and the connection still serves requests: Ping ⇒ Pong (same nonce). */
const expectOpen = async (c: WsClient) => {
  const nonce = `alive-${++nonceCounter}-✓`
  ping(c, nonce)
  await c.until((fs) => fs.some((f) => f.case === "pong" && f.value.nonce === nonce), 5000, `pong ${nonce}`)
  assert.isUndefined(c.closed, "socket must stay open")
  assert.strictEqual(c.ws.readyState, WebSocket.OPEN)
  assert.isFalse(c.frames.some((f) => f.case === "goodbye"), "no Goodbye on a request-scoped error")
}

/** A connection-fatal error: exactly one Goodbye{code}, it is the last frame, then close `closeCode`. */
const expectFatal = async (c: WsClient, code: ErrorCode, closeCode: number) => {
  const closed = await c.awaitClose(5000)
  const goodbyes = framesOf(c, "goodbye")
  assert.strictEqual(goodbyes.length, 1, `one Goodbye, got ${JSON.stringify(c.frames.map((f) => f.case))}`)
  assert.strictEqual(goodbyes[0]!.code, code, `Goodbye code (${goodbyes[0]!.message})`)
  assert.strictEqual(c.frames.at(-1)?.case, "goodbye", "Goodbye is the last frame")
  assert.strictEqual(closed.code, closeCode)
  return goodbyes[0]!
}

/** Waits for `n` Error frames in total and returns them. */
const awaitErrors = async (c: WsClient, n: number, what = `${n} errors`) => {
  await c.until(() => errors(c).length >= n, 5000, what)
  return errors(c)
}

/** Waits until the client has seqs `from..to` of `topic` (and no more). */
const awaitSeqs = async (c: WsClient, topic: string, from: number, to: number) => {
  await c.until(() => (c.seqs(topic).at(-1) ?? 0) >= to, 5000, `${topic} up to ${to}`)
  assert.deepStrictEqual(c.seqs(topic), range(from, to), `${topic} seqs`)
}

const range = (from: number, to: number) => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i)

/** A ping frame of exactly `bytes` encoded bytes. */
const pingOfSize = (sp: Subprotocol, bytes: number) => {
  for (let n = bytes; n >= 0; n--) {
    const frame = encodeClientFrame(sp, create(ClientFrameSchema, { frame: { case: "ping", value: create(PingSchema, { nonce: "x".repeat(n) }) } }))
    const size = typeof frame === "string" ? Buffer.byteLength(frame) : frame.byteLength
    if (size === bytes) return frame
  }
  throw new Error(`no ping frame of ${bytes} bytes`)
}

const appendEvents = async (node: ClusterNode, runId: string, owner: string, steps: number) => {
  let last = await appendRun(node, runId, { type: "run.created", owner_user_id: owner })
  for (let i = 0; i < steps; i++) last = await appendRun(node, runId, { type: "run.step", payload: { i } })
  return last.topic_seqs[`run/${runId}`]!
}

const epochOf = async (node: ClusterNode, topic: string, token: string) => {
  const res = await httpJson("GET", `${node.http}/sync/v1/snapshot?topic=${encodeURIComponent(topic)}`, undefined, token)
  assert.strictEqual(res.status, 200, JSON.stringify(res.body))
  return res.body as { epoch: string; head_seq: number; floor_seq: number }
}

// ---------------------------------------------------------------------------------------------
// Main cluster: node `main` (HS256), node `slow` (auth_timeout_ms 300), node `jwks` (JWKS only)

let cluster: Cluster
let main: ClusterNode
let slow: ClusterNode
let jwksNode: ClusterNode
let jwksServer: Server
let rsa: JwksKey
let ec: JwksKey
let ed: JwksKey
let rsaUnpublished: JwksKey
const jwksFetches = { count: 0 }

/** Healthy subscribed clients, one per node, on `run/sentinel`. */
const SENTINEL_TOPIC = "run/sentinel"
const sentinels: Array<WsClient> = []
let sentinelHead = 0

/** Appends to the sentinel run (during or after abuse); resolves to the new head. */
const pulse = async () => {
  const r = await appendRun(main, "sentinel", { type: "run.step", payload: { at: Date.now() } })
  sentinelHead = Math.max(sentinelHead, r.topic_seqs[SENTINEL_TOPIC]!)
  return sentinelHead
}

/** Every sentinel is still open and has received exactly 1..head, live. */
const checkSentinels = async () => {
  const head = await pulse()
  for (const s of sentinels) {
    assert.isUndefined(s.closed, "a healthy client was closed")
    await s.until(() => (s.seqs(SENTINEL_TOPIC).at(-1) ?? 0) >= head, 5000, `sentinel ${s.subprotocol} at ${head}`)
    assert.deepStrictEqual(s.seqs(SENTINEL_TOPIC), range(1, head), "sentinel seqs: no gap, no duplicate")
    assert.isFalse(s.frames.some((f) => f.case === "error" || f.case === "goodbye"), "sentinel got an error")
  }
}

beforeAll(async () => {
  ;[rsa, ec, ed, rsaUnpublished] = await Promise.all([
    makeKey("RS256", "rsa-1"),
    makeKey("ES256", "ec-1"),
    makeKey("EdDSA", "ed-1"),
    makeKey("RS256", "rsa-unpublished")
  ])
  const jwks = JSON.stringify({ keys: [rsa.publicJwk, ec.publicJwk, ed.publicJwk] })
  jwksServer = createServer((_req, res) => {
    jwksFetches.count++
    res.writeHead(200, { "content-type": "application/json" })
    res.end(jwks)
  })
  await new Promise<void>((resolve) => jwksServer.listen(0, "127.0.0.1", resolve))
  const jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`

  cluster = await startCluster(1, {
    maxFrameBytes: MAX_FRAME_BYTES,
    maxClientFramesPerS: MAX_FRAMES_PER_S,
    maxSubscriptions: MAX_SUBSCRIPTIONS
  })
  main = cluster.nodes[0]!
  slow = await cluster.startNode({ authTimeoutMs: 300 })
  jwksNode = await cluster.startNode({ syncJwksUrl: Option.some(jwksUrl), syncJwtSecret: Option.none() })

  sentinelHead = await appendEvents(main, "sentinel", "u-sentinel", 0)
  const hs = await mintToken(main, "u-sentinel")
  const rs = await signWith(rsa, { sub: "u-sentinel" })
  for (const [node, sp, token] of [[main, "khala.v1.proto", hs], [slow, "khala.v1.json", hs], [jwksNode, "khala.v1.json", rs]] as const) {
    const s = new WsClient(node.ws, sp)
    await s.opened
    s.hello(token)
    s.subscribe("sentinel", [{ topic: SENTINEL_TOPIC }])
    await s.next("caughtUp", 10_000)
    sentinels.push(s)
  }
}, 120_000)

afterAll(async () => {
  for (const s of sentinels) s.terminate()
  await cluster?.close()
  await new Promise<void>((resolve) => (jwksServer ? jwksServer.close(() => resolve()) : resolve()))
})

describe("main cluster", () => {
  afterEach(async () => {
    try {
      await checkSentinels()
    } finally {
      for (const c of clients.splice(0)) c.terminate()
    }
  })

  // -------------------------------------------------------------------------------------------
  describe("auth failures ⇒ Goodbye, then close 4000 + code", () => {
    for (const sp of SUBPROTOCOLS) {
      describe(sp, () => {
        it("no Hello within auth_timeout_ms ⇒ unauthenticated, 4002", async () => {
          const started = Date.now()
          const c = await open(slow, sp)
          await expectFatal(c, ErrorCode.UNAUTHENTICATED, 4002)
          const elapsed = Date.now() - started
          assert.isAtLeast(elapsed, 250, "not before auth_timeout_ms")
          assert.isBelow(elapsed, 3000)
          assert.isFalse(c.frames.some((f) => f.case === "welcome"))
        })

        it("a valid Hello within auth_timeout_ms is served past the timeout", async () => {
          const c = await open(slow, sp, await mintToken(main, "u-auth"))
          await sleep(500)
          await expectOpen(c)
        })

        const firstFrames: ReadonlyArray<[string, (c: WsClient) => void]> = [
          ["Subscribe", (c) => c.subscribe("r1", [{ topic: "run/sentinel" }])],
          ["Ping", (c) => ping(c, "early")],
          ["Unsubscribe", (c) =>
            c.send({ case: "unsubscribe", value: create(UnsubscribeSchema, { requestId: "r", topics: ["run/x"] }) })],
          ["garbage", (c) => c.sendRaw(sp === "khala.v1.proto" ? new Uint8Array([0xff, 0xff, 0xff]) : "{nope")],
          ["an empty ClientFrame", (c) => c.sendRaw(sp === "khala.v1.proto" ? new Uint8Array([]) : "{}")]
        ]
        for (const [name, send] of firstFrames) {
          it(`a first frame that is not Hello (${name}) ⇒ unauthenticated at once, 4002`, async () => {
            const c = await open(main, sp)
            send(c)
            const started = Date.now()
            await expectFatal(c, ErrorCode.UNAUTHENTICATED, 4002)
            assert.isBelow(Date.now() - started, 2000, "at once, not after the auth timeout")
            assert.isFalse(c.frames.some((f) => f.case === "welcome" || f.case === "subscribed" || f.case === "pong"))
          })
        }

        const badTokens: ReadonlyArray<[string, () => ClusterNode, () => Promise<string> | string, ErrorCode, number]> = [
          ["bad signature", () => main, () => hsToken({}, "another-secret-0123456789abcdef0123456789"), ErrorCode.UNAUTHENTICATED, 4002],
          ["wrong aud", () => main, () => hsToken({ aud: "someone-else" }), ErrorCode.UNAUTHENTICATED, 4002],
          ["wrong iss", () => main, () => hsToken({ iss: "evil" }), ErrorCode.UNAUTHENTICATED, 4002],
          ["exp beyond the clock skew ⇒ token_expired", () => main, () =>
            hsToken({ iat: nowS() - 3600, exp: nowS() - 90 }), ErrorCode.TOKEN_EXPIRED, 4003],
          ["nbf in the future beyond the skew", () => main, () => hsToken({ nbf: nowS() + 120 }), ErrorCode.UNAUTHENTICATED, 4002],
          ["no exp", () => main, () => hsToken({ exp: null }), ErrorCode.UNAUTHENTICATED, 4002],
          ["no sub", () => main, () => hsToken({ sub: "" }), ErrorCode.UNAUTHENTICATED, 4002],
          ["a sub outside the id charset", () => main, () => hsToken({ sub: "u/../admin" }), ErrorCode.UNAUTHENTICATED, 4002],
          ["alg none", () => main, () => noneToken(), ErrorCode.UNAUTHENTICATED, 4002],
          ["alg none (unsigned, on the JWKS node)", () => jwksNode, () => noneToken(), ErrorCode.UNAUTHENTICATED, 4002],
          ["garbage token string", () => main, () => "garbage.token.string", ErrorCode.UNAUTHENTICATED, 4002],
          ["not a JWT at all", () => main, () => "hello", ErrorCode.UNAUTHENTICATED, 4002],
          ["empty token", () => main, () => "", ErrorCode.UNAUTHENTICATED, 4002],
          ["HS256 signed with the RSA public key against a JWKS configuration", () => jwksNode, () =>
            hsToken({}, new TextEncoder().encode(rsa.publicPem), rsa.kid), ErrorCode.UNAUTHENTICATED, 4002],
          ["HS256 signed with the RSA public JWK's modulus", () => jwksNode, () =>
            hsToken({}, Buffer.from(rsa.publicJwk.n!, "base64url"), rsa.kid), ErrorCode.UNAUTHENTICATED, 4002],
          ["RS256 with an unknown kid", () => jwksNode, () => signWith(rsaUnpublished), ErrorCode.UNAUTHENTICATED, 4002],
          ["RS256 with a published kid but another key", () => jwksNode, () =>
            signWith(rsaUnpublished, {}, rsa.kid), ErrorCode.UNAUTHENTICATED, 4002],
          ["RS256 with wrong aud", () => jwksNode, () => signWith(rsa, { aud: "x" }), ErrorCode.UNAUTHENTICATED, 4002],
          ["ES256 expired beyond the skew ⇒ token_expired", () => jwksNode, () =>
            signWith(ec, { iat: nowS() - 3600, exp: nowS() - 90 }), ErrorCode.TOKEN_EXPIRED, 4003],
          ["RS256 on a node without JWKS", () => main, () => signWith(rsa), ErrorCode.UNAUTHENTICATED, 4002],
          ["HS256 (valid secret) on a JWKS-only node", () => jwksNode, () => hsToken(), ErrorCode.UNAUTHENTICATED, 4002]
        ]
        for (const [name, node, token, code, closeCode] of badTokens) {
          it(`${name} ⇒ ${code === ErrorCode.TOKEN_EXPIRED ? "token_expired" : "unauthenticated"}, ${closeCode}`, async () => {
            const c = await open(node(), sp)
            c.hello(await token())
            await expectFatal(c, code, closeCode)
            assert.isFalse(c.frames.some((f) => f.case === "welcome"))
          })
        }

        it("a token inside the clock skew is served, then closed with token_expired (4003) at exp + skew", async () => {
          // exp 28 s ago: accepted with the 30 s skew, expires ~2 s from now.
          const exp = nowS() - 28
          const c = await open(main, sp, await hsToken({ sub: "u-auth", iat: exp - 60, exp }))
          assert.strictEqual(framesOf(c, "welcome")[0]!.tokenExpiresAtMs, BigInt(exp * 1000))
          await expectOpen(c)
          const started = Date.now()
          await expectFatal(c, ErrorCode.TOKEN_EXPIRED, 4003)
          const closedAt = Date.now()
          assert.isAtLeast(closedAt, exp * 1000 + 30_000 - 200, "not before exp + skew")
          assert.isBelow(closedAt - started, 4000)
        })

        it("nbf and exp inside the clock skew are accepted", async () => {
          const c = await open(main, sp, await hsToken({ sub: "u-auth", nbf: nowS() + 10 }))
          await expectOpen(c)
        })

        it("RefreshToken: a valid one ⇒ TokenRefreshed; an invalid one or another user's ⇒ unauthenticated, 4002", async () => {
          const refresh = (c: WsClient, token: string) =>
            c.send({ case: "refreshToken", value: create(RefreshTokenSchema, { token }) })
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          const exp = nowS() + 1800
          refresh(c, await hsToken({ sub: "u-sentinel", exp }))
          const refreshed = await c.next("tokenRefreshed", 5000)
          assert.strictEqual(refreshed.tokenExpiresAtMs, BigInt(exp * 1000))
          await expectOpen(c)
          refresh(c, await hsToken({ sub: "u-sentinel", aud: "someone-else" }))
          await expectFatal(c, ErrorCode.UNAUTHENTICATED, 4002)
          const other = await open(main, sp, await mintToken(main, "u-sentinel"))
          refresh(other, await mintToken(main, "u-somebody-else"))
          await expectFatal(other, ErrorCode.UNAUTHENTICATED, 4002)
        })

        it("RefreshToken with fewer scopes ⇒ forbidden_topic for the topics it may no longer read", async () => {
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          c.subscribe("s", [{ topic: SENTINEL_TOPIC }])
          await c.next("caughtUp", 5000)
          c.send({ case: "refreshToken", value: create(RefreshTokenSchema, { token: await hsToken({ sub: "u-sentinel", scope: "profile" }) }) })
          await c.next("tokenRefreshed", 5000)
          const [e] = await awaitErrors(c, 1)
          assert.deepStrictEqual([e!.code, e!.topic], [ErrorCode.FORBIDDEN_TOPIC, SENTINEL_TOPIC])
          const seen = c.seqs(SENTINEL_TOPIC).length
          await pulse()
          await expectOpen(c)
          await sleep(100)
          assert.strictEqual(c.seqs(SENTINEL_TOPIC).length, seen, "no delivery after the scope was withdrawn")
        })

        it("a second Hello ⇒ Error{bad_request}, the socket stays open", async () => {
          const token = await mintToken(main, "u-auth")
          const c = await open(main, sp, token)
          c.hello(token)
          const [e] = await awaitErrors(c, 1)
          assert.strictEqual(e!.code, ErrorCode.BAD_REQUEST)
          await expectOpen(c)
          assert.strictEqual(framesOf(c, "welcome").length, 1)
        })
      })
    }
  })

  // -------------------------------------------------------------------------------------------
  describe("valid JWKS tokens ⇒ Welcome", () => {
    for (const sp of SUBPROTOCOLS) {
      for (const alg of ["RS256", "ES256", "EdDSA"] as const) {
        it(`${alg} (${sp})`, async () => {
          const key = alg === "RS256" ? rsa : alg === "ES256" ? ec : ed
          const exp = nowS() + 600
          const c = await open(jwksNode, sp, await signWith(key, { sub: "u-sentinel", exp }))
          assert.strictEqual(framesOf(c, "welcome")[0]!.tokenExpiresAtMs, BigInt(exp * 1000))
          assert.strictEqual(framesOf(c, "welcome")[0]!.maxFrameBytes, BigInt(MAX_FRAME_BYTES))
          c.subscribe("s", [{ topic: SENTINEL_TOPIC }])
          const sub = await c.next("subscribed", 5000)
          assert.deepStrictEqual(sub.topics.map((t) => t.topic), [SENTINEL_TOPIC])
          await c.next("caughtUp", 5000)
        })
      }
    }
    it("tokens of an unknown kid do not make the node hammer the JWKS endpoint", async () => {
      const before = jwksFetches.count
      for (let i = 0; i < 5; i++) {
        const c = await open(jwksNode, "khala.v1.proto")
        c.hello(await signWith(rsaUnpublished))
        await expectFatal(c, ErrorCode.UNAUTHENTICATED, 4002)
      }
      assert.isAtMost(jwksFetches.count - before, 1, "refetch on unknown kid is rate limited")
    })
  })

  // -------------------------------------------------------------------------------------------
  describe("topic ACL and names", () => {
    for (const sp of SUBPROTOCOLS) {
      const tag = tagOf(sp)
      describe(sp, () => {
        beforeAll(async () => {
          await appendEvents(main, `acl-own-${tag}`, `u-acl-${tag}`, 1)
          await appendEvents(main, `acl-other-${tag}`, `u-other-${tag}`, 1)
        })

        it("another user's run, a non-existent run, another user's user/* topics ⇒ forbidden_topic each", async () => {
          const c = await open(main, sp, await mintToken(main, `u-acl-${tag}`))
          const topics = [
            `run/acl-other-${tag}`,
            `run/does-not-exist-${tag}`,
            `user/u-other-${tag}/runs`,
            `user/u-other-${tag}/workers`,
            `worker/does-not-exist-${tag}`
          ]
          c.subscribe("f1", topics.map((topic) => ({ topic })))
          const es = await awaitErrors(c, topics.length)
          assert.deepStrictEqual(es.map((e) => e.topic), topics)
          for (const e of es) {
            assert.strictEqual(e.code, ErrorCode.FORBIDDEN_TOPIC, e.message)
            assert.strictEqual(e.requestId, "f1")
            assert.isFalse(e.retryable)
          }
          // Existence is not revealed: another user's run and a missing run look the same.
          assert.strictEqual(es[0]!.message.replace(topics[0]!, "T"), es[1]!.message.replace(topics[1]!, "T"))
          await expectOpen(c)
          assert.strictEqual(framesOf(c, "subscribed").length, 0)
          assert.strictEqual(framesOf(c, "updates").length, 0)
        })

        it("a token with neither sync:read nor sync:admin may connect, but every subscribe is forbidden_topic", async () => {
          const c = await open(main, sp, await hsToken({ sub: `u-acl-${tag}`, scope: "profile email" }))
          const topics = [`run/acl-own-${tag}`, `user/u-acl-${tag}/runs`]
          c.subscribe("n1", topics.map((topic) => ({ topic })))
          const es = await awaitErrors(c, 2)
          assert.deepStrictEqual(es.map((e) => [e.code, e.topic, e.requestId]), topics.map((t) => [ErrorCode.FORBIDDEN_TOPIC, t, "n1"]))
          const c2 = await open(main, sp, await hsToken({ sub: `u-acl-${tag}`, scope: "" }))
          c2.subscribe("n2", [{ topic: topics[0]! }])
          const [e2] = await awaitErrors(c2, 1)
          assert.strictEqual(e2!.code, ErrorCode.FORBIDDEN_TOPIC)
          await expectOpen(c)
          await expectOpen(c2)
          assert.strictEqual(framesOf(c, "subscribed").length + framesOf(c2, "subscribed").length, 0)
        })

        it("sync:admin may subscribe to any well-formed topic, including a run that does not exist yet", async () => {
          const c = await open(main, sp, await mintToken(main, `u-admin-${tag}`, ["sync:admin"]))
          const future = `run/future-${tag}`
          c.subscribe("a1", [{ topic: `run/acl-other-${tag}` }, { topic: future }, { topic: `user/u-other-${tag}/runs` }])
          const sub = await c.next("subscribed", 5000)
          assert.strictEqual(sub.requestId, "a1")
          assert.deepStrictEqual(sub.topics.map((t) => t.topic), [`run/acl-other-${tag}`, future, `user/u-other-${tag}/runs`])
          const f = sub.topics[1]!
          assert.strictEqual(f.headSeq, 0n)
          assert.strictEqual(f.floorSeq, 1n, "floor of an empty topic is head + 1")
          await c.until(() => framesOf(c, "caughtUp").length === 3, 5000, "3 CaughtUp")
          assert.strictEqual(framesOf(c, "caughtUp").find((x) => x.topic === future)!.seq, 0n)
          assert.strictEqual(errors(c).length, 0)
          const head = await appendEvents(main, `future-${tag}`, `u-someone-${tag}`, 1)
          await awaitSeqs(c, future, 1, head)
          for (const u of framesOf(c, "updates").filter((x) => x.topic === future)) assert.isFalse(u.replay)
        })

        it("invalid topic names ⇒ bad_request with the topic, for readers and admins alike", async () => {
          const names = [
            "bogus/x",
            "run/",
            "run/a b",
            "user/u1/other",
            `run/${"a".repeat(296)}`,
            `run/${"a".repeat(129)}`,
            "run/a/b",
            "user//runs",
            "worker/ä",
            ""
          ]
          for (const token of [await mintToken(main, `u-acl-${tag}`), await mintToken(main, `u-admin-${tag}`, ["sync:admin"])]) {
            const c = await open(main, sp, token)
            c.subscribe("b1", names.map((topic) => ({ topic })))
            const es = await awaitErrors(c, names.length)
            assert.deepStrictEqual(es.map((e) => e.topic), names)
            for (const e of es) {
              assert.strictEqual(e.code, ErrorCode.BAD_REQUEST, e.message)
              assert.strictEqual(e.requestId, "b1")
            }
            await expectOpen(c)
            assert.strictEqual(framesOf(c, "subscribed").length, 0)
          }
        })

        it("a Subscribe with several cursors: accepted ones in Subscribed, each rejected one gets its own Error", async () => {
          const c = await open(main, sp, await mintToken(main, `u-acl-${tag}`))
          c.subscribe("m1", [
            { topic: `run/acl-own-${tag}` },
            { topic: `run/acl-other-${tag}` },
            { topic: "bogus/x" },
            { topic: `run/acl-own-${tag}` },
            { topic: `user/u-acl-${tag}/runs` },
            { topic: `run/acl-own-${tag}`, afterSeq: 1 }
          ])
          const sub = await c.next("subscribed", 5000)
          assert.strictEqual(sub.requestId, "m1")
          assert.deepStrictEqual(sub.topics.map((t) => t.topic), [`run/acl-own-${tag}`, `user/u-acl-${tag}/runs`])
          const es = await awaitErrors(c, 4)
          assert.deepStrictEqual(
            es.map((e) => [e.code, e.topic, e.requestId]),
            [
              [ErrorCode.FORBIDDEN_TOPIC, `run/acl-other-${tag}`, "m1"],
              [ErrorCode.BAD_REQUEST, "bogus/x", "m1"],
              [ErrorCode.BAD_REQUEST, `run/acl-own-${tag}`, "m1"],
              [ErrorCode.BAD_REQUEST, `run/acl-own-${tag}`, "m1"]
            ]
          )
          await c.until(() => framesOf(c, "caughtUp").length === 2, 5000, "2 CaughtUp")
          assert.deepStrictEqual(c.seqs(`run/acl-own-${tag}`), [1, 2, 3, 4])
          assert.deepStrictEqual(c.seqs(`user/u-acl-${tag}/runs`), [1, 2])
          // Subscribing again to a topic already held is a bad_request too.
          c.subscribe("m2", [{ topic: `run/acl-own-${tag}` }])
          const again = await awaitErrors(c, 5)
          assert.deepStrictEqual([again[4]!.code, again[4]!.topic, again[4]!.requestId], [ErrorCode.BAD_REQUEST, `run/acl-own-${tag}`, "m2"])
          c.send({ case: "subscribe", value: create(SubscribeSchema, { requestId: "m3", cursors: [] }) })
          const empty = await awaitErrors(c, 6)
          assert.deepStrictEqual([empty[5]!.code, empty[5]!.requestId], [ErrorCode.BAD_REQUEST, "m3"])
          await expectOpen(c)
        })
      })
    }
  })

  // -------------------------------------------------------------------------------------------
  describe("malformed and oversized frames", () => {
    for (const sp of SUBPROTOCOLS) {
      describe(sp, () => {
        const bad: ReadonlyArray<[string, string | Uint8Array]> = sp === "khala.v1.proto"
          ? [
            ["binary garbage (invalid varint)", new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
            ["binary garbage (truncated field)", new Uint8Array([0x2a, 0x10, 0x0a])],
            ["binary garbage (illegal tag)", new Uint8Array([0x07])],
            ["a text frame on the binary subprotocol", JSON.stringify({ ping: { nonce: "x" } })],
            ["a ClientFrame with no oneof set", new Uint8Array([])]
          ]
          : [
            ["invalid JSON", "{not json"],
            ["two oneof members", JSON.stringify({ hello: { token: "x" }, ping: { nonce: "1" } })],
            ["a server frame's oneof", JSON.stringify({ pong: { nonce: "1" } })],
            ["an unknown field", JSON.stringify({ ping: { nonce: "1", bogus: 1 } })],
            ["a wrongly typed member", JSON.stringify({ ping: "x" })],
            ["a JSON array", "[]"],
            ["a binary frame on the JSON subprotocol", new Uint8Array([0x2a, 0x03, 0x0a, 0x01, 0x78])],
            ["a ClientFrame with no oneof set", "{}"]
          ]
        for (const [name, data] of bad) {
          it(`${name} ⇒ Error{bad_request}, the socket stays open`, async () => {
            const c = await open(main, sp, await mintToken(main, "u-sentinel"))
            c.sendRaw(data)
            const [e] = await awaitErrors(c, 1)
            assert.strictEqual(e!.code, ErrorCode.BAD_REQUEST, e!.message)
            assert.strictEqual(e!.requestId, "")
            await expectOpen(c)
            // The connection still serves subscriptions afterwards.
            c.subscribe("after", [{ topic: SENTINEL_TOPIC }])
            await c.next("caughtUp", 5000)
            assert.strictEqual(errors(c).length, 1)
          })
        }

        it("frames up to max_frame_bytes are served; one byte more ⇒ Error{payload_too_large}, the socket stays open", async () => {
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          c.sendRaw(pingOfSize(sp, MAX_FRAME_BYTES))
          await c.until(() => pongs(c).length === 1, 5000, "pong of a max-size ping")
          c.sendRaw(pingOfSize(sp, MAX_FRAME_BYTES + 1))
          const [e] = await awaitErrors(c, 1)
          assert.strictEqual(e!.code, ErrorCode.PAYLOAD_TOO_LARGE, e!.message)
          c.sendRaw(pingOfSize(sp, 3 * MAX_FRAME_BYTES))
          const es = await awaitErrors(c, 2)
          assert.strictEqual(es[1]!.code, ErrorCode.PAYLOAD_TOO_LARGE)
          await expectOpen(c)
        })

        it("a frame of exactly 4 × max_frame_bytes is still read and answered with payload_too_large", async () => {
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          c.sendRaw(pingOfSize(sp, 4 * MAX_FRAME_BYTES))
          const [e] = await awaitErrors(c, 1)
          assert.strictEqual(e!.code, ErrorCode.PAYLOAD_TOO_LARGE, e!.message)
          await expectOpen(c)
        })

        it("a frame over 4 × max_frame_bytes ⇒ close 1009; other connections unaffected", async () => {
          const bystander = await open(main, sp, await mintToken(main, "u-sentinel"))
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          const during = pulse()
          c.sendRaw(pingOfSize(sp, 4 * MAX_FRAME_BYTES + 100))
          const closed = await c.awaitClose(5000)
          assert.strictEqual(closed.code, 1009)
          await during
          await expectOpen(bystander)
        })

        it("an oversized frame before Hello does not authenticate and does not crash the node", async () => {
          const c = await open(main, sp)
          c.sendRaw(pingOfSize(sp, 2 * MAX_FRAME_BYTES))
          await expectFatal(c, ErrorCode.UNAUTHENTICATED, 4002)
          assert.isFalse(c.frames.some((f) => f.case === "welcome" || f.case === "pong"))
        })
      })
    }
  })

  // -------------------------------------------------------------------------------------------
  describe("upgrade refusal", () => {
    const attempt = (protocols: ReadonlyArray<string> | undefined, url = main.ws) =>
      new Promise<{ status: number; body: string } | { opened: string }>((resolve, reject) => {
        const ws = protocols === undefined ? new WebSocket(url) : new WebSocket(url, [...protocols])
        ws.on("unexpected-response", (req, res) => {
          let body = ""
          res.setEncoding("utf8")
          res.on("data", (d: string) => (body += d))
          res.on("end", () => {
            resolve({ status: res.statusCode ?? 0, body })
            req.destroy()
          })
        })
        ws.on("open", () => {
          resolve({ opened: ws.protocol })
          ws.close()
        })
        ws.on("error", reject)
      })

    it("no subprotocol ⇒ HTTP 400 before the upgrade", async () => {
      const r = await attempt(undefined)
      assert.deepInclude(r, { status: 400 })
      assert.strictEqual(JSON.parse((r as { body: string }).body).error.code, "bad_request")
    })

    it("an unsupported subprotocol ⇒ HTTP 400 before the upgrade", async () => {
      const r = await attempt(["khala.v2.proto", "graphql-ws"])
      assert.deepInclude(r, { status: 400 })
    })

    it("a supported subprotocol among unsupported ones is chosen", async () => {
      assert.deepStrictEqual(await attempt(["graphql-ws", "khala.v1.json", "khala.v1.proto"]), { opened: "khala.v1.json" })
    })

    it("clients that reset the connection instead of reading the refusal do not hurt the node", async () => {
      const port = Number(new URL(main.ws).port)
      for (let i = 0; i < 20; i++) {
        await new Promise<void>((resolve) => {
          const socket = connect(port, "127.0.0.1", () => {
            socket.write(
              "GET /sync/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            // No subprotocol: the node answers 400 — to a socket that is reset at once.
            socket.resetAndDestroy()
            resolve()
          })
          socket.on("error", () => resolve())
        })
      }
      await new Promise((r) => setTimeout(r, 200))
      assert.deepStrictEqual(await attempt(["khala.v1.proto"]), { opened: "khala.v1.proto" })
    })

    it("a draining node ⇒ open connections get Goodbye{server_draining}, new upgrades HTTP 503", async () => {
      const node = await cluster.startNode()
      try {
        const connected = await open(node, "khala.v1.proto", await mintToken(node, "u-drain", ["sync:admin"]))
        const drained = await fetch(`${node.http}/internal/v1/khala/drain`, {
          method: "POST",
          headers: { authorization: `Bearer ${ADMIN_TOKEN}` }
        })
        assert.strictEqual(drained.status, 202, await drained.text())
        const r = await attempt(["khala.v1.proto"], node.ws)
        assert.deepInclude(r, { status: 503 })
        assert.strictEqual(JSON.parse((r as { body: string }).body).error.code, "server_draining")
        await expectFatal(connected, ErrorCode.SERVER_DRAINING, 4010)
      } finally {
        await node.stop()
      }
    })
  })

  // -------------------------------------------------------------------------------------------
  describe("limits", () => {
    for (const sp of SUBPROTOCOLS) {
      const tag = tagOf(sp)
      describe(sp, () => {
        it("more than max_subscriptions topics ⇒ too_many_subscriptions per excess topic", async () => {
          const c = await open(main, sp, await mintToken(main, `u-admin-${tag}`, ["sync:admin"]))
          const topics = range(1, 5).map((i) => `run/many-${tag}-${i}`)
          c.subscribe("t1", topics.map((topic) => ({ topic })))
          const sub = await c.next("subscribed", 5000)
          assert.deepStrictEqual(sub.topics.map((t) => t.topic), topics.slice(0, MAX_SUBSCRIPTIONS))
          const es = await awaitErrors(c, 2)
          assert.deepStrictEqual(
            es.map((e) => [e.code, e.topic, e.requestId]),
            topics.slice(MAX_SUBSCRIPTIONS).map((t) => [ErrorCode.TOO_MANY_SUBSCRIPTIONS, t, "t1"])
          )
          c.subscribe("t2", [{ topic: `run/many-${tag}-6` }])
          const more = await awaitErrors(c, 3)
          assert.deepStrictEqual([more[2]!.code, more[2]!.topic, more[2]!.requestId], [
            ErrorCode.TOO_MANY_SUBSCRIPTIONS,
            `run/many-${tag}-6`,
            "t2"
          ])
          // Freeing a slot makes room again.
          c.send({ case: "unsubscribe", value: create(UnsubscribeSchema, { requestId: "u1", topics: [topics[0]!] }) })
          await c.next("unsubscribed", 5000)
          c.subscribe("t3", [{ topic: `run/many-${tag}-6` }])
          await c.until(() => framesOf(c, "subscribed").some((s) => s.requestId === "t3"), 5000, "t3 subscribed")
          await expectOpen(c)
        })

        it("more than max_client_frames_per_s frames in a second ⇒ one Error{rate_limited}, the socket stays open", async () => {
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          const n = MAX_FRAMES_PER_S + 5
          for (let i = 0; i < n; i++) ping(c, `burst-${i}`)
          const [e] = await awaitErrors(c, 1)
          assert.strictEqual(e!.code, ErrorCode.RATE_LIMITED, e!.message)
          assert.isAbove(Number(e!.retryAfterMs), 0)
          assert.isAtMost(Number(e!.retryAfterMs), 1000)
          assert.isTrue(e!.retryable)
          await sleep(Number(e!.retryAfterMs) + 50)
          await expectOpen(c)
          const burst = pongs(c).filter((p) => p.startsWith("burst-"))
          assert.deepStrictEqual(burst, range(0, MAX_FRAMES_PER_S - 1).map((i) => `burst-${i}`), "frames over the limit are dropped")
          assert.strictEqual(errors(c).length, 1, "one Error per window")
        })

        it("more than 2 × max_client_frames_per_s frames in a second ⇒ Goodbye{rate_limited}, close 4007", async () => {
          const c = await open(main, sp, await mintToken(main, "u-sentinel"))
          c.subscribe("s", [{ topic: SENTINEL_TOPIC }])
          await c.next("caughtUp", 5000)
          const during = pulse()
          for (let i = 0; i < 3 * MAX_FRAMES_PER_S; i++) ping(c, `flood-${i}`)
          const g = await expectFatal(c, ErrorCode.RATE_LIMITED, 4007)
          assert.isAbove(Number(g.retryAfterMs), 0)
          await during
        })
      })
    }
  })

  // -------------------------------------------------------------------------------------------
  describe("cursors", () => {
    for (const sp of SUBPROTOCOLS) {
      const tag = tagOf(sp)
      const topic = `run/cur-${tag}`
      let token: string
      let epoch: string
      let head: number
      describe(sp, () => {
        beforeAll(async () => {
          head = await appendEvents(main, `cur-${tag}`, `u-cur-${tag}`, 2)
          token = await mintToken(main, `u-cur-${tag}`)
          const snapshot = await epochOf(main, topic, token)
          epoch = snapshot.epoch
          assert.strictEqual(snapshot.head_seq, head)
        })

        const expectStale = async (c: WsClient, requestId: string, n: number, floor: number, headSeq: number) => {
          const es = await awaitErrors(c, n)
          const e = es[n - 1]!
          assert.deepStrictEqual(
            [e.code, e.topic, e.requestId, e.floorSeq, e.headSeq],
            [ErrorCode.STALE_CURSOR, topic, requestId, BigInt(floor), BigInt(headSeq)],
            e.message
          )
          assert.isFalse(e.retryable)
        }

        it("after_seq > head ⇒ stale_cursor with floor_seq and head_seq", async () => {
          const c = await open(main, sp, token)
          c.subscribe("a", [{ topic, afterSeq: head + 1, epoch }])
          await expectStale(c, "a", 1, 1, head)
          c.subscribe("b", [{ topic, afterSeq: head + 1000, epoch }])
          await expectStale(c, "b", 2, 1, head)
          await expectOpen(c)
          assert.strictEqual(framesOf(c, "subscribed").length, 0)
          // Per topic: a stale cursor next to a good one does not stop the good one.
          c.subscribe("c", [{ topic, afterSeq: head + 1, epoch }, { topic: `user/u-cur-${tag}/runs` }])
          await expectStale(c, "c", 3, 1, head)
          const sub = await c.next("subscribed", 5000)
          assert.deepStrictEqual([sub.requestId, sub.topics.map((t) => t.topic)], ["c", [`user/u-cur-${tag}/runs`]])
          await c.next("caughtUp", 5000)
        })

        it("after_seq beyond 2^53 (uint64 max) is ahead of the head too ⇒ stale_cursor", async () => {
          const c = await open(main, sp, token)
          c.send({
            case: "subscribe",
            value: create(SubscribeSchema, { requestId: "u64", cursors: [{ topic, afterSeq: 18446744073709551615n, epoch }] })
          })
          await expectStale(c, "u64", 1, 1, head)
          await expectOpen(c)
        })

        it("an empty epoch with after_seq > 0, or another epoch ⇒ stale_cursor", async () => {
          const c = await open(main, sp, token)
          c.subscribe("e1", [{ topic, afterSeq: 1, epoch: "" }])
          await expectStale(c, "e1", 1, 1, head)
          c.subscribe("e2", [{ topic, afterSeq: 1, epoch: `${epoch}x` }])
          await expectStale(c, "e2", 2, 1, head)
          c.subscribe("e3", [{ topic, afterSeq: 0, epoch: "not-the-epoch" }])
          await expectStale(c, "e3", 3, 1, head)
          await expectOpen(c)
          assert.strictEqual(framesOf(c, "subscribed").length, 0)
        })

        it("a fresh start (empty epoch, 0) ⇒ Subscribed, replay from seq 1, CaughtUp ≥ head_seq, then live", async () => {
          const c = await open(main, sp, token)
          c.subscribe("f", [{ topic }])
          const sub = await c.next("subscribed", 5000)
          assert.strictEqual(sub.requestId, "f")
          assert.deepStrictEqual(
            sub.topics.map((t) => [t.topic, t.epoch, t.floorSeq]),
            [[topic, epoch, 1n]]
          )
          assert.isAtLeast(Number(sub.topics[0]!.headSeq), head)
          const caught = await c.next("caughtUp", 5000)
          assert.strictEqual(caught.topic, topic)
          assert.isAtLeast(Number(caught.seq), Number(sub.topics[0]!.headSeq))
          const idx = c.frames.findIndex((f) => f.case === "caughtUp")
          const before = c.frames.slice(0, idx).flatMap((f) => (f.case === "updates" ? [f.value] : []))
          assert.deepStrictEqual(before.flatMap((u) => u.items.map((i) => Number(i.seq))), range(1, Number(caught.seq)))
          for (const u of before) {
            assert.isTrue(u.replay)
            assert.strictEqual(u.epoch, epoch)
          }
          const r = await appendRun(main, `cur-${tag}`, { type: "run.step", payload: { live: true } })
          head = r.topic_seqs[topic]!
          await awaitSeqs(c, topic, 1, head)
          const after = c.frames.slice(idx + 1).flatMap((f) => (f.case === "updates" ? [f.value] : []))
          for (const u of after) assert.isFalse(u.replay)
          assert.strictEqual(framesOf(c, "caughtUp").length, 1, "CaughtUp once per subscription")
        })

        it("resuming with the right epoch yields exactly the missed entries; after_seq = head ⇒ no replay", async () => {
          const c = await open(main, sp, token)
          c.subscribe("r", [{ topic, afterSeq: 2, epoch }])
          const caught = await c.next("caughtUp", 5000)
          assert.strictEqual(Number(caught.seq), head)
          assert.deepStrictEqual(c.seqs(topic), range(3, head))
          const c2 = await open(main, sp, token)
          c2.subscribe("h", [{ topic, afterSeq: head, epoch }])
          const caught2 = await c2.next("caughtUp", 5000)
          assert.strictEqual(Number(caught2.seq), head)
          assert.deepStrictEqual(c2.seqs(topic), [])
        })

        it("Unsubscribe ⇒ Unsubscribed{request_id, topics} and no further updates for that topic", async () => {
          const watcher = await open(main, sp, token)
          watcher.subscribe("w", [{ topic, afterSeq: head, epoch }])
          await watcher.next("caughtUp", 5000)
          const c = await open(main, sp, token)
          c.subscribe("s", [{ topic, afterSeq: head, epoch }, { topic: `user/u-cur-${tag}/runs` }])
          await c.until(() => framesOf(c, "caughtUp").length === 2, 5000, "2 CaughtUp")
          c.send({ case: "unsubscribe", value: create(UnsubscribeSchema, { requestId: "u-1", topics: [topic] }) })
          const un = await c.next("unsubscribed", 5000)
          assert.deepStrictEqual([un.requestId, un.topics], ["u-1", [topic]])
          const userSeqsBefore = c.seqs(`user/u-cur-${tag}/runs`).length
          const r = await appendRun(main, `cur-${tag}`, { type: "run.step", payload: { after: "unsubscribe" } })
          const newHead = r.topic_seqs[topic]!
          await awaitSeqs(watcher, topic, head + 1, newHead)
          // The other subscription of the same connection still flows, the unsubscribed one does not.
          await c.until(() => c.seqs(`user/u-cur-${tag}/runs`).length > userSeqsBefore, 5000, "user topic update")
          await expectOpen(c)
          assert.deepStrictEqual(c.seqs(topic), [])
          head = newHead
        })

        it("Ping ⇒ Pong with the same nonce", async () => {
          const c = await open(main, sp, token)
          for (const nonce of ["", "1", "nönce ✓ 🎉", "x".repeat(200)]) ping(c, nonce)
          await c.until(() => pongs(c).length === 4, 5000, "4 pongs")
          assert.deepStrictEqual(pongs(c), ["", "1", "nönce ✓ 🎉", "x".repeat(200)])
        })
      })
    }
  })
})

// ---------------------------------------------------------------------------------------------
// Retention and epochs: a cluster of its own (compaction and rebuild are database-wide)

describe("retention and epochs", () => {
  let rc: Cluster
  let node: ClusterNode
  const own: Array<WsClient> = []
  const openOn = async (sp: Subprotocol, token: string) => {
    const c = new WsClient(node.ws, sp)
    own.push(c)
    await c.opened
    c.hello(token)
    await c.next("welcome", 5000)
    return c
  }

  beforeAll(async () => {
    rc = await startCluster(1, { retentionMaxEntriesPerTopic: 5, retentionIntervalMs: 3_600_000 })
    node = rc.nodes[0]!
  }, 120_000)
  afterAll(async () => {
    for (const c of own) c.terminate()
    await rc?.close()
  })

  it("after compaction: after_seq < floor − 1 ⇒ stale_cursor{floor_seq = head − 4, head_seq}; floor − 1 ⇒ served", async () => {
    const topic = "run/cmp"
    const head = await appendEvents(node, "cmp", "u-cmp", 9)
    assert.isAtLeast(head, 20)
    const token = await mintToken(node, "u-cmp")
    const { epoch } = await epochOf(node, topic, token)
    const compacted = await httpJson("POST", `${node.http}/internal/v1/khala/compact`, {}, ADMIN_TOKEN)
    assert.strictEqual(compacted.status, 200, JSON.stringify(compacted.body))
    assert.isAtLeast(compacted.body.entries_deleted, head - 5)
    const floor = head - 4
    const snapshot = await epochOf(node, topic, token)
    assert.deepStrictEqual([snapshot.floor_seq, snapshot.head_seq, snapshot.epoch], [floor, head, epoch])

    for (const sp of SUBPROTOCOLS) {
      const c = await openOn(sp, token)
      c.subscribe("old", [{ topic, afterSeq: 2, epoch }])
      c.subscribe("edge", [{ topic, afterSeq: floor - 2, epoch }])
      const es = await awaitErrors(c, 2)
      for (const [e, requestId] of [[es[0]!, "old"], [es[1]!, "edge"]] as const) {
        assert.deepStrictEqual(
          [e.code, e.topic, e.requestId, e.floorSeq, e.headSeq],
          [ErrorCode.STALE_CURSOR, topic, requestId, BigInt(floor), BigInt(head)],
          e.message
        )
      }
      // A fresh start cannot be served from seq 1 any more: the client must bootstrap from a snapshot.
      c.subscribe("fresh", [{ topic }])
      const fresh = (await awaitErrors(c, 3))[2]!
      assert.deepStrictEqual(
        [fresh.code, fresh.topic, fresh.requestId, fresh.floorSeq, fresh.headSeq],
        [ErrorCode.STALE_CURSOR, topic, "fresh", BigInt(floor), BigInt(head)],
        fresh.message
      )
      c.subscribe("ok", [{ topic, afterSeq: floor - 1, epoch }])
      const sub = await c.next("subscribed", 5000)
      assert.deepStrictEqual(
        sub.topics.map((t) => [t.topic, t.epoch, t.floorSeq, t.headSeq]),
        [[topic, epoch, BigInt(floor), BigInt(head)]]
      )
      const caught = await c.next("caughtUp", 5000)
      assert.strictEqual(Number(caught.seq), head)
      assert.deepStrictEqual(c.seqs(topic), range(floor, head))
      await expectOpen(c)
    }
  })

  it("an epoch change (rebuild that cannot keep seqs) ⇒ live subscribers get stale_cursor; the old epoch is stale", async () => {
    const topic = "run/ep"
    const head = await appendEvents(node, "ep", "u-ep", 1)
    const token = await mintToken(node, "u-ep")
    const live: Array<WsClient> = []
    let epoch = ""
    for (const sp of SUBPROTOCOLS) {
      const c = await openOn(sp, token)
      c.subscribe("live", [{ topic }])
      epoch = (await c.next("subscribed", 5000)).topics[0]!.epoch
      await c.next("caughtUp", 5000)
      assert.deepStrictEqual(c.seqs(topic), range(1, head))
      live.push(c)
    }

    // Tamper with the journal so that a rebuild cannot reproduce it: the topic's head moves on
    // (as if entries had been appended and lost), and one journal row goes missing.
    await Effect.runPromise(
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        yield* sql`DELETE FROM runtime.sync_stream_events WHERE topic = ${topic} AND seq = ${head}`
        yield* sql`UPDATE runtime.sync_topic_sequences SET head_seq = head_seq + 3 WHERE topic = ${topic}`
      }).pipe(Effect.provide(PgClient.layer({ url: Redacted.make(rc.databaseUrl), maxConnections: 1 })))
    )
    const rebuilt = await httpJson("POST", `${node.http}/internal/v1/khala/projections/rebuild`, {}, ADMIN_TOKEN)
    assert.strictEqual(rebuilt.status, 200, JSON.stringify(rebuilt.body))
    assert.isTrue(rebuilt.body.epoch_changed)
    assert.notStrictEqual(rebuilt.body.epoch, epoch)
    const newEpoch: string = rebuilt.body.epoch

    for (const c of live) {
      const [e] = await awaitErrors(c, 1, "stale_cursor pushed on the epoch change")
      assert.deepStrictEqual(
        [e!.code, e!.topic, e!.floorSeq, e!.headSeq],
        [ErrorCode.STALE_CURSOR, topic, 1n, BigInt(head)],
        e!.message
      )
      await expectOpen(c)
    }
    // The subscription is over: nothing more is delivered on it.
    const r = await appendRun(node, "ep", { type: "run.step", payload: { after: "rebuild" } })
    const newHead = r.topic_seqs[topic]!
    assert.strictEqual(newHead, head + 2)

    for (const [i, c] of live.entries()) {
      c.subscribe("old", [{ topic, afterSeq: head, epoch }])
      const es = await awaitErrors(c, 2)
      assert.deepStrictEqual(
        [es[1]!.code, es[1]!.topic, es[1]!.requestId, es[1]!.floorSeq, es[1]!.headSeq],
        [ErrorCode.STALE_CURSOR, topic, "old", 1n, BigInt(newHead)],
        es[1]!.message
      )
      assert.deepStrictEqual(c.seqs(topic), range(1, head), `no delivery after the epoch change (client ${i})`)
      c.subscribe("new", [{ topic, afterSeq: head, epoch: newEpoch }])
      const sub = await c.until(() => framesOf(c, "subscribed").some((s) => s.requestId === "new"), 5000, "resubscribed")
        .then(() => framesOf(c, "subscribed").find((s) => s.requestId === "new")!)
      assert.strictEqual(sub.topics[0]!.epoch, newEpoch)
      await awaitSeqs(c, topic, 1, newHead)
    }
  })
})
