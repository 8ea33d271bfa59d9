/**
 * Command routes (SPEC §6): runtime-internal, `Authorization: Bearer <service token>`.
 * Each route adapts the request and calls RunCommands / WorkerCommands.
 */
import { Effect } from "effect"
import { HttpRouter } from "effect/http"
import { RunCommands } from "../../services/RunCommands.ts"
import { RunEventBatches } from "../../services/RunEventBatches.ts"
import { WorkerCommands } from "../../services/WorkerCommands.ts"
import { KhalaConfig } from "../Config.ts"
import { handle, json, queryParam, readJsonBody, renderResult, requireToken } from "./HttpSupport.ts"

export const CommandRoutes = HttpRouter.use(Effect.fn(function*(router) {
  const config = yield* KhalaConfig
  const runs = yield* RunCommands
  const batches = yield* RunEventBatches
  const workers = yield* WorkerCommands

  const service = <E, R>(
    body: Parameters<typeof handle<E, R>>[0]
  ) => handle((req, requestId) => Effect.andThen(requireToken(req, config.serviceToken, "service"), body(req, requestId)))

  const param = (name: string) => Effect.map(HttpRouter.params, (p) => p[name] ?? "")

  yield* router.add("POST", "/internal/v1/runs/:run_id/events", service((req, requestId) =>
    Effect.gen(function*() {
      const body = yield* readJsonBody(req)
      return renderResult(yield* runs.appendEvent(yield* param("run_id"), body, requestId))
    })))
  yield* router.add("POST", "/internal/v1/runs/events/batch", service((req, requestId) =>
    Effect.gen(function*() {
      return renderResult(yield* batches.append(yield* readJsonBody(req), requestId))
    })))
  yield* router.add("GET", "/internal/v1/runs/:run_id", service(() =>
    Effect.gen(function*() {
      return json(yield* runs.get(yield* param("run_id")))
    })))

  yield* router.add("POST", "/internal/v1/codex/workers", service((req, requestId) =>
    Effect.gen(function*() {
      return renderResult(yield* workers.create(yield* readJsonBody(req), requestId))
    })))
  yield* router.add("GET", "/internal/v1/codex/workers", service((req) =>
    Effect.gen(function*() {
      return json(yield* workers.list(queryParam(req, "owner_user_id")))
    })))
  yield* router.add("GET", "/internal/v1/codex/workers/:worker_id", service(() =>
    Effect.gen(function*() {
      return json(yield* workers.get(yield* param("worker_id")))
    })))
  const workerPost = (suffix: string, run: typeof workers.appendEvent) =>
    router.add("POST", `/internal/v1/codex/workers/:worker_id/${suffix}`, service((req, requestId) =>
      Effect.gen(function*() {
        const body = yield* readJsonBody(req)
        return renderResult(yield* run(yield* param("worker_id"), body, requestId))
      })))
  yield* workerPost("events", workers.appendEvent)
  yield* workerPost("heartbeat", workers.heartbeat)
  yield* workerPost("stop", workers.stop)
  yield* workerPost("resume", workers.resume)
}))
