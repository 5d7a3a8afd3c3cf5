import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { BASELINE_READ, BASELINE_SETUP, BASELINE_WRITE } from './baseline';
import { withDatabase } from '../db/connection';

/**
 * `npm run bench [-- --customers 100000,1000000 --runs 3 --workers 2]`: seeds the reference data once
 * per size into a template database (`suspend_bench_<size>_s42`), then for every measured run clones
 * it, so each run starts from the same data, and times the hand-written SQL baseline against
 * suspend's dry-run report, backfill, a second sweep with nothing to change, and the backfill with
 * --workers. Writes bench/results.json and bench/results.md. Fails when the baseline and suspend do
 * not suspend the same accounts. Not a test: CI does not run it.
 */

const ROOT = path.resolve(__dirname, '../..');
const AS_OF = '2026-11-23';
const SEED = 42;
const RULES = path.join(ROOT, 'bench/rules.yaml');
const PREFIX = 'suspend_bench';

interface Args {
  sizes: number[];
  runs: number;
  workers: number;
  url: string;
}

function parseArgs(argv: string[]): Args {
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const sizes = (get('--customers') ?? '100000').split(',').map((s) => Number(s.replace(/_/g, '')));
  if (sizes.some((n) => !Number.isInteger(n) || n < 1))
    throw new Error('--customers takes sizes like 100000,1000000');
  const runs = Number(get('--runs') ?? 3);
  const workers = Number(get('--workers') ?? 2);
  if (!Number.isInteger(runs) || runs < 1) throw new Error('--runs takes a whole number, at least 1');
  if (!Number.isInteger(workers) || workers < 1)
    throw new Error('--workers takes a whole number, at least 1');
  return {
    sizes,
    runs,
    workers,
    url: get('--database-url') ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
  };
}

function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

interface Timed {
  seconds: number;
  rssMb: number | null;
  /** CPU time of the suspend process (user + system). */
  cpuSeconds: number | null;
  stdout: string;
}

/** Runs the CLI as a user would, under /usr/bin/time -v for its peak RSS and CPU time. */
function timeCli(args: string[]): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const useTime = fs.existsSync('/usr/bin/time');
    const bin = path.join(ROOT, 'bin/suspend');
    // bin/suspend itself, as `npx suspend` runs it (with whatever its first line gives node).
    const cmd = useTime ? '/usr/bin/time' : bin;
    const argv = useTime ? ['-v', bin, ...args] : args;
    const env: NodeJS.ProcessEnv = { ...process.env, NO_COLOR: '1' };
    delete env.DATABASE_URL;
    const child = spawn(cmd, argv, { env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0) {
        const said = stderr
          .split('\n')
          .filter((l) => !/^\s|^Command exited/.test(l))
          .join('\n');
        return reject(new Error(`suspend ${args.join(' ')} exited ${code}: ${said.slice(-2000)}`));
      }
      const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
      const user = /User time \(seconds\): ([\d.]+)/.exec(stderr);
      const system = /System time \(seconds\): ([\d.]+)/.exec(stderr);
      resolve({
        seconds,
        rssMb: rss ? Number(rss[1]) / 1024 : null,
        cpuSeconds: user && system ? Number(user[1]) + Number(system[1]) : null,
        stdout,
      });
    });
  });
}

async function timeSql(knex: Knex, sql: string): Promise<number> {
  const started = process.hrtime.bigint();
  await knex.raw(sql, { asOf: AS_OF });
  return Number(process.hrtime.bigint() - started) / 1e9;
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

interface Checksum {
  n: number;
  md5: string;
}

async function keyChecksum(knex: Knex, sql: string): Promise<Checksum> {
  const r = await knex.raw<{ rows: { n: string; md5: string }[] }>(
    `select count(*) as n, md5(coalesce(string_agg(id::text, ',' order by id), '')) as md5 from (${sql}) x`,
  );
  return { n: Number(r.rows[0]?.n), md5: String(r.rows[0]?.md5) };
}

const SUSPENDED_HOST = "select id from customers where status = 'suspended'";
const SUSPENDED_STATES =
  "select distinct customer_key::bigint as id from suspend.account_states where stage = 'suspended'";

async function withDb<T>(url: string, fn: (db: Knex) => Promise<T>): Promise<T> {
  const db = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 1 } });
  try {
    return await fn(db);
  } finally {
    await db.destroy();
  }
}

