import { create, equals, fromBinary, fromJsonString, toBinary, toJsonString } from "@bufbuild/protobuf"
import type { JsonObject, JsonValue } from "@bufbuild/protobuf"
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { assert, describe, it } from "@effect/vitest"
import { Result, Schema } from "effect"
import type { ProtocolError } from "../../src/domain/ErrorCode.ts"
import { protocolError } from "../../src/domain/ErrorCode.ts"
import {
  chunkUpdates,
  decodeClientFrame,
  decodeServerFrame,
  encodeClientFrame,
  encodedFrameBytes,
  encodedUpdate,
  encodeServerFrame,
  encodeUpdatesFrame,
  encodeUpdatesFrameJson,
  encodeUpdatesFrameProto,
  errorFrame,
  goodbyeFrame,
  JSON_SUBPROTOCOL,
  parseSubprotocolHeader,
  PROTO_SUBPROTOCOL,
  selectSubprotocol,
  splitUpdates,
  SUBPROTOCOLS,
  utf8ByteLength
} from "../../src/domain/Protocol.ts"
import type { EncodedUpdate, Subprotocol, UpdatesHeader } from "../../src/domain/Protocol.ts"
import { ErrorCode } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import { ClientFrameSchema, ServerFrameSchema, UpdateSchema } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import type { ClientFrame, ServerFrame, Update } from "../../src/gen/openagents/sync/v1/frames_pb.ts"

// ---------------------------------------------------------------------------------------------
// Fixtures

const ts = (ms: number) => timestampFromMs(ms)
/** A `google.protobuf.Struct` field: protobuf-es represents it as a plain JSON object. */
const struct = (json: JsonObject): JsonObject => json

const runSummary: Update = create(UpdateSchema, {
  seq: 1n,
  kind: "run.summary",
  docKey: "run_summary:r1",
  docVersion: 3n,
  schemaVersion: 1,
  occurredAtMs: 1_700_000_000_123n,
  committedAtMs: 1_700_000_000_456n,
  body: {
    case: "runSummary",
    value: {
      runId: "r1",
      ownerUserId: "u1",
      status: "completed",
      eventCount: 3n,
      lastSeq: 3n,
      lastEventType: "run.completed",
      createdAt: ts(1_700_000_000_000),
      updatedAt: ts(1_700_000_000_123),
      terminalAt: ts(1_700_000_000_123)
    }
  }
})

const workerSummary: Update = create(UpdateSchema, {
  seq: 2n,
  kind: "worker.summary",
  docKey: "codex_worker_summary:w1",
  docVersion: 7n,
  schemaVersion: 1,
  occurredAtMs: 1_700_000_001_000n,
  committedAtMs: 1_700_000_001_001n,
  body: {
    case: "workerSummary",
    value: {
      workerId: "w1",
      ownerUserId: "u1",
      status: "failed",
      lastSeq: 9n,
      lastEventType: "worker.error",
      lastHeartbeatAt: ts(1_700_000_000_500),
      startedAt: ts(1_700_000_000_100),
      error: { message: "boom", fatal: true, occurredAt: ts(1_700_000_001_000) },
      eventCounts: { "worker.started": 1n, "worker.event": 5n, "worker.error": 1n },
      metadata: struct({ host: "box-1", tags: ["a", "b"], limits: { cpu: 2, mem: 1.5 }, spot: false, note: null }),
      createdAt: ts(1_700_000_000_000),
      updatedAt: ts(1_700_000_001_000)
    }
  }
})

const runEvent: Update = create(UpdateSchema, {
  seq: 3n,
  kind: "run.event",
  docKey: "run_event:r1:2",
  docVersion: 1n,
  schemaVersion: 1,
  occurredAtMs: 1_700_000_000_050n,
  committedAtMs: 1_700_000_000_060n,
  body: {
    case: "runEvent",
    value: {
      runId: "r1",
      seq: 2n,
      type: "run.step",
      payload: struct({
        text: "héllo wörld ✓ 😀 \u0000 \"quoted\" \\ </script>",
        nested: { deeper: { list: [1, "two", [3, { four: 4 }], null, true] } },
        empty: {},
        emptyList: [],
        "clé": -0.25
      }),
      occurredAt: ts(1_700_000_000_050)
    }
  }
})

