/**
 * SqlArrays: typed array parameters for the set-based statements (`unnest($1::text[], …)`).
 *
 * Given a plain JS array, sql-pg infers the array's type element by element — an object per
 * element, thousands per batch statement — and fails on an array of only nulls or of numbers on
 * both sides of 2^31 (int4 and int8 elements). These name the array type once; the elements are
 * written in binary as they are.
 */
import { PgTypes } from "@effect/sql-pg"

const arrayOf = <A>(arrayOid: number) => (value: ReadonlyArray<A>): PgTypes.Parameter => ({
  [PgTypes.ParameterTypeId]: PgTypes.ParameterTypeId,
  oid: arrayOid,
  value
})

/** `text[]`; `null` elements are SQL NULL. */
export const textArray = arrayOf<string | null>(PgTypes.OID.textArray)
/** `bigint[]` from bigints. */
export const int8Array = arrayOf<bigint>(PgTypes.OID.int8Array)
/** `integer[]`. */
export const int4Array = arrayOf<number>(PgTypes.OID.int4Array)
/** `bytea[]`. */
export const byteaArray = arrayOf<Uint8Array>(PgTypes.OID.byteaArray)
/** `timestamptz[]` from epoch milliseconds (or Dates); `null` elements are SQL NULL. */
export const timestamptzArray = arrayOf<number | Date | null>(PgTypes.OID.timestamptzArray)
