import { readFileSync } from 'node:fs';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { writeRules } from './helpers/fixtures';

/**
 * A host database unlike the reference schema: tables in a schema of their own with mixed-case
 * quoted names, text customer codes, and a status column of an enum type declared in that schema.
 */

const AS_OF = '2026-11-20';
let db: TestDatabase;

const SCHEMA = `
create schema "Billing";
create type "Billing".cust_status as enum ('live', 'hold', 'suspended');
create table "Billing"."Customers" (
  "custCode" text primary key, "orgCode" text, "openedAt" timestamptz not null, "fullName" text,
  "accountStatus" varchar(10) not null default 'live', lifecycle "Billing".cust_status not null default 'live');
create table "Billing"."Bookings" (id bigserial primary key, "custCode" text not null, "bookedAt" timestamptz not null);
create table "Billing"."invoiceLines" (
  "invNo" text primary key, "custCode" text not null, "issuedAt" date not null, "dueDate" date not null,
  "totalCents" integer not null, "paidCents" integer not null default 0, "settledOn" date);
insert into "Billing"."Customers" ("custCode", "orgCode", "openedAt", "fullName") values
  ('CUS-0001', 'ORG-A', '2024-01-01', 'Ann'), ('CUS-0002', 'ORG-A', '2024-01-01', 'Ben');
insert into "Billing"."Bookings" ("custCode", "bookedAt") values ('CUS-0001', '2026-11-01'), ('CUS-0002', '2026-11-01');
insert into "Billing"."invoiceLines" values ('INV-1', 'CUS-0002', '2026-08-01', '2026-08-15', 12345, 0, null);
`;

function rules(sets: { inactivity: string; delinquency: string }): string {
  return writeRules(
    `
version: 1
settings: { max_changes: null }
source:
  schema: Billing
  customers: { table: Customers, key: custCode, org: orgCode, created_at: openedAt, name: fullName,
               email: null, net_terms_days: null, flags: {}, consent: [] }
  activity: { table: Bookings, customer: custCode, at: bookedAt }
  invoices: { table: invoiceLines, key: invNo, customer: custCode, issued_on: issuedAt, due_on: dueDate,
              amount: totalCents, paid: paidCents, paid_on: settledOn }
  subscriptions: null
  organizations: null
policies:
  inactivity:
    reinstate: manual
    stages:
      - name: suspended
        when: { inactive_for: 12 months }
        actions: [suspend, { set: ${sets.inactivity} }]
        message: inactive
  delinquency:
    stages:
      - name: suspended
        when: { overdue_balance_over: '5.00' }
        actions: [suspend, { set: ${sets.delinquency} }]
        message: unpaid
`,
    `foreign-${Math.random().toString(36).slice(2)}.yaml`,
  );
}

beforeEach(async () => {
  db = await createTestDatabase();
  await db.knex.raw(SCHEMA);
});
afterEach(async () => db.drop());

const cli = (file: string, args: string[]) =>
  runCli([...args, '--rules', file, '--database-url', db.url, '--quiet']);

async function hostColumns(key: string): Promise<Record<string, unknown>> {
  return (await db
    .knex('Billing.Customers')
    .select('accountStatus', 'lifecycle')
    .where('custCode', key)
    .first()) as Record<string, unknown>;
}

test('a set action on an enum column of a type in the host schema is written and given back', async () => {
  const file = rules({
    inactivity: '{ lifecycle: suspended }',
    delinquency: '{ lifecycle: hold }',
  });
  const backfill = await cli(file, ['backfill', '--as-of', AS_OF, '--no-notify']);
  expect(backfill.stderr).toBe('');
  expect(backfill.code).toBe(0);
  expect(await hostColumns('CUS-0002')).toEqual({ accountStatus: 'live', lifecycle: 'hold' });

  await db.knex('Billing.invoiceLines').update({ paidCents: 12345, settledOn: '2026-11-25' });
  const sweep = await cli(file, ['sweep', '--as-of', '2026-11-27', '--no-notify']);
  expect(sweep.code).toBe(0);
  expect(await hostColumns('CUS-0002')).toEqual({ accountStatus: 'live', lifecycle: 'live' });
});

