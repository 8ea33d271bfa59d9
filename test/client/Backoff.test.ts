/**
 * The client's reconnect schedule: the pure full-jitter backoff and refresh schedules, then the
 * real reconnect loop of `createKhalaClient` driven by a fake scheduler and fake sockets (delays
 * follow the schedule, nothing reconnects early, `retry_after_ms` is honoured, a long-lived
 * connection resets the attempt counter, many clients spread out).
 */
import { assert, beforeEach, describe, it } from "@effect/vitest"
import { backoffDelay, refreshDelay } from "../../src/client/backoff.ts"
import type { BackoffOptions } from "../../src/client/backoff.ts"
import { createKhalaClient } from "../../src/client/client.ts"
import type { ClientEvent, KhalaClient } from "../../src/client/client.ts"
import { ErrorCode } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import { fakeJwt, FakeScheduler, FakeSocket, goodbye, seeded, settle, welcome } from "./support/Fakes.ts"

const opts: BackoffOptions = { initialMs: 100, maxMs: 5_000, factor: 2, resetAfterMs: 10_000 }
const cap = (attempt: number) => Math.min(opts.maxMs, opts.initialMs * 2 ** attempt)

describe("backoffDelay (pure)", () => {
  it("is random() × min(maxMs, initialMs × factor^attempt)", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      for (const r of [0, 0.25, 0.5, 0.999999]) {
        assert.strictEqual(backoffDelay(attempt, opts, () => r), Math.floor(r * cap(attempt)))
      }
    }
  })

  it("stays within [0, cap] for any attempt, including huge ones and bad random values", () => {
    const random = seeded(1)
    for (let attempt = 0; attempt < 2000; attempt++) {
      const d = backoffDelay(attempt, opts, random)
      assert.isAtLeast(d, 0)
      assert.isAtMost(d, cap(attempt))
    }
    assert.strictEqual(backoffDelay(10_000, opts, () => 1), opts.maxMs)
    assert.strictEqual(backoffDelay(3, opts, () => Number.NaN), 0)
    assert.strictEqual(backoffDelay(3, opts, () => -5), 0)
    assert.strictEqual(backoffDelay(3, opts, () => 7), cap(3))
    assert.strictEqual(backoffDelay(-1, opts, () => 0.5), 50)
    assert.strictEqual(backoffDelay(Number.POSITIVE_INFINITY, opts, () => 0.5), 50)
  })

  it("spreads: 1000 clients with different random sources get distinct schedules within the cap", () => {
    const schedules = Array.from({ length: 1000 }, (_, i) => {
      const random = seeded(1000 + i)
      return Array.from({ length: 8 }, (_, attempt) => backoffDelay(attempt, opts, random))
    })
    const keys = new Set(schedules.map((s) => s.join(",")))
    assert.strictEqual(keys.size, schedules.length, "no two identical schedules")
    for (let attempt = 0; attempt < 8; attempt++) {
      const ds = schedules.map((s) => s[attempt]!)
      for (const d of ds) {
        assert.isAtLeast(d, 0)
        assert.isAtMost(d, cap(attempt))
      }
      // Full jitter is uniform over [0, cap): mean ≈ cap/2, and every quarter is populated.
      const mean = ds.reduce((a, b) => a + b, 0) / ds.length
      assert.approximately(mean / cap(attempt), 0.5, 0.06)
      for (let q = 0; q < 4; q++) {
        const inQuarter = ds.filter((d) => d >= (q * cap(attempt)) / 4 && d < ((q + 1) * cap(attempt)) / 4).length
        assert.isAbove(inQuarter, 150, `attempt ${attempt}, quarter ${q}`)
      }
      // No reconnect storm: at most a few clients share any one millisecond.
      const perMs = new Map<number, number>()
      for (const d of ds) perMs.set(d, (perMs.get(d) ?? 0) + 1)
      if (cap(attempt) >= 800) assert.isAtMost(Math.max(...perMs.values()), 8)
    }
  })
})

describe("refreshDelay (pure)", () => {
  it("refreshes at the earlier of 80% and exp − margin, never before 50%, not at all when too short", () => {
    assert.strictEqual(refreshDelay(3_600_000), 2_880_000) // 1 h: 80% (48 min) < exp − 30 s
    assert.strictEqual(refreshDelay(120_000), 90_000) // 2 min: exp − 30 s (90 s) < 80% (96 s)
    assert.strictEqual(refreshDelay(40_000), 20_000) // exp − 30 s = 10 s < 50% ⇒ 50%
    assert.strictEqual(refreshDelay(3_000), 1_500)
    assert.strictEqual(refreshDelay(600), undefined) // 300 ms < minDelay
    assert.strictEqual(refreshDelay(0), undefined)
    assert.strictEqual(refreshDelay(-5), undefined)
    assert.strictEqual(refreshDelay(60_000, 5_000), 48_000)
  })
})

// ---------------------------------------------------------------------------------------------
// The reconnect loop under a fake clock

const clients: Array<KhalaClient> = []
beforeEach(async () => {
  for (const c of clients.splice(0)) await c.close()
})

const makeClient = (scheduler: FakeScheduler, random: () => number, extra: { refreshTokens?: boolean } = {}) => {
  const events: Array<ClientEvent> = []
  const client = createKhalaClient({
    url: "ws://fake/sync/v1",
    getToken: async () => fakeJwt({ sub: "u1", exp: Math.floor(scheduler.now() / 1000) + 3600 }),
    WebSocket: FakeSocket,
    scheduler,
    random,
    backoff: opts,
    ...extra
  })
  client.onEvent((e) => events.push(e))
  clients.push(client)
  return { client, events, delays: () => events.flatMap((e) => (e.type === "reconnect_scheduled" ? [e.delayMs] : [])) }
}

