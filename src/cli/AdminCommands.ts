/**
 * The `khala` subcommands that drive a RUNNING daemon's operator plane over HTTP with the admin
 * token: `drift` (POST /internal/v1/khala/projections/drift), `reproject` (POST
 * /internal/v1/khala/projections/rebuild) and `drain` (POST /internal/v1/khala/drain).
 *
 * Owns target resolution (`--url`, else http://$KHALA_HOST:$KHALA_PORT), admin-token resolution
 * (`--admin-token`, else KHALA_ADMIN_TOKEN, else `<KHALA_DATA_DIR>/dev-secrets.json`), the rendering
 * of reports, the progress line on stderr while a request is outstanding, and the exit codes:
 * 0 ok, 2 drift found, 1 on any HTTP or network error (status and error code printed).
 * Response shapes are those of `ProjectionOps` (`DriftReport`, `RebuildReport`).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import type { DriftedEntity, DriftReport, RebuildReport } from "../services/ProjectionOps.ts"
import {
  type CliIO,
  CliError,
  type Command,
  EXIT_DRIFT,
  EXIT_OK,
  jsonLine,
  parseCommandArgs,
  positiveSeconds
} from "./Command.ts"

type Env = Readonly<Record<string, string | undefined>>

const targetOptions = {
  url: { type: "string" },
  "admin-token": { type: "string" },
  "data-dir": { type: "string" },
  timeout: { type: "string" },
  json: { type: "boolean" }
} as const

const targetHelp = `  --url URL            the daemon (default http://$KHALA_HOST:$KHALA_PORT = http://127.0.0.1:4100)
  --admin-token TOKEN  admin token (default $KHALA_ADMIN_TOKEN, else admin_token of
                       <data dir>/dev-secrets.json)
  --data-dir DIR       where dev-secrets.json is looked up (default $KHALA_DATA_DIR or ./.khala)
  --json               print the daemon's JSON response instead of a summary`

/** `http://host:port` of the local daemon from KHALA_HOST/KHALA_PORT (wildcards mean loopback). */
export const defaultDaemonUrl = (env: Env): string => {
  let host = env.KHALA_HOST || "127.0.0.1"
  if (host === "0.0.0.0") host = "127.0.0.1"
  if (host === "::" || host === "[::]") host = "::1"
  if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`
  return `http://${host}:${env.KHALA_PORT || "4100"}`
}

interface Target {
  readonly baseUrl: string
  readonly adminToken: string
  /** Where the token came from, for error messages. */
  readonly tokenSource: string
  readonly timeoutMs: number | undefined
}

const resolveTarget = (
  values: { url?: string | undefined; "admin-token"?: string | undefined; "data-dir"?: string | undefined; timeout?: string | undefined },
  env: Env,
  defaultTimeoutS: number | undefined
): Target => {
  const baseUrl = (values.url ?? defaultDaemonUrl(env)).replace(/\/+$/, "")
  try {
    new URL(baseUrl)
  } catch {
    throw new CliError(`--url is not a valid URL: ${JSON.stringify(baseUrl)}`)
  }
  const timeoutS = positiveSeconds("timeout", values.timeout) ?? defaultTimeoutS
  const timeoutMs = timeoutS === undefined ? undefined : Math.round(timeoutS * 1000)
  if (values["admin-token"]) return { baseUrl, adminToken: values["admin-token"], tokenSource: "--admin-token", timeoutMs }
  if (env.KHALA_ADMIN_TOKEN) return { baseUrl, adminToken: env.KHALA_ADMIN_TOKEN, tokenSource: "KHALA_ADMIN_TOKEN", timeoutMs }
  const file = path.resolve(values["data-dir"] ?? (env.KHALA_DATA_DIR || "./.khala"), "dev-secrets.json")
  let token: unknown
  try {
    token = (JSON.parse(fs.readFileSync(file, "utf8")) as { admin_token?: unknown }).admin_token
  } catch (error) {
    const reason = (error as { code?: unknown }).code === "ENOENT" ? "does not exist" : `is unreadable (${String(error)})`
    throw new CliError(
      `no admin token: pass --admin-token, set KHALA_ADMIN_TOKEN, or point --data-dir/KHALA_DATA_DIR at the ` +
        `daemon's data dir (${file} ${reason})`
    )
  }
  if (typeof token !== "string" || token === "") throw new CliError(`${file} has no admin_token`)
  return { baseUrl, adminToken: token, tokenSource: file, timeoutMs }
}