const workerEvent: Update = create(UpdateSchema, {
  seq: 4n,
  kind: "worker.event",
  docKey: "worker_event:w1:4",
  docVersion: 1n,
  schemaVersion: 1,
  occurredAtMs: 1_700_000_002_000n,
  committedAtMs: 1_700_000_002_010n,
  body: {
    case: "workerEvent",
    value: { workerId: "w1", seq: 4n, type: "worker.event", payload: struct({ k: "v" }), occurredAt: ts(1_700_000_002_000) }
  }
})

/** An Update with every field at its default: it encodes to zero bytes / `{}`. */
const emptyUpdate: Update = create(UpdateSchema)

const samples: ReadonlyArray<Update> = [runSummary, workerSummary, runEvent, workerEvent, emptyUpdate]

const builtFrame = (header: UpdatesHeader, items: ReadonlyArray<Update>): ServerFrame =>
  create(ServerFrameSchema, {
    frame: { case: "updates", value: { topic: header.topic, epoch: header.epoch, replay: header.replay, items: [...items] } }
  })

const JSON_OPTS = { useProtoFieldName: true } as const

/** Asserts the spliced frames (both subprotocols) equal the normally built frame, bytes and message. */
const assertSpliceMatches = (header: UpdatesHeader, items: ReadonlyArray<Update>) => {
  const expected = builtFrame(header, items)
  const encoded = items.map(encodedUpdate)

  const pb = encodeUpdatesFrameProto(header, encoded.map((e) => e.pb))
  assert.deepStrictEqual(pb, toBinary(ServerFrameSchema, expected))
  assert.isTrue(equals(ServerFrameSchema, fromBinary(ServerFrameSchema, pb), expected))

  const json = encodeUpdatesFrameJson(header, encoded.map((e) => e.json))
  assert.strictEqual(json, toJsonString(ServerFrameSchema, expected, JSON_OPTS))
  assert.isTrue(equals(ServerFrameSchema, fromJsonString(ServerFrameSchema, json), expected))

  assert.deepStrictEqual(encodeUpdatesFrame(PROTO_SUBPROTOCOL, { ...header, items: encoded }), pb)
  assert.strictEqual(encodeUpdatesFrame(JSON_SUBPROTOCOL, { ...header, items: encoded }), json)
}

// Arbitraries. Lone surrogates do not survive UTF-8: make every generated string well-formed.
const wellFormed = (u: JsonValue): JsonValue => {
  if (typeof u === "string") return u.toWellFormed()
  if (Array.isArray(u)) return u.map(wellFormed)
  if (u !== null && typeof u === "object") {
    return Object.fromEntries(Object.entries(u).map(([k, v]) => [k.toWellFormed(), wellFormed(v)]))
  }
  return u
}
const Uint64 = Schema.BigInt.check(Schema.isBetweenBigInt({ minimum: 0n, maximum: 2n ** 64n - 1n }))
const ArbUpdate = Schema.Struct({
  bodyCase: Schema.Literals([0, 1, 2, 3, 4]),
  seq: Uint64,
  docVersion: Uint64,
  kind: Schema.String,
  docKey: Schema.String,
  payload: Schema.Json
})
type ArbUpdate = typeof ArbUpdate.Type

const toUpdate = (a: ArbUpdate): Update => {
  const payload = struct({ data: wellFormed(a.payload as JsonValue) })
  const common = { seq: a.seq, kind: a.kind.toWellFormed(), docKey: a.docKey.toWellFormed(), docVersion: a.docVersion }
  switch (a.bodyCase) {
    case 0:
      return create(UpdateSchema, common)
    case 1:
      return create(UpdateSchema, {
        ...common,
        body: { case: "runEvent", value: { runId: "r", seq: a.seq, type: a.kind.toWellFormed(), payload } }
      })
    case 2:
      return create(UpdateSchema, {
        ...common,
        body: { case: "workerEvent", value: { workerId: "w", seq: a.seq, payload, occurredAt: ts(1) } }
      })
    case 3:
      return create(UpdateSchema, {
        ...common,
        body: { case: "workerSummary", value: { workerId: "w", metadata: payload, eventCounts: { [a.kind.toWellFormed()]: a.seq } } }
      })
    case 4:
      return create(UpdateSchema, {
        ...common,
        body: { case: "runSummary", value: { runId: "r", lastSeq: a.seq, createdAt: ts(1_700_000_000_000) } }
      })
  }
}

