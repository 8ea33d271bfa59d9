/**
 * App wiring: every service layer and every route, composed once. `Main.ts` provides the real
 * config, database and HTTP server; tests provide a test config, a fresh database and a test
 * server. Data flow: command → transaction → projector → journal → topic actor → connection.
 */
import { ByteSize, Effect, Layer } from "effect"
import { HttpIncomingMessage, HttpRouter } from "effect/http"
import { CommandRunner } from "../services/CommandRunner.ts"
import { EventStore } from "../services/EventStore.ts"
import { Idempotency } from "../services/Idempotency.ts"
import { Journal } from "../services/Journal.ts"
import { Lifecycle } from "../services/Lifecycle.ts"
import { ProjectionOps } from "../services/ProjectionOps.ts"
import { Projector } from "../services/Projector.ts"
import { ReadModels } from "../services/ReadModels.ts"
import { RunCommands } from "../services/RunCommands.ts"
import { RunEventBatches } from "../services/RunEventBatches.ts"
import { TokenIssuer } from "../services/TokenIssuer.ts"
import { TokenVerifier } from "../services/TokenVerifier.ts"
import { TopicAccess } from "../services/TopicAccess.ts"
import { WorkerCommands } from "../services/WorkerCommands.ts"
import { WorkerEventBatches } from "../services/WorkerEventBatches.ts"
import { JournalFeedLive } from "../services/JournalFeed.ts"
import { JournalNotifier } from "../services/JournalNotifier.ts"
import { Retention, RetentionJobLive } from "../services/Retention.ts"
import { TopicHub } from "../services/TopicHub.ts"
import { SyncSocketRoute } from "./http/SyncSocket.ts"
import { nodeHttpServer } from "./http/SyncHttpServer.ts"
import { KhalaConfig } from "./Config.ts"
import { ProcessMetricsLive } from "./ProcessMetrics.ts"
import { CommandRoutes } from "./http/CommandRoutes.ts"
import { AdminRoutes, HealthRoutes, MetricsRoute } from "./http/OperatorRoutes.ts"
import { SyncRoutes } from "./http/SyncRoutes.ts"

/** One hub per node: the sync lane's actors, which local commits also hand their entries to. */
const TopicHubLive = TopicHub.layer.pipe(Layer.provide(Journal.layer))

/** Services that need only the database and the config. */
const BaseServices = Layer.mergeAll(
  Journal.layer,
  EventStore.layer,
  Idempotency.layer,
  CommandRunner.layer.pipe(Layer.provide([TopicHubLive, JournalNotifier.layer])),
  ReadModels.layer,
  TopicAccess.layer,
  TokenVerifier.layer,
  TokenIssuer.layer,
  Lifecycle.layer,
  TopicHubLive,
  JournalNotifier.layer,
  Retention.layer
)

/** All services; requires `SqlClient`/`PgClient` and `KhalaConfig`. */
export const ServicesLive = Layer.mergeAll(
  RunCommands.layer.pipe(Layer.provideMerge(RunEventBatches.layer)),
  WorkerCommands.layer.pipe(Layer.provideMerge(WorkerEventBatches.layer)),
  ProjectionOps.layer
).pipe(
  Layer.provideMerge(Projector.layer),
  Layer.provideMerge(BaseServices)
)

/** Background work of a node: the journal listener, the retention job and the process gauges. */
export const BackgroundLive = Layer.mergeAll(JournalFeedLive, RetentionJobLive, ProcessMetricsLive)

export const Routes = Layer.mergeAll(CommandRoutes, SyncRoutes, SyncSocketRoute, HealthRoutes, AdminRoutes, MetricsRoute)

const MaxBodySizeLive = Layer.unwrap(Effect.gen(function*() {
  const c = yield* KhalaConfig
  return Layer.succeed(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(c.maxBodyBytes))
}))

/** The HTTP app on whatever `HttpServer` is provided. */
export const HttpAppLive = HttpRouter.serve(Routes, { disableLogger: true }).pipe(Layer.provide(MaxBodySizeLive))

/** The real listening server from config. */
export const HttpServerLive = Layer.unwrap(Effect.gen(function*() {
  const c = yield* KhalaConfig
  return nodeHttpServer({ port: c.port, host: c.host, gracefulShutdownTimeout: "2 seconds", maxFrameBytes: c.maxFrameBytes })
}))
