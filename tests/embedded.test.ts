import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import {
  embeddedStatus,
  startEmbeddedPostgres,
  stopEmbeddedPostgres,
  type EmbeddedServer,
} from '../src/db/embedded';
import { runCli } from './helpers/cli';
import { ROOT, withDatabase } from './helpers/server';

// The embedded server runs on its own temp folders whether or not DATABASE_URL is set.

const roots: string[] = [];
const homes: string[] = [];

/** A fresh `.suspend` folder inside a temp dir the server's user (nobody, when root) can enter. */
function freshHome(): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-embedded-'));
  fs.chmodSync(root, 0o755);
  roots.push(root);
  const home = path.join(root, '.suspend');
  homes.push(home);
  return home;
}

const pidFileOf = (home: string) => path.join(home, 'postgres', 'data', 'postmaster.pid');

/** Alive and not a zombie. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat[stat.lastIndexOf(')') + 2] !== 'Z';
}

async function query<T extends pg.QueryResultRow>(
  url: string,
  sql: string,
  params: unknown[] = [],
): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

afterAll(async () => {
  for (const home of homes) await stopEmbeddedPostgres(home, { force: true }).catch(() => undefined);
  for (const root of roots) fs.rmSync(root, { recursive: true, force: true });
});

test('starts a real Postgres on a fresh folder: locks, SKIP LOCKED and unnest work', async () => {
  const home = freshHome();
  const server = await startEmbeddedPostgres({ dataDir: home });
  const a = new pg.Client({ connectionString: withDatabase(server.url, 'postgres') });
  const b = new pg.Client({ connectionString: server.url });
  try {
    expect(server.started).toBe(true);
    expect(fs.readFileSync(pidFileOf(home), 'utf8').split('\n')[0]).toBe(String(server.pid));
    await a.connect();
    await b.connect();
    expect((await a.query('select 40 + 2 as n')).rows).toEqual([{ n: 42 }]);

    await a.query('select pg_advisory_lock(4242)');
    expect((await b.query('select pg_try_advisory_lock(4242) as got')).rows).toEqual([{ got: false }]);
    await a.query('select pg_advisory_unlock(4242)');
    expect((await b.query('select pg_try_advisory_lock(4242) as got')).rows).toEqual([{ got: true }]);

    await a.query('create table jobs as select * from unnest($1::int[], $2::text[]) as t(id, name)', [
      [1, 2, 3, 4],
      ['a', 'b', 'c', 'd'],
    ]);
    const take = 'select id from jobs order by id limit 2 for update skip locked';
    await a.query('begin');
    await b.query('begin');
    const first = (await a.query<{ id: number }>(take)).rows.map((r) => r.id);
    const second = (await b.query<{ id: number }>(take)).rows.map((r) => r.id);
    expect(first).toEqual([1, 2]);
    expect(second).toEqual([3, 4]);
    await a.query('rollback');
    await b.query('rollback');
  } finally {
    await a.end();
    await b.end();
    await server.stop();
  }
});

test('a second start on the same folder reuses the server, and its stop leaves the first working', async () => {
  const home = freshHome();
  const first = await startEmbeddedPostgres({ dataDir: home });
  const lines: string[] = [];
  const second = await startEmbeddedPostgres({ dataDir: home, log: (l) => lines.push(l) });
  expect(second.started).toBe(false);
  expect(second.pid).toBe(first.pid);
  expect(lines.join('\n')).toMatch(/reusing the server/);
  expect(await query(second.url, 'select 1 as one')).toEqual([{ one: 1 }]);
  await second.stop();
  expect(alive(first.pid)).toBe(true);
  expect(await query(first.url, 'select 2 as two')).toEqual([{ two: 2 }]);
  await first.stop();
  expect(alive(first.pid)).toBe(false);
  expect(fs.existsSync(pidFileOf(home))).toBe(false);
});

test('the owner leaves the server running while another handle is connected; the last one stops it', async () => {
  const home = freshHome();
  const owner = await startEmbeddedPostgres({ dataDir: home });
  const guest = await startEmbeddedPostgres({ dataDir: home });
  await owner.stop();
  expect(await query(guest.url, 'select 3 as three')).toEqual([{ three: 3 }]);
  const status = await embeddedStatus(home);
  expect(status).toMatchObject({ running: true, pid: owner.pid, ownerPid: null, clients: 1 });
  await guest.stop();
  expect(alive(owner.pid)).toBe(false);
  expect(fs.existsSync(pidFileOf(home))).toBe(false);
});

test('concurrent first starts on an empty folder make one cluster and one server', async () => {
  const home = freshHome();
  const servers: EmbeddedServer[] = await Promise.all(
    [0, 1, 2].map(() => startEmbeddedPostgres({ dataDir: home })),
  );
  expect(servers.filter((s) => s.started)).toHaveLength(1);
  expect(new Set(servers.map((s) => s.pid)).size).toBe(1);
  for (const s of servers) expect(await query(s.url, 'select 1 as one')).toEqual([{ one: 1 }]);
  for (const s of servers) await s.stop();
  expect(fs.existsSync(pidFileOf(home))).toBe(false);
});

/** Starts the server from a child node process (the built module) and returns the child and the server's pid. */
async function startInChild(home: string): Promise<{ child: ReturnType<typeof spawn>; pid: number }> {
  const script = `
    const { startEmbeddedPostgres } = require(${JSON.stringify(path.join(ROOT, 'dist/db/embedded'))});
    startEmbeddedPostgres({ dataDir: ${JSON.stringify(home)} }).then(
      (s) => { process.stdout.write(JSON.stringify({ pid: s.pid }) + '\\n'); setInterval(() => {}, 1000); },
      (e) => { console.error(e.message); process.exit(1); });`;
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = await new Promise<number>((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve((JSON.parse(out) as { pid: number }).pid);
    });
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => reject(new Error(`child exited ${code}: ${err}`)));
  });
  return { child, pid };
}

