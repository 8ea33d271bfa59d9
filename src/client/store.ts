/**
 * Watermark persistence of the Khala client: the `WatermarkStore` interface (a topic's cursor,
 * docs/PROTOCOL.md §5) and the browser-safe implementations `memoryStore` and
 * `localStorageStore`. The Node file store lives in `./fileStore.ts` (it imports `node:fs`).
 *
 * A watermark is the position of the state the application holds: the client writes it only
 * after the updates up to `afterSeq` were applied. The store keeps positions only, not documents.
 */

/** A topic's cursor: the journal epoch and the last applied seq (0 with epoch "" = fresh start). */
export interface Watermark {
  readonly epoch: string
  readonly afterSeq: number
}

export interface WatermarkStore {
  readonly get: (topic: string) => Promise<Watermark | undefined>
  readonly set: (topic: string, watermark: Watermark) => Promise<void>
  readonly delete: (topic: string) => Promise<void>
}

export const FRESH_WATERMARK: Watermark = { epoch: "", afterSeq: 0 }

/** Validates a value read back from storage (anything malformed counts as absent). */
export const parseWatermark = (u: unknown): Watermark | undefined => {
  if (typeof u !== "object" || u === null) return undefined
  const epoch: unknown = Reflect.get(u, "epoch")
  const afterSeq: unknown = Reflect.get(u, "afterSeq")
  return typeof epoch === "string" && typeof afterSeq === "number" && Number.isSafeInteger(afterSeq) && afterSeq >= 0
    ? { epoch, afterSeq }
    : undefined
}

/** In-memory store (the default); `initial` pre-seeds positions (e.g. in tests). */
export const memoryStore = (
  initial: Iterable<readonly [string, Watermark]> | Readonly<Record<string, Watermark>> = []
): WatermarkStore & { readonly entries: () => ReadonlyMap<string, Watermark> } => {
  const map = new Map<string, Watermark>(
    Symbol.iterator in initial
      ? (initial as Iterable<readonly [string, Watermark]>)
      : Object.entries(initial as Readonly<Record<string, Watermark>>)
  )
  return {
    get: async (topic) => map.get(topic),
    set: async (topic, watermark) => {
      map.set(topic, { epoch: watermark.epoch, afterSeq: watermark.afterSeq })
    },
    delete: async (topic) => {
      map.delete(topic)
    },
    entries: () => new Map(map)
  }
}

/** The subset of the Web Storage API the store uses. */
export interface StorageLike {
  getItem(key: string): string | null
  setItem(key: string, value: string): void
  removeItem(key: string): void
}

const globalLocalStorage = (): StorageLike | undefined => {
  try {
    // Accessing `localStorage` throws in some sandboxed iframes and privacy modes.
    const storage: unknown = Reflect.get(globalThis, "localStorage")
    if (typeof storage !== "object" || storage === null) return undefined
    const probe = "__khala_probe__"
    const s = storage as StorageLike
    s.setItem(probe, "1")
    s.removeItem(probe)
    return s
  } catch {
    return undefined
  }
}

/**
 * `localStorage`-backed store (keys `<prefix><topic>`, JSON values). Falls back to memory when
 * storage is unavailable (Node, sandboxed iframes, privacy modes) or a write fails (quota): the
 * client keeps working, it just does not remember positions across page loads.
 */
export const localStorageStore = (prefix = "khala:watermark:", storage?: StorageLike): WatermarkStore => {
  const backing = storage ?? globalLocalStorage()
  const fallback = new Map<string, Watermark>()
  return {
    get: async (topic) => {
      if (fallback.has(topic)) return fallback.get(topic)
      if (backing === undefined) return undefined
      try {
        const raw = backing.getItem(prefix + topic)
        return raw === null ? undefined : parseWatermark(JSON.parse(raw))
      } catch {
        return undefined
      }
    },
    set: async (topic, watermark) => {
      const value = { epoch: watermark.epoch, afterSeq: watermark.afterSeq }
      if (backing !== undefined) {
        try {
          backing.setItem(prefix + topic, JSON.stringify(value))
          fallback.delete(topic)
          return
        } catch {
          // quota exceeded or storage revoked: remember in memory instead
        }
      }
      fallback.set(topic, value)
    },
    delete: async (topic) => {
      fallback.delete(topic)
      try {
        backing?.removeItem(prefix + topic)
      } catch {
        // nothing to do
      }
    }
  }
}
