import knexFactory, { type Knex } from 'knex';
import type { TestDatabase } from '../helpers/database';
import { runCli } from '../helpers/cli';
import {
  ACTOR,
  AS_OF,
  leastPrivilegeRole,
  ledger,
  RULES_FILE,
  seededDatabase,
  STACK_FRAME,
  type TestRole,
} from '../helpers/reliability';

/**
 * Least privilege: a role with only the grants of docs/least-privilege.sql runs a sweep through
 * the CLI, and cannot write anything else. A grant taken away is one sentence naming the file.
 */

let db: TestDatabase;
let runner: TestRole;
let role: string;
let url: string;
let asRole: Knex;

beforeAll(async () => {
  db = await seededDatabase(1500, 12);
  runner = await leastPrivilegeRole(db, 'suspend_runner');
  ({ name: role, url } = runner);
  asRole = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 1 } });
});

afterAll(async () => {
  await asRole.destroy();
  await db.drop();
  await runner.drop();
});

function sweep(asOf: string) {
  return runCli([
    'sweep',
    '--as-of',
    asOf,
    '--format',
    'json',
    '--by',
    ACTOR,
    '--rules',
    RULES_FILE,
    '--database-url',
    url,
    '--quiet', // the end-of-run delivery says SMTP is not configured; only errors should show
  ]);
}

test('the documented role runs a sweep: states, history, events and customers.status written', async () => {
  expect((await asRole.raw('select current_user as u')).rows).toEqual([{ u: role }]);
  const r = await sweep(AS_OF);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const result = JSON.parse(r.stdout) as { status: string; counts: { changes: number } };
  expect(result.status).toBe('succeeded');
  expect(result.counts.changes).toBeGreaterThan(100);
  const history = await db.knex('suspend.history').count<{ n: string }[]>({ n: '*' });
  expect(Number(history[0]!.n)).toBe(result.counts.changes);
  expect(
    await db.knex('customers').where({ status: 'suspended' }).count<{ n: string }[]>({ n: '*' }),
  ).not.toEqual([{ n: '0' }]);
});

test('the role can write nothing else: host columns, consent, history, DDL', async () => {
  const denied = async (sql: string) => {
    await expect(asRole.raw(sql)).rejects.toMatchObject({ code: '42501' });
  };
  await denied("update customers set email = 'x@example.com'");
  await denied('update customers set marketing_opt_out = true');
  await denied('update invoices set paid_cents = amount_cents');
  await denied('delete from reservations');
  await denied("update suspend.history set actor = 'someone else'");
  await denied('delete from suspend.history');
  await denied('delete from suspend.account_states');
  await denied('create table public.intruder (id int)');
  await denied('create table suspend.intruder (id int)');
  await denied('drop table suspend.runs');
});

test('a grant taken away: one sentence naming the table and docs/least-privilege.sql, exit 1, run interrupted', async () => {
  await db.knex.raw('revoke select on public.invoices from ??', [role]);
  const r = await sweep('2026-12-23');
  expect(r.stderr).not.toMatch(STACK_FRAME);
  expect(r.stderr.trim().split('\n')).toEqual([
    expect.stringMatching(
      /^error: Postgres at (?:socket )?\S+\/suspend_test_\w+ refused: permission denied for table invoices; the role in the database URL needs the grants listed in docs\/least-privilege\.sql\.$/,
    ),
  ]);
  expect(r.code).toBe(1);
  expect((await ledger(db.knex)).map((x) => x.status)).toEqual(['succeeded', 'interrupted']);
});

test('a read-only server or role (a standby, default_transaction_read_only): one sentence, exit 2, nothing written', async () => {
  const before = await ledger(db.knex);
  await db.knex.raw('alter role ?? set default_transaction_read_only = on', [role]);
  try {
    const r = await sweep('2027-01-23');
    expect(r.stderr).not.toMatch(STACK_FRAME);
    expect(r.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(
        /^error: Postgres at (?:socket )?\S+\/suspend_test_\w+ is read-only for this session \(a standby, or default_transaction_read_only\): cannot execute INSERT in a read-only transaction; point the database URL at the primary \(a report --dry-run reads only and runs anywhere\)\.$/,
      ),
    ]);
    expect(r.code).toBe(2);
    expect(await ledger(db.knex)).toEqual(before);
  } finally {
    await db.knex.raw('alter role ?? reset default_transaction_read_only', [role]);
  }
});
