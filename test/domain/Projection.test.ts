/**
 * Pure projection properties (SPEC §1.3, §2, §4): over random VALID authority histories,
 * - projecting incrementally through the storage round-trip (encode after every event, decode,
 *   apply the next one — what the Projector does) gives the same bytes as replaying the whole
 *   history in memory, at every prefix (so the journal of summary changes is the same too);
 * - projection is deterministic;
 * - run and worker summary invariants;
 * - heartbeat bursts converge by a rule on the events' own occurred_at.
 * Plus the boundaries of `heartbeatView` and `parseTopic`.
 */
import { clone, create } from "@bufbuild/protobuf"
import { type Timestamp, timestampMs } from "@bufbuild/protobuf/wkt"
import { assert, describe, it } from "@effect/vitest"
import { Arbitrary, Schema } from "effect"
import {
  decodeRunSummary,
  decodeWorkerSummary,
  encodeRunSummary,
  encodeWorkerSummary
} from "../../src/domain/Documents.ts"
import { type CodexWorkerSummary, CodexWorkerSummarySchema, type RunSummary } from "../../src/gen/openagents/sync/v1/documents_pb.ts"
import { heartbeatView } from "../../src/domain/Heartbeat.ts"
import {
  projectRun,
  projectRunHistory,
  type RunEventRecord,
  TERMINAL_RUN_STATUSES
} from "../../src/domain/RunProjection.ts"
import { formatTopic, MAX_TOPIC_LENGTH, parseTopic, type Topic } from "../../src/domain/Topic.ts"
import {
  HEARTBEAT_COALESCE_MS,
  projectWorker,
  projectWorkerHistory,
  type WorkerEventRecord
} from "../../src/domain/WorkerProjection.ts"
import {
  intBetween,
  planEndsTerminal,
  planWorker,
  runHistoryArbitrary,
  workerHistoryArbitrary
} from "../support/Histories.ts"

const hex = (bytes: Uint8Array | undefined) => (bytes === undefined ? "<none>" : Buffer.from(bytes).toString("hex"))
const msOf = (ts: Timestamp | undefined) => (ts === undefined ? undefined : timestampMs(ts))

/** What the Projector stores after each event: decode the stored bytes, project, encode. */
const storedRunVersions = (events: ReadonlyArray<RunEventRecord>): ReadonlyArray<Uint8Array> => {
  const out: Array<Uint8Array> = []
  let stored: Uint8Array | undefined
  for (const e of events) {
    const prev = stored === undefined ? undefined : decodeRunSummary(stored)
    stored = encodeRunSummary(projectRun(prev, e))
    out.push(stored)
  }
  return out
}

const storedWorkerVersions = (events: ReadonlyArray<WorkerEventRecord>): ReadonlyArray<Uint8Array> => {
  const out: Array<Uint8Array> = []
  let stored: Uint8Array | undefined
  for (const e of events) {
    const prev = stored === undefined ? undefined : decodeWorkerSummary(stored)
    stored = encodeWorkerSummary(projectWorker(prev, e))
    out.push(stored)
  }
  return out
}

const inMemoryRun = (events: ReadonlyArray<RunEventRecord>) => {
  const doc = projectRunHistory(events)
  return doc === undefined ? undefined : encodeRunSummary(doc)
}
const inMemoryWorker = (events: ReadonlyArray<WorkerEventRecord>) => {
  const doc = projectWorkerHistory(events)
  return doc === undefined ? undefined : encodeWorkerSummary(doc)
}

const PROPS = { arbitrary: { runs: 150 } } as const

