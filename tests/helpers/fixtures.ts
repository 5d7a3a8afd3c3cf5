import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Knex } from 'knex';
import type { Signals } from '../../src/types';

/** Writes a rules file into a fresh temp folder and returns its path. */
export function writeRules(yaml: string, name = 'rules.yaml'): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-rules-'));
  const file = path.join(dir, name);
  fs.writeFileSync(file, yaml);
  return file;
}

/**
 * md5 of every row of every table in the given schemas, in a stable order: equal checksums mean
 * nothing was written.
 */
export async function checksumTables(knex: Knex, schemas: string[]): Promise<Record<string, string>> {
  const tables = await knex.raw<{ rows: { schema: string; name: string }[] }>(
    `select table_schema as schema, table_name as name from information_schema.tables
      where table_schema = any(?::text[]) and table_type = 'BASE TABLE' order by 1, 2`,
    [schemas],
  );
  const out: Record<string, string> = {};
  for (const t of tables.rows) {
    const r = await knex.raw<{ rows: { sum: string | null; n: string }[] }>(
      "select md5(coalesce(string_agg(x::text, '\n' order by x::text), '')) as sum, count(*) as n from ?? as x",
      [`${t.schema}.${t.name}`],
    );
    out[`${t.schema}.${t.name}`] = `${r.rows[0]?.n}:${r.rows[0]?.sum}`;
  }
  return out;
}

/** A table with the columns a signal view (`source.view`) yields, for the tests to put a view over. */
export const SIGNAL_ROWS_TABLE = `
  create table signal_rows (
    key bigint primary key, org_id text, created_on date, last_activity_on date,
    open_balance bigint, overdue_balance bigint, unpaid_count int, oldest_overdue_days int,
    oldest_overdue_id text, oldest_overdue_unpaid bigint, past_due_since date,
    active_subscriptions int, net_terms_days int, flags text[], name text, email text)`;

/** Rules used by the engine tests: the four example ladders on the reference schema. */
export const ENGINE_RULES = `
version: 1
settings:
  pay_url: https://pay.example.com/{key}
  support_url: https://help.example.com
source:
  customers:
    table: customers
    key: id
    org: org_id
    created_at: created_at
    email: email
    name: name
    net_terms_days: net_terms_days
    flags: { vip: vip }
    consent: [marketing_opt_out]
exclusions:
  - flag: vip
    reason: VIP accounts are handled by hand
policies:
  inactivity:
    reinstate: manual
    stages:
      - name: suspended
        when: { inactive_for: 12 months, account_age_at_least: 3 months }
        actions: [notify, suspend, { set: { status: suspended } }]
        message: "We have not seen you since {last_activity}. Contact {support_url} to reactivate."
  delinquency:
    reinstate: auto
    stages:
      - name: suspended
        when: { overdue_balance_over: "5.00", past_due_for: 31 days }
        actions: [notify, suspend, { set: { status: suspended } }]
        message: "Your account is suspended: {overdue_balance} is {days_past_due} days past due. Pay at {pay_url}."
  overdue_pause:
    stages:
      - name: paused
        when: { invoice_overdue_for: 10 days }
        actions: [notify, pause]
        message: "Invoice {invoice} for {invoice_amount} is {invoice_days_overdue} days overdue. Pay it at {pay_url} and you can book again right away."
  escalation:
    stages:
      - name: day_14
        when: { has_active_subscription: true, past_due_for: 14 days }
        actions: [notify]
      - name: day_30
        when: { has_active_subscription: true, past_due_for: 30 days }
        actions: [notify, pause]
`;

/** One account's signals for pure tests: active on `2026-11-23`, nothing owed, unless overridden. */
export function accountSignals(overrides: Partial<Signals> = {}): Signals {
  return {
    key: 'c1',
    orgId: 'org-1',
    accountCreatedOn: '2020-01-01',
    lastActivityOn: '2026-11-23',
    openBalance: 0,
    overdueBalance: 0,
    pastDueSince: null,
    oldestOverdueDays: null,
    oldestOverdueInvoice: null,
    unpaidInvoiceCount: 0,
    activeSubscriptions: 0,
    netTermsDays: 0,
    flags: [],
    name: 'Ada Lovelace',
    email: 'ada@example.com',
    ...overrides,
  };
}

/** A sweep recorded in the ledger as succeeded (a run for states inserted by hand to belong to); its id. */
export async function recordedSweep(knex: Knex, asOf = '2026-11-01'): Promise<string> {
  const [run] = await knex('suspend.runs')
    .insert({ kind: 'sweep', status: 'succeeded', as_of: asOf, rules_hash: 'test', started_by: 'cron' })
    .returning('id');
  return String((run as { id: string }).id);
}
