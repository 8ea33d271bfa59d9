/**
 * The load generator's byte scan of JSON `Updates` frames (`scanJsonUpdatesFrame`) reports exactly
 * what parsing the frame reports (JSON.parse) and what the protobuf scan of the
 * same entries reports, on frames the server's own encoders build, with payloads chosen to trip a
 * scanner: keys named like Update fields nested in payloads, escaped quotes and backslashes,
 * non-ASCII text, empty objects and arrays. (Like the protobuf scan, it takes the first send-time
 * marker inside a run event: the bench's payloads carry one, in `ts`.)
 */
import { create, type JsonObject, type JsonValue } from "@bufbuild/protobuf"
import { timestampFromMs } from "@bufbuild/protobuf/wkt"
import { assert, describe, it } from "@effect/vitest"
import { marker, parseMarker } from "../../bench/lib/common.ts"
import { type ItemSink, scanJsonUpdatesFrame, scanProtoFrame } from "../../bench/lib/khalaWire.ts"
import {
  encodedUpdate,
  encodeServerFrame,
  encodeUpdatesFrameJson,
  encodeUpdatesFrameProto,
  errorFrame,
  JSON_SUBPROTOCOL
} from "../../src/domain/Protocol.ts"
import { protocolError } from "../../src/domain/ErrorCode.ts"
import { encodeBody, encodeUpdate } from "../../src/domain/UpdateEncoding.ts"
import { ServerFrameSchema, type Update, UpdateSchema } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { seeded } from "../client/support/Fakes.ts"

interface JsonUpdate {
  readonly seq?: string | number
  readonly committed_at_ms?: string | number
  readonly run_event?: { readonly payload?: { readonly ts?: unknown } }
}

/** The reference: the items of a parsed JSON frame. */
const parsedItems = (text: string, sink: ItemSink): void => {
  const u = (JSON.parse(text) as { readonly updates?: { readonly items?: ReadonlyArray<JsonUpdate> } }).updates
  for (const it of u?.items ?? []) {
    const ev = it.run_event
    sink(Number(it.seq ?? 0), Number(it.committed_at_ms ?? 0), ev ? parseMarker(ev.payload?.ts) : Number.NaN, ev !== undefined)
  }
}

type Seen = Array<[number, number, number, boolean]>
const collect = () => {
  const seen: Seen = []
  return { seen, sink: (seq: number, committed: number, sent: number, isEvent: boolean) => void seen.push([seq, committed, sent, isEvent]) }
}

describe("bench JSON frame scan", () => {
  it("agrees with JSON.parse and with the protobuf scan on generated frames", () => {
    const rand = seeded(7)
    const int = (n: number) => Math.floor(rand() * n)
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[int(xs.length)]!
    const tricky = [
      "", "plain", "quote \" inside", "ends with backslash \\", "\\\"", "\\\\\"x", "{\"seq\":\"9\"}", "]},{",
      "héllo ✓ 😀", "@@", "\u0000\u001f", "committed_at_ms", "run_event"
    ]
    // Strings past the scanner's byte-walked prefix, with quotes and backslash runs anywhere.
    const long = () => Array.from({ length: 20 + int(60) }, () => pick(["a", "\"", "\\", "é", "}"])).join("")
    const keys = ["seq", "committed_at_ms", "run_event", "items", "kind", "a", "é", "quote\"key", "back\\slash"]
    const value = (depth: number): JsonValue => {
      switch (int(depth > 2 ? 4 : 6)) {
        case 0: return rand() < 0.5 ? pick(tricky) : long()
        case 1: return int(1000) - 500
        case 2: return pick([true, false, null])
        case 3: return rand() * 1e6
        case 4: return Array.from({ length: int(4) }, () => value(depth + 1))
        default: return object(depth + 1)
      }
    }
    const object = (depth: number): JsonObject => Object.fromEntries(Array.from({ length: int(4) }, () => [pick(keys), value(depth)]))
    for (let frame = 0; frame < 300; frame++) {
      const updates: Array<Update> = []
      const items = int(12)
      let seq = 1 + int(1e9)
      for (let k = 0; k < items; k++, seq++) {
        const common = {
          seq: BigInt(seq),
          docVersion: BigInt(1 + int(50)),
          schemaVersion: 1,
          occurredAtMs: BigInt(1_700_000_000_000 + int(1e6)),
          committedAtMs: BigInt(rand() < 0.1 ? 0 : 1_700_000_000_000 + int(1e6))
        }
        const kind = int(3)
        updates.push(create(UpdateSchema, kind === 0
          ? {
            ...common,
            kind: "run.event",
            docKey: `run_event:r${k}`,
            body: {
              case: "runEvent",
              value: {
                runId: `r${k}`,
                seq: BigInt(k + 1),
                type: "run.step",
                payload: { ...object(1), ts: rand() < 0.9 ? marker(1_765_000_000_000 + rand() * 1e6) : "none" },
                occurredAt: timestampFromMs(1_700_000_000_000)
              }
            }
          }
          : kind === 1
          ? {
            ...common,
            kind: "run.summary",
            docKey: `run_summary:r${k}`,
            body: { case: "runSummary", value: { runId: `r${k}`, ownerUserId: pick(tricky), status: "running", eventCount: 3n } }
          }
          : {
            ...common,
            kind: "worker.event",
            docKey: `worker_event:w${k}`,
            body: { case: "workerEvent", value: { workerId: `w${k}`, seq: 2n, type: "worker.event", payload: object(1) } }
          }))
      }
      // The server's write-time encoding (templates) where it applies, else the canonical one.
      const encoded = updates.map((u) => {
        if (u.committedAtMs === 0n) return encodedUpdate(u)
        const body = encodeBody(u.body)
        return encodeUpdate({
          seq: Number(u.seq),
          kind: u.kind,
          docKey: u.docKey,
          docVersion: Number(u.docVersion),
          schemaVersion: u.schemaVersion,
          occurredAtMs: Number(u.occurredAtMs),
          committedAtMs: Number(u.committedAtMs)
        }, body)
      })
      const header = { topic: pick(["run/r1", "run/quote\"d", ""]), epoch: pick(["e1", ""]), replay: rand() < 0.5 }
      const json = encodeUpdatesFrameJson(header, encoded.map((e) => e.json))
      const proto = encodeUpdatesFrameProto(header, encoded.map((e) => e.pb))
      const byScan = collect()
      const byParse = collect()
      const byProto = collect()
      assert.isTrue(scanJsonUpdatesFrame(Buffer.from(json, "utf8"), byScan.sink))
      parsedItems(json, byParse.sink)
      scanProtoFrame(Buffer.from(proto), byProto.sink)
      assert.deepStrictEqual(byScan.seen, byParse.seen, json)
      assert.deepStrictEqual(byScan.seen, byProto.seen, json)
      assert.strictEqual(byScan.seen.length, items)
    }
  })

  it("leaves every other frame to the full decoder", () => {
    const { seen, sink } = collect()
    const other = encodeServerFrame(JSON_SUBPROTOCOL, errorFrame(protocolError("bad_request", "no")))
    assert.isFalse(scanJsonUpdatesFrame(Buffer.from(other as string, "utf8"), sink))
    const welcome = encodeServerFrame(JSON_SUBPROTOCOL, create(ServerFrameSchema, { frame: { case: "welcome", value: {} as never } }))
    assert.isFalse(scanJsonUpdatesFrame(Buffer.from(welcome as string, "utf8"), sink))
    assert.isTrue(scanJsonUpdatesFrame(Buffer.from('{"updates":{}}'), sink))
    assert.deepStrictEqual(seen, [])
  })
})
