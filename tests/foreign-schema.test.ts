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
