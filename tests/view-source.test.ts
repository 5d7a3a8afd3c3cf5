import path from 'node:path';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { SIGNAL_ROWS_TABLE, writeRules } from './helpers/fixtures';
import { ROOT } from './helpers/server';

/**
 * A signal view (`source.view`) instead of mapped tables: suspend pages through the view by key and
 * reads each account's stored states and exclusions beside it, so a sweep escalates and clears
 * accounts it staged earlier and leaves excluded accounts alone, as it does over tables.
 */

const RULES_TEXT = `
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
`;
const rulesFile = writeRules(RULES_TEXT);

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

describe('a view without every signal column, or with one of a type the signal SQL cannot read', () => {
  const all = `s.key, s.org_id, s.created_on, s.last_activity_on, s.open_balance, s.overdue_balance, s.unpaid_count,
    s.oldest_overdue_days, s.oldest_overdue_id, s.oldest_overdue_unpaid, s.past_due_since, s.active_subscriptions,
    s.net_terms_days, s.flags, s.name, s.email`;
  const runs = async () => Number((await db.knex('suspend.runs').count<{ n: string }[]>({ n: '*' }))[0]?.n);

  beforeAll(async () => {
    await db.knex.raw(`
      create view audit_view as select key, org_id::text as org_id, created_on from signal_rows;
      create view float_view as select ${all
        .replace(
          's.open_balance, s.overdue_balance',
          "s.open_balance::float8 + 0.5 as open_balance, 'lots'::text as overdue_balance",
        )
        .replace('s.flags', "'vip'::text as flags")} from signal_rows s;
      create view text_day_view as select ${all.replace('s.created_on', "'notaday'::text as created_on")} from signal_rows s;`);
  });

  test.each([
    [
      'missing columns',
      'audit_view',
      'view "audit_view" has no columns "last_activity_on", "open_balance", "overdue_balance", "unpaid_count", "oldest_overdue_days", "oldest_overdue_id", "oldest_overdue_unpaid", "past_due_since", "active_subscriptions", "net_terms_days", "flags", "name" and "email"; a signal view yields key, org_id, created_on, last_activity_on, open_balance, overdue_balance, unpaid_count, oldest_overdue_days, oldest_overdue_id, oldest_overdue_unpaid, past_due_since, active_subscriptions, net_terms_days, flags, name, email, and this one has key, org_id, created_on.',
    ],
    [
      'float and text balances, text flags',
      'float_view',
      'view "float_view" cannot be read as signals: column "open_balance" is double precision and needs to be an integer or numeric column (whole cents and counts, never a float, nor decimals such as numeric(12,2) dollars), column "overdue_balance" is text and needs to be an integer or numeric column (whole cents and counts, never a float, nor decimals such as numeric(12,2) dollars), column "flags" is text and needs to be a text[] column (flag names); cast them in the view.',
    ],
    [
      'a text created_on',
      'text_day_view',
      'view "text_day_view" cannot be read as signals: column "created_on" is text and needs to be a date or timestamp column; cast it in the view.',
    ],
  ])(
    '(%s) is refused with its line before the run opens: exit 2, nothing recorded',
    async (_, view, message) => {
      // The rules file above, naming this view.
      const file = writeRules(RULES_TEXT.replace('view: account_signals', `view: ${view}`), `${view}.yaml`);
      const line = RULES_TEXT.split('\n').findIndex((l) => l.includes('view: account_signals')) + 1;
      const before = await runs();
      for (const command of [
        ['sweep', '--no-notify'],
        ['backfill', '--no-notify'],
        ['report', '--dry-run'],
      ]) {
        const r = await runCli([
          ...command,
          '--as-of',
          '2026-12-09',
          '--rules',
          file,
          '--database-url',
          db.url,
          '--quiet',
        ]);
        expect({ command, code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
          command,
          code: 2,
          stdout: '',
          stderr: `error: ${path.relative(ROOT, file)}:${line} source.view: ${message}\n`,
        });
      }
      // Nothing recorded: a backfill left "interrupted" would refuse the corrected file.
      expect(await runs()).toBe(before);
    },
  );

  test('the view the contract describes still runs', async () => {
    const fixed = await cli(['backfill', '--as-of', '2026-12-09']);
    expect({ code: fixed.code, stderr: fixed.stderr }).toEqual({ code: 0, stderr: '' });
    expect(JSON.parse(fixed.stdout)).toMatchObject({ status: 'succeeded', counts: { scanned: 30 } });
  });
});
