/**
 * Outbound's live fast path: a frame goes straight to the socket only when nothing can be ahead of
 * it (the queue is empty and the writer is parked waiting for frames) and the socket buffer is low;
 * otherwise it is queued for the writer. Either way the socket sees frames in offer order.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { Outbound } from "../../src/services/Outbound.ts"

const setup = (limits = { maxBytes: 1000, maxFrames: 100 }) => {
  /** What the socket received, and by which path. */
  const socket: Array<string> = []
  let buffered = 0
  const outbound = new Outbound(limits, {
    bufferedBytes: () => buffered,
    awaitDrain: Effect.void,
    writeNow: (frame) => {
      socket.push(`${frame as string}:direct`)
      return true
    }
  })
  /** The connection's writer: takes everything queued and writes it, in order. */
  const writer = Effect.gen(function*() {
    while (true) {
      const batch = yield* outbound.takeAll
      if (batch === undefined) return
      for (const f of batch.frames) socket.push(`${f as string}:writer`)
    }
  })
  return { outbound, socket, writer, setBuffered: (n: number) => void (buffered = n) }
}

describe("Outbound", () => {
  it.effect("writes directly only while the writer is parked, the queue empty and the socket buffer low", () =>
    Effect.gen(function*() {
      const { outbound, socket, writer, setBuffered } = setup()
      // no writer waiting yet: queued
      assert.isTrue(outbound.offer("a"))
      assert.strictEqual(outbound.depth, 1)
      const fiber = yield* Effect.forkChild(writer, { startImmediately: true })
      yield* Effect.yieldNow
      // parked writer, empty queue: straight to the socket
      assert.isTrue(outbound.offer("b"))
      // socket buffer above half the byte bound: through the writer
      setBuffered(600)
      assert.isTrue(outbound.offer("c"))
      setBuffered(0)
      // right behind a queued frame: never overtakes it
      assert.isTrue(outbound.offer("d"))
      yield* Effect.yieldNow
      yield* Effect.yieldNow
      assert.deepStrictEqual(socket.map((s) => s.split(":")[0]), ["a", "b", "c", "d"])
      assert.deepStrictEqual(socket.slice(0, 3), ["a:writer", "b:direct", "c:writer"])
      outbound.close()
      yield* Fiber.join(fiber)
      assert.isFalse(outbound.offer("e"))
    }))

  it.effect("a failed direct write falls back to the queue", () =>
    Effect.gen(function*() {
      const socket: Array<unknown> = []
      const outbound = new Outbound({ maxBytes: 1000, maxFrames: 100 }, {
        bufferedBytes: () => 0,
        awaitDrain: Effect.void,
        writeNow: () => false
      })
      const fiber = yield* Effect.forkChild(
        Effect.gen(function*() {
          while (true) {
            const batch = yield* outbound.takeAll
            if (batch === undefined) return
            socket.push(...batch.frames)
          }
        }),
        { startImmediately: true }
      )
      assert.isTrue(outbound.offer("x"))
      yield* Effect.yieldNow
      assert.deepStrictEqual(socket, ["x"])
      outbound.close()
      yield* Fiber.join(fiber)
    }))
})
