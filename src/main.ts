/**
 * Daemon entry: `npm start` / `khala serve`. SIGTERM/SIGINT close every layer in reverse order
 * (server, pool, embedded Postgres) and exit 0.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Exit, Layer } from "effect"
import { MainLive } from "./layers/Main.ts"

export const runDaemon = () =>
  NodeRuntime.runMain(Layer.launch(MainLive), {
    teardown: (exit, onExit) => onExit(Exit.isSuccess(exit) || Exit.hasInterrupts(exit) ? 0 : 1)
  })

if (import.meta.main) runDaemon()
