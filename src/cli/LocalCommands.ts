/**
 * The `khala` subcommands that run in this process against the same layers as the daemon:
 * `serve` (the daemon itself, as `npm start` runs it), `migrate` (the daemon's migrations against
 * DATABASE_URL or the embedded Postgres under KHALA_DATA_DIR) and `token mint` (a sync JWT signed
 * with the configured secret, dev secrets included, through `TokenIssuer`). Configuration comes from
 * the environment through `KhalaConfig.layer`, exactly as for the daemon; Effect logs go to stderr
 * so stdout carries only the command's result. Heavy modules are imported lazily so `--help` and the
 * HTTP commands stay fast.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import {
  type CliIO,
  CliError,
  type Command,
  EXIT_OK,
  jsonLine,
  parseCommandArgs,
  positiveInt,
  UsageError
} from "./Command.ts"

/** Runs an Effect program with config read from `env` and logs on stderr; failures become `CliError`. */
const runEffect = async <A>(
  env: Readonly<Record<string, string | undefined>>,
  build: (effect: typeof import("effect")) => import("effect").Effect.Effect<A, unknown>
): Promise<A> => {
  const effect = await import("effect")
  const { Cause, ConfigProvider, Effect, Exit, Logger } = effect
  const exit = await Effect.runPromiseExit(
    build(effect).pipe(
      Effect.provideService(ConfigProvider.ConfigProvider, ConfigProvider.fromEnvRecord({ ...env })),
      Effect.provideService(Logger.LogToStderr, true)
    )
  )
  if (Exit.isSuccess(exit)) return exit.value
  const error = Cause.findErrorOption(exit.cause)
  if (error._tag === "Some") throw new CliError(describeError(error.value))
  throw new CliError(Cause.pretty(exit.cause))
}

const describeError = (error: unknown): string => {
  if (error instanceof Error) {
    const tag = (error as { _tag?: unknown })._tag
    const message = error.message || String(error)
    return typeof tag === "string" && !message.includes(tag) ? `${tag}: ${message}` : message
  }
  return String(error)
}

const withDataDir = (io: CliIO, dataDir: string | undefined) =>
  dataDir === undefined ? io.env : { ...io.env, KHALA_DATA_DIR: dataDir }

const dataDirOf = (env: Readonly<Record<string, string | undefined>>) => env.KHALA_DATA_DIR || "./.khala"

// ---------------------------------------------------------------------------------------------
// serve

export const serveCommand: Command = {
  name: "serve",
  summary: "Run the daemon (what `npm start` runs)",
  help: `Usage: khala serve [--data-dir DIR] [--host HOST] [--port PORT]

Runs the Khala daemon in the foreground, exactly as \`npm start\` does: applies migrations, then
serves HTTP and WebSocket on KHALA_HOST:KHALA_PORT (default 127.0.0.1:4100). Without DATABASE_URL
it starts an embedded Postgres under KHALA_DATA_DIR/pg (default ./.khala/pg); without configured
tokens it generates development secrets in KHALA_DATA_DIR/dev-secrets.json and logs where.
SIGINT/SIGTERM shut it down cleanly (exit 0).

Options:
  --data-dir DIR   same as KHALA_DATA_DIR
  --host HOST      same as KHALA_HOST
  --port PORT      same as KHALA_PORT
  -h, --help       show this help
`,
  run: async (args) => {
    const { values } = parseCommandArgs(args, {
      "data-dir": { type: "string" },
      host: { type: "string" },
      port: { type: "string" }
    })
    // The daemon reads its configuration from process.env, like `npm start`.
    if (values["data-dir"] !== undefined) process.env.KHALA_DATA_DIR = values["data-dir"]
    if (values.host !== undefined) process.env.KHALA_HOST = values.host
    if (values.port !== undefined) process.env.KHALA_PORT = String(positiveInt("port", values.port))
    const { runDaemon } = await import("../main.ts")
    runDaemon() // exits the process itself (0 after SIGINT/SIGTERM, 1 on a startup failure)
    return new Promise<number>(() => {})
  }
}

// ---------------------------------------------------------------------------------------------
// migrate

