/**
 * Wire frames: byte-identical to what `ws.send` writes for the same payload (header + payload of
 * an unmasked server frame) at every length class, binary for bytes and text for strings (or
 * their UTF-8 bytes); the
 * one-entry cache hands back the same buffer for the same frame and a new one for another; and a
 * real `ws` client reads what a WsPort writes, in order, with `ws.close` still working afterwards.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { createServer, type AddressInfo } from "node:net"
import * as WsModule from "ws"
import { WebSocket, WebSocketServer } from "ws"
import { Utf8Text } from "../../src/domain/Protocol.ts"
import { buildWireFrame, wireFrame } from "../../src/layers/http/WireFrame.ts"
import { WsPort } from "../../src/layers/http/SyncSocket.ts"

/** ws's frame builder (untyped), as `ws.send` uses it on a server socket. */
const Sender = (WsModule as unknown as { Sender: { frame: (data: Uint8Array, options: object) => Array<Buffer> } }).Sender

const wsBytes = (data: Uint8Array | string): Buffer => {
  const parts = Sender.frame(
    typeof data === "string" ? Buffer.from(data) : data,
    { fin: true, rsv1: false, opcode: typeof data === "string" ? 1 : 2, mask: false, readOnly: false }
  )
  return Buffer.concat(parts)
}

describe("WireFrame", () => {
  it("is byte-identical to ws's own server frame at every length class", () => {
    for (const n of [0, 1, 125, 126, 127, 300, 65_535, 65_536, 70_000]) {
      const bytes = new Uint8Array(n).map((_, i) => i % 251)
      assert.deepStrictEqual(buildWireFrame(bytes), wsBytes(bytes), `binary ${n}`)
      const text = "é".repeat(Math.floor(n / 2)) + "x".repeat(n % 2) // multi-byte UTF-8
      assert.deepStrictEqual(buildWireFrame(text), wsBytes(text), `text ${n}`)
      // Text already in UTF-8 (replay frames cut from a page) is the same text frame.
      assert.deepStrictEqual(buildWireFrame(new Utf8Text(Buffer.from(text, "utf8"))), wsBytes(text), `utf-8 text ${n}`)
    }
  })

  it("builds each frame once for consecutive writes and anew for another frame", () => {
    const a = new Uint8Array([1, 2, 3])
    const b = new Uint8Array([1, 2, 3])
    const wa = wireFrame(a)
    assert.strictEqual(wireFrame(a), wa)
    const wb = wireFrame(b)
    assert.notStrictEqual(wb, wa)
    assert.deepStrictEqual(wb, wa)
    assert.deepStrictEqual(wireFrame("{}"), buildWireFrame("{}"))
    // Binary frames are remembered per frame object: interleaved with JSON (mixed subprotocols
    // on one topic) or written later (behind a backlog), still built once.
    assert.strictEqual(wireFrame(a), wa)
    assert.strictEqual(wireFrame(b), wb)
  })

  const roundTrip = (deflate: boolean) =>
    Effect.gen(function*() {
      const wss = new WebSocketServer({ noServer: true, perMessageDeflate: deflate })
      const server = createServer()
      const ports: Array<WsPort> = []
      server.on("connection", (socket) => {
        socket.once("data", (head) => {
          // Hand the raw HTTP upgrade to ws the way the daemon's `upgrade` event does.
          const text = head.toString("latin1")
          const headers: Record<string, string> = {}
          for (const line of text.split("\r\n").slice(1)) {
            const i = line.indexOf(":")
            if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim()
          }
          const req = { method: "GET", url: "/", headers } as never
          wss.handleUpgrade(req, socket, Buffer.alloc(0), (ws) => ports.push(new WsPort(ws, socket, "khala.v1.json")))
        })
      })
      yield* Effect.promise(() => new Promise<void>((r) => server.listen(0, "127.0.0.1", r)))
      const { port } = server.address() as AddressInfo
      const client = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: deflate })
      const received: Array<string> = []
      const closed = new Promise<number>((resolve) => client.on("close", (code) => resolve(code)))
      client.on("message", (data, isBinary) => received.push(isBinary ? `bin:${[...(data as Buffer)]}` : data.toString()))
      yield* Effect.promise(() => new Promise<void>((r) => client.once("open", () => r())))
      while (ports.length === 0) yield* Effect.promise(() => new Promise((r) => setTimeout(r, 5)))
      const p = ports[0]!
      const big = "x".repeat(70_000)
      const bigBinary = new Uint8Array(70_000).fill(9) // written as header + payload, not copied
      assert.isTrue(p.writeNow("one"))
      yield* p.write([new Uint8Array([7, 8]), "two", big])
      yield* p.write(["three"])
      assert.isTrue(p.writeNow(bigBinary))
      yield* p.write([bigBinary, "four"])
      // Text in UTF-8 bytes, small (one wire frame) and large (header + payload): text messages.
      yield* p.write([new Utf8Text(Buffer.from("fïve", "utf8")), new Utf8Text(Buffer.from(`é${big}`, "utf8"))])
      yield* p.close(1000, "bye")
      const code = yield* Effect.promise(() => closed)
      assert.strictEqual(code, 1000)
      const bigReceived = `bin:${[...bigBinary]}`
      assert.deepStrictEqual(received, ["one", "bin:7,8", "two", big, "three", bigReceived, bigReceived, "four", "fïve", `é${big}`])
      // After close nothing more is written.
      assert.isFalse(p.writeNow("late"))
      server.close()
      wss.close()
    })

  it.effect("a ws client reads what a WsPort writes, in order, and the close handshake still works", () => roundTrip(false))

  // Compression is off in the daemon; were it negotiated, frames must go through ws's sender.
  it.effect("with permessage-deflate negotiated, frames go through ws (compressed), same result", () => roundTrip(true))
})
