/**
 * SafeJson: JSON parsing for untrusted and stored payloads that does not depend on V8's object-key
 * handling in `JSON.parse`.
 *
 * Why: Node 24's V8 (nodejs/node#63785) can decode an escaped object key wrongly — once a key ending
 * in `"\\"` has been parsed, a later escaped key at the same place (`"\""`, `"\n"`, …) may come back
 * as `"\\"`. Payload keys are client data, so the live projection and a replay could read different
 * payloads. Text without a backslash cannot contain escaped keys and goes through `JSON.parse`
 * unchanged; anything else is parsed here: structure by this small recursive-descent parser, each
 * string and number literal by `JSON.parse` of that literal alone (literals are not affected).
 * Also rejects (with `undefined` → the caller's 400) strings Postgres cannot store: NUL characters
 * and lone surrogates.
 */
import type { JsonValue } from "./Json.ts"

export class JsonSyntaxError extends Error {
  override readonly name = "JsonSyntaxError"
}

const WS = new Set([0x20, 0x09, 0x0a, 0x0d])
const NUMBER = /-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/y

const parseSlow = (text: string): JsonValue => {
  let i = 0
  const skip = () => {
    while (i < text.length && WS.has(text.charCodeAt(i))) i++
  }
  const fail = (what: string): never => {
    throw new JsonSyntaxError(`${what} at position ${i}`)
  }
  const string = (): string => {
    const start = i
    i++ // opening quote
    while (i < text.length) {
      const c = text.charCodeAt(i)
      if (c === 0x22) {
        i++
        return JSON.parse(text.slice(start, i)) as string
      }
      if (c === 0x5c) i += 2
      else if (c < 0x20) fail("control character in string")
      else i++
    }
    return fail("unterminated string")
  }
  const value = (depth: number): JsonValue => {
    if (depth > 512) fail("nesting too deep")
    skip()
    const c = text[i]
    if (c === "{") {
      i++
      // Own-property writes (no prototype setter for "__proto__"), like JSON.parse.
      const out: { [k: string]: JsonValue } = {}
      skip()
      if (text[i] === "}") {
        i++
        return out
      }
      while (true) {
        skip()
        if (text[i] !== "\"") fail("expected a key")
        const key = string()
        skip()
        if (text[i] !== ":") fail("expected ':'")
        i++
        Object.defineProperty(out, key, { value: value(depth + 1), enumerable: true, writable: true, configurable: true })
        skip()
        if (text[i] === ",") {
          i++
          continue
        }
        if (text[i] === "}") {
          i++
          return out
        }
        fail("expected ',' or '}'")
      }
    }
    if (c === "[") {
      i++
      const out: Array<JsonValue> = []
      skip()
      if (text[i] === "]") {
        i++
        return out
      }
      while (true) {
        out.push(value(depth + 1))
        skip()
        if (text[i] === ",") {
          i++
          continue
        }
        if (text[i] === "]") {
          i++
          return out
        }
        fail("expected ',' or ']'")
      }
    }
    if (c === "\"") return string()
    if (text.startsWith("true", i)) {
      i += 4
      return true
    }
    if (text.startsWith("false", i)) {
      i += 5
      return false
    }
    if (text.startsWith("null", i)) {
      i += 4
      return null
    }
    NUMBER.lastIndex = i
    const m = NUMBER.exec(text)
    if (m) {
      i += m[0].length
      return JSON.parse(m[0]) as number
    }
    return fail("unexpected token")
  }
  const result = value(0)
  skip()
  if (i !== text.length) fail("unexpected trailing data")
  return result
}

/** `JSON.parse` without the escaped-key hazard; throws `SyntaxError`/`JsonSyntaxError` on bad input. */
export const parseJson = (text: string): JsonValue =>
  text.includes("\\") ? parseSlow(text) : (JSON.parse(text) as JsonValue)

/**
 * The first reason found (in key order) why `value` cannot be stored: objects and arrays nested
 * deeper than `maxDepth` levels (a scalar is depth 0, `{}` 1), or a string or key Postgres cannot
 * store (`jsonb`/`text`: a NUL, a lone surrogate); `undefined` if none. One walk, which never
 * descends past `maxDepth`, so its own recursion is bounded whatever it is given.
 */
export const jsonProblem = (value: unknown, maxDepth: number): "too_deep" | "unstorable" | undefined => {
  if (typeof value === "string") return isStorableString(value) ? undefined : "unstorable"
  if (typeof value !== "object" || value === null) return undefined
  if (maxDepth <= 0) return "too_deep"
  if (Array.isArray(value)) {
    for (const v of value) {
      const problem = jsonProblem(v, maxDepth - 1)
      if (problem) return problem
    }
    return undefined
  }
  for (const [k, v] of Object.entries(value)) {
    if (!isStorableString(k)) return "unstorable"
    const problem = jsonProblem(v, maxDepth - 1)
    if (problem) return problem
  }
  return undefined
}

/** True if every string and key can be stored by Postgres (`jsonb`/`text`): no NUL, no lone surrogate. */
export const isStorableJson = (value: unknown): boolean => jsonProblem(value, Number.POSITIVE_INFINITY) === undefined

export const isStorableString = (s: string): boolean => !s.includes("\u0000") && s.isWellFormed()
