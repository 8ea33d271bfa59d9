/**
 * CLI plumbing shared by every `khala` subcommand: the `Command` shape the command table in
 * `khala.ts` holds, exit codes, the I/O handle commands write through (so tests can run them
 * in-process), and `parseCommandArgs`, a thin strict wrapper over `node:util` `parseArgs` that turns
 * its errors into `UsageError` (exit 64, usage on stderr). No dependencies beyond Node.
 */
import { parseArgs, type ParseArgsConfig } from "node:util"

/** Exit codes: 0 ok, 1 runtime error, 2 "drift found" (for alerting scripts), 64 usage (EX_USAGE). */
export const EXIT_OK = 0
export const EXIT_ERROR = 1
export const EXIT_DRIFT = 2
export const EXIT_USAGE = 64

/** Where a command writes and which environment it reads. `process` in production, a fake in tests. */
export interface CliIO {
  readonly stdout: (text: string) => void
  readonly stderr: (text: string) => void
  readonly env: Readonly<Record<string, string | undefined>>
  /** Whether stderr is a terminal (spinners redraw one line there; otherwise they print sparse lines). */
  readonly stderrIsTTY: boolean
}

export const processIO: CliIO = {
  stdout: (text) => void process.stdout.write(text),
  stderr: (text) => void process.stderr.write(text),
  env: process.env,
  stderrIsTTY: process.stderr.isTTY === true
}

export interface Command {
  /** The word after `khala`. */
  readonly name: string
  /** One line for the command list of `khala --help`. */
  readonly summary: string
  /** The full text of `khala help <name>` / `khala <name> --help`. */
  readonly help: string
  /** Runs with the arguments after the command name; resolves to the exit code. */
  readonly run: (args: ReadonlyArray<string>, io: CliIO) => Promise<number>
}

/** Bad invocation: printed with the command's usage on stderr, exit 64. */
export class UsageError extends Error {
  override readonly name = "UsageError"
}

/** A failure the user should see as one line (`khala <cmd>: error: …`), with its exit code. */
export class CliError extends Error {
  override readonly name = "CliError"
  readonly exitCode: number
  constructor(message: string, exitCode: number = EXIT_ERROR) {
    super(message)
    this.exitCode = exitCode
  }
}

/** Raised by `parseCommandArgs` when `--help`/`-h` is present: the caller prints the help, exit 0. */
export class HelpRequested extends Error {
  override readonly name = "HelpRequested"
}

const helpOptions = { help: { type: "boolean", short: "h" } } as const

/**
 * Strict `parseArgs` over `args` with `--help/-h` added to `options`. Unknown flags, missing option
 * values and unexpected positionals become `UsageError`; `--help` becomes `HelpRequested`.
 */
export const parseCommandArgs = <const O extends NonNullable<ParseArgsConfig["options"]>>(
  args: ReadonlyArray<string>,
  options: O,
  allowPositionals = false
) => {
  let parsed
  try {
    parsed = parseArgs({ args: [...args], options: { ...options, ...helpOptions }, allowPositionals, strict: true })
  } catch (error) {
    // A `--help` anywhere wins over a parse error elsewhere on the line.
    if (args.includes("--help") || args.includes("-h")) throw new HelpRequested()
    const code = (error as { code?: unknown }).code
    if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS_")) throw new UsageError((error as Error).message)
    throw error
  }
  if ((parsed.values as Record<string, unknown>).help === true) throw new HelpRequested()
  return parsed
}

/** A positive integer option (`--ttl 3600`), else `UsageError`. */
export const positiveInt = (flag: string, raw: string | undefined): number | undefined => {
  if (raw === undefined) return undefined
  if (!/^[0-9]+$/.test(raw) || Number(raw) <= 0 || !Number.isSafeInteger(Number(raw))) {
    throw new UsageError(`--${flag} must be a positive integer, got ${JSON.stringify(raw)}`)
  }
  return Number(raw)
}

/** A positive number of seconds, fractions allowed (`--timeout 0.5`), else `UsageError`. */
export const positiveSeconds = (flag: string, raw: string | undefined): number | undefined => {
  if (raw === undefined) return undefined
  const n = Number(raw)
  if (raw.trim() === "" || !Number.isFinite(n) || n <= 0) {
    throw new UsageError(`--${flag} must be a positive number of seconds, got ${JSON.stringify(raw)}`)
  }
  return n
}

export const jsonLine = (value: unknown) => `${JSON.stringify(value, null, 2)}\n`
