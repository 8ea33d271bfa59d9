/**
 * The WebSocket surface the Khala client uses: the WHATWG `WebSocket` subset (`on*` handlers,
 * `send`, `close`, `binaryType`, `readyState`) that browsers, Node ≥ 22's global `WebSocket` and
 * the `ws` package all implement, so any of them can be injected.
 */

/** A handler type compared bivariantly, so the DOM's `(this: WebSocket, ev: MessageEvent) => any` fits. */
type Handler<E> = { bivarianceHack(event: E): void }["bivarianceHack"]

export interface MessageEventLike {
  readonly data: unknown
}

export interface CloseEventLike {
  readonly code: number
  readonly reason: string
}

export interface WebSocketLike {
  binaryType: string
  readonly readyState: number
  send(data: string | Uint8Array<ArrayBuffer>): void
  close(code?: number, reason?: string): void
  onopen: Handler<unknown> | null
  onmessage: Handler<MessageEventLike> | null
  onclose: Handler<CloseEventLike> | null
  onerror: Handler<unknown> | null
}

export type WebSocketConstructor = new (url: string, protocols?: string | Array<string>) => WebSocketLike

/** `WebSocket.OPEN` */
export const OPEN = 1

/** The global `WebSocket` (browsers, Node ≥ 22), if there is one. */
export const globalWebSocket = (): WebSocketConstructor | undefined => {
  const ctor: unknown = Reflect.get(globalThis, "WebSocket")
  return typeof ctor === "function" ? (ctor as WebSocketConstructor) : undefined
}
