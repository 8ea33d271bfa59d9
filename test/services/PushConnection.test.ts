/**
 * `startConnection` with a push socket (the daemon's path: no fiber waits on an idle connection)
 * under the TestClock: Hello → Welcome, Ping → Pong, a heartbeat exactly at the interval, a
 * subscription served live, input over the high-water mark pauses the socket, and a client that
 * goes away releases its lease and its count (`onEnded` runs once). The recording half is the
 * FakeSocket; messages are pushed through `listen` instead of pulled.
 */
import { create } from "@bufbuild/protobuf"
import { assert, describe, layer } from "@effect/vitest"
import { Clock, Effect, Option, Redacted, Ref } from "effect"
import { TestClock } from "effect/testing"
import * as jose from "jose"
import { randomUUID } from "node:crypto"
import { encodeClientFrame, type Subprotocol } from "../../src/domain/Protocol.ts"
import { ClientFrameSchema, HelloSchema, PingSchema } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { testSettings } from "../../src/layers/Config.ts"
import { connectionDeps, type PushSocketPort, startConnection } from "../../src/services/Connection.ts"
import { Lifecycle } from "../../src/services/Lifecycle.ts"
import { RunCommands } from "../../src/services/RunCommands.ts"
import { TopicHub } from "../../src/services/TopicHub.ts"
import { FakeSocket } from "../support/FakeSocket.ts"
import { testServices } from "../support/TestApp.ts"

const settings = testSettings()
const SECRET = new TextEncoder().encode(Redacted.value(Option.getOrThrow(settings.syncJwtSecret)))

const signToken = (sub: string, ttlS: number) =>
  Effect.gen(function*() {
    const nowS = Math.floor((yield* Clock.currentTimeMillis) / 1000)
    return yield* Effect.promise(() =>
      new jose.SignJWT({ scope: "sync:read" })
        .setProtectedHeader({ alg: "HS256", typ: "JWT" })
        .setIssuer(settings.syncIssuer)
        .setAudience(settings.syncAudience)
        .setSubject(sub)
        .setIssuedAt(nowS)
        .setExpirationTime(nowS + ttlS)
        .sign(SECRET)
    )
  })

const settle = Effect.gen(function*() {
  for (let i = 0; i < 20; i++) yield* Effect.yieldNow
})

/** Polls `cond` on the live clock (for state no socket event announces); fails after 5 s. */
const until = (cond: () => boolean, what: string) =>
  Effect.gen(function*() {
    for (let i = 0; i < 1000; i++) {
      if (cond()) return
      yield* TestClock.withLive(Effect.sleep(5))
    }
    return yield* Effect.die(new Error(`timed out waiting for ${what}`))
  })

/** A push port over a FakeSocket (which records what the server writes). */
class FakePushSocket implements PushSocketPort {
  readonly fake: FakeSocket
  readonly subprotocol: Subprotocol
  handlers: { readonly message: (data: Uint8Array | string) => void; readonly closed: () => void } | undefined
  pauses = 0
  resumes = 0
  constructor(subprotocol: Subprotocol) {
    this.fake = new FakeSocket(subprotocol)
    this.subprotocol = subprotocol
  }
  listen(handlers: { readonly message: (data: Uint8Array | string) => void; readonly closed: () => void }) {
    this.handlers = handlers
  }
  pause() {
    this.pauses++
  }
  resume() {
    this.resumes++
  }
  readonly write = (frames: Parameters<FakeSocket["write"]>[0]) => this.fake.write(frames)
  readonly bufferedBytes = () => this.fake.bufferedBytes()
  get awaitDrain() {
    return this.fake.awaitDrain
  }
  readonly close = (code: number, reason: string) => this.fake.close(code, reason)
  readonly destroy = () => this.fake.destroy()
  send(frame: Parameters<typeof create<typeof ClientFrameSchema>>[1]) {
    this.handlers!.message(encodeClientFrame(this.subprotocol, create(ClientFrameSchema, frame)))
  }
}