describe("run projection", () => {
  it.prop("incremental storage round-trip = in-memory replay, at every prefix", { h: runHistoryArbitrary() }, ({ h }) => {
    const stored = storedRunVersions(h.events)
    assert.strictEqual(stored.length, h.events.length)
    stored.forEach((bytes, i) => {
      assert.strictEqual(hex(bytes), hex(inMemoryRun(h.events.slice(0, i + 1))), `prefix of ${i + 1} events`)
    })
  }, PROPS)

  it.prop("deterministic: the same history twice gives the same bytes", { h: runHistoryArbitrary() }, ({ h }) => {
    const again = structuredClone(h.events)
    assert.strictEqual(hex(inMemoryRun(h.events)), hex(inMemoryRun(h.events)))
    assert.strictEqual(hex(inMemoryRun(h.events)), hex(inMemoryRun(again)))
    assert.deepStrictEqual(storedRunVersions(again).map(hex), storedRunVersions(h.events).map(hex))
  }, PROPS)

  it.prop("status invariants", { h: runHistoryArbitrary() }, ({ h }) => {
    const events = h.events
    const doc: RunSummary = decodeRunSummary(inMemoryRun(events)!)
    const last = events[events.length - 1]!
    const terminal = events.find((e) => e.type === "run.completed" || e.type === "run.failed" || e.type === "run.canceled")
    const expectedStatus = terminal
      ? terminal.type.slice("run.".length)
      : events.some((e) => e.type === "run.started" || e.type === "run.step")
      ? "running"
      : "created"
    assert.strictEqual(doc.status, expectedStatus)
    assert.strictEqual(doc.runId, "run-1")
    assert.strictEqual(doc.ownerUserId, "user-1")
    assert.strictEqual(doc.eventCount, BigInt(events.length))
    assert.strictEqual(doc.lastSeq, BigInt(last.seq))
    assert.strictEqual(doc.lastEventType, last.type)
    assert.strictEqual(msOf(doc.createdAt), events[0]!.occurredAtMs)
    assert.strictEqual(msOf(doc.updatedAt), last.occurredAtMs)
    // terminal_at is set iff the status is terminal, and then it is the terminal event's time
    assert.strictEqual(doc.terminalAt !== undefined, TERMINAL_RUN_STATUSES.has(doc.status))
    assert.strictEqual(msOf(doc.terminalAt), terminal?.occurredAtMs)
    // every prefix keeps the invariants too
    storedRunVersions(events).forEach((bytes, i) => {
      const d = decodeRunSummary(bytes)
      assert.strictEqual(d.eventCount, BigInt(i + 1))
      assert.strictEqual(d.lastSeq, BigInt(events[i]!.seq))
      assert.strictEqual(d.terminalAt !== undefined, TERMINAL_RUN_STATUSES.has(d.status))
    })
  }, PROPS)

  it.prop("generated histories are valid: created first, nothing after a terminal event", { h: runHistoryArbitrary() }, ({ h }) => {
    assert.strictEqual(h.events[0]!.type, "run.created")
    assert.isFalse(h.events.slice(1).some((e) => e.type === "run.created"))
    const t = h.events.findIndex((e) => TERMINAL_RUN_STATUSES.has(e.type.slice(4)))
    assert.isTrue(t === -1 || t === h.events.length - 1)
    h.events.forEach((e, i) => assert.strictEqual(e.seq, i + 1))
  }, PROPS)
})

