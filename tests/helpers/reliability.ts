import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import knexFactory, { type Knex } from 'knex';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from './database';
import { runCli, type CliResult } from './cli';
import { readServerState, ROOT } from './server';
import { checksumTables, ENGINE_RULES, writeRules } from './fixtures';

/**
 * Shared by the reliability suites (tests/reliability/): seeded databases, the CLI started in the
 * background so it can be killed, a final-state checksum that ignores ids and timestamps, and a
 * "gate" that parks a run inside a page's transaction until the test lets it go (no sleeps).
 */

export const AS_OF = '2026-11-23';

/** `suspend backfill` as of AS_OF in pages of `batchSize`, quiet, without delivering notifications. */
export function backfillArgs(batchSize: number): string[] {
  return ['backfill', '--as-of', AS_OF, '--batch-size', String(batchSize), '--no-notify', '--quiet'];
}
export const RULES_FILE = writeRules(ENGINE_RULES);
/** Every run of these suites acts as the same person, so history rows compare equal across runs. */
export const ACTOR = 'reliability';

/**
 * A test database filled with `suspend seed` (the reference schema and data). `prepare` runs on it
 * before the seed, when its reference tables are still empty (e.g. to partition them). When either
 * fails, the database is dropped before the error is thrown.
 */
export async function seededDatabase(
  customers: number,
  seed = 7,
  prepare?: (db: TestDatabase) => Promise<void>,
): Promise<TestDatabase> {
  const db = await createTestDatabase();
  try {
    await prepare?.(db);
    await seedInto(db, customers, seed);
  } catch (err) {
    await db.drop();
    throw err;
  }
  return db;
}

async function seedInto(db: TestDatabase, customers: number, seed: number): Promise<void> {
  const r = await runCli([
    'seed',
    '--customers',
    String(customers),
    '--orgs',
    '5',
    '--seed',
    String(seed),
    '--as-of',
    AS_OF,
    '--reset',
    '--database-url',
    db.url,
    '--quiet',
  ]);
  if (r.code !== 0) throw new Error(`seed exited ${r.code}: ${r.stderr}`);
}

export interface TestRole {
  name: string;
  /** The database's URL, logging in as this role. */
  url: string;
  drop(): Promise<void>;
}

/**
 * A new role (`<prefix>_<random>`) with exactly the grants of docs/least-privilege.sql on `db`.
 * Roles belong to the server, not the database: `drop()` it after the database.
 */
export async function leastPrivilegeRole(db: TestDatabase, prefix: string): Promise<TestRole> {
  const name = `${prefix}_${crypto.randomBytes(4).toString('hex')}`;
  const grants = fs.readFileSync(path.join(ROOT, 'docs/least-privilege.sql'), 'utf8');
  await db.knex.raw(grants.replace(/\bsuspend_runner\b/g, name));
  const u = new URL(db.url);
  u.username = name;
  u.password = 'change-me';
  return {
    name,
    url: u.toString(),
    async drop() {
      const admin = knexFactory({
        client: 'pg',
        connection: readServerState().adminUrl,
        pool: { min: 0, max: 1 },
      });
      await admin.raw('drop role if exists ??', [name]).finally(() => admin.destroy());
    },
  };
}

/** The CLI against one database with the engine rules, as the engine tests run it. */
export function cli(
  db: TestDatabase,
  args: string[],
  rulesFile = RULES_FILE,
  env: Record<string, string> = {},
): Promise<CliResult> {
  return runCli([...args, '--rules', rulesFile, '--database-url', db.url], { env });
}

export interface RunningCli {
  child: ChildProcess;
  /** Resolves when the process has exited; `signal` is set when it was killed. */
  done: Promise<CliResult & { signal: NodeJS.Signals | null }>;
}

