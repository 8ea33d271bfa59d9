/**
 * Cursor rules (SPEC §4, §10 "Cursors"): whether a client position can be served.
 *
 * - empty epoch with after_seq 0 ⇒ a fresh start (served from the first retained entry, if the
 *   topic has not been compacted past seq 1);
 * - any other epoch that is not the journal's ⇒ stale;
 * - after_seq > head_seq (a client ahead of the server) ⇒ stale;
 * - after_seq < floor_seq - 1 (entries it needs were compacted) ⇒ stale.
 */
export interface Position {
  readonly epoch: string
  readonly floorSeq: number
  readonly headSeq: number
}

export type CursorCheck =
  | { readonly _tag: "Ok" }
  | { readonly _tag: "Stale"; readonly reason: string }

export const checkCursor = (afterSeq: number, epoch: string, position: Position): CursorCheck => {
  const fresh = epoch === "" && afterSeq === 0
  if (!fresh && epoch !== position.epoch) {
    return { _tag: "Stale", reason: epoch === "" ? "a cursor with after_seq > 0 needs its epoch" : "the journal epoch changed" }
  }
  if (afterSeq > position.headSeq) return { _tag: "Stale", reason: "after_seq is ahead of the topic head" }
  if (afterSeq < position.floorSeq - 1) return { _tag: "Stale", reason: "entries after after_seq were compacted" }
  return { _tag: "Ok" }
}
