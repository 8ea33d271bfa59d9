/**
 * Cluster: one fresh database and N Khala nodes over it (each its own ManagedRuntime, pool,
 * listener and ports), plus small HTTP helpers (append run events, mint tokens) for tests that
 * drive real WebSocket clients with real time.
 */
import { afterAll, beforeAll } from "@effect/vitest"
import { Effect, Exit, Layer, ManagedRuntime, Scope } from "effect"
import type { KhalaSettings } from "../../src/layers/Config.ts"
import { acquireDatabaseUrl } from "./TestDatabase.ts"
import { NodeUrl, testNode } from "./TestNode.ts"

export const SERVICE_TOKEN = "test-service-token"
export const ADMIN_TOKEN = "test-admin-token"

export interface ClusterNode {
  readonly http: string
  readonly ws: string
  readonly runtime: ManagedRuntime.ManagedRuntime<NodeUrl, unknown>
  readonly stop: () => Promise<void>
}

export interface Cluster {
  readonly databaseUrl: string
  readonly nodes: Array<ClusterNode>
  readonly startNode: (overrides?: Partial<KhalaSettings>) => Promise<ClusterNode>
  readonly close: () => Promise<void>
}

export const startCluster = async (count: number, overrides: Partial<KhalaSettings> = {}): Promise<Cluster> => {
  const scope = Effect.runSync(Scope.make())
  const databaseUrl = await Effect.runPromise(Scope.provide(acquireDatabaseUrl, scope))
  const nodes: Array<ClusterNode> = []
  const startNode = async (nodeOverrides: Partial<KhalaSettings> = {}) => {
    const runtime = ManagedRuntime.make(testNode(databaseUrl, { ...overrides, ...nodeOverrides }) as Layer.Layer<NodeUrl, unknown>)
    const url = await runtime.runPromise(Effect.gen(function*() {
      return yield* NodeUrl
    }))
    const node: ClusterNode = { ...url, runtime, stop: () => runtime.dispose() }
    nodes.push(node)
    return node
  }
  for (let i = 0; i < count; i++) await startNode()
  return {
    databaseUrl,
    nodes,
    startNode,
    close: async () => {
      for (const n of nodes) await n.stop().catch(() => {})
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  }
}

/**
 * A cluster for the whole test file: started before its tests, closed after them. The value is
 * usable from the tests on (it forwards to the started cluster).
 */
export const clusterForFile = (count: number, overrides: Partial<KhalaSettings> = {}): Cluster => {
  let started: Cluster | undefined
  beforeAll(async () => {
    started = await startCluster(count, overrides)
  }, 120_000)
  afterAll(async () => {
    await started?.close()
  })
  return new Proxy({} as Cluster, {
    get: (_, key) => {
      if (started === undefined) throw new Error("the cluster is used before the file's tests started")
      return started[key as keyof Cluster]
    }
  })
}

export const httpJson = async (
  method: "GET" | "POST",
  url: string,
  body?: unknown,
  token: string | null = SERVICE_TOKEN
): Promise<{ status: number; body: any }> => {
  const res = await fetch(url, {
    method,
    headers: {
      ...(token === null ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { "content-type": "application/json" })
    },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  const text = await res.text()
  return { status: res.status, body: text === "" ? undefined : JSON.parse(text) }
}

export const appendRun = async (node: { http: string }, runId: string, body: Record<string, unknown>) => {
  const res = await httpJson("POST", `${node.http}/internal/v1/runs/${runId}/events`, body)
  if (res.status !== 201 && res.status !== 200) throw new Error(`append failed: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body as { run_id: string; seq: number; topic_seqs: Record<string, number> }
}

export const mintToken = async (
  node: { http: string },
  userId: string,
  scopes: ReadonlyArray<string> = ["sync:read"],
  ttlSeconds?: number
) => {
  const res = await httpJson("POST", `${node.http}/api/sync/token`, {
    user_id: userId,
    scopes,
    ...(ttlSeconds === undefined ? {} : { ttl_seconds: ttlSeconds })
  })
  if (res.status !== 200) throw new Error(`mint failed: ${res.status} ${JSON.stringify(res.body)}`)
  return res.body.token as string
}
