/**
 * The node's HTTP server: `NodeHttpServer` over an `http.Server` whose WebSocket upgrades are
 * offered first to a handler the sync endpoint registers (`DirectUpgrades`).
 *
 * Why: an upgrade that goes through the Effect HTTP server keeps its request alive for as long as
 * the socket is open — the request fiber, its `ServerRequestImpl` and `IncomingMessage` with the
 * headers, the effect `Socket` and its reader scope, all held by listeners and finalizers that
 * close over the request handler's variables. For a connection that stays open for hours that
 * is a few KB of heap each, for nothing. The direct handler answers `/sync/v1` upgrades from the
 * `upgrade` event itself (the same refusals as the route: 503 when draining, 400 without a
 * supported subprotocol) and hands the `ws` socket to the connection. Requests it does not claim,
 * and every server built without this (tests on `NodeHttpServer.layerTest`), go through the
 * Effect router as before.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Context, type Duration, Effect, Layer } from "effect"
import { createServer, type IncomingMessage } from "node:http"
import type { Socket as NetSocket } from "node:net"
import { selectSubprotocol } from "../../domain/Protocol.ts"

/**
 * Claims an `upgrade` event (true) or leaves it to the Effect HTTP server (false). Runs inside
 * Node's HTTP parser callback, so it must not throw.
 */
export type UpgradeHandler = (request: IncomingMessage, socket: NetSocket, head: Buffer) => boolean

/** The handler slot of a server built by `nodeHttpServer`; empty until the sync endpoint fills it. */
export class DirectUpgrades extends Context.Service<DirectUpgrades, { handler: UpgradeHandler | undefined }>()(
  "khala/layers/http/DirectUpgrades"
) {}

/** Options for `ws` servers (subprotocol choice, read limit, socket class). */
export const webSocketServerOptions = (maxFrameBytes: number) => ({
  handleProtocols: (offered: Set<string>) => selectSubprotocol(offered) ?? false,
  // Frames up to 4× max_frame_bytes are read and answered with payload_too_large (socket stays
  // open); larger ones are refused by ws itself with close code 1009.
  maxPayload: maxFrameBytes * 4,
  perMessageDeflate: false
})

/** `NodeHttpServer.layer` on a server that offers upgrades to `DirectUpgrades` first; provides both. */
export const nodeHttpServer = (options: {
  readonly port: number
  readonly host: string
  readonly gracefulShutdownTimeout: Duration.Input
  readonly maxFrameBytes: number
}) =>
  Layer.unwrap(Effect.sync(() => {
    const direct: DirectUpgrades["Service"] = { handler: undefined }
    const create = () => {
      const server = createServer()
      const emit = server.emit.bind(server) as (event: string | symbol, ...args: Array<unknown>) => boolean
      server.emit = ((event: string | symbol, ...args: Array<unknown>) =>
        (event === "upgrade" && direct.handler !== undefined &&
          direct.handler(args[0] as IncomingMessage, args[1] as NetSocket, args[2] as Buffer)) ||
        emit(event, ...args)) as typeof server.emit
      return server
    }
    return Layer.merge(
      NodeHttpServer.layer(create, {
        port: options.port,
        host: options.host,
        gracefulShutdownTimeout: options.gracefulShutdownTimeout,
        websocket: webSocketServerOptions(options.maxFrameBytes)
      }),
      Layer.succeed(DirectUpgrades, direct)
    )
  }))