describe("worker projection", () => {
  it.prop("incremental storage round-trip = in-memory replay, at every prefix", { h: workerHistoryArbitrary() }, ({ h }) => {
    const stored = storedWorkerVersions(h.events)
    assert.strictEqual(stored.length, h.events.length)
    stored.forEach((bytes, i) => {
      assert.strictEqual(hex(bytes), hex(inMemoryWorker(h.events.slice(0, i + 1))), `prefix of ${i + 1} events`)
    })
  }, PROPS)

  it.prop("deterministic: the same history twice gives the same bytes", { h: workerHistoryArbitrary() }, ({ h }) => {
    const again = structuredClone(h.events)
    assert.strictEqual(hex(inMemoryWorker(h.events)), hex(inMemoryWorker(h.events)))
    assert.strictEqual(hex(inMemoryWorker(h.events)), hex(inMemoryWorker(again)))
    assert.deepStrictEqual(storedWorkerVersions(again).map(hex), storedWorkerVersions(h.events).map(hex))
  }, PROPS)

  it.prop("status, seq and count invariants", { h: workerHistoryArbitrary() }, ({ h }) => {
    const events = h.events
    const doc: CodexWorkerSummary = decodeWorkerSummary(inMemoryWorker(events)!)
    let status = "created"
    for (const e of events) {
      if (e.type === "worker.started" || e.type === "worker.resumed") status = "running"
      else if (e.type === "worker.stopped") status = "stopped"
      else if (e.type === "worker.error" && e.payload["fatal"] === true) status = "failed"
    }
    assert.strictEqual(doc.status, status)
    assert.strictEqual(planEndsTerminal(planWorker(h.raw)), status === "stopped" || status === "failed")
    assert.strictEqual(doc.workerId, "worker-1")
    assert.strictEqual(doc.ownerUserId, "user-1")
    // heartbeats only move last_heartbeat_at; everything else counts
    const counted = events.filter((e) => e.type !== "worker.heartbeat")
    const lastCounted = counted[counted.length - 1]!
    assert.strictEqual(doc.lastSeq, BigInt(lastCounted.seq))
    assert.strictEqual(doc.lastEventType, lastCounted.type)
    const counts: Record<string, bigint> = {}
    for (const e of counted) counts[e.type] = (counts[e.type] ?? 0n) + 1n
    assert.deepStrictEqual({ ...doc.eventCounts }, counts)
    assert.deepStrictEqual(Object.keys(doc.eventCounts), Object.keys(counts).sort())
    assert.strictEqual(msOf(doc.createdAt), events[0]!.occurredAtMs)
    const heartbeats = events.filter((e) => e.type === "worker.heartbeat")
    assert.strictEqual(doc.lastHeartbeatAt === undefined, heartbeats.length === 0)
    // stopped_at set iff terminal; a resume clears the error
    assert.strictEqual(doc.stoppedAt !== undefined, status === "stopped" || status === "failed")
    const lastResume = events.findLastIndex((e) => e.type === "worker.resumed")
    const lastError = events.findLastIndex((e) => e.type === "worker.error")
    assert.strictEqual(doc.error !== undefined, lastError > lastResume)
  }, PROPS)

  it.prop("generated histories are valid: nothing but a resume after stopped / fatal error", { h: workerHistoryArbitrary() }, ({ h }) => {
    assert.strictEqual(h.events[0]!.type, "worker.created")
    let terminal = false
    for (const e of h.events.slice(1)) {
      assert.notStrictEqual(e.type, "worker.created")
      if (terminal) assert.strictEqual(e.type, "worker.resumed")
      else assert.notStrictEqual(e.type, "worker.resumed")
      terminal = e.type === "worker.stopped" || (e.type === "worker.error" && e.payload["fatal"] === true)
        ? true
        : e.type === "worker.resumed"
        ? false
        : terminal
    }
  }, PROPS)
})

