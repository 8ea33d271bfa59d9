/**
 * End-to-end: with `OTEL_EXPORTER_OTLP_ENDPOINT` set, the daemon (`node src/main.ts`, embedded
 * Postgres) exports its traces over OTLP/HTTP. A local HTTP server stands in for the collector
 * and records what arrives at `/v1/traces`; a command's spans (the HTTP command, the group commit,
 * the transaction) must arrive with the configured service name and the command's attributes.
 */
import * as fs from "node:fs"
import { createServer, type IncomingMessage, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { cleanup, startDaemon, stopWith, tempDir, waitReady } from "./Processes.ts"

afterAll(cleanup, 60_000)

const readBody = (req: IncomingMessage) =>
  new Promise<Buffer>((resolve, reject) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => resolve(Buffer.concat(chunks)))
    req.on("error", reject)
  })

/** A stand-in OTLP/HTTP collector: keeps every `/v1/traces` body (JSON or protobuf) as text. */
const startCollector = async () => {
  const received: Array<string> = []
  const server: Server = createServer(async (req, res) => {
    const body = await readBody(req)
    if (req.method === "POST" && req.url === "/v1/traces") received.push(body.toString("latin1"))
    res.writeHead(200, { "content-type": "application/json" })
    res.end("{}")
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received, close: () => server.close() }
}

describe("OTLP trace export", () => {
  it("a command's spans reach the collector with the service name and the command's attributes", async () => {
    const collector = await startCollector()
    const dataDir = tempDir("khala-e2e-otel-")
    const daemon = await startDaemon(dataDir, {
      OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
      OTEL_SERVICE_NAME: "khala-e2e",
      OTEL_BSP_SCHEDULE_DELAY: "200"
    })
    try {
      await waitReady(daemon)
      const secrets = JSON.parse(fs.readFileSync(path.join(dataDir, "dev-secrets.json"), "utf8")) as { service_token: string }
      const res = await fetch(`${daemon.url}/internal/v1/runs/run-otel/events`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${secrets.service_token}`,
          "content-type": "application/json",
          "x-request-id": "req-otel-1"
        },
        body: JSON.stringify({ type: "run.created", owner_user_id: "u-otel" })
      })
      assert.strictEqual(res.status, 201, await res.text())
      const exported = () => collector.received.join("\n")
      // Spans go out in batches (OTEL_BSP_SCHEDULE_DELAY): wait for the transaction's.
      const deadline = performance.now() + 15_000
      const arrived = () => ["Command.run.created", "RunCommands.appendEvent"].every((name) => exported().includes(name))
      while (!arrived() && performance.now() < deadline) {
        await new Promise((r) => setTimeout(r, 100))
      }
      // OTLP/HTTP JSON: resourceSpans → scopeSpans → spans.
      type Attribute = { readonly key: string; readonly value: { readonly stringValue?: string } }
      type Span = { readonly name: string; readonly traceId: string; readonly attributes?: ReadonlyArray<Attribute> }
      type Export = {
        readonly resourceSpans: ReadonlyArray<{
          readonly resource: { readonly attributes: ReadonlyArray<Attribute> }
          readonly scopeSpans: ReadonlyArray<{ readonly spans: ReadonlyArray<Span> }>
        }>
      }
      const exports = collector.received.map((body) => JSON.parse(body) as Export)
      const resources = exports.flatMap((e) => e.resourceSpans)
      const attr = (attributes: ReadonlyArray<Attribute> | undefined, key: string) =>
        attributes?.find((a) => a.key === key)?.value.stringValue
      assert.isNotEmpty(resources)
      for (const r of resources) assert.strictEqual(attr(r.resource.attributes, "service.name"), "khala-e2e")
      const spans = resources.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans))
      const append = spans.find((s) => s.name === "RunCommands.appendEvent")
      assert.isDefined(append, `spans: ${spans.map((s) => s.name).join(", ")}`)
      assert.strictEqual(attr(append!.attributes, "khala.run_id"), "run-otel")
      assert.strictEqual(attr(append!.attributes, "khala.event_type"), "run.created")
      // The transaction's span is in the command's trace.
      const command = spans.find((s) => s.name === "Command.run.created")
      assert.isDefined(command, `spans: ${spans.map((s) => s.name).join(", ")}`)
      assert.strictEqual(command!.traceId, append!.traceId)
    } finally {
      const exit = await stopWith(daemon, "SIGTERM", 20_000)
      collector.close()
      assert.strictEqual(exit?.code, 0, daemon.output())
    }
  }, 90_000)
})
