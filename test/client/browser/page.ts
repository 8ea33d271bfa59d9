/**
 * Browser fixture of `test/client/Browser.test.ts`: bundled together with the client SDK
 * (`src/client/index.ts`, the `khala/client` entry point) for the browser and loaded by
 * `index.html`. Exposes `window.khalaTest`, which the test drives through `page.evaluate`: start a
 * client on the browser's own `WebSocket` with `localStorage` watermarks, read what it received,
 * close it; and the Effect API (`makeKhala`) on a second connection. The whole entry point is
 * bundled (it is exposed as `window.khala`), so all of it must evaluate on browser globals alone.
 */
import { Effect } from "effect"
import * as khala from "../../../src/client/index.ts"
import type { ConnectionState, KhalaClient } from "../../../src/client/index.ts"

const { createKhalaClient, documentJson, JSON_SUBPROTOCOL, localStorageStore, makeKhala, memoryStore, PROTO_SUBPROTOCOL } =
  khala

export const WATERMARK_PREFIX = "khala-test:"

export interface StartOptions {
  readonly url: string
  readonly token: string
  readonly topic: string
  readonly wire: "proto" | "json"
}

export interface Received {
  readonly seq: number
  readonly kind: string
  readonly docKey: string
  readonly docVersion: number
  readonly replay: boolean
}

export interface PageStatus {
  readonly state: ConnectionState | "not started"
  readonly states: ReadonlyArray<ConnectionState>
  readonly watermark: { readonly epoch: string; readonly afterSeq: number } | null
  readonly received: ReadonlyArray<Received>
  /** proto3 JSON of the topic's run summary document, if held. */
  readonly summary: unknown
  readonly errors: ReadonlyArray<string>
  /** The raw `localStorage` entry of the topic's watermark. */
  readonly stored: string | null
  /** Node globals visible to the page (must be none). */
  readonly nodeGlobals: ReadonlyArray<string>
}

export interface KhalaTestApi {
  readonly start: (options: StartOptions) => void
  readonly status: () => PageStatus
  readonly awaitSeq: (seq: number) => Promise<void>
  readonly close: () => Promise<void>
  /**
   * The Effect API on its own connection (in-memory watermarks): subscribes, waits until `seq` is
   * applied, and returns the watermark and the number of documents held; the scope closes it.
   */
  readonly effectAwait: (
    options: StartOptions,
    seq: number
  ) => Promise<{ readonly watermark: { readonly epoch: string; readonly afterSeq: number } | null; readonly documents: number }>
}

let client: KhalaClient | undefined
let topic = ""
const states: Array<ConnectionState> = []
const received: Array<Received> = []
const errors: Array<string> = []

const api: KhalaTestApi = {
  start: (options) => {
    if (client !== undefined) throw new Error("already started")
    topic = options.topic
    client = createKhalaClient({
      url: options.url,
      getToken: async () => options.token,
      subprotocol: options.wire === "json" ? JSON_SUBPROTOCOL : PROTO_SUBPROTOCOL,
      store: localStorageStore(WATERMARK_PREFIX),
      clientId: "browser-smoke"
    })
    client.onStateChange((s) => {
      states.push(s)
      document.getElementById("status")!.textContent = s
    })
    client.onEvent((e) => {
      if (e.type === "error") errors.push(`${e.error._tag}: ${e.error.message}`)
    })
    client.subscribe(options.topic, {
      onChange: (change) => {
        if (change.type !== "upsert") return
        const d = change.document
        received.push({ seq: change.seq, kind: d.kind, docKey: d.docKey, docVersion: d.docVersion, replay: change.replay })
      },
      onError: (error) => {
        errors.push(`topic: ${error._tag}: ${error.message}`)
      }
    })
  },
  status: () => {
    const summary = client === undefined
      ? undefined
      : [...client.documents(topic).values()].find((d) => d.kind === "run.summary")
    return {
      state: client?.state ?? "not started",
      states: [...states],
      watermark: client?.watermark(topic) ?? null,
      received: [...received],
      summary: summary === undefined ? null : documentJson(summary),
      errors: [...errors],
      stored: localStorage.getItem(WATERMARK_PREFIX + topic),
      nodeGlobals: ["process", "Buffer", "require", "global"].filter((name) => Reflect.get(globalThis, name) !== undefined)
    }
  },
  awaitSeq: (seq) => client === undefined ? Promise.reject(new Error("not started")) : client.awaitSeq(topic, seq),
  close: async () => {
    await client?.close()
  },
  effectAwait: (options, seq) =>
    Effect.runPromise(
      Effect.gen(function*() {
        const k = yield* makeKhala({
          url: options.url,
          getToken: async () => options.token,
          subprotocol: options.wire === "json" ? JSON_SUBPROTOCOL : PROTO_SUBPROTOCOL,
          store: memoryStore(),
          clientId: "browser-smoke-effect"
        })
        yield* k.subscribe(options.topic)
        yield* k.awaitSeq(options.topic, seq, "15 seconds")
        const watermark = yield* k.watermark(options.topic)
        const documents = yield* k.documents(options.topic)
        return { watermark: watermark ?? null, documents: documents.size }
      }).pipe(Effect.scoped)
    )
}

Reflect.set(globalThis, "khala", khala)
Reflect.set(globalThis, "khalaTest", api)
document.getElementById("status")!.textContent = "ready"
