import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import { isStorableJson, parseJson } from "../../src/domain/SafeJson.ts"

describe("SafeJson", () => {
  it("decodes escaped keys correctly even after JSON.parse saw a key ending in a backslash", () => {
    JSON.parse('{"x\\\\":1}') // primes V8's key handling (nodejs/node#63785)
    assert.deepStrictEqual(Object.keys(parseJson('{"x\\"":1}') as object), ["x\""])
    assert.deepStrictEqual(Object.keys(parseJson('{"k":{"x\\n":1}}') as { k: object }).length, 1)
    assert.deepStrictEqual(Object.keys((parseJson('{"k":{"x\\n":1}}') as { k: object }).k), ["x\n"])
  })

  it("agrees with JSON.stringify round trips", () => {
    const samples: Array<unknown> = [
      { a: [1, 2, { b: null }], "c\\": "é\n\"", d: -1500, e: true, f: false, g: 0.5, h: 1e21, "\\u": "\u2028" },
      [],
      {},
      "s\\",
      3,
      null,
      [[[{ "\"": ["\\"] }]]]
    ]
    for (const v of samples) assert.deepStrictEqual(parseJson(JSON.stringify(v)), v)
    assert.deepStrictEqual(parseJson(' { "a\\\\" : [ 1 , 2 ] } '), { "a\\": [1, 2] })
  })

  it.prop("round-trips arbitrary JSON values", [Schema.Json], ([v]) => {
    const text = JSON.stringify(v)
    assert.deepStrictEqual(parseJson(text), JSON.parse(text))
  })

  it("keeps __proto__ as an own key like JSON.parse", () => {
    const v = parseJson('{"__proto__":{"x\\\\":1}}') as Record<string, unknown>
    assert.isTrue(Object.hasOwn(v, "__proto__"))
    assert.strictEqual(Object.getPrototypeOf(v), Object.prototype)
  })

  it("rejects malformed text", () => {
    for (const bad of ['{"a\\\\":}', '[1,\\]', '{"a\\\\":1}x', '{"a\\\\":01}', '"\\q"', '{"a\\\\" 1}', '["\\\\"']) {
      assert.throws(() => parseJson(bad), undefined, undefined, bad)
    }
  })

  it("flags values Postgres cannot store", () => {
    assert.isTrue(isStorableJson({ a: ["ok", 1, null] }))
    assert.isFalse(isStorableJson({ a: "x\u0000" }))
    assert.isFalse(isStorableJson({ "k\u0000": 1 }))
    assert.isFalse(isStorableJson(["\ud800"]))
  })
})
