/**
 * Telemetry: OTel traces over OTLP/HTTP when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set — the exporter reads the other `OTEL_*` variables
 * itself. Unset ⇒ no SDK at all, so spans cost only Effect's in-process bookkeeping.
 * Logs: `KHALA_LOG_FORMAT=json` switches to one JSON object per line.
 */
import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Layer, Logger } from "effect"

export const otlpEndpointConfigured = (env: NodeJS.ProcessEnv = process.env) =>
  Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)

export const TracingLive: Layer.Layer<never> = otlpEndpointConfigured()
  ? NodeSdk.layer(() => ({
    resource: { serviceName: process.env.OTEL_SERVICE_NAME ?? "khala", serviceVersion: "0.1.0" },
    spanProcessor: new BatchSpanProcessor(new OTLPTraceExporter())
  }))
  : Layer.empty

export const LoggingLive: Layer.Layer<never> = process.env.KHALA_LOG_FORMAT === "json"
  ? Logger.layer([Logger.consoleJson])
  : Layer.empty
