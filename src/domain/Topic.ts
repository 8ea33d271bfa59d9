/**
 * Topic names (SPEC §3): `run/<run_id>`, `worker/<worker_id>`, `user/<user_id>/runs`,
 * `user/<user_id>/workers`. Parsing is the only way from a client string to a topic, so access
 * checks always run on the resolved form, never on raw strings.
 */
import { isValidId } from "./Ids.ts"

export const MAX_TOPIC_LENGTH = 256

export type Topic =
  | { readonly _tag: "Run"; readonly runId: string }
  | { readonly _tag: "Worker"; readonly workerId: string }
  | { readonly _tag: "UserRuns"; readonly userId: string }
  | { readonly _tag: "UserWorkers"; readonly userId: string }

export const runTopic = (runId: string) => `run/${runId}`
export const workerTopic = (workerId: string) => `worker/${workerId}`
export const userRunsTopic = (userId: string) => `user/${userId}/runs`
export const userWorkersTopic = (userId: string) => `user/${userId}/workers`

export const formatTopic = (topic: Topic): string => {
  switch (topic._tag) {
    case "Run":
      return runTopic(topic.runId)
    case "Worker":
      return workerTopic(topic.workerId)
    case "UserRuns":
      return userRunsTopic(topic.userId)
    case "UserWorkers":
      return userWorkersTopic(topic.userId)
  }
}

/** Parses a topic name; `undefined` for anything malformed (→ `bad_request`). */
export const parseTopic = (name: unknown): Topic | undefined => {
  if (typeof name !== "string" || name.length === 0 || name.length > MAX_TOPIC_LENGTH) return undefined
  const parts = name.split("/")
  if (parts.length === 2) {
    const [prefix, id] = parts as [string, string]
    if (!isValidId(id)) return undefined
    if (prefix === "run") return { _tag: "Run", runId: id }
    if (prefix === "worker") return { _tag: "Worker", workerId: id }
    return undefined
  }
  if (parts.length === 3 && parts[0] === "user" && isValidId(parts[1])) {
    if (parts[2] === "runs") return { _tag: "UserRuns", userId: parts[1] }
    if (parts[2] === "workers") return { _tag: "UserWorkers", userId: parts[1] }
  }
  return undefined
}
