/**
 * `GET /sync/v1`: the WebSocket endpoint on the daemon's HTTP port. Refuses before the upgrade
 * (no 101) when draining (503) or when no supported subprotocol is offered (400); otherwise
 * upgrades and hands the socket to the connection. The same subprotocol choice is made by the
 * `ws` server's `handleProtocols` (see `webSocketServerOptions`), so both sides agree.
 *
 * On a server built by `nodeHttpServer` (the daemon, test nodes), upgrades are answered from the
 * `upgrade` event (`DirectUpgrades`): no Effect request exists, so none outlives the handshake,
 * and the connection reads the `ws` socket through its `message` events (`startConnection` with
 * a `PushSocketPort`), so an idle connection costs no fiber either. Any other server (tests on
 * `NodeHttpServer.layerTest`) upgrades through this route and runs the pulled path
 * (`runConnection` in the request fiber).
 * Connections still open when the route's layer closes are aborted (Goodbye{server_draining},
 * close).
 */
import { Effect, Exit, Option, Scope } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { Socket } from "effect/socket"
import { type IncomingMessage, STATUS_CODES } from "node:http"
import type { Socket as NetSocket } from "node:net"
import { WebSocket, WebSocketServer } from "ws"
import { parseSubprotocolHeader, selectSubprotocol, SUBPROTOCOLS, type Subprotocol } from "../../domain/Protocol.ts"
import { type EncodedFrame, Utf8Text } from "../../domain/Protocol.ts"
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
import { DirectUpgrades, webSocketServerOptions } from "./SyncHttpServer.ts"
import { writeFrame } from "./WireFrame.ts"

const SYNC_PATH = "/sync/v1"

/**
 * Whether an upgrade may proceed, decided before any 101 on both ways in: refused with 503 while
 * draining, with 400 unless a supported subprotocol is offered; otherwise the subprotocol chosen.
 */
const admit = (
  draining: boolean,
  protocolHeader: string | Array<string> | undefined
): { readonly subprotocol: Subprotocol } | { readonly status: 400 | 503; readonly body: object } => {
  if (draining) return { status: 503, body: { error: { code: "server_draining", message: "this node is draining" } } }
  const subprotocol = selectSubprotocol(parseSubprotocolHeader(protocolHeader))
  return subprotocol !== undefined ? { subprotocol } : {
    status: 400,
    body: { error: { code: "bad_request", message: `offer one of the subprotocols ${SUBPROTOCOLS.join(", ")}` } }
  }
}

const CLOSE_HANDSHAKE_TIMEOUT_MS = 2_000

/** Who waits for each socket to drain: one `drain`/`close` listener pair per socket, however many wait. */
const drainWaiters = new WeakMap<NetSocket, Set<() => void>>()

/**
 * Resolves once the socket's send buffer drained (or it closed). A connection may have several
 * waiters at once (its writer, and a replay per topic waiting for room): they share one listener
 * pair on the socket instead of adding one each (which also tripped Node's max-listeners warning).
 */
const awaitDrain = (sock: NetSocket) =>
  Effect.callback<void>((resume) => {
    // 'drain' is only emitted after a write returned false (writableNeedDrain).
    if (!sock.writableNeedDrain || sock.destroyed) return resume(Effect.void)
    let waiters = drainWaiters.get(sock)
    if (waiters === undefined) {
      const all = new Set<() => void>()
      waiters = all
      drainWaiters.set(sock, all)
      const fire = () => {
        sock.off("drain", fire)
        sock.off("close", fire)
        drainWaiters.delete(sock)
        for (const w of all) w()
      }
      sock.on("drain", fire)
      sock.on("close", fire)
    }
    const done = () => resume(Effect.void)
    waiters.add(done)
    const mine = waiters
    return Effect.sync(() => void mine.delete(done))
  })