/** The seeded, migrated template of one size; built once, then reused by every later bench. */
async function ensureTemplate(admin: Knex, args: Args, size: number): Promise<string> {
  const template = `${PREFIX}_${size}_s${SEED}`;
  const exists = await admin.raw<{ rows: unknown[] }>('select 1 from pg_database where datname = ?', [
    template,
  ]);
  const url = withDatabase(args.url, template);
  if (exists.rows.length === 0) {
    const building = `${template}_building`;
    await admin.raw('drop database if exists ?? with (force)', [building]);
    await admin.raw('create database ??', [building]);
    log(`seeding ${size.toLocaleString('en-US')} customers into ${template}...`);
    const buildingUrl = withDatabase(args.url, building);
    const seed = await timeCli([
      'seed',
      '--customers',
      String(size),
      '--seed',
      String(SEED),
      '--as-of',
      AS_OF,
      '--database-url',
      buildingUrl,
      '--quiet',
    ]);
    log(`seeded in ${seed.seconds.toFixed(1)} s`);
    await admin.raw('alter database ?? rename to ??', [building, template]);
  }
  // suspend's own schema follows the code being measured (a no-op when current).
  await timeCli(['migrate', '--database-url', url, '--quiet']);
  // Settle the data as a production database would be: all-visible pages (index-only scans) and
  // fresh statistics, for the baseline and suspend alike.
  await withDb(url, async (db) => {
    const unsettled = await db.raw<{ rows: unknown[] }>(
      `select 1 from pg_class where relname = any(?) and relkind = 'r' and relpages > 0 and relallvisible < relpages / 2`,
      [['customers', 'reservations', 'invoices', 'subscriptions']],
    );
    if (unsettled.rows.length > 0) {
      log(`vacuum (freeze, analyze) ${template}...`);
      await db.raw('vacuum (freeze, analyze)');
    }
  });
  return template;
}

async function cloneOf(admin: Knex, args: Args, template: string): Promise<string> {
  const clone = `${template}_run`;
  await admin.raw('drop database if exists ?? with (force)', [clone]);
  await admin.raw('create database ?? template ??', [clone, template]);
  return withDatabase(args.url, clone);
}

async function dropClone(admin: Knex, template: string): Promise<void> {
  await admin.raw('drop database if exists ?? with (force)', [`${template}_run`]);
}

/**
 * Flushes what the previous step left dirty, so its writes are not paid for by the next step and
 * every measurement starts from the same quiet server.
 */
async function settle(admin: Knex): Promise<void> {
  await admin.raw('checkpoint');
}

/** suspend's tables a backfill writes a row to for each change (its states, history and outbox events). */
const CHANGE_TABLES = ['account_states', 'history', 'outbox'];

/**
 * The write floor: the rows a backfill stored, inserted again by plain SQL into empty copies of its
 * tables (their indexes included) in one transaction: what storing them costs with nothing read,
 * computed, sent or parsed. A backfill cannot take less than this plus reading the signals (two
 * cores can overlap the two at best), whatever suspend does in between.
 */
