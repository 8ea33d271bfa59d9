/**
 * Replay pages (Journal.readReplayPage): aligned pages of REPLAY_PAGE entries, sliced after the
 * requested seq; complete pages are cached per (encoding, epoch, page, topic) and shared by
 * concurrent readers, an incomplete page (the journal's tail, or one with a hole) never is.
 * Positions (Journal.position): concurrent reads share statements and each gets its own topic's
 * head and floor; inside a transaction the read sees that transaction's own appends.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Deferred, Effect, Fiber } from "effect"
import { SqlClient } from "effect/sql"
import { type ChunkLimits, chunkUpdatesJson, chunkUpdatesProto, type UpdatesHeader } from "../../src/domain/Protocol.ts"
import { Journal, type JournalDraft, type PackedPage, packPage, REPLAY_PAGE, type ReplayPage, unpackAfter } from "../../src/services/Journal.ts"
import { seeded } from "../client/support/Fakes.ts"
import { testServices } from "../support/TestApp.ts"

const drafts = (topic: string, n: number, docKeyBytes = 0): Array<JournalDraft> =>
  Array.from({ length: n }, (_, i) => ({
    topic,
    kind: "run.event",
    docKey: `run_event:rp:${i}:${"k".repeat(docKeyBytes)}`,
    docVersion: 1,
    occurredAtMs: 1,
    body: { case: undefined }
  }))

const seqs = (entries: ReadonlyArray<{ readonly seq: number }>) => entries.map((e) => e.seq)
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i)

describe("packed replay pages", () => {
  it("pack → unpack after any seq gives the page's entries in seq order, with holes, both encodings", () => {
    const rand = seeded(7)
    const first = 3 * REPLAY_PAGE + 1
    for (let round = 0; round < 40; round++) {
      const full = round % 4 === 0
      const present = Array.from({ length: REPLAY_PAGE }, () => full || rand() < 0.7)
      const text = (k: number) => `{"seq":${first + k},"x":"${"é😀".repeat(k % 5)}"}`
      const bytes = (k: number) => Uint8Array.from({ length: k % 7 }, (_, j) => (k + j) % 256)
      for (const encoding of ["pb", "json"] as const) {
        // JSON entries as the driver gives them (strings), or as their UTF-8 bytes on odd rounds.
        const json = (k: number) => (round % 2 === 0 ? text(k) : Buffer.from(text(k), "utf8"))
        const slots = present.map((p, k) => (p ? (encoding === "pb" ? bytes(k) : json(k)) : undefined))
        const page = packPage("e", first, encoding, slots)
        for (const after of [0, first - 1, first, first + 17, first + REPLAY_PAGE - 2, first + REPLAY_PAGE - 1]) {
          const got = unpackAfter(page, after)
          const want = slots.flatMap((item, k) => (item !== undefined && first + k > after ? [{ seq: first + k, item }] : []))
          assert.deepStrictEqual(got.entries().map((e) => e.seq), want.map((w) => w.seq))
          if (encoding === "pb") {
            assert.deepStrictEqual(got.entries().map((e) => [...e.pb]), want.map((w) => [...(w.item as Uint8Array)]))
          } else {
            assert.deepStrictEqual(got.entries().map((e) => e.json), want.map((w) => typeof w.item === "string" ? w.item : Buffer.from(w.item).toString("utf8")))
          }
          assert.strictEqual(got.more, present[REPLAY_PAGE - 1] === true)
          assert.strictEqual(got.count, want.length)
          if (want.length > 0) {
            assert.strictEqual(got.firstSeq, want[0]!.seq)
            assert.strictEqual(got.lastSeq, want[want.length - 1]!.seq)
          }
        }
      }
    }
  })

  /**
   * Frames cut from `page` against `chunkUpdates` of its entries, for slices after three cursors,
   * a random budget and budgets at (and one byte around) sizes real frames have.
   */
  const checkFrames = <I>(
    rand: () => number,
    round: number,
    page: PackedPage,
    cut: {
      readonly items: (slice: ReplayPage, after: number) => Array<I>
      readonly chunk: (header: UpdatesHeader, items: Array<I>, limits: ChunkLimits) => Array<Uint8Array>
      readonly frames: (slice: ReplayPage, header: UpdatesHeader, limits: ChunkLimits) => Array<Uint8Array>
    }
  ) => {
    const maxItems = 1 + Math.floor(rand() * (rand() < 0.5 ? 4 : 600))
    const randomBudget = 64 + Math.floor(rand() * 70_000)
    const header = { topic: rand() < 0.5 ? "run/ü-" + round : "", epoch: rand() < 0.5 ? "ep" : "", replay: rand() < 0.7 }
    for (const after of [0, page.first + Math.floor(rand() * REPLAY_PAGE), page.first + REPLAY_PAGE - 1]) {
      const slice = unpackAfter(page, after)
      const items = cut.items(slice, after)
      const sizes = cut.chunk(header, items, { maxItems, maxFrameBytes: 1e9 }).map((f) => f.byteLength)
      const exact = [0, 1, 2].flatMap(() => {
        const size = sizes[Math.floor(rand() * sizes.length)] ?? 100
        return [size - 1, size, size + 1]
      })
      for (const maxFrameBytes of [randomBudget, ...exact]) {
        const budget = { maxItems, maxFrameBytes }
        const want = cut.chunk(header, items, budget)
        const got = cut.frames(slice, header, budget)
        assert.strictEqual(got.length, want.length, `round ${round}, budget ${maxFrameBytes}`)
        got.forEach((frame, i) => assert.isTrue(Buffer.from(frame).equals(want[i]!), `round ${round} frame ${i}`))
      }
    }
  }

  it("protobuf frames straight from a packed page are chunkUpdates of its entries, byte for byte", () => {
    const rand = seeded(11)
    const first = REPLAY_PAGE + 1
    const source = Uint8Array.from({ length: 70_000 }, () => Math.floor(rand() * 256))
    for (let round = 0; round < 30; round++) {
      // Sizes around the one- and two-byte length prefixes, and now and then one over the budget.
      const size = () => (rand() < 0.01 ? 20_000 + Math.floor(rand() * 50_000) : Math.floor(rand() * (rand() < 0.5 ? 130 : 400)))
      const slots = Array.from({ length: REPLAY_PAGE }, (_, k) => {
        const n = size()
        return rand() < 0.9 ? source.subarray(k % 97, (k % 97) + n) : undefined
      })
      checkFrames(rand, round, packPage("e", first, "pb", slots), {
        items: (slice) => slice.entries().map((e) => e.pb),
        chunk: chunkUpdatesProto,
        frames: (slice, header, limits) => slice.framesProto(header, limits)
      })
    }
  })

  it("JSON frames straight from a packed page are chunkUpdates of its entries as UTF-8, byte for byte", () => {
    const rand = seeded(13)
    const first = 4 * REPLAY_PAGE + 1
    // Multi-byte characters: budgets count UTF-8 bytes, not UTF-16 units.
    const alphabet = ["a", "é", "😀", "\\\"", "✓", "z"]
    const chars = Array.from({ length: 30_000 }, () => alphabet[Math.floor(rand() * alphabet.length)]!)
    const text = (from: number, length: number) => chars.slice(from, from + length).join("")
    for (let round = 0; round < 30; round++) {
      const size = () => (rand() < 0.01 ? 5_000 + Math.floor(rand() * 20_000) : Math.floor(rand() * (rand() < 0.5 ? 60 : 300)))
      const texts = Array.from({ length: REPLAY_PAGE }, (_, k) => (rand() < 0.9 ? `{"k":"${text(k % 89, size())}"}` : undefined))
      checkFrames(rand, round, packPage("e", first, "json", texts), {
        items: (slice, after) => {
          const items = slice.entries().map((e) => e.json)
          assert.deepStrictEqual(items, texts.flatMap((t, k) => (t !== undefined && first + k > after ? [t] : [])))
          return items
        },
        chunk: (header, items, limits) => chunkUpdatesJson(header, items, limits).map((f) => Buffer.from(f, "utf8")),
        frames: (slice, header, limits) => slice.framesJson(header, limits).map((f) => f.bytes)
      })
    }
  })
})

