import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory, { type Knex } from 'knex';
import { BASELINE_READ, BASELINE_SETUP, BASELINE_WRITE } from './baseline';

/**
 * `npm run bench [-- --customers 100000,1000000 --runs 3]`: seeds the reference data once per size
 * into a template database, then for each measured run clones it so every run starts from the same
 * data, and times the hand-written SQL baseline against suspend's backfill, dry-run report and a
 * sweep with nothing to change. Writes bench/results.json and bench/results.md. Fails when the
 * baseline and suspend do not suspend the same accounts.
 */

const ROOT = path.resolve(__dirname, '../..');
const AS_OF = '2026-11-23';
const SEED = 42;
const RULES = path.join(ROOT, 'bench/rules.yaml');

interface Args {
  sizes: number[];
  runs: number;
  url: string;
  extra: string[][];
}

function parseArgs(argv: string[]): Args {
  const get = (name: string) => {
    const i = argv.indexOf(name);
    return i >= 0 ? argv[i + 1] : undefined;
  };
  const sizes = (get('--customers') ?? '100000').split(',').map((s) => Number(s.replace(/_/g, '')));
  if (sizes.some((n) => !Number.isInteger(n) || n < 1))
    throw new Error('--customers takes sizes like 100000,1000000');
  const workers = get('--workers');
  return {
    sizes,
    runs: Number(get('--runs') ?? 3),
    url: get('--database-url') ?? process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres',
    extra: workers ? [[], ['--workers', workers]] : [[]],
  };
}

function withDatabase(url: string, db: string): string {
  const u = new URL(url);
  u.pathname = `/${db}`;
  return u.toString();
}

interface Timed {
  seconds: number;
  rssMb: number | null;
  stdout: string;
}

/** Runs the CLI under /usr/bin/time -v for its peak RSS. */
function timeCli(args: string[]): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const useTime = fs.existsSync('/usr/bin/time');
    const cmd = useTime ? '/usr/bin/time' : process.execPath;
    const argv = useTime
      ? ['-v', process.execPath, path.join(ROOT, 'bin/suspend'), ...args]
      : [path.join(ROOT, 'bin/suspend'), ...args];
    const child = spawn(cmd, argv, { env: { ...process.env, DATABASE_URL: undefined, NO_COLOR: '1' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      if (code !== 0)
        return reject(new Error(`suspend ${args.join(' ')} exited ${code}: ${stderr.slice(-2000)}`));
      const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(stderr);
      resolve({ seconds, rssMb: rss ? Number(rss[1]) / 1024 : null, stdout });
    });
  });
}

async function timeSql(
  knex: Knex,
  sql: string,
): Promise<{ seconds: number; rows: Record<string, unknown>[] }> {
  const started = process.hrtime.bigint();
  const result = await knex.raw(sql, { asOf: AS_OF });
  return {
    seconds: Number(process.hrtime.bigint() - started) / 1e9,
    rows: (result as { rows: Record<string, unknown>[] }).rows,
  };
}

function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

async function suspendedChecksum(knex: Knex, sql: string): Promise<{ n: number; md5: string }> {
  const r = await knex.raw<{ rows: { n: string; md5: string }[] }>(
    `select count(*) as n, md5(coalesce(string_agg(id::text, ',' order by id), '')) as md5 from (${sql}) x`,
  );
  return { n: Number(r.rows[0]?.n), md5: String(r.rows[0]?.md5) };
}