const header = (topic: string, epoch: string, replay: boolean): UpdatesHeader => ({
  topic: topic.toWellFormed(),
  epoch: epoch.toWellFormed(),
  replay
})

const success = <A>(r: Result.Result<A, ProtocolError>): A => {
  if (Result.isFailure(r)) assert.fail(`expected success, got ${r.failure.code}: ${r.failure.message}`)
  return r.success
}
const failure = <A>(r: Result.Result<A, ProtocolError>): ProtocolError => {
  if (Result.isSuccess(r)) assert.fail("expected a failure")
  return r.failure
}

// ---------------------------------------------------------------------------------------------

describe("subprotocol selection", () => {
  it("picks the first supported one in the client's order", () => {
    assert.strictEqual(selectSubprotocol(["khala.v1.proto", "khala.v1.json"]), PROTO_SUBPROTOCOL)
    assert.strictEqual(selectSubprotocol(["khala.v1.json", "khala.v1.proto"]), JSON_SUBPROTOCOL)
    assert.strictEqual(selectSubprotocol(["other", " khala.v1.json "]), JSON_SUBPROTOCOL)
    assert.strictEqual(selectSubprotocol(new Set(["khala.v1.proto"])), PROTO_SUBPROTOCOL)
    assert.isUndefined(selectSubprotocol(["other", "khala.v2.proto"]))
    assert.isUndefined(selectSubprotocol([]))
  })

  it("parses Sec-WebSocket-Protocol headers", () => {
    assert.deepStrictEqual(parseSubprotocolHeader("khala.v1.json, khala.v1.proto"), ["khala.v1.json", "khala.v1.proto"])
    assert.deepStrictEqual(parseSubprotocolHeader(["a, b", "c"]), ["a", "b", "c"])
    assert.deepStrictEqual(parseSubprotocolHeader(undefined), [])
    assert.deepStrictEqual(parseSubprotocolHeader(" , "), [])
  })
})

describe("server frame encoding", () => {
  it("JSON uses proto field names, uint64 strings, enum names, omits defaults", () => {
    const caughtUp = create(ServerFrameSchema, { frame: { case: "caughtUp", value: { topic: "run/r1", seq: 5n } } })
    assert.strictEqual(encodeServerFrame(JSON_SUBPROTOCOL, caughtUp), `{"caught_up":{"topic":"run/r1","seq":"5"}}`)
    const err = errorFrame(protocolError("stale_cursor", "cursor too old", { topic: "run/r1", floorSeq: 10n, headSeq: 12n }))
    assert.strictEqual(
      encodeServerFrame(JSON_SUBPROTOCOL, err),
      `{"error":{"code":"ERROR_CODE_STALE_CURSOR","message":"cursor too old","topic":"run/r1","floor_seq":"10","head_seq":"12"}}`
    )
    const bin = encodeServerFrame(PROTO_SUBPROTOCOL, caughtUp)
    assert.instanceOf(bin, Uint8Array)
    assert.isTrue(equals(ServerFrameSchema, fromBinary(ServerFrameSchema, bin as Uint8Array), caughtUp))
  })

  it("builds Error and Goodbye frames from a ProtocolError", () => {
    const limited = errorFrame(protocolError("rate_limited", "slow down", { requestId: "q1", retryAfterMs: 250.4 }))
    assert.strictEqual(limited.frame.case, "error")
    if (limited.frame.case === "error") {
      assert.strictEqual(limited.frame.value.code, ErrorCode.RATE_LIMITED)
      assert.strictEqual(limited.frame.value.requestId, "q1")
      assert.isTrue(limited.frame.value.retryable)
      assert.strictEqual(limited.frame.value.retryAfterMs, 251n)
    }
    const bye = goodbyeFrame(protocolError("server_draining", "draining"))
    assert.strictEqual(encodeServerFrame(JSON_SUBPROTOCOL, bye), `{"goodbye":{"code":"ERROR_CODE_SERVER_DRAINING","message":"draining"}}`)
  })

  it("decodeServerFrame round-trips both subprotocols", () => {
    const frame = builtFrame({ topic: "run/r1", epoch: "e1", replay: true }, samples)
    for (const sp of SUBPROTOCOLS) {
      assert.isTrue(equals(ServerFrameSchema, success(decodeServerFrame(sp, encodeServerFrame(sp, frame))), frame))
    }
    assert.strictEqual(failure(decodeServerFrame(PROTO_SUBPROTOCOL, new Uint8Array([0xff]))).code, "bad_request")
  })
})

