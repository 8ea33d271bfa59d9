// The daemon's Node flags, shared by the `khala` launcher, the end-to-end tests and the benchmark
// (`npm start` spells the same flags out). Plain JS, no dependencies. Why each flag:
// docs/OPERATIONS.md (memory).
export const daemonNodeFlags = ["--max-semi-space-size=16", "--heap-growing-percent=100"]
