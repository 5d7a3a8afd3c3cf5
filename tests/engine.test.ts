import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory from 'knex';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { ROOT } from './helpers/server';
import { checksumTables, ENGINE_RULES, writeRules } from './helpers/fixtures';
import {
  backfillArgs,
  cli as engineCli,
  Gate,
  seededDatabase,
  startCli,
  startNode,
  startRunKilledInPage,
} from './helpers/reliability';
import { runBatch, type BatchOptions } from '../src/engine/run';
import { addDays, todayUtc } from '../src/rules/dates';
import { LOCK_CLASS } from '../src/engine/lock';
import { loadRules } from '../src/rules/load';
import { reinstateAccount } from '../src/customer/reinstate';
import { revertRun } from '../src/customer/revert';
import type { OutboxPayload, Rules } from '../src/types';
import { digestCsv, stageCounts } from '../src/notify/digest';

/** The batch engine as a user runs it: report, backfill, sweep, runs, locks, limits, resume, races. */

const AS_OF = '2026-11-23';
const rulesFile = writeRules(ENGINE_RULES);

const seeded = seededDatabase;

function cli(db: TestDatabase, args: string[]) {
  return engineCli(db, args, rulesFile);
}

interface ReportJson {
  runId: string | null;
  status: string;
  counts: {
    scanned: number;
    changes: number;
    accountsChanged: number;
    excluded: number;
    changedSinceRead: number;
  };
  accounts?: { key: string; policy: string; to: string; change: string }[];
}

async function states(db: TestDatabase): Promise<string[]> {
  const rows = await db
    .knex('suspend.account_states')
    .select('customer_key', 'policy', 'stage')
    .orderBy(['customer_key', 'policy']);
  return rows
    .map(
      (r: { customer_key: string; policy: string; stage: string | null }) =>
        `${r.customer_key}|${r.policy}|${r.stage ?? 'clear'}`,
    )
    .sort(); // JS order, as the expectations are sorted
}

/** A backfill through the callable core, as of AS_OF, in pages of `batchSize`. */
function backfillOptions(batchSize: number) {
  return {
    kind: 'backfill' as const,
    asOf: AS_OF,
    dryRun: false,
    batchSize,
    orgs: null,
    shard: null,
    resume: false,
    wait: false,
    actor: 'test',
  };
}

/** `backfill --resume` on `stopped`, an uninterrupted backfill on `clean`: the same states. */
async function expectResumeLikeUninterrupted(stopped: TestDatabase, clean: TestDatabase, batchSize: number) {
  const resumed = await cli(stopped, ['backfill', '--resume', '--no-notify', '--quiet', '--format', 'json']);
  expect(resumed.code).toBe(0);
  const uninterrupted = await cli(clean, backfillArgs(batchSize));
  expect(uninterrupted.code).toBe(0);
  expect(await states(stopped)).toEqual(await states(clean));
}

