/**
 * `GET /sync/v1`: the WebSocket endpoint on the daemon's HTTP port. Refuses before the upgrade
 * (no 101) when draining (503) or when no supported subprotocol is offered (400); otherwise
 * upgrades and hands the socket to the connection. The same subprotocol choice is made by the
 * `ws` server's `handleProtocols` (see `webSocketServerOptions`), so both sides agree.
 *
 * Idle connections cost no fiber: the upgrade's reader is acquired in a scope of our own (so the
 * socket outlives the request), the `ws` socket is then read through its `message` events
 * (`startConnection` with a `PushSocketPort`) and the route handler returns. The `ws` object is
 * found through `KhalaWebSocket`, the class `webSocketServerOptions` makes the server use; a
 * server built without those options gets the pulled path (`runConnection` in the request fiber).
 * Connections still open when the route's layer closes are aborted (Goodbye{server_draining},
 * close).
 */
import { Effect, Exit, Fiber, Scope } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { Socket } from "effect/socket"
import type { IncomingMessage } from "node:http"
import type { Socket as NetSocket } from "node:net"
import { WebSocket } from "ws"
import { parseSubprotocolHeader, selectSubprotocol, SUBPROTOCOLS, type Subprotocol } from "../../domain/Protocol.ts"
import type { EncodedFrame } from "../../domain/Protocol.ts"
import {
  type ConnectionHandle,
  connectionDeps,
  type PushSocketPort,
  runConnection,
  type SocketPort,
  startConnection
} from "../../services/Connection.ts"
import { Lifecycle } from "../../services/Lifecycle.ts"
import { json } from "./HttpSupport.ts"

const kKhalaWs = Symbol.for("khala/ws")

/** The server's WebSocket class: records itself on its TCP socket, where the route finds it. */
export class KhalaWebSocket extends WebSocket {
  setSocket(socket: NetSocket, head: Buffer, options: unknown): void {
    ;(socket as unknown as Record<symbol, unknown>)[kKhalaWs] = this
    ;(WebSocket.prototype as unknown as { setSocket: (s: NetSocket, h: Buffer, o: unknown) => void }).setSocket.call(
      this,
      socket,
      head,
      options
    )
  }
}

/** Options for the `ws` server under `NodeHttpServer` (subprotocol choice, read limit, socket class). */
export const webSocketServerOptions = (maxFrameBytes: number) => ({
  handleProtocols: (offered: Set<string>) => selectSubprotocol(offered) ?? false,
  // Frames up to 4× max_frame_bytes are read and answered with payload_too_large (socket stays
  // open); larger ones are refused by ws itself with close code 1009.
  maxPayload: maxFrameBytes * 4,
  perMessageDeflate: false,
  WebSocket: KhalaWebSocket
})

const CLOSE_HANDSHAKE_TIMEOUT_MS = 2_000

const awaitDrain = (sock: NetSocket) =>
  Effect.callback<void>((resume) => {
    // 'drain' is only emitted after a write returned false (writableNeedDrain).
    if (!sock.writableNeedDrain || sock.destroyed) return resume(Effect.void)
    const done = () => resume(Effect.void)
    sock.once("drain", done)
    sock.once("close", done)
    return Effect.sync(() => {
      sock.off("drain", done)
      sock.off("close", done)
    })
  })

/** A peer that never answers the close handshake is dropped (ws would wait 30 s). */
const destroyAfterHandshakeTimeout = (nodeSocket: NetSocket) => {
  const timer = setTimeout(() => nodeSocket.destroy(), CLOSE_HANDSHAKE_TIMEOUT_MS)
  timer.unref()
  nodeSocket.once("close", () => clearTimeout(timer))
}

/** The `ws` socket as a push port: messages arrive as events, writes go straight to `ws.send`. */
class WsPort implements PushSocketPort {
  readonly subprotocol: Subprotocol
  private readonly ws: WebSocket
  private readonly nodeSocket: NetSocket

  constructor(ws: WebSocket, nodeSocket: NetSocket, subprotocol: Subprotocol) {
    this.ws = ws
    this.nodeSocket = nodeSocket
    this.subprotocol = subprotocol
  }

  listen(handlers: { readonly message: (data: Uint8Array | string) => void; readonly closed: () => void }): void {
    this.ws.binaryType = "nodebuffer"
    this.ws.on("message", (data: Buffer, isBinary: boolean) => {
      handlers.message(isBinary ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : data.toString("utf8"))
    })
    this.ws.once("close", handlers.closed)
    // Closed before we listened: the event is gone.
    if (this.ws.readyState >= WebSocket.CLOSING) handlers.closed()
  }

  pause(): void {
    this.ws.pause()
  }

