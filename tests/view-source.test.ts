import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { SIGNAL_ROWS_TABLE, writeRules } from './helpers/fixtures';

/**
 * A signal view (`source.view`) instead of mapped tables: suspend pages through the view by key and
 * reads each account's stored states and exclusions beside it, so a sweep escalates and clears
 * accounts it staged earlier and leaves excluded accounts alone, as it does over tables.
 */

const rulesFile = writeRules(`
version: 1
source:
  view: account_signals
policies:
  delinquency:
    reinstate: auto
    stages:
      - name: warned
        when: { overdue_balance_over: '5.00', past_due_for: 10 days }
        actions: [notify]
      - name: suspended
        when: { overdue_balance_over: '5.00', past_due_for: 30 days }
        actions: [notify, suspend]
`);

let db: TestDatabase;

const cli = (args: string[]) =>
  runCli([
    ...args,
    '--rules',
    rulesFile,
    '--database-url',
    db.url,
    '--no-notify',
    '--quiet',
    '--format',
    'json',
  ]);

/** Account k owes `cents` overdue since `since` (null: owes nothing). */
async function owes(key: number, cents: number, since: string | null) {
  await db
    .knex('signal_rows')
    .where({ key })
    .update({
      open_balance: cents,
      overdue_balance: cents,
      unpaid_count: cents > 0 ? 1 : 0,
      past_due_since: since,
    });
}

async function stages(): Promise<Record<string, string | null>> {
  const rows = (await db.knex('suspend.account_states').select('customer_key', 'stage')) as {
    customer_key: string;
    stage: string | null;
  }[];
  return Object.fromEntries(rows.map((r) => [r.customer_key, r.stage]));
}

beforeAll(async () => {
  // An empty database: none of the reference tables the default mapping names.
  db = await createTestDatabase({ template: false });
  await db.knex.raw(SIGNAL_ROWS_TABLE);
  await db.knex.raw(`
    insert into signal_rows (key, created_on, net_terms_days, flags, name)
      select k, date '2024-01-01', 0, '{}', 'Customer ' || k from generate_series(1, 30) k;
    create view account_signals as select * from signal_rows;`);
  expect((await runCli(['migrate', '--database-url', db.url, '--quiet'])).code).toBe(0);
});
afterAll(async () => db.drop());

test('a sweep over a signal view enters, escalates and clears stages and leaves an excluded account alone', async () => {
  // Accounts 1 and 2 owe $20 since 2026-11-01; 2 is excluded by an operator.
  await owes(1, 2000, '2026-11-01');
  await owes(2, 2000, '2026-11-01');
  const excluded = await runCli([
    'exclude',
    '2',
    '--reason',
    'promise to pay',
    '--rules',
    rulesFile,
    '--database-url',
    db.url,
  ]);
  expect(excluded.code).toBe(0);

  // Day 15: warned (batch of 7 accounts so the walk spans several pages).
  const first = await cli(['sweep', '--as-of', '2026-11-16', '--batch-size', '7']);
  expect(first.code).toBe(0);
  expect(await stages()).toEqual({ '1': 'warned' });

  // Day 35: escalated from the stored stage.
  const second = await cli(['sweep', '--as-of', '2026-12-06', '--batch-size', '7']);
  expect(second.code).toBe(0);
  expect(JSON.parse(second.stdout).counts).toMatchObject({ changes: 1, changedSinceRead: 0 });
  expect(await stages()).toEqual({ '1': 'suspended' });
  const [escalation] = await db
    .knex('suspend.history')
    .where({ customer_key: '1' })
    .orderBy('id', 'desc')
    .select('kind', 'from_stage', 'to_stage');
  expect(escalation).toEqual({ kind: 'escalate', from_stage: 'warned', to_stage: 'suspended' });

  // Paid in full: the next sweep clears the account (reinstate: auto).
  await owes(1, 0, null);
  const third = await cli(['sweep', '--as-of', '2026-12-07', '--batch-size', '7']);
  expect(third.code).toBe(0);
  expect(await stages()).toEqual({ '1': null });
  expect(
    await db.knex('suspend.history').where({ customer_key: '2' }).count<{ n: string }[]>({ n: '*' }),
  ).toEqual([{ n: '0' }]);
});

test('--workers 4 splits a view into four key ranges by its keys, not by their text (keys 1 to 30)', async () => {
  // By text, keys 1 to 30 run 1, 10..19, 2, 20..29, 3: the split points 7, 15 and 22 are not all among
  // the first 22 of them, and a split that ordered by the text lost one.
  const run = await cli(['sweep', '--as-of', '2026-12-08', '--workers', '4', '--max-changes', 'none']);
  expect(run.stderr).toBe('');
  expect(run.code).toBe(0);
  const { runId } = JSON.parse(run.stdout) as { runId: string };
  const parts = await db
    .knex('suspend.checkpoints')
    .where({ run_id: runId })
    .orderBy('last_key')
    .pluck('last_key');
  expect(parts.map(Number).sort((a, b) => a - b)).toEqual([7, 15, 22, 30]);
});