describe('report, backfill and sweep on 10,000 reference accounts', () => {
  let db: TestDatabase;
  let preview: ReportJson;
  beforeAll(async () => {
    db = await seeded(10_000);
  });
  afterAll(async () => db.drop());

  test('an --org that no account has is named in a note; the organizations that exist are scanned as usual', async () => {
    const one = await cli(db, ['report', '--org', '1', '--format', 'json', '--as-of', AS_OF]);
    expect(one.code).toBe(0);
    expect(one.stderr).not.toContain('note: --org');
    const mixed = await cli(db, ['report', '--org', '1', '99', 'x', '--format', 'json', '--as-of', AS_OF]);
    expect(mixed.code).toBe(0);
    expect((JSON.parse(mixed.stdout) as ReportJson).counts.scanned).toBe(
      (JSON.parse(one.stdout) as ReportJson).counts.scanned,
    );
    expect(mixed.stderr).toContain(
      'note: --org 99, x: no account in customers has these organizations (column org_id); check the ids.\n',
    );
  });

  test('report --dry-run lists the changes and writes nothing at all', async () => {
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    const r = await cli(db, ['report', '--dry-run', '--accounts', '--format', 'json', '--as-of', AS_OF]);
    expect(r.code).toBe(0);
    preview = JSON.parse(r.stdout) as ReportJson;
    expect(preview.counts.scanned).toBe(10_000);
    expect(preview.counts.changes).toBeGreaterThan(1000);
    expect(preview.counts.excluded).toBeGreaterThan(0);
    expect(preview.accounts).toHaveLength(preview.counts.changes);
    expect(new Set(preview.accounts!.map((a) => a.key)).size).toBe(preview.counts.accountsChanged);
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('--accounts lists the same accounts in csv (to a file), table and markdown', async () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-report-')), 'accounts.csv');
    const base = ['report', '--dry-run', '--accounts', '--as-of', AS_OF, '--quiet'];
    const csv = await cli(db, [...base, '--format', 'csv', '--output', file]);
    expect(csv).toMatchObject({ code: 0, stdout: '' });
    const csvLines = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
    expect(csvLines[0]).toBe('key,org,policy,change,from,to,reasons');
    const listed = preview.accounts!.map((a) => `${a.key}|${a.policy}|${a.to}`);
    // Reasons hold no commas or quotes here, so the first columns split plainly.
    expect(
      csvLines
        .slice(1)
        .map((l) => l.split(','))
        .map((c) => `${c[0]}|${c[2]}|${c[5]}`),
    ).toEqual(listed);
    for (const format of ['table', 'markdown']) {
      const r = await cli(db, [...base, '--format', format]);
      expect(r.code).toBe(0);
      const rows = r.stdout.slice(
        r.stdout.indexOf(`Accounts (${preview.counts.changes.toLocaleString('en-US')})`),
      );
      const keyed = rows
        .split('\n')
        .map((l) => l.replace(/^\|\s*/, '').split(/\s+\|?\s*/))
        .filter((c) => /^\d+$/.test(c[0] ?? ''));
      expect(keyed.map((c) => `${c[0]}|${c[2]}|${c[5]}`)).toEqual(listed);
    }
  });

  test('an empty --by or --database-url is one sentence, exit 2, nothing written (not taken for "not given")', async () => {
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    for (const by of ['', '   ']) {
      const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify', '--by', by]);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toMatch(
        /^error: option '--by <name>' argument ' ?' is invalid\. It is empty; give a name for the ledger, or leave the flag out\. See `suspend sweep --help`\.\n$/,
      );
    }
    // DATABASE_URL names the database: an empty flag used to fall back to it and run.
    const r = await runCli(
      ['sweep', '--as-of', AS_OF, '--no-notify', '--rules', rulesFile, '--database-url', ''],
      {
        env: { DATABASE_URL: db.url },
      },
    );
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toContain(`argument '' is invalid. It is empty; give a Postgres URL`);
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('a --shard that is not I/N with 0 <= I < N <= 100,000 is one sentence, exit 2, nothing written', async () => {
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    for (const [shard, says] of [
      ['5/99999999999', 'at most 100,000 shards; write I/N with N up to that.'],
      ['2/2', 'is not a shard; write I/N with 0 <= I < N, e.g. 0/4.'],
      ['a/2', 'is not a shard; write I/N with 0 <= I < N, e.g. 0/4.'],
    ]) {
      for (const args of [
        ['backfill', '--no-notify'],
        ['report', '--dry-run'],
      ]) {
        const r = await cli(db, [...args, '--as-of', AS_OF, '--shard', shard!]);
        expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
        expect(r.stderr).toContain(
          `argument '${shard}' is invalid. "${shard}"${says!.startsWith('is') ? ' ' : ': '}${says}`,
        );
      }
    }
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('--output checked before the run: a missing folder, a folder, or a file as a folder is one sentence, exit 2, nothing written; a file that cannot be created is one sentence', async () => {
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-output-'));
    const notAFolder = path.join(folder, 'a-file');
    fs.writeFileSync(notAFolder, '');
    for (const [output, problem] of [
      ['', 'an empty name is no file; name one, or leave --output out for stdout.'],
      [path.join(folder, 'missing', 'x.csv'), `the folder ${path.join(folder, 'missing')} does not exist`],
      [folder, `"${folder}" names a folder; name a file in it.`],
      [`${path.join(folder, 'new')}/`, `"${path.join(folder, 'new')}/" names a folder; name a file in it.`],
      [path.join(notAFolder, 'x.csv'), `${notAFolder} is a file, not a folder; name a file in a folder.`],
      [`${notAFolder}/`, `${notAFolder} is a file, not a folder; name a file in a folder.`],
    ]) {
      const r = await cli(db, ['backfill', '--as-of', AS_OF, '--no-notify', '--output', output!]);
      expect(r.code).toBe(2);
      expect(r.stderr.split('\n')[0]).toContain(
        `option '--output <file>' argument '${output}' is invalid. ${problem}`,
      );
    }
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
    // Passes the check where the user may write into /proc (root), fails when opened.
    const proc = await cli(db, [
      'report',
      '--dry-run',
      '--as-of',
      AS_OF,
      '--quiet',
      '--output',
      '/proc/x.csv',
    ]);
    expect(proc.code).toBeGreaterThan(0);
    expect(proc.stderr).toMatch(/^error: [^\n]*\/proc\/x\.csv[^\n]*\n$/);
  });

  test('a reader that stops early (`| head`): the report and --help end quietly with exit 0', async () => {
    // The listing is closed after its first chunk; the help (one write) before it is written.
    const listing = startCli(
      db,
      ['report', '--dry-run', '--accounts', '--format', 'csv', '--as-of', AS_OF, '--quiet'],
      rulesFile,
    );
    listing.child.stdout!.once('data', () => listing.child.stdout!.destroy());
    const help = startNode([path.join(ROOT, 'bin/suspend'), '--help']);
    help.child.stdout!.destroy();
    for (const r of await Promise.all([listing.done, help.done]))
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    // `2>&1 | head -0`: an error goes nowhere, and the exit code is still the error's.
    const refused = startCli(db, ['report', '--as-of', 'never'], rulesFile);
    refused.child.stdout!.destroy();
    refused.child.stderr!.destroy();
    expect((await refused.done).code).toBe(2);
  });

  test('a report without --accounts counts every change but builds only its sample of ten, the first in key order', async () => {
    const r = await cli(db, ['report', '--dry-run', '--format', 'json', '--as-of', AS_OF, '--quiet']);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as ReportJson & { sample: { key: string; policy: string }[] };
    expect(report.counts).toEqual(preview.counts);
    expect(report.sample.map((a) => `${a.key}|${a.policy}`)).toEqual(
      preview.accounts!.slice(0, 10).map((a) => `${a.key}|${a.policy}`),
    );
    // Through the core: onPage gets the changes asked for (whole accounts, a page or two ahead), not all.
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    let all = 0;
    const whole = await runBatch(db.knex, rules, {
      ...backfillOptions(500),
      dryRun: true,
      onPage: ({ changes }) => {
        all += changes.length;
      },
    });
    expect(whole.counts.changes).toBe(preview.counts.changes);
    expect(all).toBe(preview.counts.changes);
    let given = 0;
    const few = await runBatch(db.knex, rules, {
      ...backfillOptions(500),
      dryRun: true,
      changesWanted: () => Math.max(0, 3 - given),
      onPage: ({ changes }) => {
        given += changes.length;
      },
    });
    expect(few.counts).toEqual(whole.counts);
    expect(given).toBeGreaterThanOrEqual(3);
    expect(given).toBeLessThan(20);
  });

  test('backfill writes exactly what the dry run listed, with history, outbox and host status', async () => {
    const r = await cli(db, ['backfill', '--as-of', AS_OF, '--format', 'json', '--no-notify', '--quiet']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as ReportJson;
    expect(result.status).toBe('succeeded');
    expect(result.counts.changes).toBe(preview.counts.changes);
    const expected = preview.accounts!.map((a) => `${a.key}|${a.policy}|${a.to}`).sort();
    expect(await states(db)).toEqual(expected);
    const history = await db
      .knex('suspend.history')
      .where({ run_id: result.runId })
      .count<{ n: string }[]>({ n: '*' });
    const outbox = await db
      .knex('suspend.outbox')
      .where({ run_id: result.runId })
      .count<{ n: string }[]>({ n: '*' });
    expect(Number(history[0]!.n)).toBe(result.counts.changes);
    expect(Number(outbox[0]!.n)).toBe(result.counts.changes);
    expect(result.counts.accountsChanged).toBe(preview.counts.accountsChanged);
    // A suspended account has the mapped status; a paused-only one keeps its own.
    const suspendedKeys = preview.accounts!.filter((a) => a.to === 'suspended').map((a) => a.key);
    const statuses = await db.knex('customers').whereIn('id', suspendedKeys).distinct('status');
    expect(statuses).toEqual([{ status: 'suspended' }]);
  });

  test('a message naming the oldest overdue invoice names an unpaid invoice of that account, with its days', async () => {
    const paused = (await db
      .knex('suspend.account_states')
      .where({ policy: 'overdue_pause', stage: 'paused' })
      .select('customer_key', 'message')
      .limit(20)) as { customer_key: string; message: string }[];
    expect(paused.length).toBeGreaterThan(0);
    for (const s of paused) {
      const m = /^Invoice (\d+) for \$[\d,.]+ is (\d+) days overdue/.exec(s.message);
      expect(m).not.toBeNull();
      const [invoice] = await db
        .knex('invoices')
        .where({ id: m![1], customer_id: s.customer_key })
        .select(db.knex.raw('?::date - due_on as days', [AS_OF]), 'paid_on');
      expect(invoice).toMatchObject({ paid_on: null });
      // Net terms move the due day: the days overdue are at most those since the invoice's due_on.
      expect(Number(m![2])).toBeGreaterThanOrEqual(10);
      expect(Number(m![2])).toBeLessThanOrEqual(invoice.days);
    }
  });

  test('a second sweep with the same as-of changes nothing', async () => {
    const r = await cli(db, ['sweep', '--as-of', AS_OF, '--format', 'json', '--no-notify', '--quiet']);
    expect(r.code).toBe(0);
    expect((JSON.parse(r.stdout) as ReportJson).counts.changes).toBe(0);
  });

  test('a sweep a month later advances stages and reinstates paid accounts; runs lists the ledger', async () => {
    // Pay every invoice of ten delinquent accounts: the sweep must reinstate them (delinquency is auto).
    const paid = (await db
      .knex('suspend.account_states')
      .where({ policy: 'delinquency', stage: 'suspended' })
      .limit(10)
      .pluck('customer_key')) as string[];
    await db
      .knex('invoices')
      .whereIn('customer_id', paid)
      .whereNull('paid_on')
      .update({ paid_cents: db.knex.ref('amount_cents'), paid_on: '2026-12-01' });
    const r = await cli(db, [
      'sweep',
      '--as-of',
      '2026-12-23',
      '--format',
      'json',
      '--no-notify',
      '--accounts',
      '--quiet',
    ]);
    expect(r.code).toBe(0);
    const result = JSON.parse(r.stdout) as ReportJson;
    const cleared = result
      .accounts!.filter((a) => a.policy === 'delinquency' && a.change === 'clear')
      .map((a) => a.key);
    expect(cleared.sort()).toEqual(expect.arrayContaining([...paid].sort()));
    // Their status column gets back the value the backfill found (captured when it first set it),
    // unless inactivity, which also sets it, holds the account now.
    const stillInactive = (await db
      .knex('suspend.account_states')
      .where({ policy: 'inactivity', stage: 'suspended' })
      .whereIn('customer_key', paid)
      .pluck('customer_key')) as string[];
    const reinstated = paid.filter((k) => !stillInactive.includes(k));
    expect(reinstated.length).toBeGreaterThan(0);
    const statuses = await db.knex('customers').whereIn('id', reinstated).distinct('status');
    expect(statuses).toEqual([{ status: 'active' }]);
    const runs = await cli(db, ['runs', '--format', 'json']);
    const ledger = JSON.parse(runs.stdout) as { kind: string; status: string; asOf: string }[];
    expect(ledger.map((x) => [x.kind, x.status, x.asOf])).toEqual([
      ['sweep', 'succeeded', '2026-12-23'],
      ['sweep', 'succeeded', AS_OF],
      ['backfill', 'succeeded', AS_OF],
    ]);
  });

  test('a run as of a day before the last run is refused in one sentence, exit 2, nothing written; a dry run may look at that day', async () => {
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    for (const kind of ['sweep', 'backfill']) {
      const r = await cli(db, [kind, '--as-of', '2026-12-01', '--no-notify']);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 2,
        stderr: expect.stringMatching(
          /^error: A run as of 2026-12-01 is earlier than sweep run (\d+) \(as of 2026-12-23\) and would undo what it found; pass --as-of 2026-12-23 or later, revert run \1 if its day was wrong, or preview 2026-12-01 with --dry-run\.\n$/,
        ) as unknown,
      });
    }
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
    const preview = await cli(db, ['sweep', '--as-of', '2026-12-01', '--dry-run', '--quiet']);
    expect(preview.code).toBe(0);
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
    // A day years ahead (2062 for 2026) would block every later run: refused before anything, and a
    // dry run may still look at it.
    const far = addDays(todayUtc(), 367);
    for (const kind of ['sweep', 'backfill']) {
      const r = await cli(db, [kind, '--as-of', far, '--no-notify']);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toBe(
        `error: --as-of ${far} is more than a year after today (${todayUtc()}, UTC): a run that writes as of it would make every later run as of an earlier day refuse to start until it is reverted. Check the date (up to ${addDays(todayUtc(), 366)}), or preview it with --dry-run.\n`,
      );
    }
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
    expect((await cli(db, ['sweep', '--as-of', far, '--dry-run', '--quiet'])).code).toBe(0);
  });

  test('history keeps the state each change replaced, for revert; a state written first had none', async () => {
    const rows = (await db
      .knex('suspend.history as h')
      .join('suspend.runs as r', 'r.id', 'h.run_id')
      .select('r.kind', 'h.customer_key', 'h.policy', 'h.from_stage', 'h.previous_state')) as {
      kind: string;
      customer_key: string;
      policy: string;
      from_stage: string | null;
      previous_state: Record<string, unknown> | null;
    }[];
    const replaced = rows.filter((h) => h.kind === 'sweep' && h.from_stage !== null);
    expect(replaced.length).toBeGreaterThan(0);
    for (const h of replaced) {
      expect(h.previous_state).toMatchObject({
        customer_key: h.customer_key,
        policy: h.policy,
        stage: h.from_stage,
        version: expect.any(Number),
      });
    }
    const first = rows.filter((h) => h.kind === 'backfill');
    expect(first.length).toBeGreaterThan(0);
    for (const h of first)
      expect(Object.keys(h.previous_state ?? {}).filter((k) => k !== 'host')).toEqual([]);
  });

  test('a second run while one holds the lock exits 3 naming the holder; --wait runs after it', async () => {
    const holder = knexFactory({
      client: 'pg',
      connection: { connectionString: db.url, application_name: 'suspend sweep by ops (pid 4242)' },
      pool: { min: 1, max: 1 },
    });
    const conn = await holder.client.acquireConnection();
    try {
      await conn.query("select pg_advisory_lock(21333, hashtext('suspend'))");
      // The day of the last sweep: a run as of an earlier day is refused (next test).
      const blocked = await cli(db, ['sweep', '--as-of', '2026-12-23', '--no-notify']);
      expect(blocked.code).toBe(3);
      expect(blocked.stderr).toContain('suspend sweep by ops (pid 4242)');
      const waiting = cli(db, [
        'sweep',
        '--as-of',
        '2026-12-23',
        '--no-notify',
        '--wait',
        '--format',
        'json',
      ]);
      await new Promise((r) => setTimeout(r, 1500));
      await conn.query("select pg_advisory_unlock(21333, hashtext('suspend'))");
      const after = await waiting;
      expect(after.code).toBe(0);
    } finally {
      await holder.client.releaseConnection(conn);
      await holder.destroy();
    }
  });
});

describe('safety limit', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seeded(3000, 11);
  });
  afterAll(async () => db.drop());

  test('max_changes stops the run before the page that would cross it, exit 4, ledger says stopped', async () => {
    const limited = writeRules(ENGINE_RULES.replace('settings:\n', 'settings:\n  max_changes: 50\n'));
    const r = await runCli([
      'backfill',
      '--as-of',
      AS_OF,
      '--batch-size',
      '500',
      '--no-notify',
      '--rules',
      limited,
      '--database-url',
      db.url,
    ]);
    expect(r.code).toBe(4);
    expect(r.stdout).toContain('safety limit');
    const [run] = await db.knex('suspend.runs').select('status', 'error');
    expect(run.status).toBe('stopped');
    const n = await db.knex('suspend.history').count<{ n: string }[]>({ n: '*' });
    expect(Number(n[0]!.n)).toBeLessThanOrEqual(50);
  });

  test('a max_changes share is of the accounts the run counts (1% of 3,000: 30), and a dry run reports them all', async () => {
    const limited = writeRules(ENGINE_RULES.replace('settings:\n', 'settings:\n  max_changes: 1%\n'));
    const args = ['--as-of', AS_OF, '--batch-size', '20', '--rules', limited, '--database-url', db.url];
    const report = await runCli(['report', '--dry-run', '--format', 'json', ...args]);
    expect(report.code).toBe(0);
    const predicted = JSON.parse(report.stdout) as {
      totalAccounts: number;
      counts: { changes: number };
      wouldStopAtLimit: unknown;
    };
    expect(predicted.totalAccounts).toBe(3000);
    // It says the real run would stop, in JSON and in the table.
    expect(predicted.counts.changes).toBeGreaterThan(30);
    expect(predicted.wouldStopAtLimit).toEqual({ max: 30, changes: predicted.counts.changes });
    const table = await runCli(['report', '--dry-run', ...args]);
    expect(table.stdout).toContain(
      `\nA real run would stop at the safety limit: ${predicted.counts.changes.toLocaleString('en-US')} state changes is over max_changes 30, so it would write the pages before the one that crosses it and exit 4.`,
    );
    const lifted = writeRules(ENGINE_RULES.replace('settings:\n', 'settings:\n  max_changes: 100%\n'));
    const under = await runCli([
      'report',
      '--format',
      'json',
      ...args.slice(0, 4),
      '--rules',
      lifted,
      '--database-url',
      db.url,
    ]);
    expect((JSON.parse(under.stdout) as { wouldStopAtLimit: unknown }).wouldStopAtLimit).toBeNull();
    // A fresh start: the test before wrote history.
    await db.knex.raw('drop schema suspend cascade');
    expect((await runCli(['migrate', '--rules', limited, '--database-url', db.url])).code).toBe(0);
    const r = await runCli(['backfill', '--no-notify', ...args]);
    expect(r.code).toBe(4);
    expect(r.stdout).toContain('over max_changes 30.');
    const n = await db.knex('suspend.history').count<{ n: string }[]>({ n: '*' });
    expect(Number(n[0]!.n)).toBeGreaterThan(0);
    expect(Number(n[0]!.n)).toBeLessThanOrEqual(30);
  });
});

describe('the ledger of a run that stopped', () => {
  test('runs shows the counts a stopped run closed with, not the fewer its checkpoints hold', async () => {
    const db = await seeded(3000, 11);
    try {
      // Few accounts change (three unpaid invoices), so most pages change nothing and are
      // checkpointed only now and then; the run stops at the third change.
      const rare = writeRules(
        `${ENGINE_RULES.slice(0, ENGINE_RULES.indexOf('policies:'))}policies:
  many_unpaid:
    stages:
      - name: paused
        when: { unpaid_invoices_at_least: 2 }
        actions: [pause]
`.replace('settings:\n', 'settings:\n  max_changes: 3\n'),
      );
      const args = ['--as-of', AS_OF, '--batch-size', '20', '--rules', rare, '--database-url', db.url];
      const r = await runCli(['backfill', '--no-notify', '--format', 'json', ...args]);
      expect(r.code).toBe(4);
      const closed = (JSON.parse(r.stdout) as ReportJson).counts;
      expect(closed.scanned).toBeGreaterThan(40);
      const [run] = (await db.knex('suspend.runs').pluck('id')) as string[];
      const shown = await runCli(['runs', 'show', String(run), '--format', 'json', ...args.slice(4)]);
      expect(shown.code).toBe(0);
      expect(JSON.parse(shown.stdout) as { status: string; counts: ReportJson['counts'] }).toMatchObject({
        status: 'stopped',
        counts: { scanned: closed.scanned, changes: closed.changes },
      });
    } finally {
      await db.drop();
    }
  });
});