/** Starts a node process (the CLI by default) in the background, so the test can kill it. */
export function startNode(argv: string[], env: Record<string, string | undefined> = {}): RunningCli {
  const child = spawn(process.execPath, argv, {
    cwd: ROOT,
    env: { ...process.env, DATABASE_URL: undefined, NO_COLOR: '1', FORCE_COLOR: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<CliResult & { signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) =>
      resolve({ code: code ?? (signal ? 128 : 1), signal, stdout, stderr }),
    );
  });
  return { child, done };
}

export function startCli(
  db: TestDatabase,
  args: string[],
  rulesFile = RULES_FILE,
  env: Record<string, string> = {},
): RunningCli {
  return startNode(
    [path.join(ROOT, 'bin/suspend'), ...args, '--rules', rulesFile, '--database-url', db.url],
    env,
  );
}

/**
 * A backfill (or a sweep) in a child process through the callable core, killed with SIGKILL by its
 * own `beforeWrite` hook on the `killAt`-th page that has changes: inside that page's transaction,
 * after the read and before the re-check and the writes.
 */
export function startRunKilledInPage(
  db: TestDatabase,
  options: {
    killAt: number;
    batchSize: number;
    kind?: 'backfill' | 'sweep';
    asOf?: string;
    workers?: number;
  },
): RunningCli {
  const dist = (m: string) => JSON.stringify(path.join(ROOT, 'dist', m));
  const script = `
    const { loadRules } = require(${dist('rules/load')});
    const { runBatch } = require(${dist('engine/run')});
    const { createKnex } = require(${dist('db/connection')});
    (async () => {
      const rules = await loadRules({ file: ${JSON.stringify(RULES_FILE)}, cwd: process.cwd() });
      const knex = createKnex(${JSON.stringify(db.url)}, { applicationName: 'suspend crash test' });
      let pages = 0;
      await runBatch(knex, rules, {
        kind: ${JSON.stringify(options.kind ?? 'backfill')}, asOf: ${JSON.stringify(options.asOf ?? AS_OF)}, dryRun: false, batchSize: ${options.batchSize}, workers: ${options.workers ?? 1},
        orgs: null, shard: null, resume: false, wait: false, actor: ${JSON.stringify(ACTOR)},
        beforeWrite: async () => { if (++pages === ${options.killAt}) process.kill(process.pid, 'SIGKILL'); },
      });
      await knex.destroy();
      process.stdout.write('finished without being killed');
    })().catch((err) => { console.error(err); process.exitCode = 1; });`;
  return startNode(['-e', script]);
}

/**
 * Polls `check` until it is true. A bound on the number of tries keeps a broken run from hanging
 * the suite; nothing is asserted on how long it took. When `run` exits first, fails with its output.
 */
