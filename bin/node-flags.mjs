// The daemon's Node flags, chosen for the cores it may run on; shared by the `khala` launcher
// (hence `npm start`), the end-to-end tests and the benchmark. Plain JS, no dependencies.
// Why each flag: docs/OPERATIONS.md (memory and garbage collection).
import * as os from "node:os"

/** Cores this process may run on (its CPU affinity and, where libuv sees it, its cgroup quota). */
export const availableCores = () => (typeof os.availableParallelism === "function" ? os.availableParallelism() : os.cpus().length)

/**
 * `--max-semi-space-size=16` and `--heap-growing-percent=100` always (memory); on one core also
 * `--single-threaded-gc`: V8's parallel scavenges and concurrent marking then run on helper threads
 * that only take turns with the main thread on that core.
 */
export const daemonNodeFlags = (cores = availableCores()) => [
  "--max-semi-space-size=16",
  "--heap-growing-percent=100",
  ...(cores <= 1 ? ["--single-threaded-gc"] : [])
]