describe('the ledger of a killed run with two workers', () => {
  test('runs shows the changes its pages committed, and abandoning it stores them', async () => {
    const db = await seeded(3000, 5);
    try {
      const killed = startRunKilledInPage(db, { killAt: 8, batchSize: 10, workers: 2 });
      expect((await killed.done).signal).toBe('SIGKILL');
      const [run] = (await db.knex('suspend.runs').pluck('id')) as string[];
      const committed = Number(
        (await db.knex('suspend.history').where({ run_id: run }).count<{ n: string }[]>({ n: '*' }))[0]!.n,
      );
      expect(committed).toBeGreaterThan(0);
      const listed = await cli(db, ['runs', '--format', 'json']);
      expect(JSON.parse(listed.stdout)).toMatchObject([{ id: String(run), counts: { changes: committed } }]);
      expect((await cli(db, ['backfill', '--abandon', String(run)])).code).toBe(0);
      expect(await db.knex('suspend.runs').where({ id: run }).first('status', 'counts')).toMatchObject({
        status: 'abandoned',
        counts: { changes: committed },
      });
    } finally {
      await db.drop();
    }
  });
});

describe('crash and resume', () => {
  let killed: TestDatabase;
  let clean: TestDatabase;
  beforeAll(async () => {
    [killed, clean] = await Promise.all([seeded(6000, 3), seeded(6000, 3)]);
  });
  afterAll(async () => Promise.all([killed.drop(), clean.drop()]));

  test('a killed backfill refuses a new start, resumes to the same final state as an uninterrupted run', async () => {
    const child = spawn(
      process.execPath,
      [
        path.join(ROOT, 'bin/suspend'),
        'backfill',
        '--as-of',
        AS_OF,
        '--batch-size',
        '100',
        '--no-notify',
        '--quiet',
        '--rules',
        rulesFile,
        '--database-url',
        killed.url,
      ],
      { stdio: 'ignore' },
    );
    // Kill -9 once a few pages have committed.
    for (let i = 0; i < 600; i++) {
      const row = await killed
        .knex('suspend.checkpoints')
        .max<{ p: number | null }[]>({ p: 'pages' })
        .catch(() => [{ p: null }]);
      if ((row[0]?.p ?? 0) >= 5) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));

    const refused = await cli(killed, ['backfill', '--as-of', AS_OF, '--no-notify']);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('--resume');
    await expectResumeLikeUninterrupted(killed, clean, 100);
    const dupes = await killed.knex.raw(
      'select customer_key, policy, to_stage, count(*) from suspend.history group by 1, 2, 3 having count(*) > 1',
    );
    expect(dupes.rows).toEqual([]);
    const outbox = async (d: TestDatabase) =>
      Number((await d.knex('suspend.outbox').count<{ n: string }[]>({ n: '*' }))[0]!.n);
    expect(await outbox(killed)).toBe(await outbox(clean));
  });

  test('a sweep killed in a page: runs shows what its committed pages did and that its process is gone; the next sweep closes it with those counts', async () => {
    const killedSweep = startRunKilledInPage(clean, {
      kind: 'sweep',
      asOf: '2026-12-23',
      killAt: 3,
      batchSize: 100,
    });
    expect((await killedSweep.done).signal).toBe('SIGKILL');
    const [run] = (await clean.knex('suspend.runs').where({ kind: 'sweep' }).pluck('id')) as string[];
    const written = async () =>
      Number(
        (await clean.knex('suspend.history').where({ run_id: run }).count<{ n: string }[]>({ n: '*' }))[0]!.n,
      );
    const changes = await written();
    expect(changes).toBeGreaterThan(0);

    // Another run holding the lock (here a transaction taking it) does not make this one look alive.
    const other = await clean.knex.transaction();
    let listed;
    try {
      await other.raw('select pg_advisory_xact_lock(?, hashtext(?))', [LOCK_CLASS, 'suspend']);
      listed = await cli(clean, ['runs', '--format', 'json']);
    } finally {
      await other.commit();
    }
    expect(listed.code).toBe(0);
    const shown = (
      JSON.parse(listed.stdout) as {
        id: string;
        status: string;
        processGone?: boolean;
        counts: { changes?: number; pages?: number };
      }[]
    ).find((r) => r.id === String(run));
    expect(shown).toMatchObject({ status: 'running', processGone: true, counts: { changes } });
    const table = await cli(clean, ['runs']);
    expect(table.stdout).toMatch(
      new RegExp(`^${run} +sweep +running \\(process gone\\) .* ${changes}$`, 'm'),
    );

    expect((await cli(clean, ['sweep', '--as-of', '2026-12-23', '--no-notify', '--quiet'])).code).toBe(0);
    const closed = (await clean.knex('suspend.runs').where({ id: run }).first('status', 'counts')) as {
      status: string;
      counts: { changes: number };
    };
    expect(closed).toMatchObject({ status: 'interrupted', counts: { changes } });
  });
});

describe('pages written at once', () => {
  test('a page whose write fails takes the page written beside it down too; the checkpoint stays before both and --resume ends as an uninterrupted run', async () => {
    const [db, clean] = await Promise.all([seeded(3000, 7), seeded(3000, 7)]);
    try {
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      // The changing keys of each page, by page (customers 1 to 3000 in pages of 500): two pages are
      // written at once, and either may reach its write first.
      const pageKeys: string[][] = [];
      let fourthStartedFirst = false;
      const failing = runBatch(db.knex, rules, {
        ...backfillOptions(500),
        beforeWrite: async (keys) => {
          const page = Math.floor((Math.min(...keys.map(Number)) - 1) / 500);
          pageKeys[page] = keys;
          if (page !== 2) return;
          // The third page fails only once the fourth is inside its own transaction.
          for (let i = 0; i < 250 && !pageKeys[3]; i++) await new Promise((r) => setTimeout(r, 20));
          fourthStartedFirst = pageKeys[3] !== undefined;
          throw new Error('the third page failed');
        },
      });
      await expect(failing).rejects.toThrow('the third page failed');
      expect(fourthStartedFirst).toBe(true);

      const written = new Set(
        ((await db.knex('suspend.history').distinct('customer_key').pluck('customer_key')) as string[]).map(
          String,
        ),
      );
      expect(pageKeys[1]!.some((k) => written.has(k))).toBe(true);
      expect([...pageKeys[2]!, ...pageKeys[3]!].filter((k) => written.has(k))).toEqual([]);
      const [checkpoint] = await db.knex('suspend.checkpoints').select('pages', 'done');
      expect(checkpoint).toEqual({ pages: 2, done: false });
      const [run] = await db.knex('suspend.runs').select('status');
      expect(run.status).toBe('interrupted');

      await expectResumeLikeUninterrupted(db, clean, 500);
      const history = async (d: TestDatabase) =>
        (
          await d.knex.raw<{ rows: { line: string }[] }>(
            "select concat_ws('|', customer_key, policy, kind, to_stage) as line from suspend.history order by 1",
          )
        ).rows.map((r) => r.line);
      expect(await history(db)).toEqual(await history(clean));
    } finally {
      await Promise.all([db.drop(), clean.drop()]);
    }
  });
});

test('a page commits while the work after the previous page’s commit (progress) still runs', async () => {
  const db = await seeded(3000, 7);
  try {
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    let calls = 0;
    let secondCommittedMeanwhile = false;
    const result = await runBatch(db.knex, rules, {
      ...backfillOptions(500),
      onPage: async () => {
        if (++calls !== 1) return;
        // Progress for the first page is slow: the second page must not hold its transaction open
        // for it (its payments would wait), so its checkpoint shows up meanwhile.
        for (let i = 0; i < 250 && !secondCommittedMeanwhile; i++) {
          const [row] = await db.knex('suspend.checkpoints').select('pages');
          secondCommittedMeanwhile = (row?.pages ?? 0) >= 2;
          if (!secondCommittedMeanwhile) await new Promise((r) => setTimeout(r, 20));
        }
      },
    });
    expect(result.status).toBe('succeeded');
    expect(secondCommittedMeanwhile).toBe(true);
  } finally {
    await db.drop();
  }
});