describe("reconnect loop (fake scheduler, fake sockets)", () => {
  it("waits exactly backoffDelay(attempt) between attempts, growing to the cap, never earlier", async () => {
    FakeSocket.reset("fail")
    const scheduler = new FakeScheduler()
    const rs = [0.9, 0.5, 0.99, 0.1, 0.7, 0.8, 0.95, 0.6, 0.3, 0.999]
    let i = 0
    const { client, delays } = makeClient(scheduler, () => rs[i++ % rs.length]!)
    await settle()
    assert.strictEqual(FakeSocket.instances.length, 1)
    for (let attempt = 0; attempt < 9; attempt++) {
      const expected = Math.floor(rs[attempt]! * cap(attempt))
      assert.strictEqual(delays()[attempt], expected, `attempt ${attempt}`)
      assert.strictEqual(client.state, "backing_off")
      if (expected > 0) {
        await scheduler.advance(expected - 1)
        assert.strictEqual(FakeSocket.instances.length, attempt + 1, "no reconnect before the delay")
      }
      await scheduler.advance(expected > 0 ? 1 : 0)
      assert.strictEqual(FakeSocket.instances.length, attempt + 2, "reconnected at the delay")
    }
    assert.strictEqual(Math.max(...delays()), Math.floor(0.999 * opts.maxMs))
  })

  it("honours retry_after_ms of a Goodbye (delay at least that)", async () => {
    FakeSocket.reset("open")
    const scheduler = new FakeScheduler()
    const { delays } = makeClient(scheduler, () => 0.5)
    await settle()
    const s = FakeSocket.last()
    assert.strictEqual(s.sent[0]?.case, "hello")
    s.serverSend(welcome())
    s.serverSend(goodbye(ErrorCode.RATE_LIMITED, 7_000))
    await settle()
    assert.deepStrictEqual(delays(), [7_000])
    await scheduler.advance(6_999)
    assert.strictEqual(FakeSocket.instances.length, 1)
    await scheduler.advance(1)
    assert.strictEqual(FakeSocket.instances.length, 2)
  })

  it("resets the attempt counter after a connection stayed up resetAfterMs, not before", async () => {
    FakeSocket.reset("fail")
    const scheduler = new FakeScheduler()
    const { delays } = makeClient(scheduler, () => 0.999)
    await settle()
    for (let k = 0; k < 5; k++) await scheduler.advance(delays().at(-1)!)
    assert.strictEqual(delays().length, 6)
    assert.strictEqual(delays().at(-1), Math.floor(0.999 * cap(5)))

    // A connection that lives briefly does not reset the counter…
    FakeSocket.behaviour = "open"
    await scheduler.advance(delays().at(-1)!)
    FakeSocket.last().serverSend(welcome({ heartbeatIntervalMs: 1_000_000 }))
    await scheduler.advance(opts.resetAfterMs - 1)
    FakeSocket.last().serverClose(1006, "")
    await settle()
    assert.strictEqual(delays().at(-1), Math.floor(0.999 * cap(6)))

    // …one that stays up resetAfterMs does.
    await scheduler.advance(delays().at(-1)!)
    FakeSocket.last().serverSend(welcome({ heartbeatIntervalMs: 1_000_000 }))
    await scheduler.advance(opts.resetAfterMs)
    FakeSocket.last().serverClose(1006, "")
    await settle()
    assert.strictEqual(delays().at(-1), Math.floor(0.999 * cap(0)))
  })

  it("keeps one connection attempt at a time and stops for good on close()", async () => {
    FakeSocket.reset("fail")
    const scheduler = new FakeScheduler()
    const { client } = makeClient(scheduler, seeded(3))
    await settle()
    await scheduler.advance(60_000)
    const opened = FakeSocket.instances.length
    // Each attempt waited for the previous one to fail: at most one timer pending.
    assert.isAtMost(scheduler.pending().length, 1)
    await client.close()
    assert.strictEqual(client.state, "closed")
    await scheduler.advance(600_000)
    assert.strictEqual(FakeSocket.instances.length, opened)
    assert.deepStrictEqual(scheduler.pending(), [])
  })

  it("50 clients with different random sources reconnect on different, bounded schedules", async () => {
    FakeSocket.reset("fail")
    const scheduler = new FakeScheduler()
    const all = Array.from({ length: 50 }, (_, i) => makeClient(scheduler, seeded(77 + i)))
    await settle()
    for (let k = 0; k < 6; k++) await scheduler.advance(opts.maxMs)
    const schedules = all.map((c) => c.delays().slice(0, 6))
    for (const s of schedules) {
      assert.strictEqual(s.length, 6)
      s.forEach((d, attempt) => {
        assert.isAtLeast(d, 0)
        assert.isAtMost(d, cap(attempt))
      })
    }
    assert.strictEqual(new Set(schedules.map((s) => s.join(","))).size, 50, "no two identical schedules")
    const fourth = schedules.map((s) => s[4]!)
    assert.isAbove(Math.max(...fourth) - Math.min(...fourth), cap(4) * 0.7, "attempt-4 delays spread over the range")
  })
})
