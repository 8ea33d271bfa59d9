/**
 * `GET /sync/v1`: the WebSocket endpoint on the daemon's HTTP port. Refuses before the upgrade
 * (no 101) when draining (503) or when no supported subprotocol is offered (400); otherwise
 * upgrades and hands the socket to `runConnection`. The same subprotocol choice is made by the
 * `ws` server's `handleProtocols` (see `webSocketServerOptions`), so both sides agree.
 */
import { Cause, Effect, Exit, Fiber } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { Socket } from "effect/socket"
import type { IncomingMessage } from "node:http"
import type { Socket as NetSocket } from "node:net"
import { parseSubprotocolHeader, selectSubprotocol, SUBPROTOCOLS } from "../../domain/Protocol.ts"
import { runConnection, type SocketPort } from "../../services/Connection.ts"
import { Lifecycle } from "../../services/Lifecycle.ts"
import { json } from "./HttpSupport.ts"

/** Options for the `ws` server under `NodeHttpServer` (subprotocol choice, read limit). */
export const webSocketServerOptions = (maxFrameBytes: number) => ({
  handleProtocols: (offered: Set<string>) => selectSubprotocol(offered) ?? false,
  // Frames up to 4× max_frame_bytes are read and answered with payload_too_large (socket stays
  // open); larger ones are refused by ws itself with close code 1009.
  maxPayload: maxFrameBytes * 4,
  perMessageDeflate: false
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

export const SyncSocketRoute = HttpRouter.use(Effect.fn(function*(router) {
  const lifecycle = yield* Lifecycle
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
    const socket = yield* req.upgrade
    const writer = yield* socket.writer
    const reader = yield* socket.reader
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
      writeNow: (frame) => {
        const exit = Effect.runSyncExit(writer.write(frame))
        if (Exit.isSuccess(exit)) return true
        // Not written now (the socket is not open, or the write failed): the frame is queued and
        // the writer meets the condition. A write that went asynchronous must not also go out late.
        const async = Cause.squash(exit.cause)
        if (Cause.isAsyncFiberError(async)) Effect.runFork(Fiber.interrupt(async.fiber))
        return false
      },
      bufferedBytes: () => nodeSocket.writableLength,
      awaitDrain: awaitDrain(nodeSocket),
      close: (code, reason) =>
        writer.write(new Socket.CloseEvent(code, reason)).pipe(
          Effect.ignore,
          // A peer that never answers the close handshake is dropped (ws would wait 30 s).
          Effect.andThen(Effect.sync(() => {
            const timer = setTimeout(() => nodeSocket.destroy(), CLOSE_HANDSHAKE_TIMEOUT_MS)
            timer.unref()
            nodeSocket.once("close", () => clearTimeout(timer))
          }))
        ),
      destroy: () => nodeSocket.destroy()
    }
    yield* runConnection(port)
    return HttpServerResponse.empty()
  }).pipe(
    Effect.catchTag("HttpServerError", (e) => Effect.succeed(json({ error: { code: "bad_request", message: e.message } }, 400)))
  ))
}))