/** The pid of a live postgres on `<dataDir>/pg`, if any. */
const liveEmbeddedPostgres = (dataDir: string): number | undefined => {
  let pid: number
  try {
    pid = Number(fs.readFileSync(path.join(dataDir, "pg", "postmaster.pid"), "utf8").split("\n")[0])
  } catch {
    return undefined
  }
  if (!(pid > 0)) return undefined
  try {
    process.kill(pid, 0)
  } catch (error) {
    if ((error as { code?: unknown }).code !== "EPERM") return undefined
  }
  try {
    // A recycled pid that is not a postgres does not count (Linux only; elsewhere trust kill(0)).
    if (!fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").includes("postgres")) return undefined
  } catch {}
  return pid
}

export const migrateCommand: Command = {
  name: "migrate",
  summary: "Apply pending database migrations and exit",
  help: `Usage: khala migrate [--data-dir DIR] [--json]

Applies the daemon's pending migrations (the daemon also applies them on start) to DATABASE_URL, or,
when DATABASE_URL is unset, to the embedded Postgres under KHALA_DATA_DIR/pg (initialised on first
use; refused while a running daemon owns it). Prints the migrations it applied, or "up to date".

Options:
  --data-dir DIR   same as KHALA_DATA_DIR (default ./.khala)
  --json           print {"applied": [...], "latest": "...", "database": "..."}
  -h, --help       show this help
`,
  run: async (args, io) => {
    const { values } = parseCommandArgs(args, { "data-dir": { type: "string" }, json: { type: "boolean" } })
    const env = withDataDir(io, values["data-dir"])
    const external = Boolean(env.DATABASE_URL)
    const dataDir = dataDirOf(env)
    if (!external) {
      const pid = liveEmbeddedPostgres(dataDir)
      if (pid !== undefined) {
        throw new CliError(
          `the embedded Postgres under ${path.resolve(dataDir, "pg")} is in use (postgres pid ${pid}), ` +
            "probably by a running daemon, which applies migrations on start. Stop it first, or set DATABASE_URL."
        )
      }
    }
    const { DatabaseLive } = await import("../layers/Database.ts")
    const { KhalaConfig } = await import("../layers/Config.ts")
    const { migrations, runMigrations } = await import("../layers/Migrations.ts")
    const result = await runEffect(env, ({ Effect, Layer }) =>
      Effect.gen(function*() {
        const applied = yield* runMigrations
        const all = yield* migrations
        const latest = all.reduce<readonly [number, string] | undefined>(
          (max, [id, name]) => (max === undefined || id > max[0] ? [id, name] : max),
          undefined
        )
        return {
          applied: applied.map(([id, name]) => `${id}_${name}`),
          latest: latest === undefined ? null : `${latest[0]}_${latest[1]}`
        }
      }).pipe(Effect.provide(DatabaseLive.pipe(Layer.provide(KhalaConfig.databaseOnlyLayer))))
    )
    const database = external ? "DATABASE_URL" : `embedded Postgres under ${path.resolve(dataDir, "pg")}`
    if (values.json === true) {
      io.stdout(jsonLine({ ...result, database }))
    } else if (result.applied.length === 0) {
      io.stdout(`up to date (latest migration ${result.latest ?? "none"}; ${database})\n`)
    } else {
      io.stdout(`applied ${result.applied.length} migration(s) to ${database}:\n`)
      for (const name of result.applied) io.stdout(`  ${name}\n`)
    }
    return EXIT_OK
  }
}

// ---------------------------------------------------------------------------------------------
// token mint

const tokenHelp = `Usage: khala token mint --user USER_ID [--scope SCOPE]... [--scopes "S1 S2"] [--ttl SECONDS] [--json]

Mints a sync JWT (HS256) locally with the configured KHALA_SYNC_JWT_SECRET, or the development
secret in KHALA_DATA_DIR/dev-secrets.json when none is configured, with the configured issuer and
audience: the same token \`POST /api/sync/token\` returns. No daemon or database is needed.

Options:
  --user USER_ID     the token's subject (required; [A-Za-z0-9._:-]{1,128})
  --scope SCOPE      a scope to grant (sync:read, sync:admin); repeatable; default sync:read
  --scopes "S1 S2"   scopes as one space- or comma-separated list
  --ttl SECONDS      lifetime (default 3600, at most KHALA_TOKEN_MAX_TTL_SECONDS)
  --json             print {"token": "...", "expires_at": "<ISO-8601>"}
  --data-dir DIR     same as KHALA_DATA_DIR (where dev secrets live)
  -h, --help         show this help
`

export const tokenCommand: Command = {
  name: "token",
  summary: "Mint a sync JWT locally (`khala token mint --user U`)",
  help: tokenHelp,
  run: async (args, io) => {
    const { values, positionals } = parseCommandArgs(args, {
      user: { type: "string" },
      scope: { type: "string", multiple: true },
      scopes: { type: "string" },
      ttl: { type: "string" },
      json: { type: "boolean" },
      "data-dir": { type: "string" }
    }, true)
    if (positionals.length === 0) throw new UsageError("missing subcommand (expected `khala token mint`)")
    if (positionals[0] !== "mint") throw new UsageError(`unknown subcommand ${JSON.stringify(positionals[0])}`)
    if (positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[1])}`)
    if (values.user === undefined || values.user === "") throw new UsageError("--user is required")
    const scopes = [...(values.scope ?? []), ...(values.scopes ?? "").split(/[\s,]+/)].filter((s) => s !== "")
    const ttlSeconds = positiveInt("ttl", values.ttl)
    const userId = values.user

    const { KhalaConfig } = await import("../layers/Config.ts")
    const { TokenIssuer } = await import("../services/TokenIssuer.ts")
    const minted = await runEffect(withDataDir(io, values["data-dir"]), ({ Effect, Layer }) =>
      Effect.gen(function*() {
        const issuer = yield* TokenIssuer
        return yield* issuer.mint({
          userId,
          ...(scopes.length > 0 ? { scopes } : {}),
          ...(ttlSeconds === undefined ? {} : { ttlSeconds })
        })
      }).pipe(Effect.provide(TokenIssuer.layer.pipe(Layer.provide(KhalaConfig.layer))))
    )
    if (values.json === true) {
      // Same rendering as POST /api/sync/token (proto3 JSON Timestamp: whole seconds, "Z").
      const { timestampFromMs, TimestampSchema } = await import("@bufbuild/protobuf/wkt")
      const { toJson } = await import("@bufbuild/protobuf")
      io.stdout(jsonLine({ token: minted.token, expires_at: toJson(TimestampSchema, timestampFromMs(minted.expiresAtMs)) }))
    } else {
      io.stdout(`${minted.token}\n`)
    }
    return EXIT_OK
  }
}