  resume(): void {
    this.ws.resume()
  }

  write(frames: ReadonlyArray<EncodedFrame>): Effect.Effect<void> {
    return Effect.sync(() => {
      if (frames.length === 0) return
      this.nodeSocket.cork()
      try {
        for (const f of frames) this.ws.send(f)
      } finally {
        this.nodeSocket.uncork()
      }
    })
  }

  writeNow(frame: EncodedFrame): boolean {
    if (this.ws.readyState !== WebSocket.OPEN) return false
    this.ws.send(frame)
    return true
  }

  bufferedBytes(): number {
    return this.nodeSocket.writableLength
  }

  get awaitDrain(): Effect.Effect<void> {
    return awaitDrain(this.nodeSocket)
  }

  close(code: number, reason: string): Effect.Effect<void> {
    return Effect.sync(() => {
      this.ws.close(code, reason)
      destroyAfterHandshakeTimeout(this.nodeSocket)
    })
  }

  destroy(): void {
    this.nodeSocket.destroy()
  }
}

export const SyncSocketRoute = HttpRouter.use(Effect.fn(function*(router) {
  const lifecycle = yield* Lifecycle
  // Built once: every connection's fibers run in this context (none keeps the request's).
  const deps = yield* connectionDeps
  const open = new Set<ConnectionHandle>()
  yield* Effect.addFinalizer(() =>
    Effect.forEach([...open], (c) => c.abort, { concurrency: "unbounded", discard: true })
  )

  yield* router.add("GET", "/sync/v1", Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    if (yield* lifecycle.isDraining) {
      return json({ error: { code: "server_draining", message: "this node is draining" } }, 503)
    }
    const subprotocol = selectSubprotocol(parseSubprotocolHeader(req.headers["sec-websocket-protocol"]))
    if (subprotocol === undefined) {
      return json({
        error: { code: "bad_request", message: `offer one of the subprotocols ${SUBPROTOCOLS.join(", ")}` }
      }, 400)
    }
    const nodeSocket = (req.source as IncomingMessage).socket
    // Upgraded and started in a fiber of the route's own (shared) context: what the socket and
    // the connection keep must not include this request's context, which may hold a private copy
    // of the whole service map (`Effect.provideContext` would merge into yet another copy).
    const upgrade = Effect.gen(function*() {
      const socket = yield* req.upgrade
      // The socket lives in this scope, not the request's: closing it closes the socket.
      const scope = Scope.makeUnsafe()
      const reader = yield* Scope.provide(socket.reader, scope).pipe(
        Effect.onError(() => Scope.close(scope, Exit.void))
      )
      const ws = (nodeSocket as unknown as Record<symbol, WebSocket | undefined>)[kKhalaWs]
      if (ws === undefined) return { socket, reader, scope }
      // We read the socket ourselves: the effect reader's buffering listener goes.
      ws.removeAllListeners("message")
      let handle: ConnectionHandle | undefined
      handle = yield* startConnection(
        deps,
        new WsPort(ws, nodeSocket, subprotocol),
        Effect.suspend(() => {
          if (handle !== undefined) open.delete(handle)
          return Scope.close(scope, Exit.void)
        })
      )
      open.add(handle)
      return undefined
    })
    const upgraded = yield* Fiber.join(Effect.runForkWith(deps.context)(upgrade))
    if (upgraded === undefined) return HttpServerResponse.empty()
    const { socket, reader, scope } = upgraded
    // A server without `webSocketServerOptions`: the pulled path, in this request's fiber.
    const writer = yield* socket.writer
    const port: SocketPort = {
      subprotocol,
      pull: reader.pull,
      write: (frames) =>
        Effect.suspend(() => {
          if (frames.length === 0) return Effect.void
          nodeSocket.cork()
          return writer.writeAll(frames as [typeof frames[0], ...typeof frames]).pipe(
            Effect.ensuring(Effect.sync(() => nodeSocket.uncork()))
          )
        }),
      bufferedBytes: () => nodeSocket.writableLength,
      awaitDrain: awaitDrain(nodeSocket),
      close: (code, reason) =>
        writer.write(new Socket.CloseEvent(code, reason)).pipe(
          Effect.ignore,
          Effect.andThen(Effect.sync(() => destroyAfterHandshakeTimeout(nodeSocket)))
        ),
      destroy: () => nodeSocket.destroy()
    }
    yield* runConnection(port).pipe(Effect.ensuring(Scope.close(scope, Exit.void)))
    return HttpServerResponse.empty()
  }).pipe(
    Effect.catchTag("HttpServerError", (e) => Effect.succeed(json({ error: { code: "bad_request", message: e.message } }, 400)))
  ))
}))