/** A peer that never answers the close handshake is dropped (ws would wait 30 s). */
const destroyAfterHandshakeTimeout = (nodeSocket: NetSocket) => {
  const timer = setTimeout(() => nodeSocket.destroy(), CLOSE_HANDSHAKE_TIMEOUT_MS)
  timer.unref()
  nodeSocket.once("close", () => clearTimeout(timer))
}

type PortHandlers = { readonly message: (data: Uint8Array | string) => void; readonly closed: () => void }

/**
 * The `ws` socket as a push port: messages arrive as events; data frames are written to the TCP
 * socket as prebuilt wire frames (`WireFrame`), shared by every subscriber of a delivery. That is
 * what `ws.send` writes too: compression is off (`perMessageDeflate: false`) and nothing but
 * buffers is sent, so ws's sender never queues and frames cannot interleave; close and ping frames
 * still go through ws.
 * It listens from construction: a message that arrives before the connection listens (a client
 * sends Hello the moment the socket opens) is kept and handed over first, never dropped.
 */
export class WsPort implements PushSocketPort {
  readonly subprotocol: Subprotocol
  private readonly ws: WebSocket
  private readonly nodeSocket: NetSocket
  private handlers: PortHandlers | undefined
  private early: Array<Uint8Array | string> | undefined
  /** No extension negotiated (compression is off by config): frames go to the TCP socket as is. */
  private readonly raw: boolean

  constructor(ws: WebSocket, nodeSocket: NetSocket, subprotocol: Subprotocol) {
    this.ws = ws
    this.nodeSocket = nodeSocket
    this.subprotocol = subprotocol
    // With an extension (permessage-deflate) ws's sender may transform and queue frames: then
    // every frame goes through it.
    this.raw = ws.extensions === ""
    ws.binaryType = "nodebuffer"
    ws.on("message", (data: Buffer, isBinary: boolean) => {
      const message = isBinary ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : data.toString("utf8")
      if (this.handlers !== undefined) this.handlers.message(message)
      else (this.early ??= []).push(message)
    })
  }

