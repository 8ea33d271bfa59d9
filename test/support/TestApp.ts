/**
 * TestApp: the real services and HTTP routes on a fresh migrated database and an ephemeral-port
 * test server with a pre-wired HttpClient. Config defaults + fixed test secrets + overrides.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Layer } from "effect"
import { HttpClient, HttpClientRequest } from "effect/http"
import { HttpAppLive, ServicesLive } from "../../src/layers/App.ts"
import { KhalaConfig, type KhalaSettings } from "../../src/layers/Config.ts"
import { TestDatabase } from "./TestDatabase.ts"

export const SERVICE_TOKEN = "test-service-token"
export const ADMIN_TOKEN = "test-admin-token"

/** Services + database + config (no HTTP). */
export const testServices = (overrides: Partial<KhalaSettings> = {}) =>
  ServicesLive.pipe(Layer.provideMerge(TestDatabase), Layer.provideMerge(KhalaConfig.layerWith(overrides)))

/** Services + HTTP app on NodeHttpServer.layerTest (HttpClient targets it). */
export const testApp = (overrides: Partial<KhalaSettings> = {}) =>
  HttpAppLive.pipe(Layer.provideMerge(NodeHttpServer.layerTest), Layer.provideMerge(testServices(overrides)))

/** `token: null` sends no Authorization header. */
export const post = (path: string, body: unknown, token: string | null = SERVICE_TOKEN) => {
  const req = HttpClientRequest.post(path).pipe(HttpClientRequest.bodyJsonUnsafe(body))
  return token === null ? req : req.pipe(HttpClientRequest.bearerToken(token))
}

export const get = (path: string, token: string | null = SERVICE_TOKEN) => {
  const req = HttpClientRequest.get(path)
  return token === null ? req : req.pipe(HttpClientRequest.bearerToken(token))
}

export { HttpClient }