export async function waitUntil(
  check: () => Promise<boolean>,
  what: string,
  run?: RunningCli,
  tries = 1200,
): Promise<void> {
  let exited: (CliResult & { signal: NodeJS.Signals | null }) | null = null;
  void run?.done.then((r) => (exited = r));
  for (let i = 0; i < tries; i++) {
    if (await check()) return;
    if (exited) {
      const r = exited as CliResult;
      throw new Error(`the process exited (${r.code}) before ${what}: ${r.stderr}${r.stdout}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gave up waiting until ${what}`);
}

/** suspend's sessions on this database (CLI pools, lock connections, the crash-test child). */
export async function suspendSessions(db: TestDatabase): Promise<number[]> {
  const r = await db.knex.raw<{ rows: { pid: number }[] }>(
    `select pid from pg_stat_activity
      where datname = current_database() and pid <> pg_backend_pid() and application_name like 'suspend%'`,
  );
  return r.rows.map((x) => x.pid);
}

/** A killed client's backend ends on its own; wait for that so the next run finds the lock free. */
export async function waitForSessionsGone(db: TestDatabase): Promise<void> {
  await waitUntil(async () => (await suspendSessions(db)).length === 0, 'the killed run’s sessions ended');
}

/** Sessions waiting for suspend's run lock (the two-int advisory lock, see src/engine/lock.ts). */
export async function runLockWaiters(db: TestDatabase): Promise<number[]> {
  const r = await db.knex.raw<{ rows: { pid: number }[] }>(
    `select pid from pg_locks
      where locktype = 'advisory' and not granted and classid = 21333 and objsubid = 2
        and database = (select oid from pg_database where datname = current_database())`,
  );
  return r.rows.map((x) => x.pid);
}

/** Sessions holding suspend's run lock. */
export async function runLockHolders(db: TestDatabase): Promise<number[]> {
  const r = await db.knex.raw<{ rows: { pid: number }[] }>(
    `select pid from pg_locks
      where locktype = 'advisory' and granted and classid = 21333 and objsubid = 2
        and database = (select oid from pg_database where datname = current_database())`,
  );
  return r.rows.map((x) => x.pid);
}

const GATE_KEY = 808_080_808;

/**
 * Parks a run inside a transaction: a trigger on `table` takes an advisory lock the test holds
 * whenever `condition` (SQL on NEW) is true, so the writing session waits there, with its writes
 * done and not committed, until `release()`. `blocked()` resolves with the waiting backend's pid.
 */
export class Gate {
  private constructor(
    private readonly db: TestDatabase,
    private readonly table: string,
    private readonly holder: pg.Client,
  ) {}

  static async install(db: TestDatabase, table: string, condition: string): Promise<Gate> {
    await db.knex.raw(`create or replace function public.reliability_gate() returns trigger
      language plpgsql as $$
      begin
        if ${condition} then perform pg_advisory_xact_lock(${GATE_KEY}); end if;
        return new;
      end $$`);
    await db.knex.raw(
      `create trigger reliability_gate before insert or update on ${table}
         for each row execute function public.reliability_gate()`,
    );
    const holder = new pg.Client({ connectionString: db.url, application_name: 'reliability gate' });
    // The outage tests terminate sessions; the gate's own must not crash the test when that happens.
    holder.on('error', () => undefined);
    await holder.connect();
    await holder.query('select pg_advisory_lock($1)', [GATE_KEY]);
    return new Gate(db, table, holder);
  }

  /** The pid of the session parked at the gate, once there is one. */
  async blocked(run?: RunningCli): Promise<number> {
    let pid = 0;
    await waitUntil(
      async () => {
        const r = await this.db.knex.raw<{ rows: { pid: number }[] }>(
          `select pid from pg_locks
          where locktype = 'advisory' and not granted and classid = 0 and objid = ? and objsubid = 1
            and database = (select oid from pg_database where datname = current_database())`,
          [GATE_KEY],
        );
        pid = r.rows[0]?.pid ?? 0;
        return pid !== 0;
      },
      'a session waits at the gate',
      run,
    );
    return pid;
  }

  async release(): Promise<void> {
    await this.holder.query('select pg_advisory_unlock($1)', [GATE_KEY]).catch(() => undefined);
  }

  /** Lets any waiter go and takes the trigger away. */
  async remove(): Promise<void> {
    await this.release();
    await this.holder.end().catch(() => undefined);
    await this.db.knex.raw(`drop trigger if exists reliability_gate on ${this.table}`);
    await this.db.knex.raw('drop function if exists public.reliability_gate()');
  }
}

/** The highest page a run has committed (0 before the first). */
export async function committedPages(knex: Knex): Promise<number> {
  const r = await knex.raw<{ rows: { p: number | null }[] }>(
    'select max(pages) as p from suspend.checkpoints',
  );
  return r.rows[0]?.p ?? 0;
}

/**
 * The outcome of runs, without what differs between two equal runs (ids, run ids, timestamps):
 * account states, history, outbox events, and every host table (customers.status is written).
 */
export async function finalState(knex: Knex): Promise<Record<string, string>> {
  const parts: Record<string, string> = {
    'suspend.account_states': `select customer_key, policy, org_id, stage, stage_index, blocks_booking,
        allows_login, message, reasons, entered_on, episode_started_on, reinstated_on, tags, host_before,
        version from suspend.account_states`,
    'suspend.history': `select customer_key, org_id, policy, kind, from_stage, to_stage, from_index,
        to_index, reasons, previous_state - 'run_id' - 'updated_at' as previous_state, rules_hash, as_of, actor
        from suspend.history`,
    'suspend.outbox': `select org_id, customer_key, event, payload - 'runId' as payload, status, attempts,
        last_error from suspend.outbox`,
  };
  const out: Record<string, string> = {};
  for (const [name, sql] of Object.entries(parts)) {
    const r = await knex.raw<{ rows: { sum: string; n: string }[] }>(
      `select md5(coalesce(string_agg(x::text, E'\\n' order by x::text), '')) as sum, count(*) as n from (${sql}) x`,
    );
    out[name] = `${r.rows[0]?.n}:${r.rows[0]?.sum}`;
  }
  return { ...out, ...(await checksumTables(knex, ['public'])) };
}

/**
 * Everything runs decided, without ids, run ids and timestamps, as sorted lines (a failed comparison
 * shows the accounts that differ): states, history, outbox events and the customers.status column.
 */
export async function outcome(db: TestDatabase) {
  const lines = async (sql: string) =>
    ((await db.knex.raw(sql)) as { rows: { line: string }[] }).rows.map((r) => r.line).sort();
  return {
    states: await lines(
      `select concat_ws('|', customer_key, policy, stage, stage_index, blocks_booking, allows_login, message, reasons::text, host_before::text, version) as line
         from suspend.account_states`,
    ),
    history: await lines(
      `select concat_ws('|', customer_key, policy, kind, from_stage, to_stage, reasons::text, (previous_state - 'updated_at')::text) as line
         from suspend.history`,
    ),
    outbox: await lines(
      `select concat_ws('|', customer_key, event, payload - 'runId') as line from suspend.outbox`,
    ),
    status: await lines(`select concat_ws('|', id, status) as line from customers where status <> 'active'`),
  };
}

/** History rows or outbox events written twice for the same change (a replayed page). */
export async function duplicates(knex: Knex): Promise<unknown[]> {
  const history = await knex.raw<{ rows: unknown[] }>(
    `select 'history' as t, customer_key, policy, kind, to_stage, as_of, count(*)::int as n
       from suspend.history group by 2, 3, 4, 5, 6 having count(*) > 1`,
  );
  const outbox = await knex.raw<{ rows: unknown[] }>(
    `select 'outbox' as t, customer_key, payload->>'policy' as policy, event, payload->>'to' as to_stage,
            count(*)::int as n
       from suspend.outbox group by 2, 3, 4, 5 having count(*) > 1`,
  );
  return [...history.rows, ...outbox.rows];
}

/** The ledger rows, oldest first. */
export async function ledger(
  knex: Knex,
): Promise<{ id: string; kind: string; status: string; error: string | null; started_by: string }[]> {
  return knex('suspend.runs').select('id', 'kind', 'status', 'error', 'started_by').orderBy('id');
}

/** stderr lines that look like a stack trace frame. */
export const STACK_FRAME = /^\s+at .+\(?.+:\d+:\d+\)?$/m;

/** Where a backfill is killed with SIGKILL (see `killBackfill`). */
export interface KillPoint {
  /**
   * read: inside the page's transaction, after its read, before the re-check and the writes;
   * commit: inside the page's transaction with every write done, before COMMIT;
   * between: from outside, right after the page committed (wherever the process is then).
   */
  where: 'read' | 'commit' | 'between';
  page: number;
}

/**
 * Kills a backfill of `db` at `point` and waits until its sessions are gone. Returns how many pages
 * had committed when it died. A gate a few pages later keeps a fast run from finishing first.
 */
export async function killBackfill(db: TestDatabase, point: KillPoint, batchSize: number): Promise<number> {
  if (point.where === 'read') {
    const run = startRunKilledInPage(db, { killAt: point.page, batchSize });
    const result = await run.done;
    if (result.signal !== 'SIGKILL')
      throw new Error(`the backfill was not killed: ${result.stdout}${result.stderr}`);
  } else {
    const stopAt = point.where === 'commit' ? point.page : point.page + 3;
    const gate = await Gate.install(db, 'suspend.checkpoints', `new.pages = ${stopAt}`);
    const run = startCli(db, [...backfillArgs(batchSize), '--by', ACTOR]);
    if (point.where === 'commit') await gate.blocked(run);
    else
      await waitUntil(
        async () => (await committedPages(db.knex)) >= point.page,
        `page ${point.page} committed`,
        run,
      );
    run.child.kill('SIGKILL');
    const result = await run.done;
    // Let the parked backend finish its statement into a closed socket: its transaction rolls back.
    await gate.release();
    if (result.signal !== 'SIGKILL') throw new Error(`the backfill was not killed: ${result.stderr}`);
    await waitForSessionsGone(db);
    await gate.remove();
  }
  await waitForSessionsGone(db);
  return committedPages(db.knex);
}

/** The crash suites' data: pages of 100 accounts, 24 pages. */
export const CRASH_CUSTOMERS = 2400;
export const CRASH_BATCH = 100;

/** Ten kill points from a fixed seed: pages 1-20, each kind of point in turn. */
export const KILL_POINTS: KillPoint[] = fc
  .sample(fc.integer({ min: 1, max: 20 }), { seed: 20261123, numRuns: 10 })
  .map((page, i) => ({ where: (['read', 'commit', 'between'] as const)[i % 3] as KillPoint['where'], page }));

/**
 * One crash trial: a fresh database, a backfill killed at `point`, then `backfill --resume` through
 * the CLI; the final state must equal `reference` (an uninterrupted run's) with no duplicates.
 */
async function crashAndResume(point: KillPoint, reference: Record<string, string>): Promise<void> {
  const db = await seededDatabase(CRASH_CUSTOMERS, 3);
  try {
    const pages = await killBackfill(db, point, CRASH_BATCH);
    if (point.where === 'commit') expect(pages).toBe(point.page - 1);
    else expect(pages).toBeGreaterThanOrEqual(point.where === 'between' ? point.page : 0);
    expect((await ledger(db.knex)).map((r) => [r.kind, r.status])).toEqual([['backfill', 'running']]);

    const resumed = await cli(db, ['backfill', '--resume', '--no-notify', '--quiet', '--by', ACTOR]);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect((await ledger(db.knex)).map((r) => [r.kind, r.status])).toEqual([['backfill', 'succeeded']]);
    expect(await duplicates(db.knex)).toEqual([]);
    expect(await finalState(db.knex)).toEqual(reference);
  } finally {
    await db.drop();
  }
}

/** The final state of an uninterrupted backfill of the crash suites' data. */
async function uninterruptedBackfill(): Promise<Record<string, string>> {
  const db = await seededDatabase(CRASH_CUSTOMERS, 3);
  try {
    const r = await cli(db, [...backfillArgs(CRASH_BATCH), '--by', ACTOR]);
    if (r.code !== 0) throw new Error(`backfill exited ${r.code}: ${r.stderr}`);
    expect(await duplicates(db.knex)).toEqual([]);
    return await finalState(db.knex);
  } finally {
    await db.drop();
  }
}

/** The body of each crash suite file: the reference run once, then one test per kill point. */
export function crashSuite(points: KillPoint[]): void {
  let reference: Record<string, string>;
  beforeAll(async () => {
    reference = await uninterruptedBackfill();
  });
  test.each(points)(
    'killed at page %o, resumed: the same final state as an uninterrupted run',
    async (point) => {
      await crashAndResume(point, reference);
    },
  );
}
