/**
 * `khala tail TOPIC`: prints a topic's updates live, through the client SDK (`src/client`), as a
 * client author would see them. Owns the option parsing, the sync URL (`--url`, else
 * ws://$KHALA_HOST:$KHALA_PORT/sync/v1), the token (`--token`, else minted locally with
 * `TokenIssuer` from the configured or development secret, as `khala token mint` does), the start
 * position (`--from`/`--epoch`: a pre-seeded `memoryStore`; without `--epoch` the epoch comes from
 * the snapshot endpoint), the rendering (one line per applied update on stdout; states and
 * connection events on stderr) and the exit codes: 0 after SIGINT/SIGTERM (the client is closed),
 * 1 on a fatal error (forbidden topic, rejected token, …), 64 on usage errors.
 * Reconnects, resume, token refresh and stale-cursor re-bootstrap are the SDK's job.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import type { ClientEvent, DocumentChange, KhalaClientError, KhalaDocument, KhalaTopicError } from "../client/index.ts"
import { parseTopic } from "../domain/Topic.ts"
import { defaultDaemonUrl } from "./AdminCommands.ts"
import { type CliIO, CliError, type Command, EXIT_OK, parseCommandArgs, UsageError } from "./Command.ts"

type Env = Readonly<Record<string, string | undefined>>

/** Subject of the admin token minted when neither `--token` nor `--user` is given. */
export const DEFAULT_TAIL_USER = "khala-tail"

/** Longest rendering of a document in the human output before it is cut with `…`. */
const SHORT_JSON_MAX = 160

export const tailHelp = `Usage: khala tail TOPIC [--from SEQ [--epoch EPOCH]] [--json] [--proto | --json-wire]
                  [--url URL] [--token TOKEN | --user USER_ID [--admin]] [--data-dir DIR]

Prints the updates of TOPIC (run/<id>, worker/<id>, user/<id>/runs, user/<id>/workers) as they
are committed, through the client SDK: first the retained history (or what follows --from), then
live. One line per applied update on stdout:

  <seq> <kind> <doc_key> v<doc_version> <document as short JSON>

or with --json one object per line: {"topic","seq","kind","doc_key","doc_version","document"}
(document in proto3 JSON, as the snapshot endpoint returns it). Connection states, reconnects and
re-bootstraps go to stderr; reconnecting and resuming is the SDK's job. An update whose document
version is not newer than one already applied is not printed (the SDK's apply rule). After a
stale_cursor the topic restarts from a snapshot of its summaries: the entries before the snapshot's
head are not printed.

Runs until SIGINT/SIGTERM (exit 0). Exits 1 on a fatal error (forbidden or invalid topic, a token
the server rejects, an expired --token), 64 on usage errors.

Options:
  --from SEQ         print only updates after SEQ (default: from the first retained entry)
  --epoch EPOCH      the journal epoch SEQ belongs to (default: the topic's current epoch, read
                     from GET /sync/v1/snapshot)
  --json             one JSON object per line
  --proto            use the khala.v1.proto subprotocol (default)
  --json-wire        use the khala.v1.json subprotocol
  --url URL          the sync endpoint (default ws://$KHALA_HOST:$KHALA_PORT/sync/v1 =
                     ws://127.0.0.1:4100/sync/v1); http(s):// URLs and URLs without a path work too
  --token TOKEN      a sync JWT to use as is (it is not renewed)
  --user USER_ID     mint a sync:read token for USER_ID locally (default: a sync:admin token for
                     "${DEFAULT_TAIL_USER}", which may read any topic)
  --admin            mint the token with sync:admin (default without --user)
  --data-dir DIR     where dev-secrets.json is looked up when minting (default $KHALA_DATA_DIR or
                     ./.khala); KHALA_SYNC_JWT_SECRET, KHALA_SYNC_ISSUER, … are used when set
  -h, --help         show this help
`

const tailOptions = {
  from: { type: "string" },
  epoch: { type: "string" },
  json: { type: "boolean" },
  proto: { type: "boolean" },
  "json-wire": { type: "boolean" },
  url: { type: "string" },
  token: { type: "string" },
  user: { type: "string" },
  admin: { type: "boolean" },
  "data-dir": { type: "string" }
} as const

/** A non-negative integer (`--from 0` is the beginning), else `UsageError`. */
const nonNegativeInt = (flag: string, raw: string | undefined): number | undefined => {
  if (raw === undefined) return undefined
  if (!/^[0-9]+$/.test(raw) || !Number.isSafeInteger(Number(raw))) {
    throw new UsageError(`--${flag} must be a non-negative integer, got ${JSON.stringify(raw)}`)
  }
  return Number(raw)
}