  listen(handlers: PortHandlers): void {
    this.handlers = handlers
    const early = this.early
    this.early = undefined
    if (early !== undefined) for (const message of early) handlers.message(message)
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
      // ws.send does nothing after close (its callback-less form only counts the bytes).
      if (this.ws.readyState !== WebSocket.OPEN) return
      if (frames.length === 1) {
        this.send(frames[0]!)
        return
      }
      this.nodeSocket.cork()
      try {
        for (const f of frames) this.send(f)
      } finally {
        this.nodeSocket.uncork()
      }
    })
  }

  writeNow(frame: EncodedFrame): boolean {
    if (this.ws.readyState !== WebSocket.OPEN) return false
    this.send(frame)
    return true
  }

  private send(frame: EncodedFrame): void {
    if (this.raw) writeFrame(this.nodeSocket, frame)
    else if (frame instanceof Utf8Text) this.ws.send(frame.bytes, { binary: false })
    else this.ws.send(frame)
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

const ignoreSocketError = () => {}

/**
 * Starts the connection of a directly upgraded socket. A function of its own, so that nothing the
 * connection keeps (its end callback) closes over the upgrade handler's request and headers.
 */
const startDirect = (
  deps: Effect.Success<typeof connectionDeps>,
  open: Set<ConnectionHandle>,
  ws: WebSocket,
  socket: NetSocket,
  subprotocol: Subprotocol
) => {
  // A protocol violation (an over-long frame: close 1009, a bad opcode: 1002) or a socket error:
  // ws closes the connection itself and then emits `close`, which ends ours. Unlistened, the
  // `error` event would be thrown at the process.
  ws.on("error", ignoreSocketError)
  // `ended` covers a connection that ends while it starts (closed before we listened).
  const started: { handle: ConnectionHandle | undefined; ended: boolean } = { handle: undefined, ended: false }
  const onEnded = Effect.sync(() => {
    started.ended = true
    if (started.handle !== undefined) open.delete(started.handle)
    if (ws.readyState === WebSocket.OPEN) ws.close(1000)
  })
  Effect.runForkWith(deps.context)(
    startConnection(deps, new WsPort(ws, socket, subprotocol), onEnded).pipe(
      Effect.tap((handle) =>
        Effect.sync(() => {
          started.handle = handle
          if (!started.ended) open.add(handle)
        })
      )
    )
  )
}

/** Answers an upgrade request with an HTTP error (before any 101) and closes the socket. */
const refuseUpgrade = (socket: NetSocket, status: number, body: object): true => {
  // Node took its own error listener off the socket before the `upgrade` event: a peer that
  // resets instead of reading the answer must not raise an unhandled `error` at the process.
  socket.on("error", ignoreSocketError)
  const text = JSON.stringify(body)
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(text)}\r\nconnection: close\r\n\r\n${text}`
  )
  return true
}

export const SyncSocketRoute = HttpRouter.use(Effect.fn(function*(router) {
  const lifecycle = yield* Lifecycle
  // Built once: every connection's fibers run in this context (none keeps the request's).
  const deps = yield* connectionDeps
  const open = new Set<ConnectionHandle>()
  yield* Effect.addFinalizer(() =>
    Effect.forEach([...open], (c) => c.abort, { concurrency: "unbounded", discard: true })
  )

  // On a server built by `nodeHttpServer`, upgrades to this path are answered from the `upgrade`
  // event itself: nothing of the HTTP request outlives the handshake.
  const direct = yield* Effect.serviceOption(DirectUpgrades)
  if (Option.isSome(direct)) {
    // Connections are tracked (and aborted at shutdown) by `open`, not by ws.
    const wss = new WebSocketServer({
      noServer: true,
      clientTracking: false,
      ...webSocketServerOptions(deps.config.maxFrameBytes)
    })
    direct.value.handler = (request, socket, head) => {
      const url = request.url ?? ""
      const query = url.indexOf("?")
      if ((query < 0 ? url : url.slice(0, query)) !== SYNC_PATH) return false
      try {
        const admitted = admit(lifecycle.drainingNow(), request.headers["sec-websocket-protocol"])
        if ("status" in admitted) return refuseUpgrade(socket, admitted.status, admitted.body)
        // ws answers malformed handshakes (method, key, version) with its own 400.
        wss.handleUpgrade(request, socket, head, (ws) => startDirect(deps, open, ws, socket, admitted.subprotocol))
      } catch (e) {
        // A bug here must not reach Node's HTTP parser: this one socket is dropped.
        socket.destroy()
        Effect.runForkWith(deps.context)(Effect.logError("sync upgrade failed", e))
      }
      return true
    }
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        direct.value.handler = undefined
        wss.close()
      })
    )
  }

  yield* router.add("GET", SYNC_PATH, Effect.gen(function*() {
    const req = yield* HttpServerRequest.HttpServerRequest
    const admitted = admit(yield* lifecycle.isDraining, req.headers["sec-websocket-protocol"])
    if ("status" in admitted) return json(admitted.body, admitted.status)
    const subprotocol = admitted.subprotocol
    const nodeSocket = (req.source as IncomingMessage).socket
    // Not a `nodeHttpServer` (tests on `NodeHttpServer.layerTest`): the pulled path, in this
    // request's fiber.
    const socket = yield* req.upgrade
    const scope = Scope.makeUnsafe()
    const reader = yield* Scope.provide(socket.reader, scope).pipe(Effect.onError(() => Scope.close(scope, Exit.void)))
    const writer = yield* socket.writer
    const port: SocketPort = {
      subprotocol,
      pull: reader.pull,
      write: (frames) =>
        Effect.suspend(() => {
          if (frames.length === 0) return Effect.void
          nodeSocket.cork()
          // The socket writer sends strings as text and bytes as binary: text in UTF-8 goes as a string.
          const sendable = frames.map((f) => (f instanceof Utf8Text ? f.text() : f))
          return writer.writeAll(sendable as [typeof sendable[0], ...typeof sendable]).pipe(
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
