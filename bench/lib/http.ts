/** Small keep-alive JSON HTTP client (node:http) for the Khala command path. */
import * as http from "node:http"

export interface HttpResponse {
  readonly status: number
  readonly body: string
}

export class HttpClient {
  private readonly agent: http.Agent
  private readonly url: URL

  constructor(base: string, maxSockets: number) {
    this.url = new URL(base)
    this.agent = new http.Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets })
  }

  request(method: string, path: string, token: string | undefined, body?: string): Promise<HttpResponse> {
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = {}
      if (token) headers["authorization"] = `Bearer ${token}`
      if (body !== undefined) {
        headers["content-type"] = "application/json"
        headers["content-length"] = Buffer.byteLength(body)
      }
      const req = http.request(
        { host: this.url.hostname, port: this.url.port, path, method, agent: this.agent, headers },
        (res) => {
          const chunks: Array<Buffer> = []
          res.on("data", (c: Buffer) => chunks.push(c))
          res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString("utf8") }))
          res.on("error", reject)
        }
      )
      req.on("error", reject)
      req.end(body)
    })
  }

  post(path: string, token: string | undefined, body: unknown) {
    return this.request("POST", path, token, JSON.stringify(body))
  }

  close() {
    this.agent.destroy()
  }
}
