import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { SIGNAL_ROWS_TABLE, writeRules } from './helpers/fixtures';

/**
 * Behind PgBouncer in transaction mode a named prepared statement may land on another server
 * session, so `--no-prepared-statements` (or `database.prepared_statements: false` in the rules)
 * runs the page reads unnamed and sets nothing on the sessions (other clients share them). What the server saw is recorded by the source itself: the signal
 * view calls a function that logs, for every row it yields, the named statements of the session
 * reading it (pg_prepared_statements lists a statement from its Parse on, unnamed ones never).
 */

const RULES = `
version: 1
source:
  view: account_signals
policies:
  delinquency:
    stages:
      - name: warned
        when: { overdue_balance_over: '5.00', past_due_for: 10 days }
        actions: [notify]
`;
const rulesFile = writeRules(RULES);
const unnamedRulesFile = writeRules(`database:\n  prepared_statements: false\n${RULES}`);

let db: TestDatabase;

const cli = (args: string[], rules = rulesFile) =>
  runCli([
    ...args,
    '--rules',
    rules,
    '--database-url',
    db.url,
    '--as-of',
    '2026-11-23',
    '--batch-size',
    '7',
    '--format',
    'json',
    '--quiet',
  ]);

/**
 * What the view's function saw since the last call: rows read, suspend's statement names, and the
 * reading sessions' synchronous_commit (suspend turns it off on its own page sessions).
 */
async function seen(): Promise<{ rows: number; names: string[]; commits: string[] }> {
  const r = await db.knex.raw<{ rows: { rows: number; names: string[]; commits: string[] }[] }>(
    `select count(*)::int as rows,
            array(select distinct n from statement_log, unnest(names) n where n like 'suspend\\_%') as names,
            array(select distinct commit from statement_log order by 1) as commits
       from statement_log`,
  );
  await db.knex.raw('truncate statement_log');
  return r.rows[0] as { rows: number; names: string[]; commits: string[] };
}

beforeAll(async () => {
  db = await createTestDatabase({ template: false });
  await db.knex.raw(SIGNAL_ROWS_TABLE);
  await db.knex.raw(`
    -- Every third of 30 accounts owes $20 since 2026-11-01.
    insert into signal_rows (key, created_on, net_terms_days, flags, name, open_balance, overdue_balance,
                             unpaid_count, past_due_since)
      select k, date '2024-01-01', 0, '{}', 'Customer ' || k, b, b, sign(b), case when b > 0 then date '2026-11-01' end
        from generate_series(1, 30) k, lateral (select case when k % 3 = 0 then 2000 else 0 end as b) owed;
    create table statement_log (names text[], commit text);
    create function log_statements() returns boolean language plpgsql volatile as $$
      begin
        insert into statement_log
          select array(select name from pg_prepared_statements), current_setting('synchronous_commit');
        return true;
      end $$;
    create view account_signals as select * from signal_rows where log_statements();`);
  expect((await runCli(['migrate', '--database-url', db.url, '--quiet'])).code).toBe(0);
});
afterAll(async () => db.drop());

/**
 * The view was read, by no named statement of suspend's, on sessions suspend set nothing on (behind
 * a pooler they are shared with other clients).
 */
async function expectReadUnnamed(): Promise<void> {
  const { rows, names, commits } = await seen();
  expect(rows).toBeGreaterThan(0);
  expect(names).toEqual([]);
  expect(commits).toEqual(['on']);
}

test('--no-prepared-statements and database.prepared_statements: false read every page unnamed, with the same result', async () => {
  const named = await cli(['report']);
  expect(named.stderr).toBe('');
  expect(named.code).toBe(0);
  const report = JSON.parse(named.stdout) as { counts: { scanned: number; changes: number } };
  expect(report.counts).toMatchObject({ scanned: 30, changes: 10 });
  // By default the page reads are named statements on sessions tuned for page work.
  const byDefault = await seen();
  expect(byDefault.names).not.toEqual([]);
  expect(byDefault.commits).toContain('off');

  const flag = await cli(['report', '--no-prepared-statements']);
  expect(flag.code).toBe(0);
  expect(flag.stdout).toBe(named.stdout);
  await expectReadUnnamed();

  const config = await cli(['report'], unnamedRulesFile);
  expect(config.code).toBe(0);
  expect({ ...JSON.parse(config.stdout), rulesFile: unnamedRulesFile }).toEqual({
    ...JSON.parse(named.stdout),
    rulesFile: unnamedRulesFile,
  });
  await expectReadUnnamed();

  // A real run writes what the report said it would, its page reads unnamed as well.
  const sweep = await cli(['sweep', '--no-prepared-statements', '--no-notify']);
  expect(sweep.stderr).toBe('');
  expect(sweep.code).toBe(0);
  expect(JSON.parse(sweep.stdout)).toMatchObject({ counts: report.counts });
  await expectReadUnnamed();
  expect(await db.knex('suspend.account_states').where({ stage: 'warned' }).count({ n: '*' })).toEqual([
    { n: '10' },
  ]);
});
