/**
 * KhalaConfig: every setting of SPEC §9/§10, read once from the environment.
 *
 * Services depend on the `KhalaConfig` service, never on `process.env`, so tests build
 * it with `KhalaConfig.layerWith({...})`. Secrets that are not configured are generated
 * once under the data dir (development only; `NODE_ENV=production` refuses to start).
 */
import { Config, Context, Effect, Layer, Option, Redacted, Schema } from "effect"
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

export interface KhalaSettings {
  readonly databaseUrl: Option.Option<Redacted.Redacted<string>>
  readonly dataDir: string
  readonly host: string
  readonly port: number
  readonly production: boolean
  readonly serviceToken: Redacted.Redacted<string>
  readonly adminToken: Redacted.Redacted<string>
  readonly syncJwtSecret: Option.Option<Redacted.Redacted<string>>
  readonly syncJwksUrl: Option.Option<string>
  readonly syncIssuer: string
  readonly syncAudience: string
  readonly authTimeoutMs: number
  readonly heartbeatIntervalMs: number
  readonly workerHeartbeatStaleAfterMs: number
  readonly clockSkewMs: number
  readonly retentionMaxAgeMs: number
  readonly retentionMaxEntriesPerTopic: number
  readonly retentionIntervalMs: number
  readonly maxFrameBytes: number
  readonly maxBodyBytes: number
  readonly outboundQueueMaxBytes: number
  readonly outboundQueueMaxFrames: number
  readonly slowConsumerGraceMs: number
  readonly maxSubscriptions: number
  readonly maxClientFramesPerS: number
  readonly topicIdleTtlMs: number
  readonly topicRingEntries: number
  /** How often each node compares its topic actors' heads with the journal (lost notifications). */
  readonly feedReconcileIntervalMs: number
  /** Bytes of complete replay pages each node caches (0: no cache). */
  readonly replayCacheBytes: number
  readonly drainTimeoutMs: number
  readonly tokenMaxTtlSeconds: number
  readonly dbMaxConnections: number
  /**
   * Server settings of the embedded Postgres (ignored with `DATABASE_URL`): the defaults of
   * `embeddedPostgresDefaults` overridden by `KHALA_EMBEDDED_PG_SETTINGS` ("name=value,…").
   */
  readonly embeddedPgSettings: Readonly<Record<string, string>>
}

export class ConfigurationError extends Schema.TaggedError<ConfigurationError>()("ConfigurationError", {
  message: Schema.String
}) {}

const DAY_MS = 24 * 60 * 60 * 1000

/** Defaults for every non-secret setting (SPEC §10). */
export const defaultSettings = {
  dataDir: "./.khala",
  host: "127.0.0.1",
  port: 4100,
  production: false,
  syncIssuer: "khala",
  syncAudience: "khala-sync",
  authTimeoutMs: 10_000,
  heartbeatIntervalMs: 15_000,
  workerHeartbeatStaleAfterMs: 60_000,
  clockSkewMs: 30_000,
  retentionMaxAgeMs: 7 * DAY_MS,
  retentionMaxEntriesPerTopic: 100_000,
  retentionIntervalMs: 60_000,
  maxFrameBytes: 65_536,
  maxBodyBytes: 1_048_576,
  outboundQueueMaxBytes: 1_048_576,
  outboundQueueMaxFrames: 1024,
  slowConsumerGraceMs: 2_000,
  maxSubscriptions: 128,
  maxClientFramesPerS: 100,
  topicIdleTtlMs: 30_000,
  topicRingEntries: 2048,
  feedReconcileIntervalMs: 2_000,
  replayCacheBytes: 64 * 1024 * 1024,
  drainTimeoutMs: 10_000,
  tokenMaxTtlSeconds: 24 * 60 * 60,
  dbMaxConnections: 10
} as const

const int = (name: string, fallback: number) => Config.Int(name).pipe(Config.withDefault(fallback))

