/**
 * Browser smoke test of the client SDK: `src/client/index.ts` (with the fixture
 * `test/client/browser/page.ts`) bundled by rolldown for the browser (ESM), served with
 * `browser/index.html` from a loopback `node:http` server, and run in Debian's headless Chromium
 * (driven by playwright-core, no browser download) against a real Khala node. The page's client uses
 * the browser's own `WebSocket` and `localStorage`; the test appends run events over HTTP and polls
 * the page until it applied them live. Covers the protobuf and JSON subprotocols, resuming from the
 * `localStorage` watermark after a reload, and the Effect API in the page.
 *
 * Skipped (not failed) when /usr/bin/chromium is missing: `apt-get install chromium` provides it
 * (`.ci/run` tries that, best effort).
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import type { Browser, Page } from "playwright-core"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { appendRun, type Cluster, mintToken, startCluster } from "../support/Cluster.ts"
import type { KhalaTestApi, PageStatus, StartOptions } from "./browser/page.ts"

const CHROMIUM = "/usr/bin/chromium"
const hasChromium = fs.existsSync(CHROMIUM)
const SKIPPED = hasChromium ? "" : ` [skipped: ${CHROMIUM} is not installed; apt-get install chromium]`
if (!hasChromium) console.warn(`test/client/Browser.test.ts:${SKIPPED}`)
const browserIt = it.skipIf(!hasChromium)

const FIXTURES = path.join(import.meta.dirname, "browser")

let dir = ""
let bundleBytes = 0
let server: http.Server | undefined
let pageUrl = ""
let cluster: Cluster | undefined
let browser: Browser | undefined
let page: Page | undefined

/** Bundles the page fixture (and through it the whole `khala/client` entry point) for the browser. */
const bundle = async (outFile: string) => {
  const { build } = await import("rolldown")
  const warnings: Array<string> = []
  await build({
    input: path.join(FIXTURES, "page.ts"),
    platform: "browser",
    output: { format: "esm", file: outFile },
    write: true,
    onLog: (level, log) => {
      if (level === "warn") warnings.push(log.message)
    }
  })
  assert.deepStrictEqual(warnings, [], "bundling for the browser warned")
  const code = fs.readFileSync(outFile, "utf8")
  assert.notMatch(code, /from\s*["']node:|import\(\s*["']node:/, "the browser bundle imports Node modules")
  return Buffer.byteLength(code)
}

const serve = (files: Readonly<Record<string, { readonly file: string; readonly type: string }>>) =>
  new Promise<http.Server>((resolve) => {
    const s = http.createServer((req, res) => {
      const entry = files[new URL(req.url ?? "/", "http://x").pathname]
      if (req.method !== "GET" || entry === undefined) {
        res.writeHead(404).end()
        return
      }
      res.writeHead(200, { "content-type": entry.type, "cache-control": "no-store" })
      res.end(fs.readFileSync(entry.file))
    })
    s.listen(0, "127.0.0.1", () => resolve(s))
  })

beforeAll(async () => {
  if (!hasChromium) return
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "khala-browser-"))
  const bundled = path.join(dir, "page.js")
  bundleBytes = await bundle(bundled)
  server = await serve({
    "/": { file: path.join(FIXTURES, "index.html"), type: "text/html; charset=utf-8" },
    "/page.js": { file: bundled, type: "text/javascript; charset=utf-8" }
  })
  pageUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`
  cluster = await startCluster(1)
  const { chromium } = await import("playwright-core")
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync"
    ]
  })
  page = await browser.newPage()
  page.on("pageerror", (error) => console.error(`page error: ${error.message}`))
}, 120_000)

afterAll(async () => {
  await page?.evaluate(() => khalaTest.close()).catch(() => {})
  await browser?.close().catch(() => {})
  if (server !== undefined) await new Promise((resolve) => server!.close(resolve))
  await cluster?.close()
  if (dir !== "") fs.rmSync(dir, { recursive: true, force: true })
})

/** The page's `window.khalaTest` (call it only inside `page.evaluate` callbacks: they run in the page). */
declare const khalaTest: KhalaTestApi

const open = async () => {
  await page!.goto(pageUrl)
  await page!.waitForFunction(() => "khalaTest" in globalThis, undefined, { timeout: 15_000 })
}

const start = (options: StartOptions) => page!.evaluate((o) => khalaTest.start(o), options)

const status = () => page!.evaluate(() => khalaTest.status())

/** Polls the page's status until `pred` holds (bounded). */
const waitForStatus = async (what: string, pred: (s: PageStatus) => boolean, ms = 15_000): Promise<PageStatus> => {
  const deadline = performance.now() + ms
  for (;;) {
    const s = await status()
    if (pred(s)) return s
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(s)}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}

const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

describe("client SDK in headless Chromium", () => {
  const user = "u-browser"
  const runId = `browser-${crypto.randomBytes(4).toString("hex")}`
  const topic = `run/${runId}`
  let token = ""
  let head = 0

  browserIt(`bundles for the browser, replays, then applies live updates (protobuf)${SKIPPED}`, async () => {
    const node = cluster!.nodes[0]!
    assert.isBelow(bundleBytes, 2_000_000, "bundle size")
    head = (await appendRun(node, runId, { type: "run.created", owner_user_id: user })).topic_seqs[topic]!
    token = await mintToken(node, user)
    await open()
    await start({ url: node.ws, token, topic, wire: "proto" })
    const caughtUp = await waitForStatus("live at the head", (s) => s.state === "live" && s.watermark?.afterSeq === head)
    assert.deepStrictEqual(caughtUp.nodeGlobals, [], "Node globals in the page")

    for (const type of ["run.started", "run.step", "run.step"]) {
      head = (await appendRun(node, runId, { type, payload: { step: type } })).topic_seqs[topic]!
    }
    const s = await waitForStatus(`seq ${head} applied`, (st) => st.watermark?.afterSeq === head && st.stored !== null &&
      (JSON.parse(st.stored) as { afterSeq: number }).afterSeq === head)
    assert.deepStrictEqual(s.received.map((r) => r.seq), range(1, head), "every seq once, in order")
    assert.deepStrictEqual(s.received.map((r) => r.replay), range(1, head).map((seq) => seq <= 2), "replay, then live")
    assert.deepStrictEqual(s.received.at(-1), { seq: head, kind: "run.summary", docKey: `run_summary:${runId}`, docVersion: 4, replay: false })
    assert.include(s.summary as object, { run_id: runId, owner_user_id: user, status: "running", last_event_type: "run.step" })
    assert.strictEqual(s.state, "live")
    assert.deepStrictEqual(s.errors, [])
    assert.deepStrictEqual(JSON.parse(s.stored!), { epoch: s.watermark!.epoch, afterSeq: head }, "localStorage watermark")
  })

  browserIt(`after a reload, resumes from the localStorage watermark (JSON subprotocol)${SKIPPED}`, async () => {
    assert.isAbove(head, 0, "needs the previous test")
    const node = cluster!.nodes[0]!
    await page!.evaluate(() => khalaTest.close())
    await open()
    await start({ url: node.ws, token, topic, wire: "json" })
    const resumed = await waitForStatus("live again", (s) => s.state === "live" && s.watermark?.afterSeq === head)
    assert.deepStrictEqual(resumed.received, [], "nothing replayed: the cursor came from localStorage")
    const next = (await appendRun(node, runId, { type: "run.completed", payload: { late: true } })).topic_seqs[topic]!
    const s = await waitForStatus(`seq ${next}`, (st) => st.watermark?.afterSeq === next)
    assert.deepStrictEqual(s.received.map((r) => [r.seq, r.replay]), range(head + 1, next).map((seq) => [seq, false]))
    assert.deepStrictEqual(s.errors, [])
    head = next
  })

  browserIt(`the Effect API (makeKhala, awaitSeq) works in the page${SKIPPED}`, async () => {
    assert.isAbove(head, 0, "needs the previous tests")
    const node = cluster!.nodes[0]!
    const result = await page!.evaluate(
      ([o, seq]) => khalaTest.effectAwait(o, seq),
      [{ url: node.ws, token, topic, wire: "proto" }, head] as const
    )
    assert.strictEqual(result.watermark?.afterSeq, head)
    assert.isAbove(result.documents, 1)
  })
})
