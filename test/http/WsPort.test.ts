/**
 * WsPort (the `ws` socket as a connection's push port): messages that arrive before the connection
 * listens are kept and handed over first, in order; later ones go straight through; a socket that
 * closed before the connection listened is reported closed at once; any number of waiters for
 * the socket to drain share one listener pair on it.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { EventEmitter } from "node:events"
import type { Socket as NetSocket } from "node:net"
import { WebSocket } from "ws"
import { WsPort } from "../../src/layers/http/SyncSocket.ts"

/** Just what WsPort touches of a `ws` socket. */
class FakeWs extends EventEmitter {
  readyState: number = WebSocket.OPEN
  binaryType = "arraybuffer"
}

const port = (ws: FakeWs) => new WsPort(ws as unknown as WebSocket, {} as NetSocket, "khala.v1.proto")

describe("WsPort", () => {
  it("keeps messages that arrive before the connection listens and hands them over first, in order", () => {
    const ws = new FakeWs()
    const p = port(ws)
    assert.strictEqual(ws.binaryType, "nodebuffer")
    ws.emit("message", Buffer.from([1, 2, 3]), true) // a Hello, sent the moment the socket opened
    ws.emit("message", Buffer.from("text"), false)
    const got: Array<Uint8Array | string> = []
    let closed = 0
    p.listen({ message: (m) => void got.push(m), closed: () => void closed++ })
    ws.emit("message", Buffer.from([4]), true)
    assert.deepStrictEqual(got.map((m) => (typeof m === "string" ? m : [...m])), [[1, 2, 3], "text", [4]])
    assert.strictEqual(closed, 0)
    ws.emit("close")
    assert.strictEqual(closed, 1)
  })

  it("a socket closed before the connection listened is reported closed at once", () => {
    const ws = new FakeWs()
    const p = port(ws)
    ws.readyState = WebSocket.CLOSED
    let closed = 0
    p.listen({ message: () => {}, closed: () => void closed++ })
    assert.strictEqual(closed, 1)
  })

  it.effect("drain waiters share one listener pair on the socket and all resume on drain", () =>
    Effect.gen(function*() {
      const sock = Object.assign(new EventEmitter(), { writableNeedDrain: true, destroyed: false })
      const p = new WsPort(new FakeWs() as unknown as WebSocket, sock as unknown as NetSocket, "khala.v1.proto")
      const fibers = []
      for (let i = 0; i < 20; i++) fibers.push(yield* Effect.forkChild(p.awaitDrain))
      yield* Effect.yieldNow
      assert.strictEqual(sock.listenerCount("drain"), 1)
      assert.strictEqual(sock.listenerCount("close"), 1)
      // An interrupted waiter leaves; the others still resume.
      yield* Fiber.interrupt(fibers[0]!)
      sock.emit("drain")
      for (const f of fibers.slice(1)) yield* Fiber.join(f)
      assert.strictEqual(sock.listenerCount("drain"), 0)
      assert.strictEqual(sock.listenerCount("close"), 0)
      // Nothing to wait for once drained.
      sock.writableNeedDrain = false
      yield* p.awaitDrain
    }))
})
