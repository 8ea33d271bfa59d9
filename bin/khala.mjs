#!/usr/bin/env node
// khala launcher. Owns one thing: running src/cli/khala.ts on Node >= 24 whatever `node` started
// this file (the system Node may be older and cannot run .ts). Plain JS, no dependencies, so it
// works on any Node that can parse ESM. It prefers the Node 24 that the `node` devDependency
// installs at <package root>/node_modules/node/bin/node, falls back to the running Node when that is
// already >= 24, re-execs the CLI with the same args and stdio, forwards SIGINT/SIGTERM/SIGHUP to
// the child, and exits with the child's exit code (or re-raises the signal that killed it).
import { spawn } from "node:child_process"
import { existsSync } from "node:fs"
import { constants } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { daemonNodeFlags } from "./node-flags.mjs"

// Node resolves the main module's symlinks (node_modules/.bin/khala -> ../../bin/khala.mjs), so this
// is the real package root.
const root = join(dirname(fileURLToPath(import.meta.url)), "..")
const cli = join(root, "src", "cli", "khala.ts")
const bundled = join(root, "node_modules", "node", "bin", process.platform === "win32" ? "node.exe" : "node")
const runningMajor = Number(process.versions.node.split(".")[0])

const nodeBinary = existsSync(bundled) ? bundled : runningMajor >= 24 ? process.execPath : undefined
if (nodeBinary === undefined) {
  process.stderr.write(
    `khala: needs Node >= 24, but ${bundled} is missing and this is Node ${process.versions.node}.\n` +
      `Run \`npm install\` in ${root} (the \`node\` devDependency provides Node 24).\n`
  )
  process.exit(1)
}

// The daemon's flags (bin/node-flags.mjs; docs/OPERATIONS.md, memory), the same as `npm start`.
const child = spawn(nodeBinary, [...daemonNodeFlags, cli, ...process.argv.slice(2)], { stdio: "inherit" })

const forwarded = ["SIGINT", "SIGTERM", "SIGHUP"]
const forward = (signal) => {
  if (child.exitCode === null && child.signalCode === null) child.kill(signal)
}
for (const signal of forwarded) process.on(signal, forward)

child.on("error", (error) => {
  process.stderr.write(`khala: cannot start ${nodeBinary}: ${error.message}\n`)
  process.exit(1)
})

child.on("exit", (code, signal) => {
  for (const s of forwarded) process.off(s, forward)
  if (signal !== null) {
    // Die the same way the child did, so callers see "killed by SIGTERM" and not a plain code.
    process.kill(process.pid, signal)
    // Signals without a default fatal action (or ignored ones) fall through to a 128+n code.
    setTimeout(() => process.exit(128 + (constants.signals[signal] ?? 0)), 100)
    return
  }
  process.exit(code ?? 1)
})