async function timeWriteFloor(db: Knex, admin: Knex): Promise<number> {
  const copy = (table: string) => `bench_floor.${table}`;
  await db.raw('drop schema if exists bench_floor cascade');
  await db.raw('create schema bench_floor');
  for (const t of CHANGE_TABLES)
    await db.raw('create table ?? (like ?? including all)', [copy(t), `suspend.${t}`]);
  await settle(admin);
  const started = process.hrtime.bigint();
  await db.transaction(async (trx) => {
    // As on the backfill's own sessions (see the pipeline's session settings).
    await trx.raw('set local synchronous_commit = off');
    for (const t of CHANGE_TABLES)
      await trx.raw('insert into ?? select * from ??', [copy(t), `suspend.${t}`]);
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await db.raw('drop schema bench_floor cascade');
  return seconds;
}

type Samples = Record<string, number[]>;

function add(samples: Samples, key: string, value: number | null): void {
  if (value !== null) (samples[key] ??= []).push(value);
}

function common(url: string): string[] {
  return ['--as-of', AS_OF, '--rules', RULES, '--database-url', url, '--quiet', '--format', 'json'];
}

function changesOf(run: Timed): number {
  return (JSON.parse(run.stdout) as { counts: { changes: number } }).counts.changes;
}

function sameSet(what: string, a: Checksum, b: Checksum, aName: string, bName: string): void {
  if (a.md5 !== b.md5) {
    throw new Error(
      `correctness: ${what}: ${aName} suspended ${a.n} accounts and ${bName} ${b.n}; the sets differ (checksums ${a.md5} vs ${b.md5})`,
    );
  }
}

interface SizeResult {
  customers: number;
  runs: number;
  workers: number;
  suspended: number;
  stateChanges: number;
  checksum: string;
  seconds: Record<string, number>;
  samples: Samples;
  accountsPerSecond: Record<string, number>;
  ratios: Record<string, number>;
  peakRssMb: Record<string, number | null>;
}

async function measureSize(admin: Knex, args: Args, size: number): Promise<SizeResult> {
  const template = await ensureTemplate(admin, args, size);
  const samples: Samples = {};
  let baselineSet: Checksum = { n: 0, md5: '' };
  let stateChanges = 0;
  const workers = ['--workers', String(args.workers)];
  for (let run = 1; run <= args.runs; run++) {
    // The hand-written statement: its read part alone, then the whole job.
    let url = await cloneOf(admin, args, template);
    baselineSet = await withDb(url, async (db) => {
      await db.raw(BASELINE_SETUP);
      await settle(admin);
      add(samples, 'baselineRead', await timeSql(db, BASELINE_READ));
      await settle(admin);
      add(samples, 'baseline', await timeSql(db, BASELINE_WRITE));
      return keyChecksum(db, SUSPENDED_HOST);
    });

    // suspend as a user runs it: a dry-run report, the backfill, then a sweep with nothing to do.
    url = await cloneOf(admin, args, template);
    await settle(admin);
    const report = await timeCli(['report', '--dry-run', ...common(url)]);
    add(samples, 'report', report.seconds);
    add(samples, 'reportRss', report.rssMb);
    add(samples, 'reportCpu', report.cpuSeconds);
    await settle(admin);
    const backfill = await timeCli(['backfill', '--no-notify', ...common(url)]);
    add(samples, 'backfill', backfill.seconds);
    add(samples, 'backfillRss', backfill.rssMb);
    add(samples, 'backfillCpu', backfill.cpuSeconds);
    stateChanges = changesOf(backfill);
    if (changesOf(report) !== stateChanges)
      throw new Error(
        `the report listed ${changesOf(report)} changes and the backfill wrote ${stateChanges}`,
      );
    // The cron sweep comes a day after the backfill, when autovacuum has been through the tables it
    // wrote; without this the sweep would pay for setting the hint bits of every row just written.
    await withDb(url, (db) => db.raw('vacuum (analyze)'));
    await settle(admin);
    const sweep = await timeCli(['sweep', '--no-notify', ...common(url)]);
    add(samples, 'sweep', sweep.seconds);
    add(samples, 'sweepRss', sweep.rssMb);
    add(samples, 'sweepCpu', sweep.cpuSeconds);
    if (changesOf(sweep) !== 0)
      throw new Error(`the second sweep changed ${changesOf(sweep)} accounts; it must change none`);
    // The dry run again, on the data the sweep saw (every suspended account now has a stage to read).
    await settle(admin);
    add(samples, 'reportAfter', (await timeCli(['report', '--dry-run', ...common(url)])).seconds);
    await withDb(url, async (db) => {
      sameSet(
        'account states',
        baselineSet,
        await keyChecksum(db, SUSPENDED_STATES),
        'the baseline',
        'suspend',
      );
      sameSet(
        'customers.status',
        baselineSet,
        await keyChecksum(db, SUSPENDED_HOST),
        'the baseline',
        'suspend',
      );
      // The backfill's rows are all there: the second sweep changed none.
      add(samples, 'writeFloor', await timeWriteFloor(db, admin));
    });

    // The same with N workers in one process.
    if (args.workers > 1) {
      url = await cloneOf(admin, args, template);
      await settle(admin);
      const reportW = await timeCli(['report', '--dry-run', ...workers, ...common(url)]);
      add(samples, 'reportWorkers', reportW.seconds);
      await settle(admin);
      const backfillW = await timeCli(['backfill', '--no-notify', ...workers, ...common(url)]);
      add(samples, 'backfillWorkers', backfillW.seconds);
      add(samples, 'backfillWorkersRss', backfillW.rssMb);
      if (changesOf(backfillW) !== stateChanges)
        throw new Error(`--workers wrote ${changesOf(backfillW)} changes, one worker ${stateChanges}`);
      await withDb(url, async (db) => {
        const set = await keyChecksum(db, SUSPENDED_STATES);
        sameSet('account states', baselineSet, set, 'the baseline', `suspend --workers ${args.workers}`);
      });
    }
    await dropClone(admin, template);
    const last = (k: string) => samples[k]?.[samples[k].length - 1]?.toFixed(2) ?? '-';
    log(
      `${size.toLocaleString('en-US')} customers, run ${run}/${args.runs}: baseline ${last('baseline')} s (read ${last('baselineRead')} s), backfill ${last('backfill')} s, report ${last('report')} s, sweep ${last('sweep')} s, report after ${last('reportAfter')} s, backfill --workers ${args.workers} ${last('backfillWorkers')} s`,
    );
  }
  const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)]));
  const perSecond = (k: string) => (m[k] ? Math.round(size / m[k]) : 0);
  const ratio = (a: string, b: string) => Number(((m[a] ?? 0) / (m[b] ?? 1)).toFixed(3));
  return {
    customers: size,
    runs: args.runs,
    workers: args.workers,
    suspended: baselineSet.n,
    stateChanges,
    checksum: baselineSet.md5,
    // Wall times, and the suspend process's CPU time (keys ending in Cpu), in seconds.
    seconds: Object.fromEntries(Object.entries(m).filter(([k]) => !k.endsWith('Rss'))),
    samples,
    accountsPerSecond: {
      baseline: perSecond('baseline'),
      backfill: perSecond('backfill'),
      backfillWorkers: perSecond('backfillWorkers'),
      report: perSecond('report'),
      sweep: perSecond('sweep'),
    },
    ratios: {
      backfillVsBaseline: ratio('backfill', 'baseline'),
      writeFloorVsBaseline: ratio('writeFloor', 'baseline'),
      backfillWorkersVsBaseline: ratio('backfillWorkers', 'baseline'),
      reportVsBaselineRead: ratio('report', 'baselineRead'),
      sweepVsReport: ratio('sweep', 'report'),
      sweepVsReportAfter: ratio('sweep', 'reportAfter'),
    },
    peakRssMb: {
      report: m.reportRss ?? null,
      backfill: m.backfillRss ?? null,
      sweep: m.sweepRss ?? null,
      backfillWorkers: m.backfillWorkersRss ?? null,
    },
  };
}

