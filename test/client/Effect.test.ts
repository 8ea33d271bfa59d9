/**
 * The Effect API of the client over a scripted fake server: `changes` as a Stream (and its typed
 * failure when the subscription is refused), `awaitSeq` with `AwaitSeqTimeout` on the TestClock,
 * `stateChanges`, and the scope closing the client.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Scope, Stream } from "effect"
import { TestClock } from "effect/testing"
import { makeKhala } from "../../src/client/effect.ts"
import type { KhalaClientOptions } from "../../src/client/client.ts"
import { AwaitSeqTimeout, KhalaServerError } from "../../src/client/errors.ts"
import { ErrorCode } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import {
  caughtUp,
  errorFrame,
  fakeJwt,
  FakeScheduler,
  FakeSocket,
  runSummaryUpdate,
  settle,
  subscribed,
  updates,
  welcome
} from "./support/Fakes.ts"

const options = (): KhalaClientOptions => ({
  url: "ws://fake/sync/v1",
  getToken: async () => fakeJwt({ sub: "u1", exp: 4_000_000_000 }),
  WebSocket: FakeSocket,
  scheduler: new FakeScheduler(),
  random: () => 0.5
})

const settled = Effect.promise(() => settle())

/** Welcome, then answer every pending Subscribe of the current fake socket. */
const serve = (epoch: string) =>
  Effect.gen(function*() {
    yield* settled
    const s = FakeSocket.last()
    if (!s.sent.some((f) => f.case === "hello")) return s
    s.serverSend(welcome())
    yield* settled
    for (const sub of s.subscribes()) {
      s.serverSend(subscribed(sub.requestId, sub.cursors.map((c) => ({ topic: c.topic, epoch }))))
    }
    return s
  })

describe("Effect API", () => {
  it.effect("changes(topic) streams applied documents; awaitSeq succeeds once applied", () =>
    Effect.gen(function*() {
      FakeSocket.reset("open")
      const khala = yield* makeKhala(options())
      const fiber = yield* khala.changes("run/r1").pipe(Stream.take(3), Stream.runCollect, Effect.forkChild)
      yield* settled
      const s = yield* serve("e1")
      s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1), runSummaryUpdate(2, 2), runSummaryUpdate(3, 3)], true))
      s.serverSend(caughtUp("run/r1", 3))
      const changes = yield* Fiber.join(fiber)
      assert.deepStrictEqual(changes.map((c) => (c.type === "upsert" ? c.seq : -1)), [1, 2, 3])
      assert.strictEqual(yield* khala.state, "live")
    }).pipe(Effect.scoped))

  it.effect("awaitSeq fails with a typed AwaitSeqTimeout when the TestClock passes the timeout", () =>
    Effect.gen(function*() {
      FakeSocket.reset("open")
      const khala = yield* makeKhala(options())
      const keep = yield* khala.changes("run/r1").pipe(Stream.runDrain, Effect.forkChild)
      const s = yield* serve("e1")
      s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1)], true))
      yield* khala.awaitSeq("run/r1", 1, "1 second")
      const waiting = yield* khala.awaitSeq("run/r1", 5, "5 seconds").pipe(Effect.flip, Effect.forkChild)
      yield* TestClock.adjust("4 seconds")
      assert.isUndefined(waiting.pollUnsafe())
      yield* TestClock.adjust("1 second")
      const error = yield* Fiber.join(waiting)
      assert.instanceOf(error, AwaitSeqTimeout)
      assert.deepStrictEqual(
        error._tag === "AwaitSeqTimeout" ? [error.topic, error.seq, error.appliedSeq, error.timeoutMs] : [],
        ["run/r1", 5, 1, 5000]
      )
      yield* Fiber.interrupt(keep)
    }).pipe(Effect.scoped))

  it.effect("changes fails with KhalaServerError{forbidden_topic}; stateChanges starts with the current state", () =>
    Effect.gen(function*() {
      FakeSocket.reset("open")
      const khala = yield* makeKhala(options())
      const states = yield* khala.stateChanges.pipe(Stream.take(2), Stream.runCollect, Effect.forkChild)
      const fiber = yield* khala.changes("run/secret").pipe(Stream.runDrain, Effect.flip, Effect.forkChild)
      yield* settled
      const s = FakeSocket.last()
      s.serverSend(welcome())
      yield* settled
      const sub = s.subscribes()[0]!
      s.serverSend(errorFrame(ErrorCode.FORBIDDEN_TOPIC, { topic: "run/secret", requestId: sub.requestId }))
      const error = yield* Fiber.join(fiber)
      assert.instanceOf(error, KhalaServerError)
      assert.strictEqual(error._tag === "KhalaServerError" ? error.code : "", "forbidden_topic")
      assert.deepStrictEqual(yield* Fiber.join(states), ["connecting", "catching_up"])
    }).pipe(Effect.scoped))

  it.effect("subscribe holds a subscription for its scope (awaitSeq, documents), then unsubscribes", () =>
    Effect.gen(function*() {
      FakeSocket.reset("open")
      const khala = yield* makeKhala(options())
      const inner = yield* Scope.make()
      yield* khala.subscribe("run/r1").pipe(Scope.provide(inner))
      const s = yield* serve("e1")
      s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1), runSummaryUpdate(2, 2)], true))
      yield* khala.awaitSeq("run/r1", 2, "1 second")
      assert.strictEqual((yield* khala.documents("run/r1")).get("run_summary:r1")?.docVersion, 2)
      assert.deepStrictEqual(yield* khala.watermark("run/r1"), { epoch: "e1", afterSeq: 2 })
      yield* Scope.close(inner, Exit.void)
      assert.deepStrictEqual(s.unsubscribes().map((u) => u.topics), [["run/r1"]])
      const error = yield* khala.awaitSeq("run/r1", 3, "1 second").pipe(Effect.flip)
      assert.strictEqual(error._tag, "KhalaNotSubscribed")
    }).pipe(Effect.scoped))

  it.effect("closing the scope closes the client", () =>
    Effect.gen(function*() {
      FakeSocket.reset("open")
      const scope = yield* Scope.make()
      const khala = yield* makeKhala(options()).pipe(Scope.provide(scope))
      yield* serve("e1")
      assert.strictEqual(yield* khala.state, "live")
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(yield* khala.state, "closed")
      assert.strictEqual(FakeSocket.last().closedWith?.code, 1000)
    }))
})
