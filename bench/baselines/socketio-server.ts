/**
 * Baseline: a Socket.IO 4 server with `connectionStateRecovery` (its built-in missed-packet
 * replay after a short disconnection), rooms as topics, WebSocket transport only.
 *
 *   "sub"  (topics[], ack)        joins the rooms
 *   "pub"  (topic, msg, ack?)     io.to(topic).emit("m", msg)   (stored for recovery)
 *   clients receive "m" (msg, offset)
 *
 * Usage: node bench/baselines/socketio-server.ts <port>   (prints `READY <port>` when listening)
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { Server } from "socket.io"

const port = Number(process.argv[2] ?? 0)
const http = createServer()
const io = new Server(http, {
  transports: ["websocket"],
  perMessageDeflate: false,
  maxHttpBufferSize: 1 << 20,
  connectionStateRecovery: { maxDisconnectionDuration: 5 * 60_000, skipMiddlewares: true }
})

io.on("connection", (socket) => {
  socket.on("sub", (topics: ReadonlyArray<string>, ack?: (r: string) => void) => {
    socket.join([...topics])
    if (typeof ack === "function") ack("ok")
  })
  socket.on("pub", (topic: string, msg: unknown, ack?: (r: number) => void) => {
    io.to(topic).emit("m", msg)
    if (typeof ack === "function") ack(1)
  })
})

http.listen(port, "127.0.0.1", () => {
  process.stdout.write(`READY ${(http.address() as AddressInfo).port}\n`)
})

const stop = () => {
  io.close()
  process.exit(0)
}
process.on("SIGTERM", stop)
process.on("SIGINT", stop)
process.on("disconnect", stop)
