/**
 * Node-only `WatermarkStore` backed by one JSON file (`{ "<topic>": { epoch, afterSeq } }`), for
 * CLIs and daemons. NOT part of the browser entry point (`./index.ts`): import this module by its
 * own path. Writes are atomic (temp file + rename) and coalesced: at most one write is in flight,
 * and it always writes the latest positions.
 */
import { mkdir, readFile, rename, writeFile } from "node:fs/promises"
import { dirname } from "node:path"
import { parseWatermark } from "./store.ts"
import type { Watermark, WatermarkStore } from "./store.ts"

export const fileStore = (path: string): WatermarkStore & { readonly flush: () => Promise<void> } => {
  let loaded: Promise<Map<string, Watermark>> | undefined
  let writing: Promise<void> = Promise.resolve()
  let queued = false

  const load = (): Promise<Map<string, Watermark>> => {
    loaded ??= readFile(path, "utf8").then(
      (text) => {
        const map = new Map<string, Watermark>()
        const json: unknown = JSON.parse(text)
        if (typeof json === "object" && json !== null) {
          for (const [topic, value] of Object.entries(json)) {
            const wm = parseWatermark(value)
            if (wm !== undefined) map.set(topic, wm)
          }
        }
        return map
      },
      (e: unknown) => {
        if (typeof e === "object" && e !== null && Reflect.get(e, "code") === "ENOENT") return new Map()
        throw e
      }
    )
    return loaded
  }

  const persist = (map: Map<string, Watermark>): Promise<void> => {
    if (queued) return writing
    queued = true
    writing = writing.catch(() => undefined).then(async () => {
      queued = false
      const tmp = `${path}.${Date.now().toString(36)}.${Math.random().toString(36).slice(2)}.tmp`
      await mkdir(dirname(path), { recursive: true })
      await writeFile(tmp, JSON.stringify(Object.fromEntries(map), null, 2) + "\n", "utf8")
      await rename(tmp, path)
    })
    return writing
  }

  return {
    get: async (topic) => (await load()).get(topic),
    set: async (topic, watermark) => {
      const map = await load()
      map.set(topic, { epoch: watermark.epoch, afterSeq: watermark.afterSeq })
      await persist(map)
    },
    delete: async (topic) => {
      const map = await load()
      if (map.delete(topic)) await persist(map)
    },
    flush: () => writing
  }
}