/**
 * Shows `label` with a spinner and the elapsed seconds on stderr while `work` runs: redrawn every
 * second on a terminal, otherwise one plain line every 10 s (logs stay readable). Nothing is shown
 * for requests that finish within the first second.
 */
const withProgress = async <A>(io: CliIO, label: string, work: Promise<A>): Promise<A> => {
  const started = performance.now()
  const frames = ["|", "/", "-", "\\"]
  let ticks = 0
  let drawn = false
  const timer = setInterval(() => {
    ticks++
    const elapsed = Math.round((performance.now() - started) / 1000)
    if (io.stderrIsTTY) {
      io.stderr(`\r${frames[ticks % frames.length]} ${label}... ${elapsed}s elapsed\x1b[K`)
      drawn = true
    } else if (ticks % 10 === 0) {
      io.stderr(`${label}... ${elapsed}s elapsed\n`)
    }
  }, 1000)
  try {
    return await work
  } finally {
    clearInterval(timer)
    if (drawn) io.stderr("\r\x1b[K")
  }
}

/** POSTs to the admin endpoint; resolves to the parsed JSON body of a 2xx, else throws `CliError`. */
const postAdmin = async (target: Target, route: string): Promise<unknown> => {
  const url = `${target.baseUrl}${route}`
  let response: Response
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { authorization: `Bearer ${target.adminToken}`, accept: "application/json" },
      ...(target.timeoutMs === undefined ? {} : { signal: AbortSignal.timeout(target.timeoutMs) })
    })
  } catch (error) {
    const e = error as { name?: string; message?: string; cause?: { code?: string; message?: string } }
    if (e.name === "TimeoutError") throw new CliError(`POST ${url}: no response within ${target.timeoutMs} ms`)
    const reason = e.cause?.code ?? e.cause?.message ?? e.message ?? String(error)
    throw new CliError(`cannot reach khala at ${target.baseUrl} (${reason}); is the daemon running? (see --url)`)
  }
  const text = await response.text()
  let body: unknown
  try {
    body = text === "" ? undefined : JSON.parse(text)
  } catch {
    body = undefined
  }
  if (!response.ok) {
    const error = (body as { error?: { code?: unknown; message?: unknown } } | undefined)?.error
    const code = typeof error?.code === "string" ? error.code : "unknown_error"
    const message = typeof error?.message === "string" ? error.message : text.slice(0, 500) || response.statusText
    const hint = response.status === 401 ? ` (admin token from ${target.tokenSource})` : ""
    throw new CliError(`POST ${route} failed: HTTP ${response.status} ${code}: ${message}${hint}`)
  }
  if (body === undefined) throw new CliError(`POST ${route}: HTTP ${response.status} without a JSON body`)
  return body
}

const short = (hash: string | null) => (hash === null ? "missing" : hash.slice(0, 12))

const describeDrift = (d: DriftedEntity) => {
  const parts = [`last_seq ${d.last_seq}`]
  if (d.read_model_hash !== d.expected_hash) parts.push(`read model ${short(d.read_model_hash)}`)
  if (d.checkpoint_hash !== d.expected_hash) parts.push(`checkpoint ${short(d.checkpoint_hash)}`)
  if (d.checkpoint_seq !== d.last_seq) parts.push(`checkpoint_seq ${d.checkpoint_seq ?? "missing"}`)
  return `  ${d.entity_kind} ${d.entity_id}: ${parts.join(", ")} (expected ${short(d.expected_hash)})\n`
}

// ---------------------------------------------------------------------------------------------

export const driftCommand: Command = {
  name: "drift",
  summary: "Check projections against the authority history (running daemon)",
  help: `Usage: khala drift [--url URL] [--admin-token TOKEN] [--data-dir DIR] [--timeout SECONDS] [--json]

Asks the running daemon to recompute every run and worker summary from its authority events and
compare it with the stored read model and checkpoint. Exits 0 when nothing drifted, 2 when something
did (so scripts can alert; repair with \`khala reproject\`), 1 on errors.

Options:
${targetHelp}
  --timeout SECONDS    give up after this long (default 300)
  -h, --help           show this help
`,
  run: async (args, io) => {
    const { values } = parseCommandArgs(args, targetOptions)
    const target = resolveTarget(values, io.env, 300)
    const report = await withProgress(io, "checking projections", postAdmin(target, "/internal/v1/khala/projections/drift")) as DriftReport
    if (values.json === true) io.stdout(jsonLine(report))
    else if (report.drifted.length === 0) io.stdout(`checked ${report.checked} entities: no drift\n`)
    else {
      io.stdout(`checked ${report.checked} entities: ${report.drifted.length} drifted\n`)
      for (const d of report.drifted) io.stdout(describeDrift(d))
      io.stdout("repair with `khala reproject`\n")
    }
    return report.drifted.length === 0 ? EXIT_OK : EXIT_DRIFT
  }
}

