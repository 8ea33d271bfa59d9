import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import { isStorableJson, jsonProblem, parseJson } from "../../src/domain/SafeJson.ts"

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

  it("finds a payload's first problem in one walk bounded by the depth limit", () => {
    const nest = (levels: number): unknown => (levels === 0 ? 1 : { a: nest(levels - 1) })
    assert.isUndefined(jsonProblem(nest(3), 3))
    assert.strictEqual(jsonProblem(nest(4), 3), "too_deep")
    assert.strictEqual(jsonProblem([[[[]]]], 3), "too_deep")
    assert.isUndefined(jsonProblem("x", 0))
    assert.strictEqual(jsonProblem({ a: "\u0000", b: nest(9) }, 3), "unstorable")
    assert.strictEqual(jsonProblem({ b: nest(9), a: "\u0000" }, 3), "too_deep")
    assert.strictEqual(jsonProblem({ ["k\ud800"]: 1 }, 3), "unstorable")
    // far deeper than any stack could recurse: the walk stops at the limit
    let deep: unknown = 1
    for (let i = 0; i < 100_000; i++) deep = [deep]
    assert.strictEqual(jsonProblem(deep, 32), "too_deep")
  })
})