const fromEnv = Config.all({
  databaseUrl: Config.option(Config.Redacted("DATABASE_URL")),
  dataDir: Config.String("KHALA_DATA_DIR").pipe(Config.withDefault(defaultSettings.dataDir)),
  host: Config.String("KHALA_HOST").pipe(Config.withDefault(defaultSettings.host)),
  port: Config.Port("KHALA_PORT").pipe(Config.withDefault(defaultSettings.port)),
  nodeEnv: Config.String("NODE_ENV").pipe(Config.withDefault("development")),
  serviceToken: Config.option(Config.Redacted("KHALA_SERVICE_TOKEN")),
  adminToken: Config.option(Config.Redacted("KHALA_ADMIN_TOKEN")),
  syncJwtSecret: Config.option(Config.Redacted("KHALA_SYNC_JWT_SECRET")),
  syncJwksUrl: Config.option(Config.String("KHALA_SYNC_JWKS_URL")),
  syncIssuer: Config.String("KHALA_SYNC_ISSUER").pipe(Config.withDefault(defaultSettings.syncIssuer)),
  syncAudience: Config.String("KHALA_SYNC_AUDIENCE").pipe(Config.withDefault(defaultSettings.syncAudience)),
  authTimeoutMs: int("KHALA_AUTH_TIMEOUT_MS", defaultSettings.authTimeoutMs),
  heartbeatIntervalMs: int("KHALA_HEARTBEAT_INTERVAL_MS", defaultSettings.heartbeatIntervalMs),
  workerHeartbeatStaleAfterMs: int("KHALA_WORKER_HEARTBEAT_STALE_AFTER_MS", defaultSettings.workerHeartbeatStaleAfterMs),
  clockSkewMs: int("KHALA_CLOCK_SKEW_MS", defaultSettings.clockSkewMs),
  retentionMaxAgeMs: int("KHALA_RETENTION_MAX_AGE_MS", defaultSettings.retentionMaxAgeMs),
  retentionMaxEntriesPerTopic: int("KHALA_RETENTION_MAX_ENTRIES_PER_TOPIC", defaultSettings.retentionMaxEntriesPerTopic),
  retentionIntervalMs: int("KHALA_RETENTION_INTERVAL_MS", defaultSettings.retentionIntervalMs),
  maxFrameBytes: int("KHALA_MAX_FRAME_BYTES", defaultSettings.maxFrameBytes),
  maxBodyBytes: int("KHALA_MAX_BODY_BYTES", defaultSettings.maxBodyBytes),
  outboundQueueMaxBytes: int("KHALA_OUTBOUND_QUEUE_MAX_BYTES", defaultSettings.outboundQueueMaxBytes),
  outboundQueueMaxFrames: int("KHALA_OUTBOUND_QUEUE_MAX_FRAMES", defaultSettings.outboundQueueMaxFrames),
  slowConsumerGraceMs: int("KHALA_SLOW_CONSUMER_GRACE_MS", defaultSettings.slowConsumerGraceMs),
  maxSubscriptions: int("KHALA_MAX_SUBSCRIPTIONS", defaultSettings.maxSubscriptions),
  maxClientFramesPerS: int("KHALA_MAX_CLIENT_FRAMES_PER_S", defaultSettings.maxClientFramesPerS),
  topicIdleTtlMs: int("KHALA_TOPIC_IDLE_TTL_MS", defaultSettings.topicIdleTtlMs),
  topicRingEntries: int("KHALA_TOPIC_RING_ENTRIES", defaultSettings.topicRingEntries),
  feedReconcileIntervalMs: int("KHALA_FEED_RECONCILE_INTERVAL_MS", defaultSettings.feedReconcileIntervalMs),
  replayCacheBytes: int("KHALA_REPLAY_CACHE_BYTES", defaultSettings.replayCacheBytes),
  drainTimeoutMs: int("KHALA_DRAIN_TIMEOUT_MS", defaultSettings.drainTimeoutMs),
  tokenMaxTtlSeconds: int("KHALA_TOKEN_MAX_TTL_SECONDS", defaultSettings.tokenMaxTtlSeconds),
  dbMaxConnections: int("KHALA_DB_MAX_CONNECTIONS", defaultSettings.dbMaxConnections),
  embeddedPgSettingsText: Config.String("KHALA_EMBEDDED_PG_SETTINGS").pipe(Config.withDefault(""))
})