/**
 * The WebSocket URL of the sync endpoint: `--url` (ws, wss, http or https; a URL without a path
 * gets `/sync/v1`), else the local daemon from KHALA_HOST/KHALA_PORT.
 */
export const resolveSyncUrl = (raw: string | undefined, env: Env): string => {
  const base = raw ?? defaultDaemonUrl(env)
  let u: URL
  try {
    u = new URL(base)
  } catch {
    throw new UsageError(`--url is not a valid URL: ${JSON.stringify(base)}`)
  }
  if (u.protocol === "http:") u.protocol = "ws:"
  else if (u.protocol === "https:") u.protocol = "wss:"
  else if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new UsageError(`--url must be a ws://, wss://, http:// or https:// URL, got ${JSON.stringify(base)}`)
  }
  if (u.pathname === "" || u.pathname === "/") u.pathname = "/sync/v1"
  u.hash = ""
  return u.toString()
}

// ---------------------------------------------------------------------------------------------
// Tokens

interface TokenSource {
  readonly getToken: () => Promise<string>
  /** A fixed `--token` (cannot be renewed: `token_expired` is fatal). */
  readonly fixed: boolean
  readonly describe: string
}

/**
 * Mints tokens locally through `TokenIssuer` with the configuration read from `env` (as `khala
 * token mint` does). The issuer is built once; every call mints a fresh token, so the SDK's
 * refreshes and reconnects get new lifetimes.
 */
const localMinter = async (env: Env, userId: string, scopes: ReadonlyArray<string>): Promise<() => Promise<string>> => {
  const missingSecret = !env.KHALA_SYNC_JWT_SECRET && !env.KHALA_SYNC_JWKS_URL
  const configEnv: Record<string, string | undefined> = { ...env }
  if (missingSecret) {
    // The secret comes from the daemon's dev secrets. Loading the config would CREATE that file
    // when it is missing, and a token signed with a fresh secret is useless: refuse instead.
    const file = path.resolve(env.KHALA_DATA_DIR || "./.khala", "dev-secrets.json")
    if (env.NODE_ENV === "production" || !fs.existsSync(file)) {
      throw new CliError(
        `cannot mint a token: no KHALA_SYNC_JWT_SECRET and no ${file}; pass --token, set ` +
          "KHALA_SYNC_JWT_SECRET, or point --data-dir/KHALA_DATA_DIR at the daemon's data dir"
      )
    }
  } else {
    // Only the sync secret, issuer, audience and ttl bound matter for minting; fill the daemon's
    // other required secrets so that the config neither reads nor creates dev secrets for them.
    configEnv.KHALA_SERVICE_TOKEN ||= "unused-by-khala-tail"
    configEnv.KHALA_ADMIN_TOKEN ||= "unused-by-khala-tail"
  }
  const { Cause, ConfigProvider, Effect, Exit, Layer, References } = await import("effect")
  const { KhalaConfig } = await import("../layers/Config.ts")
  const { TokenIssuer } = await import("../services/TokenIssuer.ts")
  const run = async <A, E>(effect: import("effect").Effect.Effect<A, E>): Promise<A> => {
    const exit = await Effect.runPromiseExit(effect)
    if (Exit.isSuccess(exit)) return exit.value
    const error = Cause.findErrorOption(exit.cause)
    const message = error._tag === "Some"
      ? (error.value instanceof Error ? error.value.message : String(error.value))
      : Cause.pretty(exit.cause)
    throw new CliError(`cannot mint a token: ${message}`)
  }
  const issuer = await run(
    Effect.gen(function*() {
      return yield* TokenIssuer
    }).pipe(
      Effect.provide(TokenIssuer.layer.pipe(Layer.provide(KhalaConfig.layer))),
      Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnvRecord(configEnv)),
      // the config's "using development secrets" warning is for the daemon's log, not this output
      Effect.provideService(References.MinimumLogLevel, "Error")
    )
  )
  const mint = async () => (await run(issuer.mint({ userId, scopes }))).token
  await mint() // fail now, with the reason, rather than inside the client's reconnect loop
  return mint
}

const resolveToken = async (
  values: { token?: string | undefined; user?: string | undefined; admin?: boolean | undefined },
  env: Env
): Promise<TokenSource> => {
  if (values.token !== undefined) {
    const token = values.token
    if (token === "") throw new UsageError("--token must not be empty")
    return { getToken: async () => token, fixed: true, describe: "the token from --token" }
  }
  const userId = values.user ?? DEFAULT_TAIL_USER
  const scope = values.user === undefined || values.admin === true ? "sync:admin" : "sync:read"
  const getToken = await localMinter(env, userId, [scope])
  return { getToken, fixed: false, describe: `a locally minted ${scope} token for ${userId}` }
}