describe("spliced Updates frames", () => {
  it("match the normally built frame for every body case", () => {
    for (const replay of [true, false]) {
      assertSpliceMatches({ topic: "run/r1", epoch: "2024-01-01T00:00:00Z#1", replay }, samples)
      for (const s of samples) assertSpliceMatches({ topic: "worker/w1", epoch: "e", replay }, [s])
    }
  })

  it("match with empty topic, epoch, items and unicode headers", () => {
    assertSpliceMatches({ topic: "", epoch: "", replay: false }, [])
    assertSpliceMatches({ topic: "", epoch: "", replay: true }, [])
    assertSpliceMatches({ topic: "run/r1", epoch: "", replay: false }, [emptyUpdate])
    assertSpliceMatches({ topic: "", epoch: "é", replay: true }, [runEvent, emptyUpdate, runEvent])
    assertSpliceMatches({ topic: "ü\"\\\n😀", epoch: "x".repeat(200), replay: true }, [workerSummary])
  })

  it("match with long items (multi-byte length prefixes)", () => {
    const big = create(UpdateSchema, {
      seq: 9n,
      body: { case: "runEvent", value: { payload: struct({ blob: "x".repeat(70_000), list: Array.from({ length: 300 }, (_, i) => i) }) } }
    })
    assertSpliceMatches({ topic: "run/r1", epoch: "e", replay: true }, [big, runSummary, big])
  })

  it.prop(
    "match for arbitrary headers and updates",
    [Schema.String, Schema.String, Schema.Boolean, Schema.Array(ArbUpdate)],
    ([topic, epoch, replay, items]) => {
      assertSpliceMatches(header(topic, epoch, replay), items.map(toUpdate))
    },
    { arbitrary: { runs: 200 } }
  )
})

