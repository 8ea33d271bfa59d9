/**
 * A map that holds its first entry in two fields and becomes a `Map` only from the second on.
 * Per-connection and per-topic maps almost always hold one entry (an idle subscriber has one
 * subscription, on a topic of its own with one subscriber), and an empty-or-single `Map` still
 * costs its hash table (~200 bytes): at 10,000 idle connections that is two tables each.
 * Iteration follows insertion order like `Map`, and deleting during iteration is safe like `Map`
 * (a single entry is iterated from a snapshot; entries added during iteration may not be seen).
 */
export class SmallMap<K, V> {
  private map: Map<K, V> | undefined = undefined
  private hasOne = false
  private key: K | undefined = undefined
  private value: V | undefined = undefined

  get size(): number {
    return this.map !== undefined ? this.map.size : this.hasOne ? 1 : 0
  }

  get(key: K): V | undefined {
    if (this.map !== undefined) return this.map.get(key)
    return this.hasOne && this.key === key ? this.value : undefined
  }

  has(key: K): boolean {
    if (this.map !== undefined) return this.map.has(key)
    return this.hasOne && this.key === key
  }

  set(key: K, value: V): this {
    if (this.map !== undefined) {
      this.map.set(key, value)
    } else if (!this.hasOne || this.key === key) {
      this.hasOne = true
      this.key = key
      this.value = value
    } else {
      this.map = new Map([[this.key as K, this.value as V], [key, value]])
      this.hasOne = false
      this.key = this.value = undefined
    }
    return this
  }

  delete(key: K): boolean {
    if (this.map !== undefined) return this.map.delete(key)
    if (!this.hasOne || this.key !== key) return false
    this.hasOne = false
    this.key = this.value = undefined
    return true
  }

  clear(): void {
    this.map = undefined
    this.hasOne = false
    this.key = this.value = undefined
  }

  // Native iterators (no generator per call): a topic with many subscribers iterates its Map's own.
  entries(): IterableIterator<[K, V]> {
    if (this.map !== undefined) return this.map.entries()
    return (this.hasOne ? [[this.key as K, this.value as V] as [K, V]] : []).values()
  }

  keys(): IterableIterator<K> {
    if (this.map !== undefined) return this.map.keys()
    return (this.hasOne ? [this.key as K] : []).values()
  }

  values(): IterableIterator<V> {
    if (this.map !== undefined) return this.map.values()
    return (this.hasOne ? [this.value as V] : []).values()
  }

  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.entries()
  }
}
