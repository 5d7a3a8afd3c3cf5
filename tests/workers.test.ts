import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { Gate, startCli } from './helpers/reliability';
import { ROOT } from './helpers/server';
import { checksumTables, ENGINE_RULES, writeRules } from './helpers/fixtures';
import { runBatch, type BatchOptions } from '../src/engine/run';
import { loadRules } from '../src/rules/load';
import type { StateChange } from '../src/write/apply';

/**
 * `--workers N` splits the accounts into N key ranges walked side by side; the SQL pre-filter
 * leaves out accounts no rule can touch. Neither may change what a run decides or writes.
 */

const AS_OF = '2026-11-23';
const rulesFile = writeRules(ENGINE_RULES);

async function seeded(): Promise<TestDatabase> {
  const db = await createTestDatabase();
  const r = await runCli([
    'seed',
    '--customers',
    '3000',
    '--orgs',
    '5',
    '--seed',
    '13',
    '--as-of',
    AS_OF,
    '--reset',
    '--database-url',
    db.url,
    '--quiet',
  ]);
  expect(r).toMatchObject({ code: 0 });
  return db;
}

/** Small pages, so each worker walks several. */
const PAGES = ['--format', 'json', '--batch-size', '250'];

function cli(db: TestDatabase, args: string[]) {
  return runCli([...args, '--as-of', AS_OF, '--rules', rulesFile, '--database-url', db.url, '--quiet']);
}

interface ReportJson {
  status: string;
  counts: { scanned: number; changes: number; accountsChanged: number; excluded: number };
}

/** Everything a backfill decided, without ids, run ids and timestamps. */
async function outcome(db: TestDatabase) {
  const lines = async (sql: string) =>
    ((await db.knex.raw(sql)) as { rows: { line: string }[] }).rows.map((r) => r.line).sort();
  return {
    states: await lines(
      `select concat_ws('|', customer_key, policy, stage, stage_index, blocks_booking, allows_login, message, reasons::text, host_before::text, version) as line
         from suspend.account_states`,
    ),
    history: await lines(
      `select concat_ws('|', customer_key, policy, kind, from_stage, to_stage, reasons::text, previous_state::text) as line
         from suspend.history`,
    ),
    outbox: await lines(
      `select concat_ws('|', customer_key, event, payload - 'runId') as line from suspend.outbox`,
    ),
    status: await lines(`select concat_ws('|', id, status) as line from customers where status <> 'active'`),
  };
}

