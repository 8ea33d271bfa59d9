/**
 * The write-time Update encoder (domain/UpdateEncoding.ts) must produce exactly the bytes of
 * `toBinary` / `toJsonString` of the same Update built as a message: the journal stores them and
 * clients decode them with the generated code. Checked over the drafts of random run and worker
 * histories, with header fields at zero, small and near 2^53.
 */
import { create } from "@bufbuild/protobuf"
import { assert, describe, it } from "@effect/vitest"
import { Arbitrary, Schema } from "effect"
import { documentJson } from "../../src/domain/DocumentJson.ts"
import { encodedUpdate } from "../../src/domain/Protocol.ts"
import { bodyBytesOf, bodyEncoder, encodeBody, encodeUpdate, type UpdateHeader } from "../../src/domain/UpdateEncoding.ts"
import { UpdateSchema } from "../../src/gen/openagents/sync/v1/frames_pb.ts"
import type { JournalDraft } from "../../src/services/Journal.ts"
import {
  type ProjectionSpec,
  projectStep,
  runProjectionSpec,
  type StoredDoc,
  workerProjectionSpec
} from "../../src/services/Projector.ts"
import { runHistoryArbitrary, workerHistoryArbitrary } from "../support/Histories.ts"

const Num = Schema.Union([
  Schema.Literal(0),
  Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 300 })),
  Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }))
])
const Header = Arbitrary.schema(Schema.Struct({
  seq: Num,
  docVersion: Num,
  schemaVersion: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 4_294_967_295 })),
  occurredAtMs: Num,
  committedAtMs: Num,
  kind: Schema.String,
  docKey: Schema.String
}))

const check = (drafts: ReadonlyArray<JournalDraft>, h: Omit<UpdateHeader, "kind" | "docKey"> & { kind: string; docKey: string }) => {
  const memo = bodyEncoder()
  for (const d of drafts) {
    for (const header of [{ ...h }, { ...h, kind: d.kind, docKey: d.docKey }]) {
      const expected = encodedUpdate(create(UpdateSchema, {
        seq: BigInt(header.seq),
        kind: header.kind,
        docKey: header.docKey,
        docVersion: BigInt(header.docVersion),
        schemaVersion: header.schemaVersion,
        occurredAtMs: BigInt(header.occurredAtMs),
        committedAtMs: BigInt(header.committedAtMs),
        body: d.body
      }))
      for (const body of [encodeBody(d.body), memo(d.body)]) {
        const actual = encodeUpdate(header, body)
        assert.strictEqual(Buffer.from(actual.pb).toString("hex"), Buffer.from(expected.pb).toString("hex"))
        assert.strictEqual(actual.json, expected.json)
        assert.strictEqual(body?.json, JSON.stringify(documentJson(d.body)))
        // the body's bytes are found again in the stored Update (the journal's body hash)
        assert.deepStrictEqual(bodyBytesOf(actual.pb), body?.pb ?? new Uint8Array(0))
      }
    }
  }
}

describe("UpdateEncoding", () => {
  /** The journal drafts of a history, projected event by event as the Projector does. */
  const draftsOf = <E, Doc>(events: ReadonlyArray<E>, spec: (e: E) => ProjectionSpec<Doc>) => {
    let prev: StoredDoc<Doc> | undefined
    return events.flatMap((e) => {
      const step = projectStep(spec(e), prev)
      prev = step
      return step.drafts
    })
  }

  it.prop("run drafts: same bytes as toBinary / toJsonString", { h: runHistoryArbitrary(), header: Header }, ({ h, header }) => {
    check(draftsOf(h.events, runProjectionSpec), header)
  })

  it.prop("worker drafts: same bytes as toBinary / toJsonString", { h: workerHistoryArbitrary(), header: Header }, ({ h, header }) => {
    check(draftsOf(h.events, workerProjectionSpec), header)
  })

  it("an Update without a body", () => {
    const h = { seq: 3, kind: "k", docKey: "d", docVersion: 1, schemaVersion: 1, occurredAtMs: 5, committedAtMs: 6 }
    const expected = encodedUpdate(create(UpdateSchema, {
      seq: 3n, kind: "k", docKey: "d", docVersion: 1n, schemaVersion: 1, occurredAtMs: 5n, committedAtMs: 6n
    }))
    const actual = encodeUpdate(h, undefined)
    assert.deepStrictEqual(actual.pb, expected.pb)
    assert.strictEqual(actual.json, expected.json)
    assert.deepStrictEqual(bodyBytesOf(actual.pb), new Uint8Array(0))
  })
})