layer(testServices(), { timeout: "120 seconds" })("replay pages", (it) => {
  describe("Journal.position", () => {
    it.effect("concurrent reads: each topic's own head and floor; in a transaction, its own appends", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const journal = yield* Journal
        const topics = Array.from({ length: 50 }, (_, i) => `run/pos${i}`)
        for (const [i, topic] of topics.entries()) {
          if (i % 5 !== 0) yield* sql.withTransaction(journal.append(drafts(topic, i), 1))
        }
        const epoch = yield* journal.epoch
        const positions = yield* Effect.forEach(topics, (t) => journal.position(t), { concurrency: "unbounded" })
        positions.forEach((p, i) => {
          const head = i % 5 === 0 ? 0 : i
          assert.deepStrictEqual(p, { epoch, headSeq: head, floorSeq: 1 }, topics[i])
        })
        // A transaction's own append is visible to its own read, not to anyone else's before COMMIT.
        const go = yield* Deferred.make<void>()
        const outside = yield* Effect.forkChild(Deferred.await(go).pipe(Effect.andThen(journal.position("run/pos0"))))
        yield* sql.withTransaction(Effect.gen(function*() {
          yield* journal.append(drafts("run/pos0", 3), 1)
          assert.strictEqual((yield* journal.position("run/pos0")).headSeq, 3)
          yield* Deferred.succeed(go, undefined)
          assert.strictEqual((yield* Fiber.join(outside)).headSeq, 0)
        }))
        assert.strictEqual((yield* journal.position("run/pos0")).headSeq, 3)
      }))
  })

  describe("Journal.readReplayPage", () => {
    it.effect("aligned pages, sliced after the cursor; complete pages are cached, the tail is not", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const journal = yield* Journal
        const topic = "run/rp"
        const total = 2 * REPLAY_PAGE + 500
        yield* sql.withTransaction(journal.append(drafts(topic, total), 1))
        const epoch = yield* journal.epoch

        const first = yield* journal.readReplayPage(topic, epoch, 0, "pb")
        assert.deepStrictEqual(seqs(first.entries()), range(1, REPLAY_PAGE))
        assert.isTrue(first.more)
        assert.isAbove(first.entries()[0]!.pb.byteLength, 0)
        const mid = yield* journal.readReplayPage(topic, epoch, 1500, "pb")
        assert.deepStrictEqual(seqs(mid.entries()), range(1501, REPLAY_PAGE))
        const tail = yield* journal.readReplayPage(topic, epoch, 2 * REPLAY_PAGE + 100, "pb")
        assert.deepStrictEqual(seqs(tail.entries()), range(2 * REPLAY_PAGE + 101, total))
        assert.isFalse(tail.more)
        const json = yield* journal.readReplayPage(topic, epoch, REPLAY_PAGE, "json")
        assert.deepStrictEqual(seqs(json.entries()), range(REPLAY_PAGE + 1, 2 * REPLAY_PAGE))
        assert.isTrue(json.entries()[0]!.json.startsWith("{"))
        // A page carries exactly the stored encodings (the live path reads them row by row).
        const rowByRow = (yield* journal.read(topic, REPLAY_PAGE, REPLAY_PAGE)).rows
        assert.deepStrictEqual(json.entries().map((e) => e.json), rowByRow.map((e) => e.json))
        const pbPage = yield* journal.readReplayPage(topic, epoch, REPLAY_PAGE, "pb")
        assert.deepStrictEqual(pbPage.entries().map((e) => Buffer.from(e.pb).toString("hex")), rowByRow.map((e) => Buffer.from(e.pb).toString("hex")))

        // Concurrent readers of one page get the same entries.
        const together = yield* Effect.all(
          Array.from({ length: 50 }, (_, i) => journal.readReplayPage(topic, epoch, REPLAY_PAGE + i, "pb")),
          { concurrency: "unbounded" }
        )
        together.forEach((p, i) => assert.deepStrictEqual(seqs(p.entries()), range(REPLAY_PAGE + i + 1, 2 * REPLAY_PAGE)))

        // Remove rows behind the cache's back: the complete first page is served from the cache,
        // the tail (never cached) and another epoch's key read Postgres again.
        yield* sql`DELETE FROM runtime.sync_stream_events WHERE topic = ${topic} AND seq IN (10, ${2 * REPLAY_PAGE + 200})`
        assert.deepStrictEqual(seqs((yield* journal.readReplayPage(topic, epoch, 0, "pb")).entries()), range(1, REPLAY_PAGE))
        assert.notInclude(seqs((yield* journal.readReplayPage(topic, epoch, 2 * REPLAY_PAGE, "pb")).entries()), 2 * REPLAY_PAGE + 200)
        // Another epoch's page: the journal's rows are not its entries.
        const other = yield* journal.readReplayPage(topic, "another-epoch", 0, "pb")
        assert.isTrue(other.epochChanged)
        assert.isFalse(other.more)
        assert.strictEqual(other.count, 0)
        assert.deepStrictEqual(other.entries(), [])
      }))

    it.effect("a page the retention floor cuts holds what is left of it, in seq order; it is never cached", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const journal = yield* Journal
        const topic = "run/rp-floor"
        yield* sql.withTransaction(journal.append(drafts(topic, REPLAY_PAGE + 10), 1))
        const epoch = yield* journal.epoch
        yield* sql`DELETE FROM runtime.sync_stream_events WHERE topic = ${topic} AND seq <= 700`
        const cut = yield* journal.readReplayPage(topic, epoch, 0, "json")
        assert.deepStrictEqual(seqs(cut.entries()), range(701, REPLAY_PAGE))
        assert.isTrue(cut.more)
        yield* sql`DELETE FROM runtime.sync_stream_events WHERE topic = ${topic} AND seq <= 900`
        assert.deepStrictEqual(seqs((yield* journal.readReplayPage(topic, epoch, 0, "json")).entries()), range(901, REPLAY_PAGE))
      }))

    it.effect("Journal.read: a seq range with its epoch; past a compacted gap it finds what follows", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const journal = yield* Journal
        const topic = "run/rp-read"
        const epoch = yield* journal.epoch
        yield* sql.withTransaction(journal.append(drafts(topic, 10), 1))
        const first = yield* journal.read(topic, 2, 3)
        assert.deepStrictEqual(seqs(first.rows), [3, 4, 5])
        assert.strictEqual(first.epoch, epoch)
        assert.deepStrictEqual(seqs((yield* journal.read(topic, 8, 5)).rows), [9, 10])
        assert.deepStrictEqual(yield* journal.read(topic, 10, 5), { epoch: "", rows: [] })
        // Entries 1…5 removed under a reader still at 0: the range (0, 3] is empty, the rest is not.
        yield* sql`DELETE FROM runtime.sync_stream_events WHERE topic = ${topic} AND seq <= 5`
        assert.deepStrictEqual(seqs((yield* journal.read(topic, 0, 3)).rows), [6, 7, 8])
      }))

    it.effect("a page of large entries (20 MB, over the driver's 16 MiB message limit as one row) is read in chunks", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const journal = yield* Journal
        const topic = "run/rp-large"
        yield* sql.withTransaction(journal.append(drafts(topic, REPLAY_PAGE, 10_000), 1))
        const epoch = yield* journal.epoch
        for (const encoding of ["pb", "json"] as const) {
          const page = yield* journal.readReplayPage(topic, epoch, 0, encoding)
          assert.deepStrictEqual(seqs(page.entries()), range(1, REPLAY_PAGE))
          const size = page.entries().reduce((n, e) => n + (encoding === "pb" ? e.pb.byteLength : e.json.length), 0)
          assert.isAbove(size, 20_000_000)
        }
        const rowByRow = (yield* journal.read(topic, 0, 10)).rows
        const page = yield* journal.readReplayPage(topic, epoch, 0, "pb")
        assert.deepStrictEqual(
          page.entries().slice(0, 10).map((e) => Buffer.from(e.pb).toString("hex")),
          rowByRow.map((e) => Buffer.from(e.pb).toString("hex"))
        )
      }))
  })
})
