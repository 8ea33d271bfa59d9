import { assert, describe, it } from "@effect/vitest"
import { ErrorCode, ErrorCodeSchema } from "../../src/gen/openagents/sync/v1/errors_pb.ts"
import {
  closeCodeOf,
  errorCodeOf,
  isConnectionFatal,
  isRetryable,
  isWsErrorName,
  nameOfErrorCode,
  ProtocolError,
  protocolError,
  WS_ERROR_NAMES,
  WS_ERRORS
} from "../../src/domain/ErrorCode.ts"

describe("ErrorCode table", () => {
  it("maps every enum value but UNSPECIFIED to a name and back", () => {
    const values = ErrorCodeSchema.values.map((v) => v.number).filter((n) => n !== ErrorCode.UNSPECIFIED)
    assert.deepStrictEqual(values, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    for (const v of values) {
      const name = nameOfErrorCode(v)
      assert.isDefined(name)
      assert.strictEqual(errorCodeOf(name!), v)
    }
    assert.isUndefined(nameOfErrorCode(ErrorCode.UNSPECIFIED))
    assert.isUndefined(nameOfErrorCode(99))
  })

  it("maps every name to an enum value and back, in contract order", () => {
    assert.strictEqual(WS_ERROR_NAMES.length, 11)
    WS_ERROR_NAMES.forEach((name, i) => {
      assert.strictEqual(errorCodeOf(name), i + 1)
      assert.strictEqual(nameOfErrorCode(errorCodeOf(name)), name)
      assert.strictEqual(WS_ERRORS[name].name, name)
      assert.isTrue(isWsErrorName(name))
    })
    assert.isFalse(isWsErrorName("toString"))
    assert.isFalse(isWsErrorName("STALE_CURSOR"))
  })

  it("names are the lower-case enum names without the prefix", () => {
    for (const name of WS_ERROR_NAMES) {
      const enumName = ErrorCodeSchema.value[errorCodeOf(name)]!.name
      assert.strictEqual(enumName, `ERROR_CODE_${name.toUpperCase()}`)
    }
  })

  it("close codes are 4000 + enum number: 4001..4011", () => {
    assert.deepStrictEqual(WS_ERROR_NAMES.map(closeCodeOf), [4001, 4002, 4003, 4004, 4005, 4006, 4007, 4008, 4009, 4010, 4011])
  })

  it("fatal vs request-scoped per SPEC §10", () => {
    const fatal = WS_ERROR_NAMES.filter(isConnectionFatal)
    assert.deepStrictEqual(fatal, ["unauthenticated", "token_expired", "slow_consumer", "server_draining", "internal"])
    const retryable = WS_ERROR_NAMES.filter(isRetryable)
    assert.deepStrictEqual(retryable, ["rate_limited", "slow_consumer", "server_draining", "internal"])
  })

  it("ProtocolError exposes the table and honours a retryable override", () => {
    const e = new ProtocolError({ code: "stale_cursor", message: "stale", topic: "run/r1", floorSeq: 5n, headSeq: 9n })
    assert.strictEqual(e._tag, "ProtocolError")
    assert.strictEqual(e.errorCode, ErrorCode.STALE_CURSOR)
    assert.isFalse(e.fatal)
    assert.isFalse(e.isRetryable)
    assert.strictEqual(e.closeCode, 4001)
    assert.strictEqual(e.message, "stale")
    assert.strictEqual(e.floorSeq, 5n)
    const r = protocolError("bad_request", "later", { retryable: true, requestId: "q1" })
    assert.isTrue(r.isRetryable)
    assert.strictEqual(r.requestId, "q1")
    assert.strictEqual(r.code, "bad_request")
  })
})
