/**
 * Snapshot bootstrap over HTTP (docs/PROTOCOL.md §5): `GET <snapshotUrl>?topic=…` with the sync
 * JWT, decoded into the same typed documents live updates produce. Browser-safe (`fetch`, `URL`).
 */
import type { JsonValue } from "@bufbuild/protobuf"
import { documentBodyFromJson } from "./codec.ts"
import { errorMessage, KhalaSnapshotError } from "./errors.ts"
import type { KhalaDocument } from "./state.ts"

export interface TopicSnapshot {
  readonly topic: string
  readonly epoch: string
  readonly headSeq: number
  readonly floorSeq: number
  readonly documents: ReadonlyArray<KhalaDocument>
  /** Documents of a kind this client does not know (skipped). */
  readonly skipped: ReadonlyArray<{ readonly docKey: string; readonly kind: string }>
}

export type FetchLike = (input: string, init: { readonly headers: Record<string, string> }) => Promise<{
  readonly status: number
  readonly text: () => Promise<string>
}>

/** `ws(s)://host[:port]/sync/v1` ⇒ `http(s)://host[:port]/sync/v1/snapshot`. */
export const deriveSnapshotUrl = (wsUrl: string): string => {
  const u = new URL(wsUrl)
  u.protocol = u.protocol === "wss:" ? "https:" : u.protocol === "ws:" ? "http:" : u.protocol
  u.pathname = `${u.pathname.replace(/\/+$/, "")}/snapshot`
  u.search = ""
  u.hash = ""
  return u.toString()
}

const withTopic = (snapshotUrl: string, topic: string): string => {
  const u = new URL(snapshotUrl)
  u.searchParams.set("topic", topic)
  return u.toString()
}

const num = (u: unknown): number | undefined => {
  const n = typeof u === "number" ? u : typeof u === "string" && u.trim() !== "" ? Number(u) : Number.NaN
  return Number.isSafeInteger(n) && n >= 0 ? n : undefined
}

const field = (o: unknown, key: string): unknown =>
  typeof o === "object" && o !== null ? Reflect.get(o, key) : undefined

/** Parses a snapshot body; throws a `KhalaSnapshotError` on anything malformed. */
export const parseSnapshot = (topic: string, body: unknown): TopicSnapshot => {
  const bad = (message: string) => new KhalaSnapshotError({ topic, status: 200, message })
  const epoch = field(body, "epoch")
  const headSeq = num(field(body, "head_seq"))
  const floorSeq = num(field(body, "floor_seq")) ?? (headSeq === undefined ? undefined : headSeq + 1)
  const docs = field(body, "documents")
  if (typeof epoch !== "string" || headSeq === undefined || floorSeq === undefined || !Array.isArray(docs)) {
    throw bad("malformed snapshot (expected {epoch, head_seq, floor_seq, documents})")
  }
  const documents: Array<KhalaDocument> = []
  const skipped: Array<{ docKey: string; kind: string }> = []
  for (const d of docs as ReadonlyArray<unknown>) {
    const docKey = field(d, "doc_key")
    const kind = field(d, "kind")
    const docVersion = num(field(d, "doc_version"))
    if (typeof docKey !== "string" || typeof kind !== "string" || docVersion === undefined) {
      throw bad("malformed snapshot document (expected {doc_key, doc_version, kind, document})")
    }
    let document
    try {
      document = documentBodyFromJson(kind, (field(d, "document") ?? null) as JsonValue)
    } catch (e) {
      throw bad(`undecodable document ${docKey}: ${errorMessage(e)}`)
    }
    if (document === undefined) skipped.push({ docKey, kind })
    else documents.push({ docKey, docVersion, kind, document })
  }
  return { topic, epoch, headSeq, floorSeq, documents, skipped }
}

/** Fetches and parses a topic's snapshot; rejects with a `KhalaSnapshotError`. */
export const fetchSnapshot = async (
  fetchFn: FetchLike,
  snapshotUrl: string,
  topic: string,
  token: string
): Promise<TopicSnapshot> => {
  let status = 0
  let text: string
  try {
    const res = await fetchFn(withTopic(snapshotUrl, topic), {
      headers: { authorization: `Bearer ${token}`, accept: "application/json" }
    })
    status = res.status
    text = await res.text()
  } catch (e) {
    throw new KhalaSnapshotError({ topic, status, message: `snapshot request failed: ${errorMessage(e)}` })
  }
  if (status !== 200) {
    throw new KhalaSnapshotError({ topic, status, message: `snapshot answered ${status}: ${text.slice(0, 300)}` })
  }
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch (e) {
    throw new KhalaSnapshotError({ topic, status, message: `snapshot body is not JSON: ${errorMessage(e)}` })
  }
  return parseSnapshot(topic, body)
}
