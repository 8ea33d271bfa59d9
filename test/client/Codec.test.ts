/**
 * Client SDK building blocks: the browser-safe codec against the server's codec (both
 * subprotocols), JWT `exp` parsing, snapshot URL/body parsing, the watermark stores, and a static
 * check that nothing under src/client (but fileStore.ts) imports Node-only modules.
 */
import { create } from "@bufbuild/protobuf"
import { assert, describe, it } from "@effect/vitest"
import { Result } from "effect"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import WS from "ws"
import {
  decodeServerFrame,
  documentBodyFromJson,
  documentBodyJson,
  encodeClientFrame,
  errorCodeName,
  isDecodeFailure
} from "../../src/client/codec.ts"
import { fileStore } from "../../src/client/fileStore.ts"
import { jwtExpiresAtMs } from "../../src/client/jwt.ts"
import { deriveSnapshotUrl, parseSnapshot } from "../../src/client/snapshot.ts"
import type { WebSocketConstructor } from "../../src/client/socket.ts"
import { localStorageStore, memoryStore } from "../../src/client/store.ts"
import type { StorageLike } from "../../src/client/store.ts"
import * as Protocol from "../../src/domain/Protocol.ts"
import { documentJson as serverDocumentJson } from "../../src/domain/Documents.ts"
import { ErrorCode } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import { ServerFrameSchema, SubscribeSchema, UpdateSchema } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import { fakeJwt, runEventUpdate, runSummaryUpdate } from "./support/Fakes.ts"

// Compile-time: the global WebSocket (Node ≥ 22, browsers) and `ws` fit the injectable constructor.
const _globalFits: WebSocketConstructor = WebSocket
const _wsFits: WebSocketConstructor = WS
void _globalFits
void _wsFits

describe("codec", () => {
  for (const sp of ["khala.v1.proto", "khala.v1.json"] as const) {
    it(`${sp}: client frames decode on the server; server frames decode on the client`, () => {
      const frame = {
        case: "subscribe",
        value: create(SubscribeSchema, { requestId: "s1", cursors: [{ topic: "run/r1", afterSeq: 42n, epoch: "e" }] })
      } as const
      const encoded = encodeClientFrame(sp, frame)
      assert.strictEqual(typeof encoded === "string", sp === "khala.v1.json")
      const decoded = Protocol.decodeClientFrame(sp, encoded, 65_536)
      assert.isTrue(Result.isSuccess(decoded))
      if (Result.isSuccess(decoded)) assert.deepStrictEqual(decoded.success.frame, frame)

      const update = runSummaryUpdate(7, 3)
      const wire = Protocol.encodeUpdatesFrame(sp, {
        topic: "run/r1",
        epoch: "e",
        replay: true,
        items: [Protocol.encodedUpdate(update), Protocol.encodedUpdate(runEventUpdate(8, 1))]
      })
      // As browsers deliver it: ArrayBuffer for binary, string for text.
      const data = typeof wire === "string" ? wire : wire.buffer.slice(wire.byteOffset, wire.byteOffset + wire.byteLength)
      const got = decodeServerFrame(sp, data)
      assert.isFalse(isDecodeFailure(got))
      if (!isDecodeFailure(got) && got.case === "updates") {
        assert.deepStrictEqual(got.value.items[0], create(UpdateSchema, update))
        assert.strictEqual(got.value.replay, true)
      } else {
        assert.fail("expected updates")
      }
    })
  }

  it("ignores unknown JSON fields from a newer server; reports garbage as a failure, never throws", () => {
    const got = decodeServerFrame("khala.v1.json", `{"caught_up":{"topic":"t","seq":"5","future":1},"other":{}}`)
    assert.isFalse(isDecodeFailure(got))
    assert.isTrue(isDecodeFailure(decodeServerFrame("khala.v1.json", "{nope")))
    assert.isTrue(isDecodeFailure(decodeServerFrame("khala.v1.proto", new Uint8Array([0xff, 0xff, 0xff]))))
    assert.isTrue(isDecodeFailure(decodeServerFrame("khala.v1.proto", "text")))
    assert.isTrue(isDecodeFailure(decodeServerFrame("khala.v1.proto", { blob: true })))
  })

  it("names error codes by the public taxonomy", () => {
    assert.strictEqual(errorCodeName(ErrorCode.STALE_CURSOR), "stale_cursor")
    assert.strictEqual(errorCodeName(ErrorCode.INTERNAL), "internal")
    assert.strictEqual(errorCodeName(99), "unspecified")
  })

  it("document JSON matches the server's, and snapshot JSON decodes back to the same typed body", () => {
    for (const u of [runSummaryUpdate(1, 4, "r9", "completed"), runEventUpdate(2, 7, "r9")]) {
      const json = documentBodyJson(u.body)
      assert.deepStrictEqual(json, serverDocumentJson(u.body))
      const back = documentBodyFromJson(u.kind, json)
      assert.deepStrictEqual(back, u.body)
    }
    assert.isUndefined(documentBodyFromJson("something.new", {}))
    assert.strictEqual(documentBodyFromJson("worker.heartbeat", { worker_id: "w1" })?.case, "workerEvent")
  })

  it("server frames built with the generated schema round-trip (sanity of the fixtures)", () => {
    const f = create(ServerFrameSchema, { frame: { case: "heartbeat", value: { serverTimeMs: 1n } } })
    const bytes = Protocol.encodeServerFrame("khala.v1.proto", f)
    const got = decodeServerFrame("khala.v1.proto", bytes)
    assert.strictEqual(isDecodeFailure(got) ? "" : got.case, "heartbeat")
  })
})

