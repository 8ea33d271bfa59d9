/**
 * An injectable WebSocket wrapper for end-to-end client tests: wraps a real implementation (the
 * `ws` package or Node's global `WebSocket`), records every socket the client opens, and can
 * `kill()` one the way a network failure would (the TCP connection is torn down; the client sees a
 * 1006 close and nothing else from that socket).
 */
import type { CloseEventLike, MessageEventLike, WebSocketConstructor, WebSocketLike } from "../../../src/client/socket.ts"

export interface ChaosSocketHandle {
  readonly url: string
  readonly readyState: number
  readonly killed: boolean
  /** Tears the socket down abruptly; false if it was not open (or already gone). */
  kill(): boolean
}

export const chaosWebSocket = (Underlying: WebSocketConstructor) => {
  const sockets: Array<ChaosSocketHandle> = []

  class ChaosSocket implements WebSocketLike, ChaosSocketHandle {
    readonly url: string
    readonly inner: WebSocketLike
    killed = false
    onopen: ((event: unknown) => void) | null = null
    onmessage: ((event: MessageEventLike) => void) | null = null
    onclose: ((event: CloseEventLike) => void) | null = null
    onerror: ((event: unknown) => void) | null = null

    constructor(url: string, protocols?: string | Array<string>) {
      this.url = url
      this.inner = new Underlying(url, protocols)
      this.inner.onopen = (e) => {
        if (!this.killed) this.onopen?.(e)
      }
      this.inner.onmessage = (e) => {
        if (!this.killed) this.onmessage?.(e)
      }
      this.inner.onclose = (e) => {
        if (!this.killed) this.onclose?.(e)
      }
      // Always keep an error listener: `ws` throws on an unhandled 'error' after terminate().
      this.inner.onerror = (e) => {
        if (!this.killed) this.onerror?.(e)
      }
      sockets.push(this)
    }

    get binaryType(): string {
      return this.inner.binaryType
    }

    set binaryType(value: string) {
      this.inner.binaryType = value
    }

    get readyState(): number {
      return this.killed ? 3 : this.inner.readyState
    }

    send(data: string | Uint8Array<ArrayBuffer>): void {
      if (!this.killed) this.inner.send(data)
    }

    close(code?: number, reason?: string): void {
      this.inner.close(code, reason)
    }

    kill(): boolean {
      if (this.killed || this.inner.readyState !== 1) return false
      this.killed = true
      const terminate: unknown = Reflect.get(this.inner, "terminate")
      if (typeof terminate === "function") terminate.call(this.inner)
      else this.inner.close()
      setTimeout(() => this.onclose?.({ code: 1006, reason: "killed by the test" }), 0)
      return true
    }
  }

  return {
    WebSocket: ChaosSocket as WebSocketConstructor,
    sockets,
    current: (): ChaosSocketHandle | undefined => sockets.at(-1)
  }
}