describe("chunkUpdates", () => {
  const encodedSamples: ReadonlyArray<EncodedUpdate> = samples.map(encodedUpdate)

  const assertChunks = (
    sp: Subprotocol,
    h: UpdatesHeader,
    items: ReadonlyArray<EncodedUpdate>,
    limits: { maxItems: number; maxFrameBytes: number }
  ) => {
    const frames = chunkUpdates(sp, h, items, limits)
    const ranges = splitUpdates(sp, h, items, limits)
    assert.strictEqual(frames.length, ranges.length)
    const seen: Array<Update> = []
    frames.forEach((frame, i) => {
      const decoded = success(decodeServerFrame(sp, frame))
      assert.strictEqual(decoded.frame.case, "updates")
      if (decoded.frame.case !== "updates") return
      const u = decoded.frame.value
      assert.strictEqual(u.topic, h.topic)
      assert.strictEqual(u.epoch, h.epoch)
      assert.strictEqual(u.replay, h.replay)
      assert.isAtLeast(u.items.length, 1)
      assert.isAtMost(u.items.length, Math.max(1, limits.maxItems))
      assert.strictEqual(u.items.length, ranges[i]!.end - ranges[i]!.start)
      if (u.items.length > 1) assert.isAtMost(encodedFrameBytes(frame), limits.maxFrameBytes)
      // A frame could not have taken the next item (greedy and exact sizing).
      const next = ranges[i + 1]
      if (next !== undefined && u.items.length < limits.maxItems) {
        const grown = encodeUpdatesFrame(sp, { ...h, items: items.slice(ranges[i]!.start, next.start + 1) })
        assert.isAbove(encodedFrameBytes(grown), limits.maxFrameBytes)
      }
      seen.push(...u.items)
    })
    assert.strictEqual(seen.length, items.length)
    seen.forEach((u, i) => {
      const original = sp === PROTO_SUBPROTOCOL
        ? fromBinary(UpdateSchema, items[i]!.pb)
        : fromJsonString(UpdateSchema, items[i]!.json)
      assert.isTrue(equals(UpdateSchema, u, original))
    })
  }

  it("no items gives no frames; one frame when everything fits", () => {
    for (const sp of SUBPROTOCOLS) {
      assert.deepStrictEqual(chunkUpdates(sp, { topic: "t", epoch: "e", replay: true }, [], { maxItems: 10, maxFrameBytes: 1000 }), [])
      const frames = chunkUpdates(sp, { topic: "t", epoch: "e", replay: true }, encodedSamples, { maxItems: 100, maxFrameBytes: 1 << 20 })
      assert.strictEqual(frames.length, 1)
      assert.deepStrictEqual(frames[0], encodeUpdatesFrame(sp, { topic: "t", epoch: "e", replay: true, items: encodedSamples }))
    }
  })

  it("bounds items per frame", () => {
    for (const sp of SUBPROTOCOLS) {
      const items = [...encodedSamples, ...encodedSamples]
      assert.strictEqual(chunkUpdates(sp, { topic: "t", epoch: "e", replay: false }, items, { maxItems: 3, maxFrameBytes: 1 << 20 }).length, 4)
      assertChunks(sp, { topic: "t", epoch: "e", replay: false }, items, { maxItems: 3, maxFrameBytes: 1 << 20 })
      assertChunks(sp, { topic: "t", epoch: "e", replay: false }, items, { maxItems: 0, maxFrameBytes: 1 << 20 })
    }
  })

  it("a frame exactly at max_frame_bytes is allowed, one byte less splits it", () => {
    for (const sp of SUBPROTOCOLS) {
      const h = { topic: "run/ü", epoch: "e", replay: true }
      const two = encodeUpdatesFrame(sp, { ...h, items: encodedSamples.slice(0, 2) })
      const exact = encodedFrameBytes(two)
      assert.strictEqual(splitUpdates(sp, h, encodedSamples, { maxItems: 100, maxFrameBytes: exact })[0]!.end, 2)
      assert.strictEqual(splitUpdates(sp, h, encodedSamples, { maxItems: 100, maxFrameBytes: exact - 1 })[0]!.end, 1)
    }
  })

  it("an item larger than the budget goes alone in its own frame", () => {
    for (const sp of SUBPROTOCOLS) {
      const h = { topic: "t", epoch: "e", replay: true }
      const frames = chunkUpdates(sp, h, encodedSamples, { maxItems: 100, maxFrameBytes: 10 })
      assert.strictEqual(frames.length, encodedSamples.length)
      assertChunks(sp, h, encodedSamples, { maxItems: 100, maxFrameBytes: 10 })
    }
  })

  it.prop(
    "frames respect both bounds, keep order and lose nothing",
    [Schema.String, Schema.Boolean, Schema.Array(ArbUpdate), Schema.Int, Schema.Int],
    ([topic, replay, arb, maxItems, maxFrameBytes]) => {
      const items = arb.map(toUpdate).map(encodedUpdate)
      const limits = { maxItems: 1 + Math.abs(maxItems % 8), maxFrameBytes: 16 + Math.abs(maxFrameBytes % 4000) }
      for (const sp of SUBPROTOCOLS) assertChunks(sp, header(topic, "epoch-1", replay), items, limits)
    },
    { arbitrary: { runs: 100 } }
  )
})

