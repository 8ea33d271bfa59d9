/**
 * Operator plane: liveness/readiness, Prometheus metrics (no token; bind to a private network),
 * and the admin-token operations (projection drift check, drop-and-replay rebuild, drain).
 */
import { Effect, Ref } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"
import { SqlClient } from "effect/sql"
import { apiError } from "../../domain/ApiError.ts"
import { orInternal } from "../../services/CommandRunner.ts"
import { Lifecycle } from "../../services/Lifecycle.ts"
import { ProjectionOps } from "../../services/ProjectionOps.ts"
import { Retention } from "../../services/Retention.ts"
import { TopicHub } from "../../services/TopicHub.ts"

import { KhalaConfig } from "../Config.ts"
import { migrations } from "../Migrations.ts"
import { handle, json, queryParam, requireToken } from "./HttpSupport.ts"

export const HealthRoutes = HttpRouter.use(Effect.fn(function*(router) {
  const sql = yield* SqlClient.SqlClient
  const lifecycle = yield* Lifecycle
  const latestMigration = yield* Effect.map(migrations, (all) => Math.max(0, ...all.map(([id]) => id)))

  yield* router.add("GET", "/healthz", HttpServerResponse.jsonUnsafe({ status: "ok" }))
  yield* router.add("GET", "/readyz", Effect.gen(function*() {
    if (yield* lifecycle.isDraining) return json({ status: "draining" }, 503)
    const applied = yield* sql<{ id: number | null }>`SELECT max(migration_id) AS id FROM runtime.schema_migrations`.pipe(
      Effect.map(([r]) => r?.id ?? 0),
      Effect.timeout("2 seconds"),
      Effect.orElseSucceed(() => -1)
    )
    if (applied === -1) return json({ status: "database_unreachable" }, 503)
    if (applied < latestMigration) return json({ status: "migrations_pending", applied, latest: latestMigration }, 503)
    return json({ status: "ready", migration: applied })
  }))
}))

export const MetricsRoute = PrometheusMetrics.layerHttp({ path: "/metrics" })

export const AdminRoutes = HttpRouter.use(Effect.fn(function*(router) {
  const config = yield* KhalaConfig
  const ops = yield* ProjectionOps
  const lifecycle = yield* Lifecycle
  const hub = yield* TopicHub
  const retention = yield* Retention
  const admin = <E, R>(body: Parameters<typeof handle<E, R>>[0]) =>
    handle((req, requestId) => Effect.andThen(requireToken(req, config.adminToken, "admin"), body(req, requestId)))

  yield* router.add("POST", "/internal/v1/khala/projections/drift", admin(() =>
    Effect.map(orInternal(ops.drift), (report) => json(report))))
  yield* router.add("POST", "/internal/v1/khala/projections/rebuild", admin(() =>
    orInternal(ops.rebuild()).pipe(
      Effect.map((report) => json(report)),
      Effect.catchTag("JournalEntryTooLarge", (e) =>
        Effect.fail(apiError("internal", `an entry of ${e.topic} no longer fits max_frame_bytes (${e.bytes} > ${e.limit})`)))
    )))
  yield* router.add("GET", "/internal/v1/khala/fanout/metrics", admin((req) =>
    Effect.gen(function*() {
      const raw = Number(queryParam(req, "topic_limit") ?? "20")
      const limit = Number.isInteger(raw) && raw >= 0 ? Math.min(raw, 1000) : 20
      const topics = yield* hub.report(limit)
      return json({
        connections: yield* Ref.get(lifecycle.connections),
        active_topics: yield* hub.activeTopics,
        draining: yield* lifecycle.isDraining,
        topics: topics.map((t) => ({
          topic: t.topic,
          subscribers: t.subscribers,
          queue_depth: t.queueDepth,
          head_seq: t.headSeq,
          delivered_frames: t.deliveredFrames,
          delivered_bytes: t.deliveredBytes,
          slow_consumer_evictions: t.evictions
        }))
      })
    })))
  yield* router.add("POST", "/internal/v1/khala/compact", admin(() =>
    Effect.map(orInternal(retention.compact), (report) => json(report))))
  yield* router.add("POST", "/internal/v1/khala/drain", admin(() =>
    Effect.as(lifecycle.requestDrain, json({ status: "draining" }, 202))))
}))
