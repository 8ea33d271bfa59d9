import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { embeddedPostgresDefaults, parseEmbeddedPgSettings } from "../../src/layers/Config.ts"

const MiB = 1048576

describe("embedded Postgres settings", () => {
  it("shared_buffers is an eighth of memory, between 128 MiB and 1 GiB", () => {
    expect(embeddedPostgresDefaults(512 * MiB)).toEqual({ shared_buffers: "128MB" })
    expect(embeddedPostgresDefaults(4096 * MiB)).toEqual({ shared_buffers: "512MB" })
    expect(embeddedPostgresDefaults(24 * 1024 * MiB)).toEqual({ shared_buffers: "1024MB" })
  })

  it.effect("parses name=value lists; blanks and spaces are ignored", () =>
    Effect.gen(function*() {
      expect(yield* parseEmbeddedPgSettings("")).toEqual({})
      expect(yield* parseEmbeddedPgSettings(" shared_buffers = 2GB , max_wal_size=4GB,")).toEqual({
        shared_buffers: "2GB",
        max_wal_size: "4GB"
      })
      expect(yield* parseEmbeddedPgSettings("auto_explain.log_min_duration=250ms")).toEqual({
        "auto_explain.log_min_duration": "250ms"
      })
      // Names are case-insensitive, as in Postgres; a value may contain "=".
      expect(yield* parseEmbeddedPgSettings("Shared_Buffers=2GB,search_path=a=b")).toEqual({
        shared_buffers: "2GB",
        search_path: "a=b"
      })
    }))

  it.effect("refuses an item without a name or a value, a name Postgres could not have, or where it listens and keeps its files", () =>
    Effect.gen(function*() {
      for (const bad of ["shared_buffers", "=1GB", "shared_buffers=", "Shared-Buffers=1GB", "work mem=8MB", "listen_addresses=*", "PORT=5433", "unix_socket_directories=/tmp", "data_directory=/x"]) {
        const exit = yield* Effect.exit(parseEmbeddedPgSettings(bad))
        expect(Exit.isFailure(exit), bad).toBe(true)
      }
    }))
})