describe("jwt", () => {
  it("reads exp (seconds ⇒ ms) without verifying; anything else is undefined", () => {
    assert.strictEqual(jwtExpiresAtMs(fakeJwt({ sub: "ü-ser", exp: 1_800_000_000 })), 1_800_000_000_000)
    assert.isUndefined(jwtExpiresAtMs(fakeJwt({ sub: "u" })))
    assert.isUndefined(jwtExpiresAtMs("not a jwt"))
    assert.isUndefined(jwtExpiresAtMs("a.%%%.c"))
    assert.isUndefined(jwtExpiresAtMs(`a.${btoa("[1,2]")}.c`))
  })
})

describe("snapshot", () => {
  it("derives the snapshot URL from the WebSocket URL", () => {
    assert.strictEqual(deriveSnapshotUrl("ws://127.0.0.1:4100/sync/v1"), "http://127.0.0.1:4100/sync/v1/snapshot")
    assert.strictEqual(deriveSnapshotUrl("wss://khala.example/sync/v1/?x=1"), "https://khala.example/sync/v1/snapshot")
  })

  it("parses a snapshot body (numbers or strings for seqs), rejects malformed ones", () => {
    const s = parseSnapshot("run/r1", {
      topic: "run/r1",
      epoch: "e",
      head_seq: "9",
      floor_seq: 3,
      documents: [
        { doc_key: "run_summary:r1", doc_version: 2, kind: "run.summary", document: { run_id: "r1", status: "running" } },
        { doc_key: "x:1", doc_version: 1, kind: "x.new", document: {} }
      ]
    })
    assert.deepStrictEqual([s.epoch, s.headSeq, s.floorSeq, s.documents.length, s.skipped], ["e", 9, 3, 1, [{ docKey: "x:1", kind: "x.new" }]])
    assert.throws(() => parseSnapshot("run/r1", { epoch: "e" }))
    assert.throws(() => parseSnapshot("run/r1", { epoch: "e", head_seq: 1, documents: [{ doc_key: 1 }] }))
  })
})