test('two policies that suspend and set a column differently: the run and a reinstatement agree on its value', async () => {
  // CUS-0002 owes and has not booked in a year: both policies suspend it (stages of the same rank).
  await db.knex('Billing.Bookings').where('custCode', 'CUS-0002').update({ bookedAt: '2025-06-01' });
  const file = rules({
    inactivity: '{ accountStatus: suspended }',
    delinquency: '{ accountStatus: hold }',
  });
  const backfill = await cli(file, ['backfill', '--as-of', AS_OF, '--no-notify']);
  expect(backfill.code).toBe(0);
  const written = (await hostColumns('CUS-0002')).accountStatus;
  expect(['suspended', 'hold']).toContain(written);

  // The customer paid: the debt clears, inactivity still holds the account, and its value stays.
  await db.knex('Billing.invoiceLines').update({ paidCents: 12345, settledOn: '2026-11-25' });
  const sweep = await cli(file, ['sweep', '--as-of', '2026-11-27', '--no-notify']);
  expect(sweep.code).toBe(0);
  expect((await hostColumns('CUS-0002')).accountStatus).toBe('suspended');

  // A second account in both, reinstated by hand at once: its column comes back.
  await db
    .knex('Billing.Customers')
    .insert({ custCode: 'CUS-0003', orgCode: 'ORG-A', openedAt: '2024-01-01' });
  await db.knex('Billing.invoiceLines').insert({
    invNo: 'INV-3',
    custCode: 'CUS-0003',
    issuedAt: '2026-08-01',
    dueDate: '2026-08-15',
    totalCents: 999,
  });
  expect((await cli(file, ['sweep', '--as-of', '2026-11-28', '--no-notify'])).code).toBe(0);
  expect(['suspended', 'hold']).toContain((await hostColumns('CUS-0003')).accountStatus);
  const reinstate = await cli(file, ['reinstate', 'CUS-0003', '--reason', 'called']);
  expect(reinstate.code).toBe(0);
  expect(reinstate.stdout).not.toContain('left as it is');
  expect((await hostColumns('CUS-0003')).accountStatus).toBe('live');
});

test('invoice amounts as numeric(12,2) dollars: refused at source.invoices.amount, not read as cents', async () => {
  await db.knex.raw(
    'alter table "Billing"."invoiceLines" alter column "totalCents" type numeric(12,2) using "totalCents" / 100.0',
  );
  const file = rules({ inactivity: '{ accountStatus: suspended }', delinquency: '{ accountStatus: hold }' });
  for (const args of [['report', '--dry-run', '--as-of', AS_OF], ['doctor']]) {
    const r = await cli(file, args);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toMatch(
      /^error: \S+\.yaml:\d+ source\.invoices\.amount: column "totalCents" of table "Billing\.invoiceLines" is numeric\(12,2\), and this needs .*numeric\(12,2\) dollars\); name such a column\.\n$/,
    );
  }
  const states = await db.knex.raw<{ rows: unknown[] }>(
    "select 1 from pg_namespace where nspname = 'suspend' and exists (select 1 from suspend.runs)",
  );
  expect(states.rows).toEqual([]);
});

test('an active value an enum status column cannot hold is refused with its line and the enum values', async () => {
  await db.knex.raw(`create type "Billing".sub_state as enum ('trialing', 'active', 'canceled');
    create table "Billing"."Subs" ("custCode" text not null, "subState" "Billing".sub_state not null)`);
  const good = rules({ inactivity: '{ accountStatus: suspended }', delinquency: '{ accountStatus: hold }' });
  const yaml = readFileSync(good, 'utf8');
  const file = writeRules(
    yaml.replace(
      '  subscriptions: null',
      '  subscriptions: { table: Subs, customer: custCode, status: subState, active_values: [active, actve] }',
    ),
    'foreign-subs.yaml',
  );
  for (const args of [['report', '--dry-run', '--as-of', AS_OF], ['doctor']]) {
    const r = await cli(file, args);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toMatch(
      /^error: \S+foreign-subs\.yaml:\d+ source\.subscriptions\.active_values\[1\]: "actve" is not a value of column "subState" of table "Billing\.Subs" \(enum "Billing"\.sub_state\), so it matches no subscription; name values of that type \(trialing, active, canceled\)\.\n$/,
    );
  }
  const fixed = writeRules(
    readFileSync(file, 'utf8').replace('active, actve', 'active'),
    'foreign-subs-fixed.yaml',
  );
  expect((await cli(fixed, ['report', '--dry-run', '--as-of', AS_OF])).code).toBe(0);
});

test('the booking guard blocks a customer whose bookings keep the key in a char(n) column', async () => {
  await db.knex.raw('alter table "Billing"."Bookings" alter column "custCode" type char(12)');
  await db.knex('Billing.Bookings').where('custCode', 'CUS-0002').update({ bookedAt: '2025-06-01' });
  const file = rules({ inactivity: '{ accountStatus: suspended }', delinquency: '{ accountStatus: hold }' });
  expect((await cli(file, ['backfill', '--as-of', AS_OF, '--no-notify'])).code).toBe(0);
  expect((await cli(file, ['guard', 'status'])).stdout).toBe(
    'No booking guard installed; add one with `suspend guard install` (the activity table of the mapping, "Billing"."Bookings", customer column "custCode").\n',
  );
  const guard = await cli(file, ['guard', 'install']);
  expect(guard.code).toBe(0);
  const book = (key: string) =>
    db.knex('Billing.Bookings').insert({ custCode: key, bookedAt: '2026-12-01T10:00:00Z' });
  const refused = (await book('CUS-0002').catch((err: unknown) => err)) as {
    code?: string;
    message?: string;
  };
  expect(refused.code).toBe('SP001');
  expect(refused.message).toMatch(/ - (unpaid|inactive)$/);
  await expect(book('CUS-0001')).resolves.toBeDefined();
});