describe("heartbeat convergence", () => {
  const Burst = Schema.Struct({
    gapMs: intBetween(0, 5 * HEARTBEAT_COALESCE_MS),
    /** offsets inside one coalesce window, in arbitrary order */
    offsets: Schema.Array(intBetween(0, HEARTBEAT_COALESCE_MS - 1)).check(Schema.isMinLength(1), Schema.isMaxLength(40)),
    sorted: Schema.Boolean
  })

  it.prop(
    "a burst within HEARTBEAT_COALESCE_MS changes the summary at most once; coalesced heartbeats encode identically",
    { h: workerHistoryArbitrary(10, 8), burst: Arbitrary.schema(Burst) },
    ({ burst, h }) => {
      const prefix: Array<WorkerEventRecord> = [...h.events]
      const lastAt = Math.max(...prefix.map((e) => e.occurredAtMs))
      const push = (type: WorkerEventRecord["type"], occurredAtMs: number) =>
        prefix.push({ workerId: "worker-1", ownerUserId: "user-1", seq: prefix.length + 1, type, payload: {}, occurredAtMs })
      if (planEndsTerminal(planWorker(h.raw))) push("worker.resumed", lastAt) // heartbeats need a live worker
      const hadHeartbeat = prefix.some((e) => e.type === "worker.heartbeat")
      const t0 = lastAt + burst.gapMs
      const offsets = burst.sorted ? [...burst.offsets].sort((a, b) => a - b) : burst.offsets

      let stored = encodeWorkerSummary(projectWorkerHistory(prefix)!)
      let changes = 0
      offsets.forEach((offset, i) => {
        const prev = decodeWorkerSummary(stored)
        const at = t0 + offset
        const event: WorkerEventRecord = {
          workerId: "worker-1",
          ownerUserId: "user-1",
          seq: prefix.length + i + 1,
          type: "worker.heartbeat",
          payload: { n: i },
          occurredAtMs: at
        }
        const next = projectWorker(prev, event)
        const bytes = encodeWorkerSummary(next)
        const recorded = msOf(prev.lastHeartbeatAt)
        const coalesces = recorded !== undefined && at - recorded < HEARTBEAT_COALESCE_MS
        if (coalesces) {
          assert.strictEqual(hex(bytes), hex(stored), `heartbeat ${i} at ${at} coalesces with ${recorded}`)
        } else {
          changes++
          assert.notStrictEqual(hex(bytes), hex(stored))
          assert.strictEqual(msOf(next.lastHeartbeatAt), at)
          // only last_heartbeat_at moved
          const rewound = clone(CodexWorkerSummarySchema, next)
          rewound.lastHeartbeatAt = prev.lastHeartbeatAt
          assert.strictEqual(hex(encodeWorkerSummary(rewound)), hex(stored))
        }
        stored = bytes
      })
      assert.isAtMost(changes, 1)
      if (!hadHeartbeat) assert.strictEqual(changes, 1)
    },
    { arbitrary: { runs: 200 } }
  )

  it("heartbeats further apart than the window each move last_heartbeat_at", () => {
    const base = 1_700_000_000_000
    let doc = projectWorker(undefined, {
      workerId: "w",
      ownerUserId: "u",
      seq: 1,
      type: "worker.created",
      payload: {},
      occurredAtMs: base
    })
    const times = [base, base + HEARTBEAT_COALESCE_MS - 1, base + HEARTBEAT_COALESCE_MS, base + 2 * HEARTBEAT_COALESCE_MS + 5]
    const recorded: Array<number | undefined> = []
    times.forEach((t, i) => {
      doc = projectWorker(doc, { workerId: "w", ownerUserId: "u", seq: i + 2, type: "worker.heartbeat", payload: {}, occurredAtMs: t })
      recorded.push(msOf(doc.lastHeartbeatAt))
    })
    assert.deepStrictEqual(recorded, [base, base, base + HEARTBEAT_COALESCE_MS, base + 2 * HEARTBEAT_COALESCE_MS + 5])
    // a summary built by `create` from a decoded one is byte-identical (no hidden state)
    assert.strictEqual(
      hex(encodeWorkerSummary(create(CodexWorkerSummarySchema, decodeWorkerSummary(encodeWorkerSummary(doc))))),
      hex(encodeWorkerSummary(doc))
    )
  })
})

describe("heartbeatView", () => {
  const stale = 60_000
  const now = 1_700_000_000_000

  it("missing before any heartbeat: age null", () => {
    assert.deepStrictEqual(heartbeatView(undefined, now, stale), {
      heartbeat_state: "missing",
      heartbeat_age_ms: null,
      heartbeat_stale_after_ms: stale
    })
  })

  it("fresh up to and including stale_after, stale from stale_after + 1", () => {
    assert.deepStrictEqual(heartbeatView(now, now, stale), {
      heartbeat_state: "fresh",
      heartbeat_age_ms: 0,
      heartbeat_stale_after_ms: stale
    })
    assert.deepStrictEqual(heartbeatView(now - stale, now, stale), {
      heartbeat_state: "fresh",
      heartbeat_age_ms: stale,
      heartbeat_stale_after_ms: stale
    })
    assert.deepStrictEqual(heartbeatView(now - stale - 1, now, stale), {
      heartbeat_state: "stale",
      heartbeat_age_ms: stale + 1,
      heartbeat_stale_after_ms: stale
    })
  })

  it("a heartbeat from the future counts as age 0", () => {
    assert.deepStrictEqual(heartbeatView(now + 5_000, now, stale), {
      heartbeat_state: "fresh",
      heartbeat_age_ms: 0,
      heartbeat_stale_after_ms: stale
    })
  })

  it.prop(
    "state is a function of age and stale_after",
    { last: intBetween(0, 4_000_000_000_000), age: intBetween(-1_000, 10_000_000), staleAfter: intBetween(0, 10_000_000) },
    ({ age, last, staleAfter }) => {
      const view = heartbeatView(last, last + age, staleAfter)
      const expectedAge = Math.max(0, age)
      assert.strictEqual(view.heartbeat_age_ms, expectedAge)
      assert.strictEqual(view.heartbeat_state, expectedAge <= staleAfter ? "fresh" : "stale")
      assert.strictEqual(view.heartbeat_stale_after_ms, staleAfter)
    }
  )
})