describe('backfill --workers', () => {
  let one: TestDatabase;
  let two: TestDatabase;
  beforeAll(async () => {
    [one, two] = await Promise.all([seeded(), seeded()]);
  });
  afterAll(async () => Promise.all([one.drop(), two.drop()]));

  test('--dry-run with --workers 2 writes nothing and reports what one worker reports', async () => {
    const before = await checksumTables(two.knex, ['public', 'suspend']);
    const single = await cli(two, ['backfill', '--dry-run', ...PAGES]);
    const split = await cli(two, ['backfill', '--dry-run', '--workers', '2', ...PAGES]);
    expect([single.code, split.code]).toEqual([0, 0]);
    expect((JSON.parse(split.stdout) as ReportJson).counts).toEqual(
      (JSON.parse(single.stdout) as ReportJson).counts,
    );
    expect(await checksumTables(two.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('two workers write exactly the states, history, outbox and host columns of one', async () => {
    const a = await cli(one, ['backfill', '--no-notify', ...PAGES]);
    const b = await cli(two, ['backfill', '--no-notify', '--workers', '2', ...PAGES]);
    expect([a.code, b.code]).toEqual([0, 0]);
    const ra = JSON.parse(a.stdout) as ReportJson;
    const rb = JSON.parse(b.stdout) as ReportJson;
    expect(rb.counts).toEqual(ra.counts);
    expect(ra.counts.changes).toBeGreaterThan(300);
    const [oa, ob] = [await outcome(one), await outcome(two)];
    expect(ob).toEqual(oa);
    expect(oa.history).toHaveLength(ra.counts.changes);
    expect(oa.outbox).toHaveLength(ra.counts.changes);
    // Each worker kept its own checkpoint, and finished its range.
    const checkpoints = await two.knex('suspend.checkpoints').select('shard', 'done').orderBy('shard');
    expect(checkpoints).toEqual([
      { shard: '0/1 part 1/2', done: true },
      { shard: '0/1 part 2/2', done: true },
    ]);
    const sweep = await cli(two, ['sweep', '--no-notify', '--workers', '2', '--format', 'json']);
    expect((JSON.parse(sweep.stdout) as ReportJson).counts.changes).toBe(0);
  });
});

describe('a run with workers stopped by the safety limit resumes with its own split', () => {
  let stopped: TestDatabase;
  let clean: TestDatabase;
  beforeAll(async () => {
    [stopped, clean] = await Promise.all([seeded(), seeded()]);
  });
  afterAll(async () => Promise.all([stopped.drop(), clean.drop()]));

  test('--resume continues each worker after its checkpoint and ends where an uninterrupted run ends', async () => {
    const args = ['backfill', '--no-notify', '--workers', '2', '--batch-size', '200', '--format', 'json'];
    const first = await cli(stopped, [...args, '--max-changes', '400']);
    expect(first.code).toBe(4);
    const resumed = await runCli([
      'backfill',
      '--resume',
      '--no-notify',
      '--max-changes',
      'none',
      '--rules',
      rulesFile,
      '--database-url',
      stopped.url,
      '--format',
      'json',
      '--quiet',
    ]);
    expect(resumed.code).toBe(0);
    expect(await cli(clean, args)).toMatchObject({ code: 0 });
    const [a, b] = [await outcome(stopped), await outcome(clean)];
    expect(a.states).toEqual(b.states);
    expect(a.status).toEqual(b.status);
    expect(a.history).toEqual(b.history);
    const [run] = await stopped.knex('suspend.runs').select('status', 'counts');
    expect(run.status).toBe('succeeded');
    expect(run.counts.scanned).toBe(3000);
  });
});

describe('the SQL pre-filter', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seeded();
    // Exclusions from the table and accounts that already have a stage are candidates too.
    await db.knex.raw(
      `insert into suspend.exclusions (customer_key, reason, created_by) values ('17', 'test', 'me')`,
    );
  });
  afterAll(async () => db.drop());

  async function dry(allAccounts: boolean, asOf: string) {
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    const changes: StateChange[] = [];
    let evaluated = 0;
    const options: BatchOptions = {
      kind: 'sweep',
      asOf,
      dryRun: true,
      batchSize: 400,
      orgs: null,
      shard: null,
      allAccounts,
      resume: false,
      wait: false,
      actor: 'test',
      onPage: (page) => {
        evaluated += page.evaluated;
        changes.push(...page.changes);
      },
    };
    const result = await runBatch(db.knex, rules, options);
    const line = (c: StateChange) =>
      [c.key, c.policy, c.kind, c.from, c.to, JSON.stringify(c.reasons), c.message].join('|');
    return { counts: result.counts, changes: changes.map(line).sort(), evaluated };
  }
  const decided = ({ counts, changes }: Awaited<ReturnType<typeof dry>>) => ({ counts, changes });

  test('evaluating only the candidates decides exactly what evaluating every account decides', async () => {
    for (const asOf of [AS_OF, '2027-03-01']) {
      const all = await dry(true, asOf);
      const candidates = await dry(false, asOf);
      expect(decided(candidates)).toEqual(decided(all));
      expect(all.evaluated).toBe(3000);
      expect(candidates.evaluated).toBeLessThan(2000);
    }
    // And again once accounts have stages, a month later (clears, escalations, holds).
    expect(await cli(db, ['backfill', '--no-notify'])).toMatchObject({ code: 0 });
    const all = await dry(true, '2026-12-23');
    expect(all.changes.length).toBeGreaterThan(0);
    expect(decided(await dry(false, '2026-12-23'))).toEqual(decided(all));
  });
});

describe('--shard I/N processes run side by side', () => {
  let sharded: TestDatabase;
  let whole: TestDatabase;
  beforeAll(async () => {
    [sharded, whole] = await Promise.all([seeded(), seeded()]);
  });
  afterAll(async () => Promise.all([sharded.drop(), whole.drop()]));

  test('shard 1/2 runs while 0/2 is inside a page; a run over every account or a second 0/2 exits 3; together they write what one run writes', async () => {
    const gate = await Gate.install(sharded, 'suspend.checkpoints', "new.shard = '0/2'");
    const parked = startCli(
      sharded,
      ['backfill', '--shard', '0/2', '--no-notify', '--quiet', '--as-of', AS_OF, ...PAGES],
      rulesFile,
    );
    try {
      await gate.blocked(parked);
      const other = await cli(sharded, ['backfill', '--shard', '1/2', '--no-notify', ...PAGES]);
      expect(other.stderr).toBe('');
      expect(other.code).toBe(0);
      const everyAccount = await cli(sharded, ['sweep', '--no-notify', ...PAGES]);
      expect(everyAccount.code).toBe(3);
      expect(everyAccount.stderr).toContain('holds the lock on schema "suspend"');
      const sameShard = await cli(sharded, ['backfill', '--shard', '0/2', '--no-notify', ...PAGES]);
      expect(sameShard.code).toBe(3);
      expect(sameShard.stderr).toContain('holds shard 0/2');
    } finally {
      await gate.remove();
    }
    const first = await parked.done;
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    const reference = await cli(whole, ['backfill', '--no-notify', ...PAGES]);
    expect(reference.code).toBe(0);
    expect((JSON.parse(reference.stdout) as ReportJson).counts.changes).toBeGreaterThan(300);
    expect(await outcome(sharded)).toEqual(await outcome(whole));
    const runs = await sharded.knex('suspend.runs').orderBy('id').select('status');
    expect(runs).toEqual([{ status: 'succeeded' }, { status: 'succeeded' }]);
  });
});
