/**
 * The client's protocol handling against a scripted fake server (fake sockets, fake clock, fake
 * fetch): Hello/Subscribe with stored cursors, idempotent apply, gap ⇒ drop and resume from the
 * last applied seq, proactive token refresh, token_expired ⇒ new token, stale_cursor ⇒ snapshot
 * re-bootstrap, forbidden topics, the heartbeat watchdog and awaitSeq.
 */
import { assert, beforeEach, describe, it } from "@effect/vitest"
import { createKhalaClient } from "../../src/client/client.ts"
import type { ClientEvent, ConnectionState, DocumentChange, KhalaClient, KhalaClientOptions } from "../../src/client/client.ts"
import { AwaitSeqTimeout, KhalaNotSubscribed, KhalaServerError } from "../../src/client/errors.ts"
import type { FetchLike } from "../../src/client/snapshot.ts"
import { memoryStore } from "../../src/client/store.ts"
import { ErrorCode } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import {
  caughtUp,
  errorFrame,
  fakeJwt,
  FakeScheduler,
  FakeSocket,
  goodbye,
  runEventUpdate,
  runSummaryUpdate,
  settle,
  subscribed,
  tokenRefreshed,
  updates,
  welcome
} from "./support/Fakes.ts"

const clients: Array<KhalaClient> = []
beforeEach(async () => {
  for (const c of clients.splice(0)) await c.close()
  FakeSocket.reset("open")
})

const setup = (extra: Partial<KhalaClientOptions> = {}) => {
  const scheduler = new FakeScheduler()
  const tokens: Array<string> = []
  const events: Array<ClientEvent> = []
  const states: Array<ConnectionState> = []
  const store = memoryStore()
  const client = createKhalaClient({
    url: "ws://fake:4100/sync/v1",
    getToken: async () => {
      const t = fakeJwt({ sub: "u1", n: tokens.length, exp: Math.floor(scheduler.now() / 1000) + 3600 })
      tokens.push(t)
      return t
    },
    WebSocket: FakeSocket,
    scheduler,
    store,
    random: () => 0.5,
    backoff: { initialMs: 100, maxMs: 1000, factor: 2, resetAfterMs: 10_000 },
    ...extra
  })
  client.onEvent((e) => events.push(e))
  client.onStateChange((s) => states.push(s))
  clients.push(client)
  return { client, scheduler, tokens, events, states, store }
}

/** Connects the current fake socket: Welcome, then answers the first Subscribe. */
const connect = async (epoch = "e1", head = 0) => {
  await settle()
  const s = FakeSocket.last()
  s.serverSend(welcome())
  await settle()
  const sub = s.subscribes().at(-1)
  if (sub !== undefined) s.serverSend(subscribed(sub.requestId, sub.cursors.map((c) => ({ topic: c.topic, epoch, head }))))
  return s
}