describe('accounts that come and go while pages are read', () => {
  let db: TestDatabase;
  beforeEach(async () => {
    db = await createTestDatabase();
    await db.knex('organizations').insert({ id: 1, name: 'Org', timezone: 'UTC', notification_emails: [] });
    await db
      .knex('customers')
      .insert(
        Array.from({ length: 12 }, (_, i) => ({ id: (i + 1) * 10, org_id: 1, created_at: '2020-01-01' })),
      );
    await db.knex.raw('analyze customers');
  });
  afterEach(async () => db.drop());

  /** Queries of this database waiting for a lock (the page reads, while invoices are held). */
  async function waitingOnLock(): Promise<number> {
    const waiting = await db.knex.raw<{ rows: { n: number }[] }>(
      "select count(*)::int as n from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    );
    return waiting.rows[0]?.n ?? 0;
  }

  /**
   * A dry run in pages of 3 whose page reads wait (they also read invoices, held here) after the
   * first pages' ends were found; `meanwhile` changes the customers before they go on.
   */
  async function dryRunAround(meanwhile: () => Promise<unknown>) {
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    const locker = knexFactory({ client: 'pg', connection: db.url, pool: { min: 1, max: 1 } });
    try {
      const trx = await locker.transaction();
      await trx.raw('lock table invoices in access exclusive mode');
      const report = runBatch(db.knex, rules, { ...backfillOptions(3), dryRun: true });
      try {
        for (let i = 0; i < 250; i++) {
          if ((await waitingOnLock()) > 0) break;
          await new Promise((r) => setTimeout(r, 20));
        }
        await meanwhile();
      } finally {
        await trx.commit();
      }
      return await report;
    } finally {
      await locker.destroy();
    }
  }

  test('a worker reads three pages at once: three page reads wait on the held invoices, never more', async () => {
    let most = 0;
    const result = await dryRunAround(async () => {
      // The reads start one after another: watch for a while (a fourth would show up here too).
      for (let i = 0; i < 50; i++) {
        most = Math.max(most, await waitingOnLock());
        await new Promise((r) => setTimeout(r, 20));
      }
    });
    expect(most).toBe(3);
    expect(result.counts.scanned).toBe(12);
    expect(result.counts.pages).toBe(4);
  });

  test('an account added inside a page after its end was found makes the page larger; none is skipped', async () => {
    // Between the first page's end (customer 30) and its read, customer 15 arrives.
    const result = await dryRunAround(() =>
      db.knex('customers').insert({ id: 15, org_id: 1, created_at: '2020-01-01' }),
    );
    expect(result.counts.scanned).toBe(13);
  });

  test('the last page, found full when read (accounts added at the end), is not the end of the walk', async () => {
    // Customers 10 to 40: the second page is the tail after 30, read as "up to 3 accounts".
    await db.knex('customers').where('id', '>', 40).del();
    const added = [50, 60, 70, 80].map((id) => ({ id, org_id: 1, created_at: '2020-01-01' }));
    const result = await dryRunAround(() => db.knex('customers').insert(added));
    expect(result.counts.scanned).toBe(8);
  });

  // Ten pages: the ends of eight found at once, then the rest. 25: the next ends are looked for
  // while the pages before them are read.
  test.each([10, 25])(
    'a walk of %i pages finds their ends ahead and reads each page whole, once',
    async (n) => {
      const more = Array.from({ length: 3 * n - 12 }, (_, i) => ({
        id: 130 + i * 10,
        org_id: 1,
        created_at: '2020-01-01',
      }));
      await db.knex('customers').insert(more);
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      const pages: number[] = [];
      const result = await runBatch(db.knex, rules, {
        ...backfillOptions(3),
        dryRun: true,
        onPage: async ({ evaluated }) => {
          pages.push(evaluated);
        },
      });
      expect(result.counts.scanned).toBe(3 * n);
      expect(result.counts.pages).toBe(n);
      expect(pages).toEqual(Array.from({ length: n }, () => 3));
    },
  );

  test('a page whose accounts all went away is skipped, and the walk goes on', async () => {
    const result = await dryRunAround(() => db.knex('customers').whereIn('id', [10, 20, 30]).del());
    expect(result.counts.scanned).toBe(9);
  });
});

describe('host columns and tags across stages and episodes', () => {
  /** A rules file of `policies:` (YAML) on the reference mapping, without a safety limit. */
  const rulesFileWith = (policies: string) =>
    writeRules(
      `${ENGINE_RULES.slice(0, ENGINE_RULES.indexOf('exclusions:'))}policies:\n${policies}`.replace(
        'settings:\n',
        'settings:\n  max_changes: 100%\n',
      ),
    );
  const rulesWith = (policies: string) => loadRules({ file: rulesFileWith(policies), cwd: ROOT });
  /** Two ladders that set the status: a debt that locks the account, and inactivity. */
  const DEBT_LOCKED = `  debt:
    reinstate: auto
    stages:
      - name: locked
        when: { past_due_for: 30 days }
        actions: [suspend, { set: { status: locked } }]
`;
  const AWAY_IDLE = `  away:
    reinstate: auto
    stages:
      - name: idle
        when: { inactive_for: 12 months }
        actions: [{ set: { status: idle } }]
`;

  /** One customer (1) on an empty reference database, run by the rules of `policies` (or others). */
  async function oneCustomer(policies: string, customer: Record<string, unknown>) {
    const rules = await rulesWith(policies);
    const db = await createTestDatabase();
    if ('note' in customer) await db.knex.raw('alter table customers add column note text');
    await db.knex('customers').insert({ id: 1, name: 'Ada', ...customer });
    const run = async (kind: 'backfill' | 'sweep', asOf: string, by: Rules = rules) =>
      expect((await runBatch(db.knex, by, { ...backfillOptions(100), kind, asOf })).status).toBe('succeeded');
    const host = () =>
      db
        .knex('customers')
        .where({ id: 1 })
        .first(Object.keys(customer).filter((c) => c !== 'created_at'));
    const owes = (dueOn: string) =>
      db.knex('invoices').insert({ id: 1, customer_id: 1, due_on: dueOn, amount_cents: 5000 });
    const pays = (on: string) => db.knex('invoices').update({ paid_cents: 5000, paid_on: on });
    return { db, run, host, owes, pays };
  }

  test('reinstate says when the next run would put the account back (a stage with no clock), and not when a clock restarts', async () => {
    const policies = `  owing:
    reinstate: manual
    stages:
      - name: held
        when: { overdue_balance_over: 5 }
        actions: [suspend]
  late:
    reinstate: manual
    stages:
      - name: held
        when: { past_due_for: 10 days }
        actions: [suspend]
`;
    const { db, run, owes } = await oneCustomer(policies, { status: 'active' });
    try {
      // Two changes of one customer: over the helper's safety limit of 100% of one account.
      const file = writeRules(
        fs.readFileSync(rulesFileWith(policies), 'utf8').replace('max_changes: 100%', 'max_changes: 10'),
      );
      await owes('2026-10-01');
      await run('backfill', '2026-11-01', await loadRules({ file, cwd: ROOT }));
      const reinstate = (policy: string) =>
        engineCli(
          db,
          ['reinstate', '1', '--policy', policy, '--reason', 'promised', '--as-of', '2026-11-02'],
          file,
        );
      const owing = await reinstate('owing');
      expect(owing.code).toBe(0);
      expect(owing.stdout).toContain(
        "Note: the next run puts customer 1 back in stage held of policy owing: overdue balance $50.00 is over $5.00. A reinstatement restarts the policy's clocks, not its balances or counts; to spare the account meanwhile, `suspend exclude 1 --reason TEXT --until YYYY-MM-DD`.",
      );
      const late = await reinstate('late');
      expect(late.code).toBe(0);
      expect(late.stdout).not.toContain('Note: the next run');
    } finally {
      await db.drop();
    }
  });

  test('a stage that sets one more column keeps the status the stage before captured; the clear gives both back', async () => {
    const { db, run, host, owes, pays } = await oneCustomer(
      `  debt:
    reinstate: auto
    stages:
      - name: warned
        when: { past_due_for: 10 days }
        actions: [{ set: { status: warned } }]
      - name: locked
        when: { past_due_for: 30 days }
        actions: [suspend, { set: { status: locked, note: locked } }]
`,
      { status: 'active', note: 'from the host' },
    );
    try {
      await owes('2026-10-01');
      await run('backfill', '2026-10-16');
      expect(await host()).toEqual({ status: 'warned', note: 'from the host' });
      await run('sweep', '2026-11-05');
      expect(await host()).toEqual({ status: 'locked', note: 'locked' });
      await pays('2026-11-06');
      await run('sweep', '2026-11-07');
      expect(await host()).toEqual({ status: 'active', note: 'from the host' });
    } finally {
      await db.drop();
    }
  });

  test('a status the host changed between two episodes comes back as it was at the second one, not the first', async () => {
    const { db, run, host, owes, pays } = await oneCustomer(
      `  away:
    reinstate: auto
    stages:
      - name: idle
        when: { inactive_for: 12 months }
        actions: [{ set: { status: idle } }]
  debt:
    reinstate: auto
    stages:
      - name: warned
        when: { past_due_for: 10 days }
        actions: [{ set: { status: warned } }]
`,
      { status: 'active', created_at: '2020-01-01' },
    );
    try {
      await run('backfill', '2026-10-01');
      expect(await host()).toEqual({ status: 'idle' });
      await db.knex('reservations').insert({ id: 1, customer_id: 1, created_at: '2026-10-02' });
      await run('sweep', '2026-10-03');
      expect(await host()).toEqual({ status: 'active' });
      // The host's own change while suspend holds nothing; then a new episode under another policy.
      await db.knex('customers').where({ id: 1 }).update({ status: 'vip' });
      await owes('2026-10-05');
      await run('sweep', '2026-10-20');
      expect(await host()).toEqual({ status: 'warned' });
      await pays('2026-10-21');
      await run('sweep', '2026-10-22');
      expect(await host()).toEqual({ status: 'vip' });
    } finally {
      await db.drop();
    }
  });

  test('a run as of an earlier day is refused until the later run is reverted', async () => {
    const { db, run, host, owes } = await oneCustomer(
      `  debt:
    reinstate: auto
    stages:
      - name: locked
        when: { past_due_for: 30 days }
        actions: [suspend, { set: { status: locked } }]
`,
      { status: 'active' },
    );
    try {
      await owes('2026-09-01');
      await run('sweep', '2026-10-05');
      expect(await host()).toEqual({ status: 'locked' });
      const rules = await rulesWith(
        '  debt:\n    stages:\n      - name: locked\n        when: { past_due_for: 30 days }\n',
      );
      const early = { ...backfillOptions(100), kind: 'sweep' as const, asOf: '2026-09-20' };
      await expect(runBatch(db.knex, rules, early)).rejects.toThrow(
        /is earlier than sweep run \d+ \(as of 2026-10-05\)/,
      );
      const [swept] = (await db.knex('suspend.runs').pluck('id')) as string[];
      const revert = async (runId: string) =>
        (
          await revertRun(db.knex, rules, {
            runId: String(runId),
            dryRun: false,
            actor: 'test',
            asOf: '2026-09-20',
            wait: false,
            batchSize: 100,
          })
        ).run!.id;
      const undone = await revert(String(swept));
      expect(await host()).toEqual({ status: 'active' });
      // The revert reverted: the sweep's changes are back, and the advice names the run to revert now.
      const putBack = await revert(undone);
      expect(await host()).toEqual({ status: 'locked' });
      await expect(runBatch(db.knex, rules, early)).rejects.toThrow(
        `revert run ${putBack} (which put back run ${swept}'s changes) if its day was wrong`,
      );
      await expect(revert(String(swept))).rejects.toThrow(
        `Run ${swept}'s changes were reverted and then put back (run ${undone} reverted it, run ${putBack} reverted run ${undone}); to undo them again, revert run ${putBack} (which put back run ${swept}'s changes).`,
      );
      await revert(putBack);
      expect(await host()).toEqual({ status: 'active' });
      expect((await runBatch(db.knex, rules, early)).status).toBe('succeeded');
    } finally {
      await db.drop();
    }
  });

  const DUNNING = `  dunning:
    reinstate: auto
    fire_skipped_stages: true
    stages:
      - name: reminded
        when: { past_due_for: 14 days }
        actions: [notify, notify_customer, { tag: reminded }]
        message: A reminder.
      - name: paused
        when: { past_due_for: 30 days }
        actions: [notify, notify_customer, pause, { tag: paused_once }]
        message: Booking is paused.
`;
  const tags = async (db: TestDatabase) =>
    (await db.knex('suspend.account_states').where({ policy: 'dunning' }).first('tags')) as {
      tags: string[];
    };

  test('tag actions add to the state for the episode, show in status and events, and go when it clears', async () => {
    const { db, run, owes, pays } = await oneCustomer(DUNNING, {});
    try {
      await owes('2026-10-01');
      await run('backfill', '2026-10-20');
      expect(await tags(db)).toEqual({ tags: ['reminded'] });
      await run('sweep', '2026-11-05');
      expect(await tags(db)).toEqual({ tags: ['reminded', 'paused_once'] });
      const status = await runCli([
        'status',
        '1',
        '--rules',
        rulesFileWith(DUNNING),
        '--database-url',
        db.url,
      ]);
      expect(status.code).toBe(0);
      expect(status.stdout).toContain(
        '  dunning: paused since 2026-11-05 (booking blocked, sign-in allowed), tagged reminded, paused_once\n',
      );
      const events = await db.knex('suspend.outbox').orderBy('id').pluck('payload');
      expect(events.map((p: { to: string; tags?: string[] }) => [p.to, p.tags])).toEqual([
        ['reminded', ['reminded']],
        ['paused', ['paused_once']],
      ]);
      await pays('2026-11-06');
      await run('sweep', '2026-11-07');
      expect(await tags(db)).toEqual({ tags: [] });
      // Reverting the sweep that cleared it restores the paused state, its tags, and says so.
      const cleared = (await db.knex('suspend.runs').orderBy('id', 'desc').first('id')) as { id: string };
      await revertRun(db.knex, await rulesWith(DUNNING), {
        runId: String(cleared.id),
        dryRun: false,
        actor: 'test',
        asOf: '2026-11-08',
        wait: false,
        batchSize: 10,
      });
      expect(await tags(db)).toEqual({ tags: ['reminded', 'paused_once'] });
      const reverted = await db.knex('suspend.outbox').where({ event: 'revert' }).pluck('payload');
      expect(reverted.map((p: { to: string; tags?: string[] }) => [p.to, p.tags])).toEqual([
        ['paused', ['reminded', 'paused_once']],
      ]);
    } finally {
      await db.drop();
    }
  });

  test('first seen past both stages with fire_skipped_stages: both tags, one customer notice in the words of the stage it lands in', async () => {
    const { db, run, owes } = await oneCustomer(DUNNING, {});
    try {
      await owes('2026-10-01');
      await run('backfill', '2026-11-10');
      expect(await tags(db)).toEqual({ tags: ['reminded', 'paused_once'] });
      const events = await db.knex('suspend.outbox').pluck('payload');
      expect(events).toHaveLength(1);
      expect(events[0]).toMatchObject({
        to: 'paused',
        message: 'Booking is paused.',
        actions: ['notify', 'notify_customer', 'tag', 'pause', 'tag'],
        tags: ['reminded', 'paused_once'],
      });
      // Reinstated by hand, the episode ends and its tags with it.
      await reinstateAccount(db.knex, await rulesWith(DUNNING), {
        key: '1',
        reason: 'promised to pay',
        actor: 'test',
        policies: null,
        asOf: '2026-11-11',
        wait: false,
      });
      expect(await tags(db)).toEqual({ tags: [] });
    } finally {
      await db.drop();
    }
  });

  test('reverting a run leaves the status to a later stage that sets the same value, though that stage wrote nothing', async () => {
    const { db, run, host, owes } = await oneCustomer(
      `${DEBT_LOCKED}  late:
    reinstate: auto
    stages:
      - name: locked
        when: { invoice_overdue_for: 40 days }
        actions: [suspend, { set: { status: locked } }]
`,
      { status: 'active' },
    );
    try {
      await owes('2026-09-10');
      await run('backfill', '2026-10-15'); // debt locks the account
      await run('sweep', '2026-10-25'); // late locks it too: the status is locked already
      const rules = await rulesWith(DEBT_LOCKED);
      const [backfill] = (await db.knex('suspend.runs').orderBy('id').pluck('id')) as string[];
      await revertRun(db.knex, rules, {
        runId: String(backfill),
        dryRun: false,
        actor: 'test',
        asOf: '2026-10-26',
        wait: false,
        batchSize: 10,
      });
      expect(await db.knex('suspend.account_states').orderBy('policy').pluck('stage')).toEqual([
        null,
        'locked',
      ]);
      expect(await host()).toEqual({ status: 'locked' });
    } finally {
      await db.drop();
    }
  });

  test('a revert that stopped gives the status back when continued, after the later run that held it was reverted', async () => {
    const { db, run, host, owes } = await oneCustomer(`${DEBT_LOCKED}${AWAY_IDLE}`, {
      status: 'active',
      created_at: '2020-01-01',
    });
    try {
      await db.knex('customers').insert({ id: 2, name: 'Bo', status: 'active', created_at: '2020-01-01' });
      await owes('2026-09-10');
      await run('backfill', '2026-10-01'); // both idle
      await run('sweep', '2026-10-15'); // customer 1 also locked, which now holds its status
      expect(await host()).toEqual({ status: 'locked' });
      const rules = await rulesWith(
        '  debt:\n    stages:\n      - name: locked\n        when: { past_due_for: 30 days }\n',
      );
      const [backfill, sweep] = (await db.knex('suspend.runs').orderBy('id').pluck('id')) as string[];
      const revert = (runId: string) =>
        revertRun(db.knex, rules, {
          runId: String(runId),
          dryRun: false,
          actor: 'test',
          asOf: '2026-10-20',
          wait: false,
          batchSize: 1,
        });
      // The backfill's revert does customer 1 (its status held back: the sweep's stage holds it)
      // and stops at customer 2.
      await db.knex.raw(`create function suspend.stop_revert() returns trigger language plpgsql as $$
        begin raise exception 'stopped for the test'; end $$`);
      await db.knex.raw(`create trigger stop_revert before insert on suspend.history for each row
        when (new.kind = 'revert' and new.customer_key = '2') execute function suspend.stop_revert()`);
      await expect(revert(String(backfill))).rejects.toThrow('stopped for the test');
      await db.knex.raw('drop trigger stop_revert on suspend.history');
      expect(await host()).toEqual({ status: 'locked' });
      await revert(String(sweep));
      await revert(String(backfill));
      expect(await db.knex('customers').orderBy('id').pluck('status')).toEqual(['active', 'active']);
    } finally {
      await db.drop();
    }
  });

  test("a policy taken out of the rules keeps its row's capture: reinstating it by hand gives the host's value back", async () => {
    const { db, run, host, owes } = await oneCustomer(DEBT_LOCKED, {
      status: 'active',
      created_at: '2020-01-01',
    });
    try {
      await owes('2026-09-01');
      await run('backfill', '2026-10-05');
      expect(await host()).toEqual({ status: 'locked' });
      // The rules now have only an inactivity ladder: its stage captures `locked` and sets `idle`.
      const away = await rulesWith(`  away:
    reinstate: auto
    stages:
      - name: idle
        when: { inactive_for: 12 months }
        actions: [{ set: { status: idle } }]
`);
      await run('sweep', '2026-10-06', away);
      expect(await host()).toEqual({ status: 'idle' });
      // The debt row's stage is unknown to these rules and may still hold the column: its capture stays.
      expect(await db.knex('suspend.account_states').where({ policy: 'debt' }).pluck('host_before')).toEqual([
        { status: 'active' },
      ]);
      await db.knex('reservations').insert({ id: 1, customer_id: 1, created_at: '2026-10-07' });
      await run('sweep', '2026-10-08', away);
      await reinstateAccount(db.knex, away, {
        key: '1',
        reason: 'debt policy retired',
        actor: 'test',
        policies: null,
        asOf: '2026-10-09',
        wait: false,
      });
      expect(await host()).toEqual({ status: 'active' });
    } finally {
      await db.drop();
    }
  });
});

describe('a revert that stopped part way', () => {
  /** Reverts of a backfill change most accounts by design: no safety limit. */
  const unlimited = writeRules(ENGINE_RULES.replace('settings:\n', 'settings:\n  max_changes: 100%\n'));
  test('reverting its run again continues it; with a later run reverted in between, every account ends clear with its status back', async () => {
    const db = await seeded(2000, 5);
    try {
      const rules = await loadRules({ file: unlimited, cwd: ROOT });
      const batch = (kind: 'backfill' | 'sweep', asOf: string) =>
        runBatch(db.knex, rules, { ...backfillOptions(100), kind, asOf });
      const revert = (runId: string) =>
        revertRun(db.knex, rules, {
          runId,
          dryRun: false,
          actor: 'test',
          asOf: '2027-01-05',
          wait: false,
          batchSize: 20,
        });
      const backfill = (await batch('backfill', AS_OF)).run!.id;
      const sweep = (await batch('sweep', '2026-12-23')).run!.id;
      // The first revert stops after 300 restored states, as a lost connection would stop it.
      await db.knex.raw(`create function suspend.stop_revert() returns trigger language plpgsql as $$
        begin
          if (select count(*) from suspend.history where run_id = new.run_id) >= 300 then
            raise exception 'stopped for the test';
          end if;
          return new;
        end $$`);
      await db.knex.raw(`create trigger stop_revert before insert on suspend.history
        for each row when (new.kind = 'revert') execute function suspend.stop_revert()`);
      await expect(revert(backfill)).rejects.toThrow('stopped for the test');
      await db.knex.raw('drop trigger stop_revert on suspend.history');
      const [stopped] = (await db
        .knex('suspend.runs')
        .where({ reverts_run_id: backfill })
        .pluck('id')) as string[];

      await revert(sweep);
      const continued = await revert(backfill);
      expect(continued.run).toMatchObject({ id: String(stopped), status: 'succeeded' });
      const written = await db
        .knex('suspend.history')
        .where({ run_id: stopped })
        .count<{ n: string }[]>({ n: '*' });
      expect(continued.run?.counts).toMatchObject({ changes: Number(written[0]!.n) });
      // Both runs undone: no account in a stage, and every status the host had before is back.
      expect(await db.knex('suspend.account_states').whereNotNull('stage').pluck('customer_key')).toEqual([]);
      expect(await db.knex('customers').whereNot({ status: 'active' }).pluck('id')).toEqual([]);
    } finally {
      await db.drop();
    }
  });
  test('a dry run beside an unfinished revert says whether it stopped or is still running', async () => {
    const db = await seeded(300, 3);
    try {
      const file = unlimited;
      const rules = await loadRules({ file, cwd: ROOT });
      const backfill = (await runBatch(db.knex, rules, { ...backfillOptions(100), asOf: AS_OF })).run!.id;
      const revert = () =>
        revertRun(db.knex, rules, {
          runId: backfill,
          dryRun: false,
          actor: 'test',
          asOf: '2027-01-05',
          wait: false,
          batchSize: 3,
        });
      const dryRun = () =>
        runCli(['revert', backfill, '--dry-run', '--rules', file, '--database-url', db.url]);
      // Past 20 restored states (its first pages of 3 accounts committed) the revert's next one
      // raises (stopped), or waits for a lock the test holds (running).
      const past20 = (then: string) =>
        db.knex.raw(`create or replace function suspend.past_20() returns trigger language plpgsql as $$
          begin
            if (select count(*) from suspend.history where run_id = new.run_id) >= 20 then ${then}; end if;
            return new;
          end $$`);
      await past20(`raise exception 'stopped for the test'`);
      await db.knex.raw(`create trigger past_20 before insert on suspend.history
        for each row when (new.kind = 'revert') execute function suspend.past_20()`);
      await expect(revert()).rejects.toThrow('stopped for the test');
      const [stopped] = (await db
        .knex('suspend.runs')
        .where({ reverts_run_id: backfill })
        .pluck('id')) as string[];
      const said = await dryRun();
      expect(said.code).toBe(0);
      expect(said.stdout).toContain(`(continuing revert run ${stopped}, which stopped part way)`);

      await past20('perform pg_advisory_xact_lock(4242)');
      const held = await db.knex.transaction();
      try {
        await held.raw('select pg_advisory_xact_lock(4242)');
        const running = revert();
        running.catch(() => undefined);
        // Until the continued revert waits in its page.
        for (let i = 0; i < 200; i++) {
          const waiting = await db.knex.raw<{ rows: unknown[] }>(
            `select 1 from pg_locks where locktype = 'advisory' and objid = 4242 and not granted`,
          );
          if (waiting.rows.length > 0) break;
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        const live = await dryRun();
        expect(live.code).toBe(0);
        expect(live.stdout).toContain(
          `(revert run ${stopped} is still running in another process; this is what it has yet to do)`,
        );
        await held.commit();
        await db.knex.raw('drop trigger past_20 on suspend.history');
        expect((await running).run).toMatchObject({ id: String(stopped), status: 'succeeded' });
      } finally {
        if (!held.isCompleted()) await held.rollback();
      }
    } finally {
      await db.drop();
    }
  });
});

describe('runs move forward in time', () => {
  const LATER = '2026-12-23';
  const at = (asOf: string, more: Partial<BatchOptions> = {}): BatchOptions => ({
    ...backfillOptions(500),
    kind: 'sweep' as const,
    asOf,
    ...more,
  });
  const limited = writeRules(ENGINE_RULES.replace('settings:\n', 'settings:\n  max_changes: 50\n'));
  let db: TestDatabase;
  let rules: Rules;
  beforeEach(async () => {
    db = await seeded(2000, 5);
    rules = await loadRules({ file: rulesFile, cwd: ROOT });
  });
  afterEach(async () => db.drop());
  const refusal = /earlier than sweep run \d+ \(as of 2026-12-23\)/;

  test('runs of other organizations do not count; a run covering one of them does', async () => {
    expect((await runBatch(db.knex, rules, at(LATER, { orgs: ['1'] }))).status).toBe('succeeded');
    expect((await runBatch(db.knex, rules, at(AS_OF, { orgs: ['2', '3'] }))).status).toBe('succeeded');
    await expect(runBatch(db.knex, rules, at(AS_OF, { orgs: ['3', '1'] }))).rejects.toThrow(refusal);
    await expect(runBatch(db.knex, rules, at(AS_OF))).rejects.toThrow(refusal);
  });

  test('an organization id with a comma is one organization, not two', async () => {
    expect((await runBatch(db.knex, rules, at(LATER, { orgs: ['1,2'] }))).status).toBe('succeeded');
    expect((await runBatch(db.knex, rules, at(AS_OF, { orgs: ['1'] }))).status).toBe('succeeded');
    await expect(runBatch(db.knex, rules, at(AS_OF, { orgs: ['1,2'] }))).rejects.toThrow(refusal);
  });

  test('a shard of organization "1,2" does not join the split backfill of organizations 1 and 2', async () => {
    const half = (index: number, orgs: string[]): BatchOptions => ({
      ...backfillOptions(500),
      asOf: AS_OF,
      orgs,
      shard: { index, count: 2 },
    });
    const split = await runBatch(db.knex, rules, half(1, ['1', '2']));
    const other = await runBatch(db.knex, rules, half(0, ['1,2']));
    expect(other.run!.id).not.toBe(split.run!.id);
    // Its other half was never judged: the split run is not done.
    expect(await db.knex('suspend.runs').where({ id: split.run!.id }).pluck('status')).not.toEqual([
      'succeeded',
    ]);
  });

  test('a sweep stopped by the safety limit counts for the pages it wrote', async () => {
    const small = await loadRules({ file: limited, cwd: ROOT });
    const stopped = await runBatch(db.knex, small, at(LATER, { batchSize: 20 }));
    expect(stopped.status).toBe('stopped');
    expect(stopped.counts.changes).toBeGreaterThan(0);
    await expect(runBatch(db.knex, rules, at(AS_OF))).rejects.toThrow(refusal);
  });

  test('a revert that was itself reverted does not undo the run', async () => {
    const swept = await runBatch(db.knex, rules, at(LATER));
    const revert = (runId: string) =>
      revertRun(db.knex, rules, {
        runId,
        dryRun: false,
        actor: 'test',
        asOf: LATER,
        wait: false,
        batchSize: 500,
      });
    const first = await revert(swept.run!.id);
    // (With only that revert, the sweep's day no longer counts: see the test with one customer above.)
    await revert(first.run!.id);
    await expect(runBatch(db.knex, rules, at(AS_OF))).rejects.toThrow(refusal);
  });

  test('a revert of that revert that failed after writing some rows counts: the later run stands again in part', async () => {
    const swept = await runBatch(db.knex, rules, at(LATER));
    const again = {
      runId: swept.run!.id,
      dryRun: false,
      actor: 'test',
      asOf: LATER,
      wait: false,
      batchSize: 500,
    };
    const first = await revertRun(db.knex, rules, again);
    // Its ledger row and one history row, as a revert of the revert that failed after one page leaves them.
    const [failed] = (await db
      .knex('suspend.runs')
      .insert({
        kind: 'revert',
        status: 'failed',
        as_of: LATER,
        rules_hash: rules.hash,
        started_by: 'test',
        reverts_run_id: first.run!.id,
      })
      .returning('id')) as { id: string }[];
    await db.knex.raw(
      `insert into suspend.history (run_id, customer_key, org_id, policy, kind, from_stage, to_stage, from_index,
                                    to_index, reasons, previous_state, rules_hash, as_of, actor)
       select ?, customer_key, org_id, policy, 'revert', to_stage, from_stage, to_index, from_index, reasons,
              previous_state, rules_hash, as_of, actor
         from suspend.history where run_id = ? limit 1`,
      [failed!.id, first.run!.id],
    );
    await expect(runBatch(db.knex, rules, at(AS_OF))).rejects.toThrow(refusal);
    // The advice: finish the stopped revert (by reverting what it reverts again), then revert it.
    const S = swept.run!.id;
    const F = first.run!.id;
    const P = failed!.id;
    const advice = `revert run ${F} to finish run ${P} (which was putting back run ${S}'s changes), then revert run ${P}`;
    await expect(runBatch(db.knex, rules, at(AS_OF))).rejects.toThrow(`${advice} if its day was wrong`);
    await expect(revertRun(db.knex, rules, again)).rejects.toThrow(
      `Run ${S}'s changes were reverted and then partly put back (run ${F} reverted it, run ${P} reverted run ${F} in part); to undo them again, ${advice}.`,
    );
    // A revert that did not finish is not reverted (its target's changes would be split between runs).
    await expect(revertRun(db.knex, rules, { ...again, runId: P })).rejects.toThrow(
      `Run ${P} is a revert of run ${F} that did not finish; \`suspend revert ${F}\` finishes it, and then it can be reverted.`,
    );
    // Following the advice: reverting run F again continues run P (no new run), then P is reverted.
    const continued = await revertRun(db.knex, rules, { ...again, runId: F });
    expect(continued.run?.id).toBe(P);
    expect(continued.run?.status).toBe('succeeded');
    expect(await db.knex('suspend.runs').where({ reverts_run_id: F }).pluck('id')).toEqual([P]);
    await revertRun(db.knex, rules, { ...again, runId: P });
    await expect(revertRun(db.knex, rules, again)).rejects.toThrow(
      `Run ${S}'s changes are already undone (run ${F} reverted it, run ${P} reverted run ${F}, `,
    );
  });

  test('another shard of the same split covers other accounts: its later day does not count', async () => {
    const shard = (index: number) => ({ shard: { index, count: 2 } });
    expect((await runBatch(db.knex, rules, at(LATER, shard(0)))).status).toBe('succeeded');
    expect((await runBatch(db.knex, rules, at('2026-12-22', shard(1)))).status).toBe('succeeded');
    await expect(runBatch(db.knex, rules, at('2026-12-21', shard(0)))).rejects.toThrow(refusal);
    await expect(runBatch(db.knex, rules, at('2026-12-21'))).rejects.toThrow(refusal);
  });

  test('resuming a backfill of an earlier day is refused and writes nothing', async () => {
    const small = await loadRules({ file: limited, cwd: ROOT });
    const stopped = await runBatch(db.knex, small, { ...backfillOptions(500), asOf: AS_OF });
    expect(stopped.status).toBe('stopped');
    expect((await runBatch(db.knex, rules, at(LATER, { dryRun: false }))).status).toBe('succeeded');
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    await expect(
      runBatch(db.knex, rules, { ...backfillOptions(500), asOf: LATER, resume: true }),
    ).rejects.toThrow(
      new RegExp(
        `^Backfill run ${stopped.run!.id} judges as of ${AS_OF}, earlier than sweep run \\d+ \\(as of ${LATER}\\), and would undo what it found; give it up with \`suspend backfill --abandon ${stopped.run!.id}\``,
      ),
    );
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('a shard joining a shared backfill of an earlier day is refused and writes nothing', async () => {
    const half = { ...backfillOptions(500), shard: { index: 0, count: 2 } };
    expect((await runBatch(db.knex, rules, { ...half, asOf: AS_OF })).status).toBe('succeeded');
    expect((await runBatch(db.knex, rules, at(LATER))).status).toBe('succeeded');
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    await expect(
      runBatch(db.knex, rules, { ...half, asOf: LATER, shard: { index: 1, count: 2 } }),
    ).rejects.toThrow(/^Backfill run \d+ judges as of 2026-11-23, earlier than sweep run/);
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });
});

describe('payment race', () => {
  /** A backfill of the 2,000 accounts in one page, through the callable core. */
  const onePageBackfill = (dryRun: boolean) => ({
    ...backfillOptions(5000),
    dryRun,
  });
  /**
   * From a dry run of the one page: an account it suspends for debt, and one with invoices that it
   * suspends only for inactivity.
   */
  async function oneOfEach(db: TestDatabase) {
    const planned: { key: string; policy: string }[] = [];
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    await runBatch(db.knex, rules, {
      ...onePageBackfill(true),
      onPage: async ({ changes }) => {
        planned.push(...changes.map((c) => ({ key: c.key, policy: c.policy })));
      },
    });
    const policiesOf = (key: string) => planned.filter((c) => c.key === key).map((c) => c.policy);
    const withInvoices = new Set(
      ((await db.knex('invoices').distinct('customer_id').pluck('customer_id')) as unknown[]).map(String),
    );
    return {
      rules,
      debtor: planned.find((c) => c.policy === 'delinquency')?.key,
      idle: planned.find((c) => withInvoices.has(c.key) && policiesOf(c.key).every((p) => p === 'inactivity'))
        ?.key,
    };
  }
  /** What a dry run of the one page plans, per account: "policy kind" for each change. */
  /** An account's state rows, by policy. */
  function statesOf(db: TestDatabase, key: string, ...columns: string[]) {
    return db.knex('suspend.account_states').where({ customer_key: key }).orderBy('policy').select(columns);
  }
  async function plannedChanges(db: TestDatabase, rules: Rules) {
    const planned = new Map<string, string[]>();
    await runBatch(db.knex, rules, {
      ...onePageBackfill(true),
      onPage: async ({ changes }) => {
        for (const c of changes) planned.set(c.key, [...(planned.get(c.key) ?? []), `${c.policy} ${c.kind}`]);
      },
    });
    return planned;
  }
  /**
   * When the page sets the account's status, someone else writes its state under `policy` (version
   * 7, in `stage` if given) inside the page's transaction, after the re-check: the page's change
   * under it is refused.
   */
  async function refuseOnStatusUpdate(
    db: TestDatabase,
    key: string,
    policy: string,
    stage: string | null = null,
  ) {
    const [name, index] = stage === null ? ['null', -1] : [`'${stage}'`, 0];
    await db.knex.raw(
      `create function race_bump() returns trigger language plpgsql as $$
       begin
         insert into suspend.account_states (customer_key, policy, version, stage, stage_index)
           values (new.id::text, '${policy}', 7, ${name}, ${index})
           on conflict (customer_key, policy) do update set version = 7;
         return new;
       end $$;
       create trigger race_bump after update of status on customers for each row
         when (new.id = ${Number(key)}) execute function race_bump();`,
    );
  }
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seeded(2000, 5);
  });
  afterAll(async () => db.drop());

  test('a state written by someone else after the re-check (here by a trigger on the status update): that change is not written, its status is put back, and the counts are of what was', async () => {
    const racing = await seeded(2000, 5);
    try {
      // The first account whose status the page sets gets a state under every policy, at version 7,
      // inside the page's own transaction: its version-guarded state writes are refused.
      await racing.knex.raw(`
        create table race_marker (k text);
        create function race_bump() returns trigger language plpgsql as $$
        begin
          if not exists (select 1 from race_marker) then
            insert into race_marker values (new.id::text);
            insert into suspend.account_states (customer_key, policy, version)
              select new.id::text, p, 7 from unnest(array['inactivity', 'delinquency', 'overdue_pause', 'escalation']) p
              on conflict (customer_key, policy) do update set version = 7;
          end if;
          return new;
        end $$;
        create trigger race_bump after update of status on customers for each row execute function race_bump();`);
      const statusOf = async () =>
        new Map(
          ((await racing.knex('customers').select('id', 'status')) as { id: string; status: string }[]).map(
            (r) => [String(r.id), r.status],
          ),
        );
      const before = await statusOf();
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      const result = await runBatch(racing.knex, rules, onePageBackfill(false));
      expect(result.status).toBe('succeeded');
      const [bumped] = (await racing.knex('race_marker').pluck('k')) as string[];
      const after = await statusOf();
      expect(after.get(bumped!)).toBe(before.get(bumped!));
      // The others the page suspended keep their new status.
      expect([...after].filter(([k, v]) => v !== before.get(k)).length).toBeGreaterThan(0);
      expect(await racing.knex('suspend.history').where({ customer_key: bumped }).count({ n: '*' })).toEqual([
        { n: '0' },
      ]);
      expect(result.counts.changedSinceRead).toBe(1);
      const written = await racing
        .knex('suspend.history')
        .where({ run_id: result.run!.id })
        .select(racing.knex.raw('count(*)::int as changes, count(distinct customer_key)::int as accounts'));
      expect(written).toEqual([{ changes: result.counts.changes, accounts: result.counts.accountsChanged }]);
    } finally {
      await racing.drop();
    }
  });

  test("only one of an account's changes refused (the one that set its status): the other is written and the status goes back, as its states now say", async () => {
    const racing = await seeded(2000, 5);
    try {
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      // Suspended for inactivity (which sets the status) and paused or escalated (which do not).
      const [target, changes] = [...(await plannedChanges(racing, rules))].find(
        ([, p]) => p.includes('inactivity enter') && !p.includes('delinquency enter') && p.length > 1,
      )!;
      const policies = changes.map((c) => c.split(' ')[0]!);
      await refuseOnStatusUpdate(racing, target, 'inactivity');
      const [before] = (await racing.knex('customers').where({ id: target }).pluck('status')) as string[];
      const result = await runBatch(racing.knex, rules, onePageBackfill(false));
      expect(result.status).toBe('succeeded');
      expect(result.counts.changedSinceRead).toBe(1);
      const states = await racing
        .knex('suspend.account_states')
        .where({ customer_key: target })
        .orderBy('policy')
        .select('policy', 'stage', 'version');
      expect(states.filter((s) => s.policy === 'inactivity')).toEqual([
        { policy: 'inactivity', stage: null, version: 7 },
      ]);
      const others = policies.filter((p) => p !== 'inactivity').sort();
      expect(states.filter((s) => s.policy !== 'inactivity').map((s) => s.policy)).toEqual(others);
      expect(states.every((s) => s.policy === 'inactivity' || s.stage !== null)).toBe(true);
      // No current stage of the account sets its status: it is what it was before the run.
      expect(await racing.knex('customers').where({ id: target }).pluck('status')).toEqual([before]);
      expect(
        await racing
          .knex('suspend.history')
          .where({ customer_key: target })
          .orderBy('policy')
          .pluck('policy'),
      ).toEqual(others);
    } finally {
      await racing.drop();
    }
  });

  test('a clear written beside a refused change: the status the clear gives back stays', async () => {
    const racing = await seeded(2000, 5);
    try {
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      const [target] = [...(await plannedChanges(racing, rules))].find(
        ([, p]) => p.join() === 'overdue_pause enter',
      )!;
      // Suspended for debt by an earlier run, which captured the status 'active' it then set to 'suspended'.
      await racing.knex('suspend.account_states').insert({
        customer_key: target,
        policy: 'delinquency',
        stage: 'suspended',
        stage_index: 0,
        blocks_booking: true,
        allows_login: false,
        host_before: { status: 'active' },
        version: 1,
        entered_on: '2026-10-01',
        episode_started_on: '2026-10-01',
      });
      await racing.knex('customers').where({ id: target }).update({ status: 'suspended' });
      expect((await plannedChanges(racing, rules)).get(target)?.sort()).toEqual([
        'delinquency clear',
        'overdue_pause enter',
      ]);
      // The pause is refused: its state is written by someone else inside the page's transaction.
      await refuseOnStatusUpdate(racing, target, 'overdue_pause');
      const result = await runBatch(racing.knex, rules, onePageBackfill(false));
      expect(result.status).toBe('succeeded');
      expect(result.counts.changedSinceRead).toBe(1);
      expect(await statesOf(racing, target, 'policy', 'stage')).toEqual([
        { policy: 'delinquency', stage: null },
        { policy: 'overdue_pause', stage: null },
      ]);
      expect(await racing.knex('customers').where({ id: target }).pluck('status')).toEqual(['active']);
    } finally {
      await racing.drop();
    }
  });

  test("every change refused by a row in a stage that sets the status: the status goes back, since no row holds the host's value", async () => {
    const racing = await seeded(2000, 5);
    try {
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      const [target] = [...(await plannedChanges(racing, rules))].find(
        ([, p]) => p.join() === 'inactivity enter',
      )!;
      await refuseOnStatusUpdate(racing, target, 'inactivity', 'suspended');
      const [before] = (await racing.knex('customers').where({ id: target }).pluck('status')) as string[];
      const result = await runBatch(racing.knex, rules, onePageBackfill(false));
      expect(result.counts.changedSinceRead).toBe(1);
      expect(
        await racing
          .knex('suspend.account_states')
          .where({ customer_key: target })
          .select('policy', 'stage', 'host_before'),
      ).toEqual([{ policy: 'inactivity', stage: 'suspended', host_before: null }]);
      expect(await racing.knex('customers').where({ id: target }).pluck('status')).toEqual([before]);
      expect(before).not.toBe('suspended');
    } finally {
      await racing.drop();
    }
  });

  test('a new state another session adds while the page writes: the page is written again and leaves that row alone', async () => {
    const racing = await seeded(2000, 5);
    const other = knexFactory({ client: 'pg', connection: racing.url, pool: { min: 0, max: 1 } });
    try {
      const rules = await loadRules({ file: rulesFile, cwd: ROOT });
      const [target, planned] = [...(await plannedChanges(racing, rules))].find(
        ([, p]) => p.join() === 'inactivity enter',
      )!;
      expect(planned).toEqual(['inactivity enter']);
      let committed: Promise<void> | null = null;
      const result = await runBatch(racing.knex, rules, {
        ...onePageBackfill(false),
        beforeWrite: async () => {
          if (committed) return;
          // Uncommitted when the page's re-check reads: its insert of the state waits for this
          // session, then finds the key taken.
          const trx = await other.transaction();
          await trx('suspend.account_states').insert({
            customer_key: target,
            policy: 'inactivity',
            stage: null,
            version: 3,
          });
          committed = new Promise((resolve) => setTimeout(resolve, 400)).then(async () => {
            await trx.commit();
          });
        },
      });
      await committed;
      expect(result.status).toBe('succeeded');
      expect(result.counts.changedSinceRead).toBe(1);
      expect(await statesOf(racing, target, 'stage', 'version')).toEqual([{ stage: null, version: 3 }]);
      expect(await racing.knex('suspend.history').where({ customer_key: target }).count({ n: '*' })).toEqual([
        { n: '0' },
      ]);
      // Every other change of the page is written once.
      const written = await racing
        .knex('suspend.history')
        .where({ run_id: result.run!.id })
        .count({ n: '*' });
      expect(Number(written[0]!.n)).toBe(result.counts.changes);
      expect(result.counts.changes).toBeGreaterThan(100);
    } finally {
      await other.destroy();
      await racing.drop();
    }
  });

  test('a payment committed between the read and the write: not suspended, counted as changed since read', async () => {
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    let payer: string | null = null;
    const result = await runBatch(db.knex, rules, {
      ...onePageBackfill(false),
      beforeWrite: async (keys) => {
        if (payer) return;
        // A second connection pays every invoice of the first account about to be suspended for debt.
        const candidates = (await db
          .knex('invoices')
          .whereIn('customer_id', db.knex('customers').select('id').whereIn('id', keys).where({ vip: false }))
          .whereNull('paid_on')
          .where('due_on', '<', '2026-10-01')
          .distinct('customer_id')
          .pluck('customer_id')) as string[];
        payer = String(candidates[0]);
        await db
          .knex('invoices')
          .where({ customer_id: payer })
          .whereNull('paid_on')
          .update({ paid_cents: db.knex.ref('amount_cents'), paid_on: '2026-11-22' });
      },
    });
    expect(result.status).toBe('succeeded');
    expect(payer).not.toBeNull();
    expect(result.counts.changedSinceRead).toBeGreaterThanOrEqual(1);
    const rows = await db
      .knex('suspend.account_states')
      .where({ customer_key: payer, policy: 'delinquency' })
      .whereNotNull('stage');
    expect(rows).toEqual([]);
    // The counts are of what was written, not of what the page planned.
    const history = await db.knex('suspend.history').where({ run_id: result.run!.id }).count({ n: '*' });
    expect(result.counts.changes).toBe(Number(history[0]!.n));
    const byTransition = Object.values(result.counts.transitions).reduce((a, b) => a + b, 0);
    expect(byTransition).toBe(result.counts.changes);
  });
  test('while a page is written, paying an invoice of an account that policy is suspending for debt waits for the commit; an account suspended only for inactivity is not held', async () => {
    const fresh = await seeded(2000, 5);
    try {
      const { debtor, idle } = await oneOfEach(fresh);
      expect(debtor).toBeDefined();
      expect(idle).toBeDefined();

      // The backfill parked at its first history row: its invoice locks are held.
      const gate = await Gate.install(fresh, 'suspend.history', 'true');
      const run = startCli(
        fresh,
        ['backfill', '--no-notify', '--quiet', '--as-of', AS_OF, '--batch-size', '5000'],
        rulesFile,
      );
      try {
        await gate.blocked(run);
        const pay = async (key: string) =>
          fresh.knex
            .transaction(async (trx) => {
              await trx.raw("set local lock_timeout = '300ms'");
              await trx('invoices')
                .where({ customer_id: key })
                .update({ paid_on: trx.ref('paid_on') });
              return 'paid';
            })
            .catch((err: { code?: string }) => err.code);
        expect(await pay(debtor as string)).toBe('55P03'); // lock_not_available: it waits for the page
        expect(await pay(idle as string)).toBe('paid');
      } finally {
        await gate.remove();
      }
      expect((await run.done).code).toBe(0);
      expect(
        await fresh
          .knex('suspend.account_states')
          .where({ customer_key: debtor, policy: 'delinquency' })
          .pluck('stage'),
      ).toEqual(['suspended']);
    } finally {
      await fresh.drop();
    }
  });
  test('an account the re-check finds owing, whose invoices the page did not lock, is left for the next run', async () => {
    const fresh = await seeded(2000, 5);
    try {
      const { rules, idle } = await oneOfEach(fresh);
      expect(idle).toBeDefined();
      let billed = false;
      const result = await runBatch(fresh.knex, rules, {
        ...onePageBackfill(false),
        beforeWrite: async () => {
          if (billed) return;
          billed = true;
          // Between the read and the write, the idle account gets a large invoice long overdue.
          await fresh.knex('invoices').insert({
            id: fresh.knex.raw('(select max(id) + 1 from invoices)'),
            customer_id: idle,
            issued_on: '2026-08-01',
            due_on: '2026-09-01',
            amount_cents: 100000,
            paid_cents: 0,
            paid_on: null,
          });
        },
      });
      expect(result.status).toBe('succeeded');
      expect(result.counts.changedSinceRead).toBe(1);
      const stages = () =>
        fresh
          .knex('suspend.account_states')
          .where({ customer_key: idle })
          .whereNotNull('stage')
          .pluck('policy');
      expect(await stages()).toEqual([]);
      // The next run judges it with its invoices locked.
      const next = await runBatch(fresh.knex, rules, { ...onePageBackfill(false), kind: 'sweep' });
      expect(next.status).toBe('succeeded');
      expect((await stages()).sort()).toEqual(expect.arrayContaining(['delinquency', 'inactivity']));
    } finally {
      await fresh.drop();
    }
  });
});

/** `check` on a seeded copy of the reference data, backfilled as of AS_OF by the CLI; dropped after. */
async function onBackfilled(check: (db: TestDatabase) => Promise<void>): Promise<void> {
  const db = await seeded(2000, 5);
  try {
    expect((await cli(db, ['backfill', '--no-notify', '--quiet', '--as-of', AS_OF])).code).toBe(0);
    await check(db);
  } finally {
    await db.drop();
  }
}

/** The first account (in key order) whose stored states meet `having` (SQL over them, by account). */
async function firstAccount(db: TestDatabase, having: string): Promise<string> {
  const r = await db.knex.raw<{ rows: { key: string }[] }>(
    `select customer_key as key from suspend.account_states group by customer_key having ${having}
      order by customer_key::bigint limit 1`,
  );
  expect(r.rows).toHaveLength(1);
  return r.rows[0]!.key;
}

/** Pays every invoice of `key` in full on `day`. */
async function paysAll(db: TestDatabase, key: string, day: string): Promise<void> {
  await db
    .knex('invoices')
    .where({ customer_id: key })
    .update({ paid_cents: db.knex.ref('amount_cents'), paid_on: day });
}

describe('exclusions', () => {
  test("status shows the rules file's exclusion that spares an account (a VIP flag)", async () => {
    await onBackfilled(async (db) => {
      const firstWhere = async (vip: boolean) =>
        String(((await db.knex('customers').where({ vip }).orderBy('id').first('id')) as { id: string }).id);
      const vip = await firstWhere(true);
      const shown = await cli(db, ['status', vip]);
      expect(shown.code).toBe(0);
      expect(shown.stdout).toContain(
        '\n  excluded by the rules: VIP accounts are handled by hand (no expiry)\n',
      );
      const json = JSON.parse((await cli(db, ['status', vip, '--json'])).stdout) as {
        rulesExclusion: unknown;
      };
      expect(json.rulesExclusion).toEqual({ reason: 'VIP accounts are handled by hand', until: null });
      const other = await firstWhere(false);
      expect((await cli(db, ['status', other])).stdout).not.toContain('excluded by the rules');
      // Removing it by hand cannot end it: the command says where it is written.
      const remove = await cli(db, ['exclusions', 'remove', vip]);
      expect({ code: remove.code, stdout: remove.stdout }).toEqual({ code: 2, stdout: '' });
      expect(remove.stderr).toMatch(
        new RegExp(
          `^error: Account ${vip} has no exclusion made by \`suspend exclude\`; the rules file \\(\\S+\\) excludes it \\(VIP accounts are handled by hand\\): remove it there\\.\n$`,
        ),
      );
    });
  });

  test('an account excluded while suspended for debt stays suspended while it owes, and gets access back once it pays', async () => {
    await onBackfilled(async (db) => {
      // Suspended for debt, not for inactivity: no other stage sets its status.
      const key = await firstAccount(
        db,
        `bool_or(policy = 'delinquency' and stage = 'suspended') and not bool_or(policy = 'inactivity' and stage is not null)`,
      );
      const staged = (await db
        .knex('suspend.account_states')
        .where({ customer_key: key })
        .whereNotNull('stage')
        .orderBy('policy')
        .pluck('policy')) as string[];
      const excluded = await cli(db, ['exclude', key, '--reason', 'payment plan']);
      expect(excluded.code).toBe(0);
      expect(excluded.stdout).toMatch(
        new RegExp(
          `\\nIt stays (.+, )?suspended under delinquency(, .+)? until (the reason clears|their reasons clear) \\(a run then gives access back\\) or \`suspend reinstate ${key}\` lifts (it|them)\\.\\n$`,
        ),
      );
      const [before] = (await db
        .knex('suspend.account_states')
        .where({ customer_key: key, policy: 'delinquency' })
        .pluck('host_before')) as { status: string }[];

      // Still owing a day later: it stays in its stages, not escalated, its status unchanged.
      const sweepOn = (day: string) =>
        cli(db, ['sweep', '--no-notify', '--quiet', '--format', 'json', '--as-of', day]);
      const owing = await sweepOn('2026-11-24');
      expect(owing.code).toBe(0);
      expect(await db.knex('customers').where({ id: key }).pluck('status')).toEqual(['suspended']);

      // Paid in full: the next sweep clears it and gives the status back, exclusion or not.
      await paysAll(db, key, '2026-11-24');
      const paid = await sweepOn('2026-11-25');
      expect(paid.code).toBe(0);
      expect(JSON.parse(paid.stdout).counts.excludedByReason).toMatchObject({ 'payment plan': 1 });
      // Every stage it was in clears (their reasons were the debt).
      expect(
        await db
          .knex('suspend.account_states')
          .where({ customer_key: key })
          .whereNotNull('stage')
          .pluck('policy'),
      ).toEqual([]);
      expect(await db.knex('customers').where({ id: key }).pluck('status')).toEqual([before!.status]);
      expect(
        await db
          .knex('suspend.history')
          .where({ customer_key: key, kind: 'clear' })
          .orderBy('policy')
          .pluck('policy'),
      ).toEqual(staged);
    });
  });
});

describe('host values written meanwhile', () => {
  test('a clear or a reinstatement gives a column back only over the value a stage set: a status the host wrote since stays', async () => {
    await onBackfilled(async (db) => {
      const inStage = (policy: string, other: string) =>
        firstAccount(
          db,
          `bool_or(policy = '${policy}' and stage = 'suspended') and not bool_or(policy = '${other}' and stage is not null)`,
        );
      const debtor = await inStage('delinquency', 'inactivity');
      const idle = await inStage('inactivity', 'delinquency');
      // The host closes both accounts while suspend holds them suspended.
      await db.knex('customers').whereIn('id', [debtor, idle]).update({ status: 'closed' });

      // The debtor pays: its stages clear, and its status stays the host's.
      await paysAll(db, debtor, '2026-11-24');
      const sweep = await cli(db, ['sweep', '--no-notify', '--quiet', '--as-of', '2026-11-25']);
      expect(sweep.code).toBe(0);
      expect(
        await db
          .knex('suspend.account_states')
          .where({ customer_key: debtor })
          .whereNotNull('stage')
          .pluck('policy'),
      ).toEqual([]);
      // Reinstated by hand: the same.
      const reinstated = await cli(db, ['reinstate', idle, '--reason', 'asked nicely']);
      expect(reinstated.code).toBe(0);
      expect(reinstated.stdout).not.toContain('status = ');
      expect(await db.knex('customers').whereIn('id', [debtor, idle]).orderBy('id').pluck('status')).toEqual([
        'closed',
        'closed',
      ]);
    });
  });
});

describe('events of an account another policy still holds', () => {
  test('a clear or a reinstatement of one policy tells, in its event, what still holds the account', async () => {
    await onBackfilled(async (db) => {
      const both = await firstAccount(
        db,
        `bool_or(policy = 'delinquency' and stage = 'suspended') and bool_or(policy = 'inactivity' and stage = 'suspended')`,
      );
      const paused = await firstAccount(
        db,
        `bool_or(policy = 'delinquency' and stage = 'suspended') and bool_or(policy = 'overdue_pause' and stage = 'paused')
           and not bool_or(policy = 'inactivity' and stage is not null)`,
      );
      // Paid: its debt stages clear, and inactivity still suspends it.
      await paysAll(db, both, '2026-11-24');
      expect((await cli(db, ['sweep', '--no-notify', '--quiet', '--as-of', '2026-11-25'])).code).toBe(0);
      // Reinstated for its overdue invoice alone: still suspended for debt, and the command says so.
      const typo = await cli(db, ['reinstate', paused, '--policy', 'overdue_paus', '--reason', 'promised']);
      expect(typo.code).toBe(2);
      expect(typo.stderr).toContain(
        `--policy overdue_paus: account ${paused} is not in a stage of policy overdue_paus (the rules have no policy overdue_paus; did you mean overdue_pause?); its current stages: `,
      );
      const promised = ['--reason', 'promised'];
      const reinstatedNow = await cli(db, ['reinstate', paused, '--policy', 'overdue_pause', ...promised]);
      expect(reinstatedNow.code).toBe(0);
      expect(reinstatedNow.stdout).toMatch(
        /\nStill held under other policies: (.+, )?suspended under delinquency(, .+)?; booking stays blocked and sign-in stays off\.(\n|$)/,
      );
      // Excluded while a policy cleared by hand holds it: no run gives access back, and it says so.
      const excluded = await cli(db, ['exclude', both, '--reason', 'account manager']);
      expect(excluded.code).toBe(0);
      expect(excluded.stdout).toContain(
        `\nIt stays suspended under inactivity until \`suspend reinstate ${both}\` lifts it: that policy is cleared by hand only (reinstate: manual), so no run gives access back.`,
      );
      expect(excluded.stdout).not.toContain('a run then gives access back');
      const events = (await db
        .knex('suspend.outbox')
        .whereIn('customer_key', [both, paused])
        .whereIn('event', ['clear', 'reinstate'])
        .orderBy('id')
        .select('customer_key', 'event', 'payload')) as {
        customer_key: string;
        event: string;
        payload: { policy: string; blocksBooking: boolean; account?: unknown };
      }[];
      const delinquencyCleared = events.find(
        (e) => e.customer_key === both && e.payload.policy === 'delinquency',
      );
      expect(delinquencyCleared?.payload).toMatchObject({
        blocksBooking: false,
        account: { blocksBooking: true, allowsLogin: false, heldBy: ['suspended under inactivity'] },
      });
      const reinstated = events.find((e) => e.customer_key === paused && e.event === 'reinstate');
      expect(reinstated?.payload).toMatchObject({
        policy: 'overdue_pause',
        account: { blocksBooking: true, allowsLogin: false },
      });
      expect((reinstated?.payload.account as { heldBy: string[] }).heldBy).toContain(
        'suspended under delinquency',
      );
      // The organization's digest says so too: not "active".
      // (A claim adds the reasons back from the history row: none needed here.)
      const cleared = [
        { id: '1', payload: { ...delinquencyCleared!.payload, reasons: [] } as unknown as OutboxPayload },
      ];
      expect(stageCounts(cleared).map((c) => c.stage)).toEqual(['still suspended under inactivity']);
      expect(digestCsv(cleared)).toMatch(/,delinquency,clear,suspended,,true,false,/);
    });
  });
});

describe('revert of a run that is not the newest', () => {
  test("every account's status is what its stages give after the revert, also where a later run changed the account", async () => {
    const rules = writeRules(
      ENGINE_RULES.replace('settings:\n', 'settings:\n  max_changes: 100%\n').replace(
        'actions: [notify, pause]\n        message: "Invoice',
        'actions: [notify, pause, { set: { status: paused } }]\n        message: "Invoice',
      ),
    );
    expect(rules).toBeTruthy();
    const db = await seeded(2000, 5);
    try {
      const original = new Map(
        ((await db.knex('customers').select('id', 'status')) as { id: string; status: string }[]).map((c) => [
          String(c.id),
          c.status,
        ]),
      );
      const run = (args: string[]) => engineCli(db, [...args, '--no-notify', '--quiet'], rules);
      expect((await run(['backfill', '--as-of', AS_OF])).code).toBe(0);
      expect((await run(['sweep', '--as-of', '2026-12-01'])).code).toBe(0);
      const touched = await db
        .knex('suspend.history')
        .where({ run_id: 2 })
        .countDistinct({ n: 'customer_key' });
      expect(Number(touched[0]!.n)).toBeGreaterThan(0);
      const reverted = await engineCli(db, ['revert', '1', '--quiet'], rules);
      expect(reverted.code).toBe(0);
      // The status each account's current stages give: a suspension over a pause, else the host's own.
      const stages = (await db
        .knex('suspend.account_states')
        .whereNotNull('stage')
        .select('customer_key', 'policy')) as { customer_key: string; policy: string }[];
      const want = new Map(original);
      for (const s of stages) {
        if (s.policy === 'overdue_pause' && want.get(s.customer_key) !== 'suspended')
          want.set(s.customer_key, 'paused');
        if (s.policy === 'inactivity' || s.policy === 'delinquency') want.set(s.customer_key, 'suspended');
      }
      const now = (await db.knex('customers').select('id', 'status')) as { id: string; status: string }[];
      const wrong = now.filter((c) => want.get(String(c.id)) !== c.status);
      expect(wrong).toEqual([]);
      // The undone changes' events had not gone out (--no-notify): withdrawn, one per restored state.
      const restoredRows = await db
        .knex('suspend.history')
        .where({ run_id: 3, kind: 'revert' })
        .count({ n: '*' });
      const withdrawn = await db
        .knex('suspend.outbox')
        .where({ run_id: 1, status: 'withdrawn' })
        .count({ n: '*' });
      expect(Number(withdrawn[0]!.n)).toBe(Number(restoredRows[0]!.n));
      expect(Number(withdrawn[0]!.n)).toBeGreaterThan(0);
      // The revert's own events say why first.
      const [revertEvent] = (await db
        .knex('suspend.outbox')
        .where({ run_id: 3 })
        .limit(1)
        .pluck('payload')) as {
        reasons: { condition: string }[];
      }[];
      expect(revertEvent!.reasons[0]!.condition).toBe('revert');
      // Each revert event tells the account's booking and sign-in after the revert, as
      // account_status() gives them: its own policy's, or what other policies still hold it to.
      const told = await db.knex.raw<{ rows: { key: string; told: boolean; status: boolean }[] }>(
        `select o.customer_key as key,
                coalesce((o.payload->'account'->>'blocksBooking')::boolean, (o.payload->>'blocksBooking')::boolean) as told,
                (select blocks_booking from suspend.account_status(o.customer_key)) as status
           from suspend.outbox o where o.run_id = 3`,
      );
      expect(told.rows.length).toBeGreaterThan(0);
      expect(told.rows.filter((r) => r.told !== r.status)).toEqual([]);
    } finally {
      await db.drop();
    }
  });
});