/**
 * The embedded Postgres' own defaults. `shared_buffers`: an eighth of the usable memory, at
 * least Postgres' 128 MiB and at most 1 GiB (shared memory is touched as it is used). With 128 MiB
 * a replay of 100k freshly written entries (~90 MB of journal pages) first had to write out the
 * pages its own load had dirtied: Postgres' CPU for that read 210–270 ms, 150–180 ms with 1 GiB.
 */
export const embeddedPostgresDefaults = (memoryBytes: number): Record<string, string> => {
  const mib = Math.min(1024, Math.max(128, Math.floor(memoryBytes / 8 / 1048576)))
  return { shared_buffers: `${mib}MB` }
}

/**
 * Memory this process may use: the machine's, or less when its cgroup (a container) is limited to
 * less (`process.constrainedMemory()`; 0 or a huge value means no limit).
 */
export const usableMemoryBytes = (): number => {
  const total = os.totalmem()
  const constrained = process.constrainedMemory()
  return constrained > 0 && constrained < total ? constrained : total
}

const embeddedPgSettingsOf = (text: string) =>
  Effect.map(parseEmbeddedPgSettings(text), (given) => ({ ...embeddedPostgresDefaults(usableMemoryBytes()), ...given }))

/**
 * Settings the embedded Postgres' start owns: where it listens (loopback only, with trust
 * authentication) and where its files are. Setting them would expose it or break the daemon.
 */
const RESERVED_EMBEDDED_PG_SETTINGS = new Set([
  "listen_addresses",
  "port",
  "unix_socket_directories",
  "data_directory",
  "config_file",
  "hba_file",
  "ident_file"
])

/**
 * `name=value,name=value` (Postgres setting names, case-insensitive; values may not contain a
 * comma). The settings that decide where the embedded Postgres listens and keeps its files are
 * refused.
 */
export const parseEmbeddedPgSettings = (text: string): Effect.Effect<Record<string, string>, ConfigurationError> =>
  Effect.suspend(() => {
    const settings: Record<string, string> = {}
    for (const item of text.split(",")) {
      if (item.trim() === "") continue
      const eq = item.indexOf("=")
      const name = eq < 0 ? "" : item.slice(0, eq).trim().toLowerCase()
      const value = eq < 0 ? "" : item.slice(eq + 1).trim()
      if (!/^[a-z_][a-z0-9_.]*$/.test(name) || value === "") {
        return Effect.fail(
          new ConfigurationError({ message: `KHALA_EMBEDDED_PG_SETTINGS: "${item.trim()}" is not name=value` })
        )
      }
      if (RESERVED_EMBEDDED_PG_SETTINGS.has(name)) {
        return Effect.fail(
          new ConfigurationError({
            message: `KHALA_EMBEDDED_PG_SETTINGS: ${name} is set by Khala (the embedded Postgres listens on 127.0.0.1 only)`
          })
        )
      }
      settings[name] = value
    }
    return Effect.succeed(settings)
  })

interface DevSecrets {
  readonly service_token: string
  readonly admin_token: string
  readonly sync_jwt_secret: string
}

/**
 * Loads (or creates, mode 0600) `<dataDir>/dev-secrets.json`. Only called outside production
 * for secrets the environment does not provide.
 */
const loadDevSecrets = (dataDir: string) =>
  Effect.try({
    try: () => {
      const file = path.resolve(dataDir, "dev-secrets.json")
      if (fs.existsSync(file)) return { file, created: false, secrets: JSON.parse(fs.readFileSync(file, "utf8")) as DevSecrets }
      fs.mkdirSync(path.dirname(file), { recursive: true })
      const secrets: DevSecrets = {
        service_token: `svc_${crypto.randomBytes(24).toString("base64url")}`,
        admin_token: `adm_${crypto.randomBytes(24).toString("base64url")}`,
        sync_jwt_secret: crypto.randomBytes(48).toString("base64url")
      }
      fs.writeFileSync(file, JSON.stringify(secrets, null, 2) + "\n", { mode: 0o600 })
      return { file, created: true, secrets }
    },
    catch: (cause) => new ConfigurationError({ message: `cannot read or create dev secrets: ${String(cause)}` })
  })