describe("client protocol (fake server)", () => {
  it("sends Hello with getToken(), subscribes with the stored cursor, applies, goes live, persists", async () => {
    const { client, tokens, store, states } = setup()
    await store.set("run/r1", { epoch: "e1", afterSeq: 2 })
    const changes: Array<DocumentChange> = []
    client.subscribe("run/r1", { onChange: (c) => changes.push(c) })
    await settle()
    const s = FakeSocket.last()
    assert.deepStrictEqual(s.protocols, ["khala.v1.proto"])
    assert.strictEqual(s.binaryType, "arraybuffer")
    const hello = s.sent[0]
    assert.strictEqual(hello?.case, "hello")
    assert.strictEqual(hello?.case === "hello" ? hello.value.token : "", tokens[0])
    s.serverSend(welcome())
    await settle()
    const sub = s.subscribes()[0]!
    assert.deepStrictEqual(sub.cursors.map((c) => [c.topic, Number(c.afterSeq), c.epoch]), [["run/r1", 2, "e1"]])
    s.serverSend(subscribed(sub.requestId, [{ topic: "run/r1", epoch: "e1", head: 4 }]))
    assert.strictEqual(client.state, "catching_up")
    s.serverSend(updates("run/r1", "e1", [runEventUpdate(3, 3), runSummaryUpdate(4, 3)], true))
    s.serverSend(caughtUp("run/r1", 4))
    assert.strictEqual(client.state, "live")
    assert.deepStrictEqual(changes.map((c) => (c.type === "upsert" ? [c.seq, c.replay, c.document.docKey] : [])), [
      [3, true, "run_event:r1:3"],
      [4, true, "run_summary:r1"]
    ])
    await client.awaitSeq("run/r1", 4)
    await client.flush()
    assert.deepStrictEqual(await store.get("run/r1"), { epoch: "e1", afterSeq: 4 })
    assert.include(states, "catching_up")
    assert.strictEqual(states.at(-1), "live")
  })

  it("ignores duplicates; a seq gap drops the connection and resumes from the last applied seq", async () => {
    const { client, events } = setup()
    client.subscribe("run/r1")
    const s1 = await connect("e1", 0)
    s1.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1), runSummaryUpdate(2, 2)], true))
    s1.serverSend(updates("run/r1", "e1", [runSummaryUpdate(2, 2), runSummaryUpdate(3, 3)], true)) // 2 is a duplicate
    assert.deepStrictEqual(client.watermark("run/r1"), { epoch: "e1", afterSeq: 3 })
    s1.serverSend(updates("run/r1", "e1", [runSummaryUpdate(4, 4), runSummaryUpdate(6, 6)], true)) // gap after 4
    assert.strictEqual(s1.closedWith?.code, 4000, "the client dropped the connection")
    assert.deepStrictEqual(client.watermark("run/r1"), { epoch: "e1", afterSeq: 4 }, "applied up to the gap")
    assert.include(
      events.flatMap((e) => (e.type === "disconnected" && e.error?._tag === "KhalaProtocolError" ? [e.error.message] : [])).join(),
      "seq gap"
    )
    assert.strictEqual(client.state, "backing_off")
  })

  it("after a reconnect, resubscribes every topic from its applied watermark; stale frames of an old subscription are ignored", async () => {
    const { client, scheduler } = setup()
    client.subscribe("run/r1")
    client.subscribe("run/r2")
    const s1 = await connect("e1")
    s1.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1)], true))
    s1.serverSend(updates("run/r2", "e1", [runSummaryUpdate(1, 1, "r2"), runSummaryUpdate(2, 2, "r2")], true))
    s1.serverClose(1006, "")
    await settle()
    await scheduler.advance(1000)
    const s2 = FakeSocket.last()
    assert.notStrictEqual(s2, s1)
    s2.serverSend(welcome())
    await settle()
    const sub = s2.subscribes()[0]!
    assert.deepStrictEqual(
      sub.cursors.map((c) => [c.topic, Number(c.afterSeq), c.epoch]).sort(),
      [["run/r1", 1, "e1"], ["run/r2", 2, "e1"]]
    )
    // Before Subscribed, updates for the topic are not ours: ignored.
    s2.serverSend(updates("run/r1", "e1", [runSummaryUpdate(2, 2)]))
    assert.strictEqual(client.watermark("run/r1")?.afterSeq, 1)
  })

  it("unsubscribes when the last listener leaves; a new listener gets the current state first", async () => {
    const { client } = setup()
    const offA = client.subscribe("run/r1")
    const s = await connect("e1")
    s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1)], true))
    const seen: Array<DocumentChange> = []
    const offB = client.subscribe("run/r1", { onChange: (c) => seen.push(c) })
    await settle()
    assert.strictEqual(seen[0]?.type, "reset")
    assert.strictEqual(seen[0]?.type === "reset" ? seen[0].reason : "", "initial")
    offA()
    assert.deepStrictEqual(s.unsubscribes(), [])
    offB()
    assert.deepStrictEqual(s.unsubscribes().map((u) => u.topics), [["run/r1"]])
    assert.strictEqual(client.documents("run/r1").size, 0)
    await assertRejects(client.awaitSeq("run/r1", 1), KhalaNotSubscribed)
  })

  it("refreshes the token before expiry on the same socket; does not when disabled", async () => {
    const { client, scheduler, tokens, events } = setup()
    await settle()
    const s = FakeSocket.last()
    const now = scheduler.now()
    s.serverSend(welcome({ tokenExpiresAtMs: now + 60_000, serverTimeMs: now, heartbeatIntervalMs: 100_000_000 }))
    await scheduler.advance(29_999) // exp − 30 s = 30 s (80% would be 48 s)
    assert.deepStrictEqual(s.refreshes(), [])
    await scheduler.advance(1)
    assert.strictEqual(s.refreshes().length, 1)
    assert.strictEqual(s.refreshes()[0]!.token, tokens.at(-1))
    s.serverSend(tokenRefreshed(scheduler.now() + 3_600_000))
    assert.deepStrictEqual(events.filter((e) => e.type === "token_refreshed").length, 1)
    assert.strictEqual(FakeSocket.instances.length, 1)
    assert.strictEqual(client.state, "live")
    // the next refresh follows the new expiry (80% of an hour)
    await scheduler.advance(2_880_000 - 1)
    assert.strictEqual(s.refreshes().length, 1)
    await scheduler.advance(1)
    assert.strictEqual(s.refreshes().length, 2)

    FakeSocket.reset("open")
    const other = setup({ refreshTokens: false })
    await settle()
    const s2 = FakeSocket.last()
    s2.serverSend(welcome({ tokenExpiresAtMs: other.scheduler.now() + 60_000, serverTimeMs: other.scheduler.now() }))
    await other.scheduler.advance(120_000)
    assert.deepStrictEqual(s2.refreshes(), [])
  })

  it("token_expired / unauthenticated Goodbye ⇒ a new token and a reconnect", async () => {
    const { client, scheduler, tokens } = setup()
    client.subscribe("run/r1")
    const s1 = await connect("e1")
    s1.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1)], true))
    s1.serverSend(goodbye(ErrorCode.TOKEN_EXPIRED))
    await settle()
    assert.strictEqual(client.state, "backing_off")
    await scheduler.advance(1000)
    const s2 = FakeSocket.last()
    assert.notStrictEqual(s2, s1)
    assert.strictEqual(tokens.length, 2)
    const hello = s2.sent[0]
    assert.strictEqual(hello?.case === "hello" ? hello.value.token : "", tokens[1])
    s2.serverSend(welcome())
    await settle()
    assert.strictEqual(Number(s2.subscribes()[0]!.cursors[0]!.afterSeq), 1)
  })

  it("stale_cursor ⇒ snapshot, documents replaced, watermark = head, notified, resubscribed from head", async () => {
    const requests: Array<{ url: string; auth: string | undefined }> = []
    const fetch: FetchLike = async (url, init) => {
      requests.push({ url, auth: init.headers["authorization"] })
      return {
        status: 200,
        text: async () =>
          JSON.stringify({
            topic: "run/r1",
            epoch: "e2",
            head_seq: 40,
            floor_seq: 36,
            documents: [{
              doc_key: "run_summary:r1",
              doc_version: 12,
              kind: "run.summary",
              document: { run_id: "r1", status: "completed", last_seq: "12", future_field: 1 }
            }]
          })
      }
    }
    const { client, events, states, store, tokens } = setup({ fetch })
    await store.set("run/r1", { epoch: "e1", afterSeq: 3 })
    const changes: Array<DocumentChange> = []
    const stale: Array<unknown> = []
    client.subscribe("run/r1", { onChange: (c) => changes.push(c), onStale: (i) => stale.push(i) })
    await settle()
    const s = FakeSocket.last()
    s.serverSend(welcome())
    await settle()
    const first = s.subscribes()[0]!
    s.serverSend(errorFrame(ErrorCode.STALE_CURSOR, { topic: "run/r1", requestId: first.requestId }))
    assert.strictEqual(client.state, "stale")
    await settle()
    assert.deepStrictEqual(requests, [{
      url: "http://fake:4100/sync/v1/snapshot?topic=run%2Fr1",
      auth: `Bearer ${tokens[0]}`
    }])
    assert.deepStrictEqual(client.watermark("run/r1"), { epoch: "e2", afterSeq: 40 })
    const doc = client.documents("run/r1").get("run_summary:r1")
    assert.strictEqual(doc?.docVersion, 12)
    assert.strictEqual(doc?.document.case === "runSummary" ? doc.document.value.status : "", "completed")
    assert.deepStrictEqual(stale, [{ topic: "run/r1", reason: "stale_cursor", previous: { epoch: "e1", afterSeq: 3 }, epoch: "e2", headSeq: 40, floorSeq: 36 }])
    assert.strictEqual(changes[0]?.type, "reset")
    assert.strictEqual(events.filter((e) => e.type === "rebootstrapped").length, 1)
    const second = s.subscribes()[1]!
    assert.deepStrictEqual(second.cursors.map((c) => [c.topic, Number(c.afterSeq), c.epoch]), [["run/r1", 40, "e2"]])
    s.serverSend(subscribed(second.requestId, [{ topic: "run/r1", epoch: "e2", head: 40 }]))
    s.serverSend(caughtUp("run/r1", 40))
    assert.strictEqual(client.state, "live")
    assert.include(states, "stale")
    await client.flush()
    assert.deepStrictEqual(await store.get("run/r1"), { epoch: "e2", afterSeq: 40 })
    await client.awaitSeq("run/r1", 40)
  })

  it("a live subscription's stale_cursor (epoch change, no request id) re-bootstraps too; snapshot failures retry", async () => {
    let calls = 0
    const fetch: FetchLike = async () => {
      calls++
      if (calls === 1) throw new Error("network down")
      if (calls === 2) return { status: 503, text: async () => "busy" }
      return {
        status: 200,
        text: async () => JSON.stringify({ topic: "run/r1", epoch: "e2", head_seq: 9, floor_seq: 1, documents: [] })
      }
    }
    const { client, scheduler, events } = setup({ fetch })
    client.subscribe("run/r1")
    const s = await connect("e1")
    s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1)], true))
    s.serverSend(caughtUp("run/r1", 1))
    assert.strictEqual(client.state, "live")
    s.serverSend(errorFrame(ErrorCode.STALE_CURSOR, { topic: "run/r1" }))
    assert.strictEqual(client.state, "stale")
    // Updates for the dropped subscription are ignored while re-bootstrapping.
    s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(2, 2)]))
    await settle()
    assert.strictEqual(calls, 1)
    await scheduler.advance(1000)
    await scheduler.advance(1000)
    assert.strictEqual(calls, 3)
    assert.deepStrictEqual(client.watermark("run/r1"), { epoch: "e2", afterSeq: 9 })
    assert.strictEqual(client.documents("run/r1").size, 0, "documents replaced by the (empty) snapshot")
    assert.deepStrictEqual(
      events.flatMap((e) => (e.type === "error" && e.error._tag === "KhalaSnapshotError" ? [e.error.status] : [])),
      [0, 503]
    )
    assert.deepStrictEqual(s.subscribes().at(-1)!.cursors.map((c) => [Number(c.afterSeq), c.epoch]), [[9, "e2"]])
    assert.strictEqual(FakeSocket.instances.length, 1, "the socket stayed open")
  })

  it("forbidden_topic ⇒ onError, the topic is dropped, waiters reject; other topics continue", async () => {
    const { client } = setup()
    const errors: Array<unknown> = []
    client.subscribe("run/r1", { onError: (e) => errors.push(e) })
    client.subscribe("run/r2")
    await settle()
    const s = FakeSocket.last()
    s.serverSend(welcome())
    await settle()
    const sub = s.subscribes()[0]!
    const waiting = client.awaitSeq("run/r1", 5)
    s.serverSend(subscribed(sub.requestId, [{ topic: "run/r2", epoch: "e1" }]))
    s.serverSend(errorFrame(ErrorCode.FORBIDDEN_TOPIC, { topic: "run/r1", requestId: sub.requestId }))
    s.serverSend(caughtUp("run/r2", 0))
    await assertRejects(waiting, KhalaServerError)
    assert.strictEqual(errors.length, 1)
    assert.strictEqual((errors[0] as KhalaServerError).code, "forbidden_topic")
    assert.strictEqual(client.state, "live")
    assert.isUndefined(client.watermark("run/r1"))
  })

  it("drops a silent connection after 2 heartbeat intervals + 5 s and reconnects", async () => {
    const { scheduler, events } = setup()
    await settle()
    const s = FakeSocket.last()
    s.serverSend(welcome({ heartbeatIntervalMs: 10_000 }))
    await scheduler.advance(20_000)
    const closeCode = () => s.closedWith?.code
    assert.isUndefined(closeCode())
    await scheduler.advance(10_000)
    assert.strictEqual(closeCode(), 4000)
    assert.isTrue(events.some((e) => e.type === "disconnected" && e.reason === "heartbeat timeout"))
  })

  it("awaitSeq: resolves when applied, rejects with AwaitSeqTimeout on the (fake) clock", async () => {
    const { client, scheduler } = setup()
    client.subscribe("run/r1")
    const s = await connect("e1")
    const ok = client.awaitSeq("run/r1", 2, { timeoutMs: 1000 })
    const late = client.awaitSeq("run/r1", 3, { timeoutMs: 1000 })
    late.catch(() => undefined) // rejected while the clock advances; asserted below
    s.serverSend(updates("run/r1", "e1", [runSummaryUpdate(1, 1), runSummaryUpdate(2, 2)], true))
    await ok
    await scheduler.advance(1000)
    const e = await assertRejects(late, AwaitSeqTimeout)
    assert.deepStrictEqual([e.topic, e.seq, e.appliedSeq, e.timeoutMs], ["run/r1", 3, 2, 1000])
    const aborted = new AbortController()
    const p = client.awaitSeq("run/r1", 9, { timeoutMs: Number.POSITIVE_INFINITY, signal: aborted.signal })
    aborted.abort(new Error("stop"))
    await assertRejects(p, Error)
  })
})

const assertRejects = async <E>(p: Promise<unknown>, ctor: abstract new (...args: never) => E): Promise<E> => {
  try {
    await p
  } catch (e) {
    assert.instanceOf(e, ctor as unknown as new () => E)
    return e as E
  }
  throw new Error("expected a rejection")
}
