/**
 * SmallMap behaves as a `Map` (random operation sequences compared step by step: size, get, has,
 * insertion-ordered iteration, return values) and, like a `Map`, tolerates deleting the current
 * entry while iterating.
 */
import { assert, describe, it } from "@effect/vitest"
import { SmallMap } from "../../src/domain/SmallMap.ts"

describe("SmallMap", () => {
  it("matches Map over random operation sequences", () => {
    let seed = 42
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed % n
    }
    for (let run = 0; run < 300; run++) {
      const small = new SmallMap<string, number>()
      const map = new Map<string, number>()
      for (let step = 0; step < 40; step++) {
        const key = `k${rand(4)}`
        switch (rand(4)) {
          case 0:
          case 1:
            small.set(key, step)
            map.set(key, step)
            break
          case 2:
            assert.strictEqual(small.delete(key), map.delete(key))
            break
          case 3:
            if (rand(8) === 0) {
              small.clear()
              map.clear()
            }
        }
        assert.strictEqual(small.size, map.size)
        assert.strictEqual(small.get(key), map.get(key))
        assert.strictEqual(small.has(key), map.has(key))
        assert.deepStrictEqual([...small.entries()], [...map.entries()])
        assert.deepStrictEqual([...small.keys()], [...map.keys()])
        assert.deepStrictEqual([...small.values()], [...map.values()])
        assert.deepStrictEqual([...small], [...map])
      }
    }
  })

  it("deleting while iterating visits every remaining entry once, as a Map does", () => {
    for (const n of [1, 2, 5]) {
      const small = new SmallMap<number, number>()
      for (let i = 0; i < n; i++) small.set(i, i)
      const seen: Array<number> = []
      for (const v of small.values()) {
        seen.push(v)
        small.delete(v) // the current one, as a delivery evicting a subscriber does
      }
      assert.deepStrictEqual(seen, Array.from({ length: n }, (_, i) => i))
      assert.strictEqual(small.size, 0)
    }
  })
})