export class KhalaConfig extends Context.Service<KhalaConfig, KhalaSettings>()("khala/layers/KhalaConfig") {
  /** Reads the environment; generates dev secrets when allowed. */
  static readonly layer = Layer.effect(
    KhalaConfig,
    Effect.gen(function*() {
      const env = yield* fromEnv
      const production = env.nodeEnv === "production"
      const missing = [
        Option.isNone(env.serviceToken) ? "KHALA_SERVICE_TOKEN" : undefined,
        Option.isNone(env.adminToken) ? "KHALA_ADMIN_TOKEN" : undefined,
        Option.isNone(env.syncJwtSecret) && Option.isNone(env.syncJwksUrl) ? "KHALA_SYNC_JWT_SECRET" : undefined
      ].filter((x): x is string => x !== undefined)
      let serviceToken = env.serviceToken
      let adminToken = env.adminToken
      let syncJwtSecret = env.syncJwtSecret
      if (missing.length > 0) {
        if (production) {
          return yield* new ConfigurationError({
            message: `NODE_ENV=production requires explicit secrets; missing: ${missing.join(", ")}`
          })
        }
        const dev = yield* loadDevSecrets(env.dataDir)
        yield* Effect.logWarning(
          `${dev.created ? "generated" : "using"} development secrets for ${missing.join(", ")} in ${dev.file}`
        )
        serviceToken = Option.orElse(serviceToken, () => Option.some(Redacted.make(dev.secrets.service_token)))
        adminToken = Option.orElse(adminToken, () => Option.some(Redacted.make(dev.secrets.admin_token)))
        if (Option.isNone(env.syncJwksUrl)) {
          syncJwtSecret = Option.orElse(syncJwtSecret, () => Option.some(Redacted.make(dev.secrets.sync_jwt_secret)))
        }
      }
      if (Option.isSome(syncJwtSecret) && Buffer.byteLength(Redacted.value(syncJwtSecret.value), "utf8") < 32) {
        return yield* new ConfigurationError({ message: "KHALA_SYNC_JWT_SECRET must be at least 32 bytes" })
      }
      const { nodeEnv: _nodeEnv, embeddedPgSettingsText, ...rest } = env
      return KhalaConfig.of({
        ...rest,
        embeddedPgSettings: yield* embeddedPgSettingsOf(embeddedPgSettingsText),
        production,
        serviceToken: Option.getOrThrow(serviceToken),
        adminToken: Option.getOrThrow(adminToken),
        syncJwtSecret
      })
    })
  )

  /**
   * The environment's settings for a tool that only uses the database (`khala migrate`): secrets
   * are neither required (also under NODE_ENV=production) nor generated; the secret fields hold
   * random values nothing was ever given, and nothing here serves requests.
   */
  static readonly databaseOnlyLayer = Layer.effect(
    KhalaConfig,
    Effect.gen(function*() {
      const { nodeEnv, embeddedPgSettingsText, ...rest } = yield* fromEnv
      const unusable = () => Redacted.make(crypto.randomBytes(32).toString("base64url"))
      return KhalaConfig.of({
        ...rest,
        embeddedPgSettings: yield* embeddedPgSettingsOf(embeddedPgSettingsText),
        production: nodeEnv === "production",
        serviceToken: Option.getOrElse(rest.serviceToken, unusable),
        adminToken: Option.getOrElse(rest.adminToken, unusable),
        syncJwtSecret: rest.syncJwtSecret
      })
    })
  )

  /** A fully specified config for tests: defaults plus fixed secrets plus overrides. */
  static readonly layerWith = (overrides: Partial<KhalaSettings> = {}) =>
    Layer.succeed(KhalaConfig, KhalaConfig.of(testSettings(overrides)))
}

export const testSettings = (overrides: Partial<KhalaSettings> = {}): KhalaSettings => ({
  ...defaultSettings,
  databaseUrl: Option.none(),
  serviceToken: Redacted.make("test-service-token"),
  adminToken: Redacted.make("test-admin-token"),
  syncJwtSecret: Option.some(Redacted.make("test-sync-secret-0123456789abcdef0123456789")),
  syncJwksUrl: Option.none(),
  embeddedPgSettings: {},
  ...overrides
})