// ---------------------------------------------------------------------------------------------
// Rendering

const shortJson = (value: unknown): string => {
  const text = JSON.stringify(value) ?? "null"
  return text.length > SHORT_JSON_MAX ? `${text.slice(0, SHORT_JSON_MAX - 1)}…` : text
}

/** Codes and snapshot statuses with which the SDK ends a subscription for good (`onError`). */
const TOPIC_FATAL_CODES: ReadonlySet<string> = new Set(["forbidden_topic", "bad_request", "too_many_subscriptions", "payload_too_large"])
const TOPIC_FATAL_STATUSES: ReadonlySet<number> = new Set([400, 403, 404])

const describeTopicError = (error: KhalaTopicError | KhalaClientError): string => {
  switch (error._tag) {
    case "KhalaServerError":
      return `${error.code}: ${error.message}`
    case "KhalaSnapshotError":
      return error.status === 0
        ? `snapshot of ${error.topic} failed: ${error.message}`
        : `snapshot of ${error.topic} failed (HTTP ${error.status}): ${error.message}`
    case "KhalaClientClosed":
      return "the client was closed"
    default:
      return error.message
  }
}

// ---------------------------------------------------------------------------------------------

/**
 * Runs the tail until `stop` aborts (resolves 0 after closing the client) or a fatal error
 * (throws `CliError`). Exported so that tests can drive it in-process with their own signal.
 */