describe("watermark stores", () => {
  it("memoryStore: get/set/delete, pre-seeded", async () => {
    const s = memoryStore({ "run/a": { epoch: "e", afterSeq: 3 } })
    assert.deepStrictEqual(await s.get("run/a"), { epoch: "e", afterSeq: 3 })
    await s.set("run/b", { epoch: "e", afterSeq: 1 })
    await s.delete("run/a")
    assert.isUndefined(await s.get("run/a"))
    assert.deepStrictEqual([...s.entries().keys()], ["run/b"])
  })

  it("localStorageStore: uses the storage, ignores garbage, falls back to memory when it fails", async () => {
    const data = new Map<string, string>()
    let full = false
    const storage: StorageLike = {
      getItem: (k) => data.get(k) ?? null,
      setItem: (k, v) => {
        if (full) throw new Error("QuotaExceededError")
        data.set(k, v)
      },
      removeItem: (k) => {
        data.delete(k)
      }
    }
    const s = localStorageStore("p:", storage)
    await s.set("run/a", { epoch: "e", afterSeq: 5 })
    assert.strictEqual(data.get("p:run/a"), `{"epoch":"e","afterSeq":5}`)
    assert.deepStrictEqual(await s.get("run/a"), { epoch: "e", afterSeq: 5 })
    data.set("p:run/bad", "{garbage")
    assert.isUndefined(await s.get("run/bad"))
    full = true
    await s.set("run/a", { epoch: "e", afterSeq: 6 })
    assert.deepStrictEqual(await s.get("run/a"), { epoch: "e", afterSeq: 6 })
    // No storage at all (Node): memory only.
    const none = localStorageStore()
    await none.set("t", { epoch: "", afterSeq: 1 })
    assert.deepStrictEqual(await none.get("t"), { epoch: "", afterSeq: 1 })
  })

  it("fileStore: persists across instances, atomically, with coalesced writes", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "khala-client-"))
    try {
      const file = path.join(dir, "nested", "watermarks.json")
      const a = fileStore(file)
      assert.isUndefined(await a.get("run/x"))
      await Promise.all(Array.from({ length: 50 }, (_, i) => a.set("run/x", { epoch: "e", afterSeq: i + 1 })))
      await a.set("run/y", { epoch: "e", afterSeq: 2 })
      await a.flush()
      const b = fileStore(file)
      assert.deepStrictEqual(await b.get("run/x"), { epoch: "e", afterSeq: 50 })
      assert.deepStrictEqual(await b.get("run/y"), { epoch: "e", afterSeq: 2 })
      await b.delete("run/y")
      assert.isUndefined(await fileStore(file).get("run/y"))
      assert.deepStrictEqual(fs.readdirSync(path.dirname(file)), ["watermarks.json"], "no temp files left")
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("browser safety", () => {
  it("nothing under src/client but fileStore.ts imports node:*, ws or uses Buffer/process", () => {
    const dir = path.join(import.meta.dirname, "../../src/client")
    const src = path.resolve(dir, "..")
    const files = fs.readdirSync(dir).filter((f) => f.endsWith(".ts") && f !== "fileStore.ts")
    assert.isAbove(files.length, 5)
    // Walk every relative import from the client entry points: each module reached (shared domain
    // modules included) must be browser-safe.
    const seen = new Set<string>()
    const queue = files.map((f) => path.join(dir, f))
    while (queue.length > 0) {
      const file = queue.pop()!
      if (seen.has(file)) continue
      seen.add(file)
      const rel = path.relative(src, file)
      const code = fs.readFileSync(file, "utf8")
        .replace(/\/\*[\s\S]*?\*\//g, "")
        .replace(/\/\/.*$/gm, "")
      assert.notMatch(code, /from\s+"node:|import\("node:|require\(/, rel)
      assert.notMatch(code, /from\s+"ws"/, rel)
      assert.notMatch(code, /\bBuffer\b|\bprocess\./, rel)
      assert.notMatch(code, /fileStore/, `${rel} must not pull the Node file store`)
      for (const m of code.matchAll(/from\s+"(\.\.?\/[^"]+)"/g)) {
        const target = path.resolve(path.dirname(file), m[1]!)
        assert.isTrue(target.startsWith(src), `${rel} imports ${m[1]} outside src/`)
        queue.push(target)
      }
    }
    assert.isTrue([...seen].some((f) => f.includes(`${path.sep}domain${path.sep}`)), "shared domain modules are checked too")
  })
})