/** Rules reading the "Billing".signals view, one suspending stage that sets accountStatus. */
function viewRules(customers: string, name: string): string {
  return writeRules(
    `
version: 1
settings: { max_changes: null }
source:
  schema: Billing
  view: signals
  customers: ${customers}
policies:
  delinquency:
    stages:
      - name: suspended
        when: { overdue_balance_over: '5.00' }
        actions: [suspend, { set: { accountStatus: hold } }]
        message: unpaid
`,
    name,
  );
}

test('a signal view with a customers table that has no name or email column: reinstate and revert work', async () => {
  await db.knex.raw(`create view "Billing".signals as
    select c."custCode" as key, c."orgCode" as org_id, c."openedAt" as created_on, null::date as last_activity_on,
           sum(i."totalCents" - i."paidCents")::bigint as open_balance, sum(i."totalCents" - i."paidCents")::bigint as overdue_balance,
           count(i.*)::int as unpaid_count, null::int as oldest_overdue_days, null::text as oldest_overdue_id,
           null::bigint as oldest_overdue_unpaid, min(i."dueDate") as past_due_since, 0 as active_subscriptions,
           0 as net_terms_days, array[]::text[] as flags, c."fullName" as name, null::text as email
      from "Billing"."Customers" c left join "Billing"."invoiceLines" i on i."custCode" = c."custCode" and i."settledOn" is null
     group by c."custCode"`);
  const file = viewRules('{ table: Customers, key: custCode }', 'foreign-view.yaml');
  const backfill = await cli(file, ['backfill', '--as-of', AS_OF, '--no-notify']);
  expect(backfill.code).toBe(0);
  expect((await hostColumns('CUS-0002')).accountStatus).toBe('hold');
  const reinstate = await cli(file, ['reinstate', 'CUS-0002', '--reason', 'called']);
  expect({ code: reinstate.code, stderr: reinstate.stderr }).toEqual({ code: 0, stderr: '' });
  expect((await hostColumns('CUS-0002')).accountStatus).toBe('live');
  const revert = await cli(file, ['revert', '2']);
  expect({ code: revert.code, stderr: revert.stderr }).toEqual({ code: 0, stderr: '' });
  const events = await db.knex('suspend.outbox').orderBy('id').pluck('payload');
  expect((await hostColumns('CUS-0002')).accountStatus).toBe('hold');
  expect(events.map((p: { customer: { name: string } }) => p.customer.name)).toEqual(['Ben', 'Ben', 'Ben']);
});

test('a signal view with set actions: a customers key column that is not there is refused before the run opens', async () => {
  await db.knex.raw(`create view "Billing".signals as
    select c."custCode" as key, c."orgCode" as org_id, c."openedAt" as created_on, null::date as last_activity_on,
           1000::bigint as open_balance, 1000::bigint as overdue_balance, 1 as unpaid_count, null::int as oldest_overdue_days,
           null::text as oldest_overdue_id, null::bigint as oldest_overdue_unpaid, null::date as past_due_since,
           0 as active_subscriptions, 0 as net_terms_days, array[]::text[] as flags, c."fullName" as name, null::text as email
      from "Billing"."Customers" c`);
  const file = (customers: string) => viewRules(customers, 'foreign-view-key.yaml');
  const noKey = await cli(file('{ table: Customers, key: code }'), [
    'backfill',
    '--as-of',
    AS_OF,
    '--no-notify',
  ]);
  expect({ code: noKey.code, stdout: noKey.stdout }).toEqual({ code: 2, stdout: '' });
  expect(noKey.stderr).toMatch(
    /^error: \S+foreign-view-key\.yaml:7 source\.customers\.key: table "Billing\.Customers" has no column "code", by which the set actions find the row of each of the view's keys; name one of its columns \(custCode, orgCode, openedAt, fullName, accountStatus, lifecycle\)\.\n$/,
  );
  const noTable = await cli(file('{ table: Clients, key: custCode }'), [
    'report',
    '--dry-run',
    '--as-of',
    AS_OF,
  ]);
  expect(noTable.code).toBe(2);
  expect(noTable.stderr).toMatch(
    /source\.customers\.table: table "Billing\.Clients" does not exist in this database/,
  );
  expect(await db.knex('suspend.runs').count('* as n')).toEqual([{ n: '0' }]);
  const good = await cli(file('{ table: Customers, key: custCode }'), [
    'backfill',
    '--as-of',
    AS_OF,
    '--no-notify',
  ]);
  expect(good.code).toBe(0);
  expect((await hostColumns('CUS-0001')).accountStatus).toBe('hold');
});
