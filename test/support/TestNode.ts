/**
 * TestNode: a complete Khala node (services, journal listener, retention job, HTTP + WebSocket
 * routes) on a real ephemeral port, over a given database URL. Several nodes over one URL make a
 * multi-node cluster. `nodeUrl` yields the node's base URL.
 */
import { PgClient } from "@effect/sql-pg"
import { Context, Effect, Layer, Redacted } from "effect"
import { HttpServer } from "effect/http"
import { BackgroundLive, HttpAppLive, ServicesLive } from "../../src/layers/App.ts"
import { KhalaConfig, type KhalaSettings } from "../../src/layers/Config.ts"
import { DrainLive } from "../../src/layers/Drain.ts"
import { nodeHttpServer } from "../../src/layers/http/SyncHttpServer.ts"
import { runMigrations } from "../../src/layers/Migrations.ts"
import { defaultSettings } from "../../src/layers/Config.ts"

export class NodeUrl extends Context.Service<NodeUrl, { readonly http: string; readonly ws: string }>()("test/NodeUrl") {}

const NodeUrlLive = Layer.effect(
  NodeUrl,
  Effect.gen(function*() {
    const server = yield* HttpServer.HttpServer
    const address = server.address
    const port = "port" in address ? address.port : 0
    return NodeUrl.of({ http: `http://127.0.0.1:${port}`, ws: `ws://127.0.0.1:${port}/sync/v1` })
  })
)

/** One node over `url` (migrations applied by the node itself, idempotently). */
export const testNode = (url: string, overrides: Partial<KhalaSettings> = {}) => {
  const maxFrameBytes = overrides.maxFrameBytes ?? defaultSettings.maxFrameBytes
  const server = nodeHttpServer({ port: 0, host: "127.0.0.1", gracefulShutdownTimeout: "1 second", maxFrameBytes })
  const database = Layer.effectDiscard(runMigrations).pipe(
    Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections: 10 }))
  )
  return Layer.mergeAll(HttpAppLive, NodeUrlLive, DrainLive({ exitProcess: false })).pipe(
    Layer.provideMerge(server),
    Layer.provide(BackgroundLive),
    Layer.provideMerge(ServicesLive),
    Layer.provideMerge(database),
    Layer.provideMerge(KhalaConfig.layerWith(overrides))
  )
}
