/**
 * A server→client WebSocket data frame (RFC 6455 §5.2) as the bytes written to the TCP socket:
 * header (FIN, opcode binary for protobuf / text for JSON, unmasked length) and payload in one
 * buffer, so one delivery is one `socket.write` of shared bytes.
 *
 * `ws.send` builds a header per call, writes header and payload as two corked writes, and turns a
 * string into UTF-8 per call; to 1000 subscribers of one topic that is 1000 headers and, for JSON,
 * 1000 encodings of the same text. Fanout hands the same encoded frame to every subscriber in turn,
 * so each wire frame is built once, keyed by the frame's identity (`bench`: 3.9 → 3.0 µs of
 * server CPU per delivery, most of the rest is the write syscall). Encoded frames are never
 * mutated after encoding, so identity is a sound key.
 */
import { type EncodedFrame, Utf8Text } from "../../domain/Protocol.ts"

const OPCODE_TEXT = 0x1
const OPCODE_BINARY = 0x2
const FIN = 0x80

/** The frame's bytes with a header for a payload of `length` bytes (no masking: server frames). */
const header = (opcode: number, length: number): Buffer => {
  if (length < 126) {
    const h = Buffer.allocUnsafe(2)
    h[0] = FIN | opcode
    h[1] = length
    return h
  }
  if (length < 65_536) {
    const h = Buffer.allocUnsafe(4)
    h[0] = FIN | opcode
    h[1] = 126
    h.writeUInt16BE(length, 2)
    return h
  }
  const h = Buffer.allocUnsafe(10)
  h[0] = FIN | opcode
  h[1] = 127
  h.writeUInt32BE(Math.floor(length / 0x1_0000_0000), 2)
  h.writeUInt32BE(length >>> 0, 6)
  return h
}

/**
 * The opcode and payload bytes of a frame: text (UTF-8) for strings and `Utf8Text`, binary else.
 * Only a string is encoded (a copy); bytes are used as they are.
 */
const payloadOf = (frame: EncodedFrame): { readonly opcode: number; readonly payload: Uint8Array } =>
  typeof frame === "string"
    ? { opcode: OPCODE_TEXT, payload: Buffer.from(frame, "utf8") }
    : frame instanceof Utf8Text
    ? { opcode: OPCODE_TEXT, payload: frame.bytes }
    : { opcode: OPCODE_BINARY, payload: frame }

/** Builds the wire frame of one encoded frame: binary for bytes, text (UTF-8) for strings. */
export const buildWireFrame = (frame: EncodedFrame): Buffer => {
  const { opcode, payload } = payloadOf(frame)
  const h = header(opcode, payload.byteLength)
  const wire = Buffer.allocUnsafe(h.byteLength + payload.byteLength)
  wire.set(h, 0)
  wire.set(payload, h.byteLength)
  return wire
}

/** Binary frames' wire frames, built once per frame object, however far apart its writes are. */
const binaryWire = new WeakMap<Uint8Array, Buffer>()
let lastText: string | undefined
let lastTextWire: Buffer | undefined

/**
 * Binary payloads from this size on are written as header + payload under cork (one `writev`, no
 * copy), as `ws.send` does: copying them into a wire frame would cost more than the header saves.
 */
const COPY_LIMIT = 16 * 1024

/**
 * The wire frame of `frame`, built once per frame: binary frames (protobuf) are remembered per
 * frame object (a `WeakMap`: subscribers of one delivery share it whatever order and time they are
 * written in, e.g. behind a backlog or interleaved with JSON subscribers), text frames (JSON) for
 * consecutive writes of the same text.
 */
export const wireFrame = (frame: EncodedFrame): Buffer => {
  // Text already in UTF-8 is a replay frame: one connection's, written once.
  if (frame instanceof Utf8Text) return buildWireFrame(frame)
  if (typeof frame === "string") {
    if (lastTextWire !== undefined && lastText === frame) return lastTextWire
    const wire = buildWireFrame(frame)
    lastText = frame
    lastTextWire = wire
    return wire
  }
  let wire = binaryWire.get(frame)
  if (wire === undefined) {
    wire = buildWireFrame(frame)
    binaryWire.set(frame, wire)
  }
  return wire
}

/** What `writeFrame` needs of a TCP socket. */
export interface FrameSink {
  cork(): void
  uncork(): void
  write(chunk: Uint8Array): boolean
}

/**
 * Writes one data frame to the socket: a small one as its (shared) wire frame in one write, a
 * large one already in bytes (coalesced live batches, replay chunks) as header + payload under
 * cork.
 */
export const writeFrame = (socket: FrameSink, frame: EncodedFrame): void => {
  if (typeof frame !== "string") {
    const { opcode, payload } = payloadOf(frame)
    if (payload.byteLength >= COPY_LIMIT) {
      socket.cork()
      socket.write(header(opcode, payload.byteLength))
      socket.write(payload)
      socket.uncork()
      return
    }
  }
  socket.write(wireFrame(frame))
}
