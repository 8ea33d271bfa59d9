/**
 * ScratchWriter: a protobuf wire writer over one reused buffer, for the write-time encoders
 * (UpdateEncoding, EventBodyEncoding). Each encoding writes into the scratch buffer and `finish`
 * copies the result out once: one ArrayBuffer per encoded message, where the generic writer
 * allocates a fresh growing buffer per message and copies it out. Synchronous use only (an
 * encoding starts with `reset` and ends with `finish`).
 *
 * Length-delimited values reserve one length byte (`open`) and are closed with `close`, which
 * moves the value when its length needs a longer varint.
 */
export const WIRE_VARINT = 0
export const WIRE_I64 = 1
export const WIRE_LEN = 2

const utf8 = new TextEncoder()
/** Past this, a writer drops its buffer after the encoding instead of keeping it for the next. */
const MAX_KEPT_BYTES = 1 << 20

export class ScratchWriter {
  private buf = new Uint8Array(4096)
  private view = new DataView(this.buf.buffer)
  private pos = 0

  reset(): void {
    this.pos = 0
    // One huge payload must not pin megabytes for the life of the process.
    if (this.buf.length > MAX_KEPT_BYTES) {
      this.buf = new Uint8Array(4096)
      this.view = new DataView(this.buf.buffer)
    }
  }

  /** The bytes written since `reset`, copied out; the writer is reset. */
  finish(): Uint8Array {
    const out = this.buf.slice(0, this.pos)
    this.reset()
    return out
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.pos + n) size *= 2
    const next = new Uint8Array(size)
    next.set(this.buf.subarray(0, this.pos))
    this.buf = next
    this.view = new DataView(next.buffer)
  }

  /** A varint of a non-negative integer below 2^53. */
  varint(v: number): void {
    this.ensure(8)
    const buf = this.buf
    let pos = this.pos
    while (v > 0x7f) {
      buf[pos++] = (v % 0x80) | 0x80
      v = Math.floor(v / 0x80)
    }
    buf[pos++] = v
    this.pos = pos
  }

  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType)
  }

  /** A varint scalar field, left out when 0 (proto3's default). */
  uintField(field: number, v: number): void {
    if (v === 0) return
    this.tag(field, WIRE_VARINT)
    this.varint(v)
  }

  /** A string field, left out when empty (proto3's default). */
  stringField(field: number, s: string): void {
    if (s === "") return
    this.tag(field, WIRE_LEN)
    this.string(s)
  }

  /** A little-endian IEEE double (wire type I64). */
  double(v: number): void {
    this.ensure(8)
    this.view.setFloat64(this.pos, v, true)
    this.pos += 8
  }

  /** A length-prefixed UTF-8 string. */
  string(s: string): void {
    const n = s.length
    this.ensure(n * 3 + 5)
    const start = this.open()
    // ASCII is copied as is; from the first other character on, the encoder writes the rest.
    const buf = this.buf
    let pos = this.pos
    let i = 0
    for (; i < n; i++) {
      const c = s.charCodeAt(i)
      if (c > 0x7f) break
      buf[pos++] = c
    }
    if (i < n) pos += utf8.encodeInto(s.slice(i), buf.subarray(pos)).written
    this.pos = pos
    this.close(start)
  }

  /** Length-prefixed bytes. */
  bytes(b: Uint8Array): void {
    this.varint(b.length)
    this.ensure(b.length)
    this.buf.set(b, this.pos)
    this.pos += b.length
  }

  /**
   * A set `google.protobuf.Timestamp` field (written even when zero: a set message field is
   * present), its seconds and nanos non-negative and below 2^53.
   */
  timestampField(field: number, seconds: number, nanos: number): void {
    this.tag(field, WIRE_LEN)
    const at = this.open()
    this.uintField(1, seconds)
    this.uintField(2, nanos)
    this.close(at)
  }

  /** Reserves a one-byte length prefix; returns its position for `close`. */
  open(): number {
    this.ensure(1)
    return this.pos++
  }

  /** Writes the length of what followed `open`'s `start`, moving it if the varint needs more bytes. */
  close(start: number): void {
    const len = this.pos - start - 1
    if (len < 0x80) {
      this.buf[start] = len
      return
    }
    let extra = 0
    for (let v = len; v > 0x7f; v = Math.floor(v / 0x80)) extra++
    this.ensure(extra)
    const buf = this.buf
    buf.copyWithin(start + 1 + extra, start + 1, this.pos)
    let v = len
    let p = start
    while (v > 0x7f) {
      buf[p++] = (v % 0x80) | 0x80
      v = Math.floor(v / 0x80)
    }
    buf[p] = v
    this.pos += extra
  }
}