async function main(): Promise<void> {
  const args = parseArgs(process.argv.slice(2));
  const admin = knexFactory({ client: 'pg', connection: args.url, pool: { min: 0, max: 1 } });
  const results: Record<string, unknown>[] = [];
  try {
    for (const size of args.sizes) {
      const template = `suspend_bench_${size}_s${SEED}`;
      const exists = await admin.raw<{ rows: unknown[] }>('select 1 from pg_database where datname = ?', [
        template,
      ]);
      if (exists.rows.length === 0) {
        process.stderr.write(`seeding ${size} customers into ${template}...\n`);
        await admin.raw('create database ??', [`${template}_building`]);
        const url = withDatabase(args.url, `${template}_building`);
        const seed = await timeCli([
          'seed',
          '--customers',
          String(size),
          '--seed',
          String(SEED),
          '--as-of',
          AS_OF,
          '--database-url',
          url,
          '--quiet',
        ]);
        process.stderr.write(`seeded in ${seed.seconds.toFixed(1)} s\n`);
        await timeCli(['migrate', '--database-url', url, '--quiet']);
        await admin.raw('alter database ?? rename to ??', [`${template}_building`, template]);
      }
      for (const extra of args.extra) {
        const samples: Record<string, number[]> = {};
        const add = (k: string, v: number | null) => {
          if (v !== null) (samples[k] ??= []).push(v);
        };
        let baselineSet = { n: 0, md5: '' };
        let suspendSet = { n: 0, md5: '' };
        for (let run = 0; run < args.runs; run++) {
          const clone = `${template}_run`;
          const cloneDb = async () => {
            await admin.raw('drop database if exists ?? with (force)', [clone]);
            await admin.raw('create database ?? template ??', [clone, template]);
            return withDatabase(args.url, clone);
          };
          // Baseline: read part and the whole statement, on a fresh clone.
          let url = await cloneDb();
          let db = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 1 } });
          try {
            await db.raw(BASELINE_SETUP);
            add('baselineRead', (await timeSql(db, BASELINE_READ)).seconds);
            add('baseline', (await timeSql(db, BASELINE_WRITE)).seconds);
            baselineSet = await suspendedChecksum(db, "select id from customers where status = 'suspended'");
          } finally {
            await db.destroy();
          }
          // suspend: dry-run report, backfill, then a sweep that has nothing to change.
          url = await cloneDb();
          const common = [
            '--as-of',
            AS_OF,
            '--rules',
            RULES,
            '--database-url',
            url,
            '--quiet',
            '--format',
            'json',
          ];
          const report = await timeCli(['report', '--dry-run', ...common, ...extra]);
          add('report', report.seconds);
          add('reportRss', report.rssMb);
          const backfill = await timeCli(['backfill', '--no-notify', ...common, ...extra]);
          add('backfill', backfill.seconds);
          add('backfillRss', backfill.rssMb);
          const sweep = await timeCli(['sweep', '--no-notify', ...common, ...extra]);
          add('sweep', sweep.seconds);
          const changes = (JSON.parse(sweep.stdout) as { counts: { changes: number } }).counts.changes;
          if (changes !== 0)
            throw new Error(`the second sweep changed ${changes} accounts; it must change none`);
          db = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 1 } });
          try {
            suspendSet = await suspendedChecksum(
              db,
              "select distinct customer_key::bigint as id from suspend.account_states where stage = 'suspended'",
            );
          } finally {
            await db.destroy();
          }
          await admin.raw('drop database if exists ?? with (force)', [clone]);
          process.stderr.write(
            `size ${size}${extra.length ? ` ${extra.join(' ')}` : ''} run ${run + 1}/${args.runs} done\n`,
          );
        }
        if (baselineSet.md5 !== suspendSet.md5) {
          throw new Error(
            `correctness: the baseline suspended ${baselineSet.n} accounts and suspend ${suspendSet.n}; the sets differ (checksums ${baselineSet.md5} vs ${suspendSet.md5})`,
          );
        }
        const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)]));
        results.push({
          customers: size,
          variant: extra.length ? extra.join(' ') : 'default',
          runs: args.runs,
          suspended: suspendSet.n,
          seconds: m,
          accountsPerSecond: {
            backfill: Math.round(size / (m.backfill ?? 1)),
            report: Math.round(size / (m.report ?? 1)),
          },
          ratios: {
            backfillVsBaseline: (m.backfill ?? 0) / (m.baseline ?? 1),
            reportVsBaselineRead: (m.report ?? 0) / (m.baselineRead ?? 1),
            sweepVsReport: (m.sweep ?? 0) / (m.report ?? 1),
          },
          peakRssMb: { backfill: m.backfillRss ?? null, report: m.reportRss ?? null },
        });
      }
    }
  } finally {
    await admin.destroy();
  }
  const machine = `${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown cpu'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}`;
  const out = { date: new Date().toISOString(), machine, asOf: AS_OF, seed: SEED, results };
  fs.mkdirSync(path.join(ROOT, 'bench'), { recursive: true });
  fs.writeFileSync(path.join(ROOT, 'bench/results.json'), `${JSON.stringify(out, null, 2)}\n`);
  const md = renderMarkdown(out);
  fs.writeFileSync(path.join(ROOT, 'bench/results.md'), `${md}\n`);
  process.stdout.write(`${md}\n`);
}

function renderMarkdown(out: { date: string; machine: string; results: Record<string, unknown>[] }): string {
  const lines = [
    `Measured ${out.date.slice(0, 10)} on ${out.machine}; medians of the runs; each run starts from a clone of the same seeded database.`,
    '',
    '| customers | variant | baseline (SQL) | baseline read | suspend backfill | backfill / baseline | report --dry-run | report / baseline read | 2nd sweep | peak RSS backfill | accounts/s (backfill) |',
    '| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
  ];
  for (const r of out.results as {
    customers: number;
    variant: string;
    seconds: Record<string, number>;
    ratios: Record<string, number>;
    peakRssMb: { backfill: number | null };
    accountsPerSecond: { backfill: number };
  }[]) {
    const s = (k: string) => `${(r.seconds[k] ?? 0).toFixed(2)} s`;
    lines.push(
      `| ${r.customers.toLocaleString('en-US')} | ${r.variant} | ${s('baseline')} | ${s('baselineRead')} | ${s('backfill')} | ${(r.ratios.backfillVsBaseline ?? 0).toFixed(2)}x | ${s('report')} | ${(r.ratios.reportVsBaselineRead ?? 0).toFixed(2)}x | ${s('sweep')} | ${r.peakRssMb.backfill === null ? 'n/a' : `${Math.round(r.peakRssMb.backfill)} MB`} | ${r.accountsPerSecond.backfill.toLocaleString('en-US')} |`,
    );
  }
  return lines.join('\n');
}

main().catch((err: unknown) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exitCode = 1;
});
