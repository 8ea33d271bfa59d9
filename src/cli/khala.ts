/**
 * `khala` CLI entry (run by `bin/khala.mjs` on Node 24, or `npm run khala -- <args>`).
 *
 * Owns the command table, the top-level help, and the mapping of outcomes to exit codes:
 * 0 ok, 1 error (one line on stderr), 2 drift found, 64 usage error (usage on stderr).
 * Each subcommand lives in `LocalCommands.ts` (in-process: serve, migrate, token) or
 * `AdminCommands.ts` (HTTP to a running daemon: drift, reproject, drain) or `TailCommand.ts` (a
 * topic's updates over WebSocket through the client SDK). To add a command, implement a `Command`
 * and add it to `commands` below.
 */
import { readFileSync } from "node:fs"
import { drainCommand, driftCommand, reprojectCommand } from "./AdminCommands.ts"
import {
  type CliIO,
  CliError,
  type Command,
  EXIT_ERROR,
  EXIT_OK,
  EXIT_USAGE,
  HelpRequested,
  processIO,
  UsageError
} from "./Command.ts"
import { migrateCommand, serveCommand, tokenCommand } from "./LocalCommands.ts"
import { tailCommand } from "./TailCommand.ts"

/** The command table, in the order `khala --help` lists it. */
export const commands: ReadonlyArray<Command> = [
  serveCommand,
  migrateCommand,
  tokenCommand,
  driftCommand,
  reprojectCommand,
  drainCommand,
  tailCommand
]

const findCommand = (name: string) => commands.find((c) => c.name === name)

const version = () => {
  try {
    return (JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string }).version
  } catch {
    return "unknown"
  }
}

export const mainHelp = () => {
  const width = Math.max(...commands.map((c) => c.name.length), "help".length) + 2
  const rows = [
    ...commands.map((c) => `  ${c.name.padEnd(width)}${c.summary}`),
    `  ${"help".padEnd(width)}Show help for a command (\`khala help <command>\`)`
  ]
  return `khala: the Khala sync and replay plane, daemon and operator CLI

Usage: khala <command> [options]
       khala <command> --help

Commands:
${rows.join("\n")}

serve, migrate and token read the daemon's environment (DATABASE_URL, KHALA_DATA_DIR, KHALA_*);
drift, reproject and drain talk to a running daemon over HTTP with the admin token;
tail follows a topic over WebSocket with a sync token (minted locally unless --token).

Options:
  -h, --help     show this help
  -V, --version  print the version

Exit codes: 0 ok, 1 error, 2 drift found (\`khala drift\`), 64 usage error.
`
}

const usageFailure = (io: CliIO, message: string, help: string) => {
  io.stderr(`khala: ${message}\n\n${help}`)
  return EXIT_USAGE
}

/** Runs the CLI with `argv` (the arguments after `khala`); resolves to the exit code. */
export const main = async (argv: ReadonlyArray<string>, io: CliIO = processIO): Promise<number> => {
  const [first, ...rest] = argv
  if (first === undefined) return usageFailure(io, "missing command", mainHelp())
  if (first === "-h" || first === "--help") {
    io.stdout(mainHelp())
    return EXIT_OK
  }
  if (first === "-V" || first === "--version") {
    io.stdout(`khala ${version()}\n`)
    return EXIT_OK
  }
  if (first === "help") {
    if (rest.length === 0) {
      io.stdout(mainHelp())
      return EXIT_OK
    }
    const target = findCommand(rest[0]!)
    if (target === undefined || rest.length > 2 || (rest.length === 2 && !(target.name === "token" && rest[1] === "mint"))) {
      return usageFailure(io, `unknown command ${JSON.stringify(rest.join(" "))}`, mainHelp())
    }
    io.stdout(target.help)
    return EXIT_OK
  }
  const command = findCommand(first)
  if (command === undefined) {
    return usageFailure(io, `unknown ${first.startsWith("-") ? "option" : "command"} ${JSON.stringify(first)}`, mainHelp())
  }
  try {
    return await command.run(rest, io)
  } catch (error) {
    if (error instanceof HelpRequested) {
      io.stdout(command.help)
      return EXIT_OK
    }
    if (error instanceof UsageError) return usageFailure(io, `${command.name}: ${error.message}`, command.help)
    if (error instanceof CliError) {
      io.stderr(`khala ${command.name}: error: ${error.message}\n`)
      return error.exitCode
    }
    io.stderr(`khala ${command.name}: unexpected error: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`)
    return EXIT_ERROR
  }
}

if (import.meta.main) {
  // Exit explicitly once stdout is flushed: idle keep-alive sockets or pools must not hold the CLI open.
  const exit = (code: number) => process.stdout.write("", () => process.exit(code))
  main(process.argv.slice(2)).then(exit, (error: unknown) => {
    process.stderr.write(`khala: ${String(error)}\n`)
    exit(EXIT_ERROR)
  })
}