describe("decodeClientFrame", () => {
  const MAX = 4096

  it("decodes Hello in JSON with snake_case and lowerCamelCase names", () => {
    for (const text of [
      `{"hello":{"token":"jwt","client_id":"c1","client_version":"1.2"}}`,
      `{"hello":{"token":"jwt","clientId":"c1","clientVersion":"1.2"}}`
    ]) {
      const f = success(decodeClientFrame(JSON_SUBPROTOCOL, text, MAX))
      assert.strictEqual(f.frame.case, "hello")
      if (f.frame.case === "hello") {
        assert.strictEqual(f.frame.value.token, "jwt")
        assert.strictEqual(f.frame.value.clientId, "c1")
        assert.strictEqual(f.frame.value.clientVersion, "1.2")
      }
    }
  })

  it("decodes Subscribe cursors with uint64 after_seq as string or number", () => {
    const text = `{"subscribe":{"request_id":"q1","cursors":[{"topic":"run/r1","after_seq":"18446744073709551615","epoch":"e1"},{"topic":"run/r2","afterSeq":7},{"topic":"run/r3"}]}}`
    const f = success(decodeClientFrame(JSON_SUBPROTOCOL, text, MAX))
    assert.strictEqual(f.frame.case, "subscribe")
    if (f.frame.case === "subscribe") {
      assert.strictEqual(f.frame.value.requestId, "q1")
      assert.deepStrictEqual(
        f.frame.value.cursors.map((c) => [c.topic, c.afterSeq, c.epoch]),
        [["run/r1", 2n ** 64n - 1n, "e1"], ["run/r2", 7n, ""], ["run/r3", 0n, ""]]
      )
    }
  })

  it("decodes binary Hello and Subscribe", () => {
    const sub = create(ClientFrameSchema, {
      frame: { case: "subscribe", value: { requestId: "q", cursors: [{ topic: "run/r1", afterSeq: 42n, epoch: "e" }] } }
    })
    const f = success(decodeClientFrame(PROTO_SUBPROTOCOL, toBinary(ClientFrameSchema, sub), MAX))
    assert.isTrue(equals(ClientFrameSchema, f, sub))
    const hello = create(ClientFrameSchema, { frame: { case: "hello", value: { token: "t" } } })
    assert.strictEqual(success(decodeClientFrame(PROTO_SUBPROTOCOL, toBinary(ClientFrameSchema, hello), MAX)).frame.case, "hello")
  })

  const ArbClientFrame = Schema.Struct({
    which: Schema.Literals([0, 1, 2, 3, 4]),
    s: Schema.String,
    seq: Uint64,
    topics: Schema.Array(Schema.String)
  })
  it.prop("every client frame round-trips through both subprotocols", [ArbClientFrame], ([a]) => {
    const s = a.s.toWellFormed()
    const topics = a.topics.map((t) => t.toWellFormed())
    const frames: ReadonlyArray<ClientFrame> = [
      create(ClientFrameSchema, { frame: { case: "hello", value: { token: s, clientId: s, clientVersion: "v" } } }),
      create(ClientFrameSchema, {
        frame: { case: "subscribe", value: { requestId: s, cursors: topics.map((topic) => ({ topic, afterSeq: a.seq, epoch: s })) } }
      }),
      create(ClientFrameSchema, { frame: { case: "unsubscribe", value: { requestId: s, topics } } }),
      create(ClientFrameSchema, { frame: { case: "refreshToken", value: { token: s } } }),
      create(ClientFrameSchema, { frame: { case: "ping", value: { nonce: s } } })
    ]
    const frame = frames[a.which]!
    for (const sp of SUBPROTOCOLS) {
      const decoded = success(decodeClientFrame(sp, encodeClientFrame(sp, frame), Number.MAX_SAFE_INTEGER))
      assert.isTrue(equals(ClientFrameSchema, decoded, frame))
    }
  })

  it("binary garbage is bad_request", () => {
    for (const bytes of [[0xff, 0xff, 0xff], [0x0a, 0x05, 0x01], [0x0a], [0x08, 0x80, 0x80], [0x0f]]) {
      const e = failure(decodeClientFrame(PROTO_SUBPROTOCOL, new Uint8Array(bytes), MAX))
      assert.strictEqual(e.code, "bad_request")
      assert.match(e.message, /invalid protobuf ClientFrame/)
    }
  })

  it.prop("arbitrary bytes and text never throw", [Schema.Uint8Array, Schema.String], ([bytes, text]) => {
    for (const sp of SUBPROTOCOLS) {
      for (const data of [bytes, text]) {
        const r = decodeClientFrame(sp, data, MAX)
        if (Result.isFailure(r)) assert.include(["bad_request", "payload_too_large"], r.failure.code)
      }
    }
  })

  it("invalid JSON, non-object JSON and unknown fields are bad_request", () => {
    const cases: ReadonlyArray<[string, RegExp]> = [
      [`{"hello":`, /invalid JSON/],
      [``, /invalid JSON/],
      [`null`, /ClientFrame/],
      [`[]`, /ClientFrame/],
      [`"hello"`, /ClientFrame/],
      [`{"hello":{"token":"t","bogus":1}}`, /"bogus" is unknown/],
      [`{"nope":{}}`, /"nope" is unknown/],
      [`{"__proto__":{"hello":{}}}`, /"__proto__" is unknown/],
      [`{"ping":{"nonce":5}}`, /nonce/],
      [`{"hello":{"token":"t"},"ping":{"nonce":"n"}}`, /oneof set multiple times/],
      [`{"subscribe":{"cursors":[{"after_seq":-1}]}}`, /after_seq/],
      [`{"subscribe":{"cursors":[{"after_seq":"18446744073709551616"}]}}`, /after_seq/]
    ]
    for (const [text, pattern] of cases) {
      const e = failure(decodeClientFrame(JSON_SUBPROTOCOL, text, MAX))
      assert.strictEqual(e.code, "bad_request", text)
      assert.match(e.message, pattern, text)
    }
    const deep = failure(decodeClientFrame(JSON_SUBPROTOCOL, "[".repeat(100_000) + "]".repeat(100_000), 1 << 20))
    assert.strictEqual(deep.code, "bad_request")
    assert.isAtMost(deep.message.length, 250)
  })

  it("a frame with no oneof set is bad_request", () => {
    for (const [sp, data] of [
      [JSON_SUBPROTOCOL, `{}`],
      [JSON_SUBPROTOCOL, `{"hello":null}`],
      [PROTO_SUBPROTOCOL, new Uint8Array(0)],
      [PROTO_SUBPROTOCOL, new Uint8Array([0x78, 0x01])] // unknown field 15 only
    ] as const) {
      const e = failure(decodeClientFrame(sp, data, MAX))
      assert.strictEqual(e.code, "bad_request")
      assert.match(e.message, /no frame set/)
    }
  })

  it("the wrong message type for the subprotocol is bad_request", () => {
    const hello = create(ClientFrameSchema, { frame: { case: "hello", value: { token: "t" } } })
    const e1 = failure(decodeClientFrame(PROTO_SUBPROTOCOL, toJsonString(ClientFrameSchema, hello), MAX))
    assert.strictEqual(e1.code, "bad_request")
    assert.match(e1.message, /text message on khala\.v1\.proto/)
    const e2 = failure(decodeClientFrame(JSON_SUBPROTOCOL, toBinary(ClientFrameSchema, hello), MAX))
    assert.strictEqual(e2.code, "bad_request")
    assert.match(e2.message, /binary message on khala\.v1\.json/)
  })

  it("oversized frames are payload_too_large, counted in UTF-8 bytes", () => {
    const ping = (nonce: string) => `{"ping":{"nonce":"${nonce}"}}`
    const overhead = ping("").length
    // exactly at the limit: accepted; one byte over: rejected (é is 2 bytes)
    assert.strictEqual(success(decodeClientFrame(JSON_SUBPROTOCOL, ping("é".repeat(50)), overhead + 100)).frame.case, "ping")
    const e = failure(decodeClientFrame(JSON_SUBPROTOCOL, ping("é".repeat(50)), overhead + 99))
    assert.strictEqual(e.code, "payload_too_large")
    assert.isFalse(e.fatal)
    assert.strictEqual(failure(decodeClientFrame(PROTO_SUBPROTOCOL, new Uint8Array(MAX + 1), MAX)).code, "payload_too_large")
    // the size check comes first, even for a frame of the wrong type
    assert.strictEqual(failure(decodeClientFrame(PROTO_SUBPROTOCOL, "x".repeat(MAX + 1), MAX)).code, "payload_too_large")
  })

  it("utf8ByteLength matches TextEncoder", () => {
    for (const s of ["", "abc", "é", "😀", "\ud800", "a\udc00b", "x".repeat(100) + "✓"]) {
      assert.strictEqual(utf8ByteLength(s), new TextEncoder().encode(s).length, JSON.stringify(s))
    }
  })
})
