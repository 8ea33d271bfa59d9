/**
 * Run event validation: the fast path (`validRunEvent`, no Effect or Schema decode per event) gives
 * exactly what the full validation gives, and it takes every event from a JSON body that the full
 * validation accepts; whatever it passes on goes through the full validation (which words the 400).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { validateRunEventFully, validRunEvent } from "../../src/services/RunCommands.ts"
import { seeded } from "../client/support/Fakes.ts"

const NOW = 1_765_000_000_000

const fullValidation = (runId: string, raw: unknown) => Effect.runSyncExit(validateRunEventFully(runId, raw, NOW))

describe("run event validation", () => {
  it("the fast path agrees with the full validation on generated JSON bodies, valid or not", () => {
    const rand = seeded(23)
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(rand() * xs.length)]!
    const strings = ["", "u1", "a".repeat(129), "bad id", "k", "x".repeat(256), "x".repeat(257), "\u0000", "\ud800x", "é"]
    const times = ["2025-01-02T03:04:05Z", "2025-01-02T03:04:05.678+02:00", "1969-12-31T23:59:59Z", "yesterday", "2025-01-02", "10000-01-01T00:00:00Z"]
    const payloads: ReadonlyArray<unknown> = [
      {},
      { n: 1, s: "text", nested: { a: [1, "b", null, true] } },
      { s: "nul\u0000" },
      { s: "lone \udc00" },
      [1, 2],
      null,
      "string",
      7,
      JSON.parse('{"__proto__": {"x": 1}, "ok": 1}'),
      JSON.parse(`${"{\"a\":".repeat(40)}1${"}".repeat(40)}`)
    ]
    let fastCount = 0
    for (let round = 0; round < 3000; round++) {
      const body: Record<string, unknown> = {}
      if (rand() < 0.95) body["type"] = pick(["run.created", "run.step", "run.finished", "run.failed", "run.bogus", 5])
      if (rand() < 0.7) body["payload"] = pick(payloads)
      if (rand() < 0.4) body["owner_user_id"] = rand() < 0.9 ? pick(strings) : 3
      if (rand() < 0.3) body["idempotency_key"] = rand() < 0.9 ? pick(strings) : null
      if (rand() < 0.3) body["occurred_at"] = rand() < 0.9 ? pick(times) : 12
      if (rand() < 0.2) body["run_id"] = "r1" // a batch item's extra key
      if (rand() < 0.1) body["extra"] = { anything: true }
      const raw: unknown = rand() < 0.02 ? pick([null, [], "x", 1]) : JSON.parse(JSON.stringify(body))
      const runId = rand() < 0.95 ? "r1" : pick(strings)
      const fast = validRunEvent(runId, raw, NOW)
      const full = fullValidation(runId, JSON.parse(JSON.stringify(raw)))
      if (fast === undefined) {
        assert.isTrue(Exit.isFailure(full), `the fast path passed on a valid event: ${JSON.stringify(raw)}`)
      } else {
        fastCount++
        assert.isTrue(Exit.isSuccess(full), `the fast path accepted an invalid event: ${JSON.stringify(raw)}`)
        assert.deepStrictEqual(fast, (full as Exit.Success<unknown>).value, JSON.stringify(raw))
      }
    }
    assert.isAbove(fastCount, 300, "enough valid events were generated")
  })

  it("objects that are not plain JSON go through the full validation", () => {
    class Payload {
      n = 1
    }
    assert.isUndefined(validRunEvent("r1", { type: "run.step", payload: new Payload() }, NOW))
    assert.isUndefined(validRunEvent("r1", { type: "run.step", payload: undefined }, NOW))
    assert.isUndefined(validRunEvent("r1", { type: "run.step", occurred_at: undefined }, NOW))
    // The full validation accepts a class instance as a payload (copied into a plain object).
    assert.isTrue(Exit.isSuccess(fullValidation("r1", { type: "run.step", payload: new Payload() })))
  })
})