describe("parseTopic", () => {
  const ID_CHARS = "ABCXYZabcxyz0189._:-"

  it("parses the four topic shapes", () => {
    assert.deepStrictEqual(parseTopic("run/r1"), { _tag: "Run", runId: "r1" })
    assert.deepStrictEqual(parseTopic("worker/w.1:a-b_c"), { _tag: "Worker", workerId: "w.1:a-b_c" })
    assert.deepStrictEqual(parseTopic("user/u1/runs"), { _tag: "UserRuns", userId: "u1" })
    assert.deepStrictEqual(parseTopic("user/u1/workers"), { _tag: "UserWorkers", userId: "u1" })
    assert.deepStrictEqual(parseTopic(`run/${"A-z0._:9".repeat(16)}`), { _tag: "Run", runId: "A-z0._:9".repeat(16) })
  })

  it("rejects malformed names", () => {
    const invalid: ReadonlyArray<unknown> = [
      undefined,
      null,
      42,
      ["run/r1"],
      "",
      "run",
      "run/",
      "/run/r1",
      "run/r1/",
      "run//r1",
      "runs/r1",
      "Run/r1",
      "worker",
      "worker/a/b",
      "user/u1",
      "user/u1/",
      "user//runs",
      "user/u1/run",
      "user/u1/runs/x",
      "user/u1/Workers",
      "run/r 1",
      "run/r%201",
      "run/r1?x",
      "run/r#1",
      "run/ä",
      "run/r1\n",
      "run/😀",
      `run/${"a".repeat(129)}`,
      `user/${"a".repeat(129)}/runs`
    ]
    for (const name of invalid) assert.isUndefined(parseTopic(name), JSON.stringify(name))
  })

  it("id length: 128 is accepted, 129 is not; names over 256 characters are rejected", () => {
    assert.isDefined(parseTopic(`worker/${"w".repeat(128)}`))
    assert.isUndefined(parseTopic(`worker/${"w".repeat(129)}`))
    assert.strictEqual(MAX_TOPIC_LENGTH, 256)
    const long = `run/${"r".repeat(MAX_TOPIC_LENGTH - 3)}`
    assert.strictEqual(long.length, MAX_TOPIC_LENGTH + 1)
    assert.isUndefined(parseTopic(long))
  })

  const IdArb = Arbitrary.map(
    Arbitrary.schema(
      Schema.Array(Schema.Literals([...ID_CHARS] as Array<string>)).check(Schema.isMinLength(1), Schema.isMaxLength(128))
    ),
    (chars) => chars.join("")
  )
  const TopicArb = Arbitrary.map(
    Arbitrary.all([IdArb, Arbitrary.schema(Schema.Literals(["Run", "Worker", "UserRuns", "UserWorkers"]))]),
    ([id, tag]): Topic =>
      tag === "Run"
        ? { _tag: "Run", runId: id }
        : tag === "Worker"
        ? { _tag: "Worker", workerId: id }
        : tag === "UserRuns"
        ? { _tag: "UserRuns", userId: id }
        : { _tag: "UserWorkers", userId: id }
  )

  it.prop("formatTopic ∘ parseTopic round-trips every valid topic", { topic: TopicArb }, ({ topic }) => {
    const name = formatTopic(topic)
    assert.isAtMost(name.length, MAX_TOPIC_LENGTH)
    assert.deepStrictEqual(parseTopic(name), topic)
  })

  it.prop("a parsed name is canonical: it formats back to itself", { name: Schema.String }, ({ name }) => {
    const topic = parseTopic(name)
    if (topic !== undefined) assert.strictEqual(formatTopic(topic), name)
  })

  it.prop("one character outside the id charset invalidates the topic", {
    id: IdArb,
    bad: Schema.Literals([" ", "/", "%", "?", "#", "ä", "\u0000", "\n", "+", "*", "😀"]),
    at: intBetween(0, 200)
  }, ({ at, bad, id }) => {
    const i = at % (id.length + 1)
    const spoiled = id.slice(0, i) + bad + id.slice(i)
    assert.isUndefined(parseTopic(`run/${spoiled}`))
    assert.isUndefined(parseTopic(`user/${spoiled}/runs`))
  })
})
