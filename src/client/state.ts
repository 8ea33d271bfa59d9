/**
 * Local document state of one topic (docs/PROTOCOL.md §4–5): the documents by `doc_key` and the
 * applied watermark. Owns the apply rules, pure and synchronous:
 *
 * - an update with `seq ≤ watermark.afterSeq` is a duplicate and ignored;
 * - an update with `seq > watermark.afterSeq + 1` is a gap: rejected, nothing changes (the client
 *   treats it as a protocol error, drops the connection and resumes);
 * - otherwise the watermark advances to `seq`, and the document is replaced iff its `doc_version`
 *   is greater than the one held (older or equal versions change nothing).
 *
 * Events (`run.event`, the worker taxonomy) are immutable documents with `doc_version` 1 under
 * their own doc keys (`run_event:<run>:<seq>`); they are kept in the same map unless
 * `retainEvents` is false (then they are only reported as changes).
 */
import type { JsonValue } from "@bufbuild/protobuf"
import { documentBodyJson, isEventBody } from "./codec.ts"
import type { DocumentBody } from "./codec.ts"
import { FRESH_WATERMARK } from "./store.ts"
import type { Watermark } from "./store.ts"

/** One document of a topic as the client holds it. */
export interface KhalaDocument {
  readonly docKey: string
  readonly docVersion: number
  readonly kind: string
  /** The typed document (`{ case: "runSummary", value: RunSummary }`, …); see `documentJson`. */
  readonly document: DocumentBody
  /** Seq of the journal entry that produced this version (absent for snapshot documents). */
  readonly seq?: number
}

/** proto3 JSON (snake_case) of a document: exactly what `GET /sync/v1/snapshot` returns as `document`. */
export const documentJson = (doc: KhalaDocument): JsonValue => documentBodyJson(doc.document)

/** The fields of a wire `Update` the state needs (the generated `Update` satisfies it). */
export interface UpdateLike {
  readonly seq: bigint | number
  readonly kind: string
  readonly docKey: string
  readonly docVersion: bigint | number
  readonly body: DocumentBody
}

export type ApplyOutcome =
  /** The watermark advanced and the document is new or newer. */
  | { readonly _tag: "Applied"; readonly document: KhalaDocument }
  /** The watermark advanced; the held version was equal or newer, so the document is unchanged. */
  | { readonly _tag: "OlderVersion"; readonly held: number }
  /** `seq ≤ watermark`: already applied, ignored. */
  | { readonly _tag: "Duplicate" }
  /** `seq > watermark + 1`: entries are missing; nothing changed. */
  | { readonly _tag: "Gap"; readonly expected: number; readonly got: number }
  /** The update's epoch is not the watermark's: nothing changed. */
  | { readonly _tag: "EpochMismatch"; readonly expected: string; readonly got: string }

export interface TopicStateOptions {
  readonly retainEvents?: boolean
}

export class TopicState {
  readonly topic: string
  readonly retainEvents: boolean
  #watermark: Watermark
  readonly #documents = new Map<string, KhalaDocument>()

  constructor(topic: string, watermark: Watermark = FRESH_WATERMARK, options: TopicStateOptions = {}) {
    this.topic = topic
    this.#watermark = watermark
    this.retainEvents = options.retainEvents ?? true
  }

  get watermark(): Watermark {
    return this.#watermark
  }

  get size(): number {
    return this.#documents.size
  }

  get(docKey: string): KhalaDocument | undefined {
    return this.#documents.get(docKey)
  }

  /** A copy of the documents (safe to keep; later updates do not change it). */
  documents(): ReadonlyMap<string, KhalaDocument> {
    return new Map(this.#documents)
  }

  /** Adopts the journal epoch announced by `subscribed` for a fresh cursor (`""`, 0). */
  adoptEpoch(epoch: string): void {
    if (this.#watermark.epoch === "" && this.#watermark.afterSeq === 0) this.#watermark = { epoch, afterSeq: 0 }
  }

  /** Applies one journal entry of `epoch` (see the module comment for the rules). */
  apply(epoch: string, update: UpdateLike): ApplyOutcome {
    const seq = Number(update.seq)
    const wm = this.#watermark
    if (seq <= wm.afterSeq) return { _tag: "Duplicate" }
    if (wm.epoch !== "" && epoch !== wm.epoch) return { _tag: "EpochMismatch", expected: wm.epoch, got: epoch }
    if (seq !== wm.afterSeq + 1) return { _tag: "Gap", expected: wm.afterSeq + 1, got: seq }
    this.#watermark = { epoch, afterSeq: seq }
    const docVersion = Number(update.docVersion)
    const held = this.#documents.get(update.docKey)
    if (held !== undefined && held.docVersion >= docVersion) return { _tag: "OlderVersion", held: held.docVersion }
    const document: KhalaDocument = {
      docKey: update.docKey,
      docVersion,
      kind: update.kind,
      document: update.body,
      seq
    }
    if (this.retainEvents || !isEventBody(update.body)) this.#documents.set(update.docKey, document)
    return { _tag: "Applied", document }
  }

  /** Replaces every document and the watermark (snapshot bootstrap). */
  reset(watermark: Watermark, documents: Iterable<KhalaDocument>): void {
    this.#documents.clear()
    for (const d of documents) {
      const held = this.#documents.get(d.docKey)
      if (held === undefined || held.docVersion < d.docVersion) this.#documents.set(d.docKey, d)
    }
    this.#watermark = watermark
  }
}