export const reprojectCommand: Command = {
  name: "reproject",
  summary: "Drop and replay every projection (running daemon)",
  help: `Usage: khala reproject [--url URL] [--admin-token TOKEN] [--data-dir DIR] [--timeout SECONDS] [--json]

Asks the running daemon to rebuild read models, checkpoints and the journal from the authority
events in one transaction (authority writes wait for it). If every retained journal entry comes
back identical the epoch is kept; otherwise a new epoch starts and clients with old cursors get
stale_cursor and re-bootstrap. This can take long: progress is shown on stderr.

Options:
${targetHelp}
  --timeout SECONDS    give up waiting after this long (default: wait until it finishes)
  -h, --help           show this help
`,
  run: async (args, io) => {
    const { values } = parseCommandArgs(args, targetOptions)
    const target = resolveTarget(values, io.env, undefined)
    const report = await withProgress(io, "reprojecting", postAdmin(target, "/internal/v1/khala/projections/rebuild")) as RebuildReport
    if (values.json === true) {
      io.stdout(jsonLine(report))
      return EXIT_OK
    }
    io.stdout(
      `reprojected ${report.runs} runs and ${report.workers} workers: ${report.events} events replayed into ` +
        `${report.journal_entries} journal entries in ${report.duration_ms} ms\n`
    )
    io.stdout(
      report.epoch_changed
        ? `epoch changed to ${report.epoch}: the journal differs, clients with older cursors get stale_cursor\n`
        : `epoch kept (${report.epoch}): the journal came back identical, cursors stay valid\n`
    )
    return EXIT_OK
  }
}

/** Polls `GET /healthz` until the daemon stops answering (it exited), or `timeoutMs` passes. */
const waitUntilGone = async (target: Target, timeoutMs: number): Promise<boolean> => {
  const deadline = performance.now() + timeoutMs
  while (performance.now() < deadline) {
    try {
      await fetch(`${target.baseUrl}/healthz`, { signal: AbortSignal.timeout(1_000) })
    } catch (error) {
      if ((error as { name?: string }).name !== "TimeoutError") return true // refused: the process is gone
    }
    await new Promise((resolve) => setTimeout(resolve, 250))
  }
  return false
}

export const drainCommand: Command = {
  name: "drain",
  summary: "Drain the running daemon: close its connections, then it exits",
  help: `Usage: khala drain [--wait] [--url URL] [--admin-token TOKEN] [--data-dir DIR] [--timeout SECONDS] [--json]

Asks the running daemon to drain, as SIGTERM does: /readyz answers 503 from then on (so load
balancers stop routing to it), new WebSocket connections are refused, open ones get
Goodbye{server_draining} and resume elsewhere, and once they are closed (or after
KHALA_DRAIN_TIMEOUT_MS) the process exits 0. Draining cannot be undone.

Options:
  --wait               wait until the daemon has exited (stops answering HTTP)
${targetHelp}
  --timeout SECONDS    give up after this long (default 30 for the request, 60 with --wait)
  -h, --help           show this help
`,
  run: async (args, io) => {
    const { values } = parseCommandArgs(args, { ...targetOptions, wait: { type: "boolean" } })
    const target = resolveTarget(values, io.env, values.wait === true ? 60 : 30)
    const body = await postAdmin(target, "/internal/v1/khala/drain")
    const status = (body as { status?: unknown }).status ?? "draining"
    if (values.wait === true) {
      const timeoutMs = target.timeoutMs ?? 60_000
      const gone = await withProgress(io, "waiting for the daemon to exit", waitUntilGone(target, timeoutMs))
      if (!gone) throw new CliError(`khala at ${target.baseUrl} is ${status} but still answering after ${timeoutMs} ms`)
      if (values.json === true) io.stdout(jsonLine({ ...(body as object), exited: true }))
      else io.stdout(`khala at ${target.baseUrl} drained and exited\n`)
      return EXIT_OK
    }
    if (values.json === true) io.stdout(jsonLine(body))
    else io.stdout(`khala at ${target.baseUrl} is ${status}; it exits once its connections are closed\n`)
    return EXIT_OK
  }
}