layer(testServices(), { timeout: "60 seconds" })("startConnection (push socket, TestClock)", (it) => {
  for (const sp of ["khala.v1.proto", "khala.v1.json"] as const) {
    describe(sp, () => {
      it.effect("Hello → Welcome, Ping → Pong, heartbeat at the interval, live delivery; client gone ⇒ lease and count released", () =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          yield* TestClock.setTime(Math.ceil((now + 600_000) / 1000) * 1000)
          const lifecycle = yield* Lifecycle
          const hub = yield* TopicHub
          const before = yield* Ref.get(lifecycle.connections)
          const user = `u-${randomUUID().slice(0, 8)}`
          const runId = `r-${randomUUID().slice(0, 8)}`
          const topic = `run/${runId}`
          yield* RunCommands.use((c) => c.appendEvent(runId, { type: "run.created", owner_user_id: user }, undefined))
          const deps = yield* connectionDeps
          const port = new FakePushSocket(sp)
          let ended = 0
          yield* startConnection(deps, port, Effect.sync(() => void ended++))
          assert.strictEqual(yield* Ref.get(lifecycle.connections), before + 1)

          port.send({ frame: { case: "hello", value: create(HelloSchema, { token: yield* signToken(user, 3600), clientId: "t" }) } })
          yield* port.fake.awaitFrame("welcome", 1)
          port.send({ frame: { case: "ping", value: create(PingSchema, { nonce: "n1" }) } })
          assert.strictEqual((yield* port.fake.awaitFrame("pong", 1)).nonce, "n1")

          yield* TestClock.adjust(settings.heartbeatIntervalMs - 1)
          yield* settle
          assert.strictEqual(port.fake.count("heartbeat"), 0)
          yield* TestClock.adjust(1)
          yield* port.fake.awaitFrame("heartbeat", 1)

          port.send({
            frame: { case: "subscribe", value: { requestId: "s1", cursors: [{ topic, afterSeq: 0n, epoch: "" }] } as never }
          })
          yield* port.fake.awaitFrame("caughtUp", 1)
          const updates = port.fake.count("updates")
          yield* RunCommands.use((c) => c.appendEvent(runId, { type: "run.step", payload: { i: 1 } }, undefined))
          yield* port.fake.awaitFrame("updates", updates + 1)
          const subscribed = (yield* hub.report(1000)).find((r) => r.topic === topic)
          assert.strictEqual(subscribed?.subscribers, 1)

          port.handlers!.closed()
          yield* until(() => ended === 1, "onEnded")
          yield* settle
          assert.strictEqual(yield* Ref.get(lifecycle.connections), before)
          const after = (yield* hub.report(1000)).find((r) => r.topic === topic)
          assert.strictEqual(after?.subscribers ?? 0, 0)
          assert.strictEqual(port.fake.closes.length, 0, "a client that went away is not sent a close")
          // Nothing more fires for it.
          yield* TestClock.adjust(2 * settings.heartbeatIntervalMs)
          yield* settle
          assert.strictEqual(port.fake.count("heartbeat"), 1)
          assert.strictEqual(ended, 1)
        }))

      it.effect("unhandled input over the high-water mark pauses the socket, and resumes it once handled", () =>
        Effect.gen(function*() {
          const deps = yield* connectionDeps
          const port = new FakePushSocket(sp)
          let ended = 0
          yield* startConnection(deps, port, Effect.sync(() => void ended++))
          const user = `u-${randomUUID().slice(0, 8)}`
          const token = yield* signToken(user, 3600)
          // Hello is verified asynchronously: everything pushed meanwhile waits in the inbound buffer.
          port.send({ frame: { case: "hello", value: create(HelloSchema, { token, clientId: "t" }) } })
          const big = "x".repeat(16 * 1024)
          for (let i = 0; i < 5; i++) port.send({ frame: { case: "ping", value: create(PingSchema, { nonce: `${i}${big}` }) } })
          assert.strictEqual(port.pauses, 1)
          yield* port.fake.awaitFrame("welcome", 1)
          yield* until(() => port.resumes === 1, "resume")
          port.handlers!.closed()
          yield* until(() => ended === 1, "onEnded")
        }))
    })
  }
})