export const runTail = async (args: ReadonlyArray<string>, io: CliIO, stop: AbortSignal): Promise<number> => {
  const { values, positionals } = parseCommandArgs(args, tailOptions, true)
  if (positionals.length === 0) throw new UsageError("missing TOPIC")
  if (positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[1])}`)
  const topic = positionals[0]!
  if (parseTopic(topic) === undefined) {
    throw new UsageError(
      `invalid topic ${JSON.stringify(topic)} (expected run/<id>, worker/<id>, user/<id>/runs or user/<id>/workers)`
    )
  }
  const from = nonNegativeInt("from", values.from)
  if (values.epoch !== undefined && from === undefined) throw new UsageError("--epoch needs --from")
  if (values.proto === true && values["json-wire"] === true) throw new UsageError("--proto and --json-wire exclude each other")
  if (values.token !== undefined && (values.user !== undefined || values.admin === true)) {
    throw new UsageError("--token excludes --user and --admin (they choose the token to mint)")
  }
  if (values.user === "") throw new UsageError("--user must not be empty")
  const url = resolveSyncUrl(values.url, io.env)
  const env: Env = values["data-dir"] === undefined ? io.env : { ...io.env, KHALA_DATA_DIR: values["data-dir"] }
  const json = values.json === true
  if (stop.aborted) return EXIT_OK

  const client = await import("../client/index.ts")
  const tokens = await resolveToken(values, env)
  const log = (line: string) => io.stderr(`khala tail: ${line}\n`)

  // Where to start: a memoryStore pre-seeded with (epoch, --from); the SDK resumes from it.
  let seed: { epoch: string; afterSeq: number } | undefined
  if (from !== undefined && from > 0) {
    let epoch = values.epoch
    if (epoch === undefined) {
      let snapshot
      try {
        const abortable: typeof fetch = (input, init) => fetch(input, { ...init, signal: stop })
        snapshot = await client.fetchSnapshot(abortable, client.deriveSnapshotUrl(url), topic, await tokens.getToken())
      } catch (e) {
        if (stop.aborted) return EXIT_OK
        const error = e instanceof client.KhalaSnapshotError ? e : undefined
        throw new CliError(
          error === undefined ? `cannot read the epoch of ${topic}: ${String(e)}` : describeTopicError(error)
        )
      }
      epoch = snapshot.epoch
      if (from > snapshot.headSeq) {
        log(`--from ${from} is ahead of the head of ${topic} (${snapshot.headSeq}): expect a stale_cursor re-bootstrap`)
      }
    }
    seed = { epoch, afterSeq: from }
  } else if (values.epoch !== undefined) {
    seed = { epoch: values.epoch, afterSeq: 0 }
  }

  log(`${topic} from ${url} with ${tokens.describe}${from === undefined ? "" : `, after seq ${from}`}`)

  const sdk = client.createKhalaClient({
    url,
    getToken: tokens.getToken,
    subprotocol: values["json-wire"] === true ? client.JSON_SUBPROTOCOL : client.PROTO_SUBPROTOCOL,
    store: client.memoryStore(seed === undefined ? [] : [[topic, seed]]),
    clientId: "khala-tail",
    // a tail only prints: do not keep every event document in memory
    retainEvents: false
  })

  return await new Promise<number>((resolve, reject) => {
    let finished = false
    const finish = (outcome: { readonly code: number } | { readonly fatal: string }) => {
      if (finished) return
      finished = true
      stop.removeEventListener("abort", onStop)
      offState()
      offEvent()
      unsubscribe()
      void sdk.close().then(
        () => ("fatal" in outcome ? reject(new CliError(outcome.fatal)) : resolve(outcome.code)),
        (e: unknown) => reject(e)
      )
    }
    const onStop = () => finish({ code: EXIT_OK })

    const print = (topicName: string, seq: number, doc: KhalaDocument) => {
      const document = client.documentJson(doc)
      io.stdout(
        json
          ? `${JSON.stringify({ topic: topicName, seq, kind: doc.kind, doc_key: doc.docKey, doc_version: doc.docVersion, document })}\n`
          : `${seq} ${doc.kind} ${doc.docKey} v${doc.docVersion} ${shortJson(document)}\n`
      )
    }
    const onChange = (change: DocumentChange) => {
      if (change.type === "upsert") {
        print(change.topic, change.seq, change.document)
      } else {
        log(
          `${change.topic} re-bootstrapped from a snapshot (${change.reason}): ${change.documents.size} summary ` +
            `document(s) at seq ${change.watermark.afterSeq} (epoch ${change.watermark.epoch}); entries up to it are not printed`
        )
      }
    }
    const onEvent = (event: ClientEvent) => {
      switch (event.type) {
        case "connected":
          return log(`connected to ${event.url} (connection ${event.connectionId})`)
        case "subscribed":
          return log(`subscribed ${event.topic}: epoch ${event.epoch}, floor ${event.floorSeq}, head ${event.headSeq}`)
        case "caught_up":
          return log(`caught up at seq ${event.seq}, live`)
        case "disconnected": {
          log(`disconnected (${event.code}${event.reason === "" ? "" : ` ${event.reason}`})${
            event.error === undefined ? "" : `: ${describeTopicError(event.error)}`
          }`)
          const error = event.error
          if (error?._tag === "KhalaServerError" && error.frame === "goodbye") {
            if (error.code === "unauthenticated") {
              return finish({ fatal: `the server rejected ${tokens.describe}: ${error.message}` })
            }
            if (error.code === "token_expired" && tokens.fixed) {
              return finish({ fatal: `the token from --token expired (${error.message}); pass a fresh one` })
            }
          }
          return
        }
        case "reconnect_scheduled":
          return log(`reconnecting in ${event.delayMs} ms (attempt ${event.attempt + 1})`)
        case "token_refreshed":
          return log(`token refreshed, expires ${new Date(event.expiresAtMs).toISOString()}`)
        case "error": {
          const error = event.error
          if (error._tag === "KhalaTokenError") return finish({ fatal: error.message })
          // errors that end the subscription also arrive through onError (fatal); the SDK
          // recovers from the rest (rate_limited, a failed snapshot attempt, …)
          if (error._tag === "KhalaServerError" && error.topic === topic && TOPIC_FATAL_CODES.has(error.code)) return
          if (error._tag === "KhalaSnapshotError" && TOPIC_FATAL_STATUSES.has(error.status)) return
          return log(describeTopicError(error))
        }
        case "state":
        case "rebootstrapped":
          return // printed by the state listener and onChange
      }
    }
    const offState = sdk.onStateChange((state) => log(`state ${state}`))
    const offEvent = sdk.onEvent(onEvent)
    const unsubscribe = sdk.subscribe(topic, {
      onChange,
      onError: (error) => finish({ fatal: `${topic}: ${describeTopicError(error)}` })
    })
    stop.addEventListener("abort", onStop, { once: true })
    if (stop.aborted) onStop()
  })
}

export const tailCommand: Command = {
  name: "tail",
  summary: "Print a topic's updates live (client SDK)",
  help: tailHelp,
  run: async (args, io) => {
    const controller = new AbortController()
    const onSignal = () => controller.abort()
    process.on("SIGINT", onSignal)
    process.on("SIGTERM", onSignal)
    try {
      return await runTail(args, io, controller.signal)
    } finally {
      process.off("SIGINT", onSignal)
      process.off("SIGTERM", onSignal)
    }
  }
}