async function describeMachine(admin: Knex): Promise<Record<string, string>> {
  const setting = async (name: string) =>
    (await admin.raw<{ rows: { s: string }[] }>('select current_setting(?) as s', [name])).rows[0]?.s ?? '?';
  return {
    cpu: `${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown cpu'})`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    node: process.version,
    postgres: `PostgreSQL ${await setting('server_version')} on the same machine (shared_buffers ${await setting('shared_buffers')}, work_mem ${await setting('work_mem')}, default settings)`,
  };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const admin = knexFactory({ client: 'pg', connection: args.url, pool: { min: 0, max: 1 } });
  const results: SizeResult[] = [];
  let machine: Record<string, string>;
  try {
    machine = await describeMachine(admin);
    for (const size of args.sizes) results.push(await measureSize(admin, args, size));
  } finally {
    await admin.destroy();
  }
  const out = { date: new Date().toISOString(), machine, asOf: AS_OF, seed: SEED, results };
  fs.writeFileSync(path.join(ROOT, 'bench/results.json'), `${JSON.stringify(out, null, 2)}\n`);
  const md = renderMarkdown(out);
  fs.writeFileSync(path.join(ROOT, 'bench/results.md'), md);
  process.stdout.write(md);
}

function renderMarkdown(out: {
  date: string;
  machine: Record<string, string>;
  results: SizeResult[];
}): string {
  const s = (r: SizeResult, k: string) =>
    r.seconds[k] === undefined ? '-' : `${(r.seconds[k] as number).toFixed(2)} s`;
  const x = (v: number | undefined) => (v === undefined ? '-' : `${v.toFixed(2)}x`);
  const mb = (v: number | null | undefined) =>
    v === null || v === undefined ? 'n/a' : `${Math.round(v)} MB`;
  const lines = [
    `# suspend benchmark`,
    '',
    `Measured ${out.date.slice(0, 10)} with \`npm run bench\` on ${out.machine.cpu}, ${out.machine.memory}, Node ${out.machine.node}, ${out.machine.postgres}.`,
    `Reference data of \`suspend seed --seed ${SEED}\` (about 5 reservations, 2 invoices and 0.9 subscriptions per customer), rules in bench/rules.yaml, as of ${AS_OF}.`,
    'Each figure is the median of the runs; every run starts from a fresh clone of the same seeded database.',
    'suspend times are wall times of the CLI as a user runs it (process start included); the baseline is one hand-written SQL statement (src/bench/baseline.ts) run over an open connection.',
    '',
    '| customers | state changes | baseline SQL | its read part | `backfill` | backfill / baseline | `backfill --workers N` | / baseline | `report --dry-run` | report / baseline read | 2nd `sweep` (no change) | sweep / report | report after the backfill | sweep / that report | peak RSS report / backfill / sweep | backfill accounts/s |',
    '| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of out.results) {
    lines.push(
      `| ${r.customers.toLocaleString('en-US')} | ${r.stateChanges.toLocaleString('en-US')} | ${s(r, 'baseline')} | ${s(r, 'baselineRead')} | ${s(r, 'backfill')} | ${x(r.ratios.backfillVsBaseline)} | ${r.workers > 1 ? `${s(r, 'backfillWorkers')} (N=${r.workers})` : '-'} | ${r.workers > 1 ? x(r.ratios.backfillWorkersVsBaseline) : '-'} | ${s(r, 'report')} | ${x(r.ratios.reportVsBaselineRead)} | ${s(r, 'sweep')} | ${x(r.ratios.sweepVsReport)} | ${s(r, 'reportAfter')} | ${x(r.ratios.sweepVsReportAfter)} | ${mb(r.peakRssMb.report)} / ${mb(r.peakRssMb.backfill)} / ${mb(r.peakRssMb.sweep)} | ${(r.accountsPerSecond.backfill ?? 0).toLocaleString('en-US')} |`,
    );
  }
  lines.push(
    '',
    `CPU time of the suspend process (user + system; the rest of a run's work is Postgres's, on the same ${out.machine.cpu}): ${out.results
      .map(
        (r) =>
          `${r.customers.toLocaleString('en-US')} customers: report ${s(r, 'reportCpu')}, backfill ${s(r, 'backfillCpu')}, sweep ${s(r, 'sweepCpu')}`,
      )
      .join('; ')}.`,
    '',
    `Storing the backfill's rows alone (its states, history rows and outbox events inserted again by plain SQL, \`insert … select\` from its own tables into empty copies of them, one transaction, nothing read, computed or parsed): ${out.results
      .map(
        (r) =>
          `${r.customers.toLocaleString('en-US')} customers: ${s(r, 'writeFloor')}, ${x(r.ratios.writeFloorVsBaseline)} the baseline`,
      )
      .join('; ')}.`,
    '',
    'Correctness: in every run the set of accounts suspended by the baseline, by `suspend backfill` (its states and the customers.status it set) and by `backfill --workers N` had the same checksum; the second sweep changed nothing.',
  );
  return `${lines.join('\n')}\n`;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