async function sigkill(child: ReturnType<typeof spawn>): Promise<void> {
  const exited = new Promise((resolve) => child.on('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

test('a server orphaned by a killed process is adopted by the next start, which stops it', async () => {
  const home = freshHome();
  const { child, pid } = await startInChild(home);
  await sigkill(child);
  expect(alive(pid)).toBe(true);

  const lines: string[] = [];
  const server = await startEmbeddedPostgres({ dataDir: home, log: (l) => lines.push(l) });
  expect(server.started).toBe(false);
  expect(server.pid).toBe(pid);
  expect(lines.join('\n')).toMatch(/adopting the server/);
  expect(await query(server.url, 'select 1 as one')).toEqual([{ one: 1 }]);
  await server.stop();
  expect(alive(pid)).toBe(false);
  expect(fs.existsSync(pidFileOf(home))).toBe(false);
});

test('a postmaster.pid left by a killed postmaster is cleared and a new server starts', async () => {
  const home = freshHome();
  const { child, pid } = await startInChild(home);
  await sigkill(child);
  process.kill(pid, 'SIGKILL');
  while (alive(pid)) await new Promise((r) => setTimeout(r, 10));
  expect(fs.existsSync(pidFileOf(home))).toBe(true);

  const lines: string[] = [];
  const server = await startEmbeddedPostgres({ dataDir: home, log: (l) => lines.push(l) });
  try {
    expect(server.started).toBe(true);
    expect(server.pid).not.toBe(pid);
    expect(lines.join('\n')).toMatch(/removing the stale postmaster\.pid/);
    expect(await query(server.url, 'select 1 as one')).toEqual([{ one: 1 }]);
  } finally {
    await server.stop();
  }
  expect(fs.existsSync(pidFileOf(home))).toBe(false);
});

test('a start failure is one sentence with the data folder and the tail of the Postgres log', async () => {
  const home = freshHome();
  const server = await startEmbeddedPostgres({ dataDir: home });
  await server.stop();
  // A setting Postgres rejects at start-up.
  fs.appendFileSync(path.join(home, 'postgres', 'data', 'postgresql.conf'), '\nshared_buffers = nonsense\n');
  await expect(startEmbeddedPostgres({ dataDir: home })).rejects.toThrow(
    new RegExp(
      `^The embedded Postgres in ${home} failed: postgres exited during start-up \\(code 1\\); last log lines: .*shared_buffers.*postgres\\.log\\)\\.$`,
    ),
  );
});

describe('CLI with no DATABASE_URL', () => {
  // Only root hands the server to another user (nobody); as anyone else the folder is the user's own.
  (process.getuid?.() === 0 ? test : test.skip)(
    'as root in a folder nobody cannot enter: one sentence saying what to set, exit 2, no server started',
    async () => {
      const root = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-private-'));
      fs.chmodSync(root, 0o700);
      roots.push(root);
      const r = await runCli(['runs'], { cwd: root, env: { SUSPEND_HOME: undefined } });
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toBe(
        `error: The embedded Postgres runs as user nobody (uid 65534) because suspend runs as root, and nobody cannot enter ${root}; set SUSPEND_HOME to a folder outside it (e.g. /var/lib/suspend) or set DATABASE_URL.\n`,
      );
      expect(fs.existsSync(path.join(root, '.suspend', 'postgres', 'data', 'PG_VERSION'))).toBe(false);
    },
  );

  test('suspend migrate runs on the embedded server and stops it afterwards', async () => {
    const home = freshHome();
    const cwd = path.dirname(home);
    const r = await runCli(['migrate'], { cwd, env: { SUSPEND_HOME: home } });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^schema \S+: (\d+) applied, 0 pending\n( {2}applied {2}\d+_\w+\.js\n)+$/);
    expect(fs.existsSync(pidFileOf(home))).toBe(false);
    // The default folder is .suspend/ in the working directory.
    const again = await runCli(['migrate', '--status'], { cwd });
    expect(again.code).toBe(0);
    const migrations = fs
      .readdirSync(path.join(__dirname, '..', 'migrations'))
      .filter((f) => f.endsWith('.js'));
    expect(again.stdout).toContain(`${migrations.length} applied, 0 pending`);
  });

  test('commands started together on an empty folder all succeed', async () => {
    const home = freshHome();
    const cwd = path.dirname(home);
    // Read-only commands: concurrent `migrate` runs race in knex's own table creation, not here.
    const runs = await Promise.all(
      [0, 1, 2].map(() => runCli(['migrate', '--status'], { cwd, env: { SUSPEND_HOME: home } })),
    );
    expect(runs.map((r) => [r.code, r.stderr])).toEqual([
      [0, ''],
      [0, ''],
      [0, ''],
    ]);
    for (const r of runs) expect(r.stdout).toMatch(/^schema \S+: 0 applied, [1-9]\d* pending\n/);
    expect(fs.existsSync(pidFileOf(home))).toBe(false);
  });

  test('suspend embedded status and stop', async () => {
    const home = freshHome();
    const cwd = path.dirname(home);
    const env = { SUSPEND_HOME: home };
    const server = await startEmbeddedPostgres({ dataDir: home });
    const status = await runCli(['embedded', 'status'], { cwd, env });
    expect(status.code).toBe(0);
    expect(status.stdout).toContain(
      `running   yes (pid ${server.pid}, 1 client(s) connected, started by process ${process.pid})`,
    );
    expect(status.stdout).toContain(`url       ${server.url}\n`);
    expect(status.stdout).toContain(`data dir  ${home}\n`);

    const refused = await runCli(['embedded', 'stop'], { cwd, env });
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/has 1 connected client\(s\).*--force/);
    expect(alive(server.pid)).toBe(true);

    const stopped = await runCli(['embedded', 'stop', '--force'], { cwd, env });
    expect(stopped.code).toBe(0);
    expect(stopped.stderr).toContain(`stopped the embedded Postgres (pid ${server.pid})`);
    expect(alive(server.pid)).toBe(false);
    await server.stop();

    const after = await runCli(['embedded', 'status'], { cwd, env });
    expect(after.stdout).toMatch(/^running {3}no\n/);
  });
});
