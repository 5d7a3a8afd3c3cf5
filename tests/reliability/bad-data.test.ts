import { createTestDatabase, type TestDatabase } from '../helpers/database';
import { writeRules } from '../helpers/fixtures';
import { SKIP_REASONS } from '../../src/source/signals';
import { ACTOR, AS_OF, cli, STACK_FRAME } from '../helpers/reliability';

/**
 * Bad data in the host's tables, mapped to custom tables with keys of each supported type (bigint,
 * text, uuid): NULL and future dates, negative and zero amounts, invoices paid more than billed,
 * orphan rows, customers of unknown organizations. No crash; every account is either judged on
 * what can be known or skipped with a reason the run reports.
 */

type KeyType = 'bigint' | 'text' | 'uuid';

/** The accounts, by role; each key type writes them with its own keys. */
const ROLES = [
  'inactive', // a plain inactive account: suspended
  'delinquent', // a plain overdue invoice: suspended
  'nullCreated', // created_at NULL, never active
  'futureCreated', // joined and last seen after as-of
  'nullVisit', // an activity row with a NULL time
  'negativeBill', // an invoice of -$50.00, overdue
  'zeroBill', // an invoice of $0.00, overdue
  'overpaid', // paid $50 on a $10 invoice, no paid_on
  'nullDue', // an unpaid invoice without a due date
  'nullAmount', // an invoice without an amount
  'paidLater', // paid in full after as-of: unpaid on as-of
  'unknownOrg', // an organization that is not in the organizations table
  'nullOrg', // no organization at all
  'nullTerms', // net terms NULL
  'negativeTerms', // net terms -400 days
] as const;

/** Values nothing can compute with: the run must skip these accounts and say why. */
const UNCOMPUTABLE = [
  'hugeTerms', // net terms of 2,147,483,647 days: the due date is out of range
  'hugeAmounts', // two invoices of 9e18 cents: the balance does not fit a number of cents
] as const;

function keyOf(type: KeyType, i: number, role: string): string {
  if (type === 'bigint') return String(9_000_000_000 + i);
  if (type === 'uuid') return `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`;
  // Text keys that need quoting and careful ordering.
  return [`O'Brien ${role}`, `späce ${role}`, `"${role}"`, `${role}; drop table members`][i % 4] as string;
}

async function hostTables(db: TestDatabase, type: KeyType): Promise<Record<string, string>> {
  const k = db.knex;
  await k.raw('create schema app');
  await k.raw(`create table app.orgs (code text primary key, tz text, contacts text[])`);
  await k.raw(`create table app.members ("Member Key" ${type} primary key, org_code text, joined timestamptz,
    mail text, full_name text, terms int, is_vip boolean, opt_out boolean, state text default 'open')`);
  await k.raw(`create table app.visits (member ${type}, at timestamptz)`);
  await k.raw(`create table app.bills (no text, member ${type}, issued date, due date, total bigint,
    settled bigint, settled_on date)`);
  await k.raw(`create table app.plans (member ${type}, plan_state text)`);
  await k('app.orgs').insert([{ code: 'acme', tz: 'UTC', contacts: ['ops@acme.example'] }]);

  const keys: Record<string, string> = {};
  const members: Record<string, unknown>[] = [];
  const visits: Record<string, unknown>[] = [];
  const bills: Record<string, unknown>[] = [];
  const bill = (member: string, fields: Record<string, unknown>) =>
    bills.push({
      no: `b${bills.length}`,
      member,
      issued: '2025-12-01',
      due: '2026-01-01',
      settled: 0,
      ...fields,
    });
  [...ROLES, ...UNCOMPUTABLE].forEach((role, i) => {
    const key = keyOf(type, i, role);
    keys[role] = key;
    members.push({
      'Member Key': key,
      org_code: role === 'unknownOrg' ? 'no-such-org' : role === 'nullOrg' ? null : 'acme',
      joined: role === 'nullCreated' ? null : role === 'futureCreated' ? '2027-06-01' : '2020-01-01',
      mail: `m${i}@example.com`,
      full_name: `Member ${i}`,
      terms:
        role === 'nullTerms' ? null : role === 'negativeTerms' ? -400 : role === 'hugeTerms' ? 2147483647 : 0,
      is_vip: false,
      opt_out: false,
    });
    // Everyone but the inactive ones was seen recently, so only the data under test decides.
    if (!['inactive', 'nullCreated', 'nullVisit', 'unknownOrg', 'nullOrg'].includes(role))
      visits.push({ member: key, at: role === 'futureCreated' ? '2027-07-01' : '2026-11-01' });
  });
  visits.push({ member: keys.nullVisit, at: null });
  bill(keys.delinquent as string, { total: 10_000 });
  bill(keys.negativeBill as string, { total: -5_000 });
  bill(keys.zeroBill as string, { total: 0 });
  bill(keys.overpaid as string, { total: 1_000, settled: 5_000 });
  bill(keys.nullDue as string, { total: 9_000, due: null });
  bill(keys.nullAmount as string, { total: null });
  bill(keys.paidLater as string, { total: 2_000, settled: 2_000, settled_on: '2027-01-15' });
  bill(keys.nullTerms as string, { total: 3_000 });
  bill(keys.negativeTerms as string, { total: 3_000 });
  bill(keys.hugeTerms as string, { total: 3_000 });
  bill(keys.hugeAmounts as string, { total: '9000000000000000000' });
  bill(keys.hugeAmounts as string, { total: '9000000000000000000' });
  // Orphans: activity, invoices and plans of accounts that do not exist.
  const orphan = keyOf(type, 999, 'orphan');
  visits.push({ member: orphan, at: '2026-01-01' });
  bill(orphan, { total: 99_999 });
  await k('app.members').insert(members);
  await k('app.visits').insert(visits);
  await k('app.bills').insert(bills);
  await k('app.plans').insert([
    { member: orphan, plan_state: 'active' },
    { member: keys.delinquent, plan_state: null },
  ]);
  return keys;
}

const RULES = `
version: 1
source:
  schema: app
  customers:
    table: members
    key: Member Key
    org: org_code
    created_at: joined
    email: mail
    name: full_name
    net_terms_days: terms
    flags: { vip: is_vip }
    consent: [opt_out]
  activity: { table: visits, customer: member, at: at }
  invoices:
    { table: bills, key: no, customer: member, issued_on: issued, due_on: due, amount: total, paid: settled, paid_on: settled_on }
  subscriptions: { table: plans, customer: member, status: plan_state, active_values: [active] }
  organizations: { table: orgs, key: code, timezone: tz, notification_emails: contacts }
policies:
  inactivity:
    reinstate: manual
    stages:
      - name: suspended
        when: { inactive_for: 12 months, account_age_at_least: 3 months }
        actions: [notify, suspend, { set: { state: suspended } }]
  delinquency:
    stages:
      - name: suspended
        when: { overdue_balance_over: "5.00", past_due_for: 31 days }
        actions: [notify, suspend, { set: { state: suspended } }]
`;

interface Report {
  status: string;
  counts: {
    scanned: number;
    changes: number;
    skipped: number;
    skippedByReason: Record<string, number>;
    skippedKeys: Record<string, string[]>;
  };
  accounts: { key: string; policy: string; to: string }[];
}

const types: KeyType[] = ['bigint', 'text', 'uuid'];
const dbs: TestDatabase[] = [];
const rulesFile = writeRules(RULES);

afterAll(async () => Promise.all(dbs.map((db) => db.drop())));

async function setUp(type: KeyType) {
  const db = await createTestDatabase();
  const keys = await hostTables(db, type);
  dbs.push(db);
  return { db, keys };
}

async function states(db: TestDatabase, key: string): Promise<string[]> {
  const rows = (await db
    .knex('suspend.account_states')
    .where({ customer_key: key })
    .whereNotNull('stage')
    .orderBy('policy')
    .select('policy', 'stage')) as { policy: string; stage: string }[];
  return rows.map((r) => `${r.policy}:${r.stage}`);
}

/** A backfill of the custom tables in pages of 4, as JSON. */
function backfill(db: TestDatabase, ...extra: string[]) {
  return cli(
    db,
    [
      'backfill',
      '--as-of',
      AS_OF,
      '--batch-size',
      '4',
      '--no-notify',
      '--by',
      ACTOR,
      '--format',
      'json',
      ...extra,
    ],
    rulesFile,
  );
}

describe.each(types)('%s keys', (type) => {
  let db: TestDatabase;
  let keys: Record<string, string>;
  beforeAll(async () => {
    ({ db, keys } = await setUp(type));
    // The two uncomputable accounts are added for their own test below.
    await db.knex('app.members').whereIn('Member Key', [keys.hugeTerms!, keys.hugeAmounts!]).delete();
  });

  test('bad values that can be judged: no crash, sensible outcomes, a second sweep changes nothing', async () => {
    const r = await backfill(db, '--accounts');
    expect(r.stderr).not.toMatch(STACK_FRAME);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as Report;
    expect(report.status).toBe('succeeded');
    expect(report.counts.scanned).toBe(ROLES.length);

    const judged = Object.fromEntries(
      await Promise.all(ROLES.map(async (role) => [role, await states(db, keys[role]!)])),
    );
    expect(judged).toMatchObject({
      inactive: ['inactivity:suspended'],
      delinquent: ['delinquency:suspended'],
      futureCreated: [], // not inactive: seen after as-of does not count, but the account is younger than 3 months
      negativeBill: [],
      zeroBill: [],
      overpaid: [],
      nullDue: [],
      nullAmount: [],
      paidLater: ['delinquency:suspended'],
      unknownOrg: ['inactivity:suspended'], // the default rules apply
      nullOrg: ['inactivity:suspended'],
      nullTerms: ['delinquency:suspended'],
    });
    // The host column was written through the quoted key column, for every key type.
    const suspended = await db.knex('app.members').where({ state: 'suspended' }).pluck('Member Key');
    expect(suspended.map(String).sort()).toEqual(
      [
        'inactive',
        'delinquent',
        'paidLater',
        'unknownOrg',
        'nullOrg',
        'nullTerms',
        ...(judged.nullVisit.length ? ['nullVisit'] : []),
        ...(judged.nullCreated.length ? ['nullCreated'] : []),
        ...(judged.negativeTerms.length ? ['negativeTerms'] : []),
      ]
        .map((role) => keys[role])
        .sort(),
    );

    const again = await cli(
      db,
      ['sweep', '--as-of', AS_OF, '--no-notify', '--by', ACTOR, '--format', 'json'],
      rulesFile,
    );
    expect(again.code).toBe(0);
    expect((JSON.parse(again.stdout) as Report).counts.changes).toBe(0);
  });
});

describe.each(types)('%s keys, values nothing can compute with', (type) => {
  let db: TestDatabase;
  let keys: Record<string, string>;
  beforeAll(async () => {
    ({ db, keys } = await setUp(type));
  });

  test('the run skips those accounts, says why, and judges the others', async () => {
    const r = await backfill(db);
    expect(r.stderr).not.toMatch(STACK_FRAME);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as Report;
    expect(report.status).toBe('succeeded');
    expect(report.counts.scanned + report.counts.skipped).toBe(ROLES.length + UNCOMPUTABLE.length);
    expect(report.counts.skipped).toBe(UNCOMPUTABLE.length);
    expect(Object.keys(report.counts.skippedByReason).length).toBeGreaterThanOrEqual(1);
    // Which accounts, by reason: where to look for the bad rows.
    expect(report.counts.skippedKeys).toEqual({
      [SKIP_REASONS.netTerms]: [keys.hugeTerms],
      [SKIP_REASONS.balance]: [keys.hugeAmounts],
    });
    for (const role of UNCOMPUTABLE) expect(await states(db, keys[role]!)).toEqual([]);
    // The text report names them in its note.
    const text = await cli(db, ['report', '--dry-run', '--as-of', AS_OF, '--batch-size', '4'], rulesFile);
    expect(text.code).toBe(0);
    // Text keys here hold quotes, spaces and semicolons: shown as JSON strings.
    const shown = (key: string) => (type === 'text' ? JSON.stringify(key) : key);
    const note = text.stdout.split('\n').find((l) => l.startsWith('- skipped for bad data: '));
    expect(note).toContain(`1 (${SKIP_REASONS.netTerms}: account ${shown(keys.hugeTerms!)})`);
    expect(note).toContain(`1 (${SKIP_REASONS.balance}: account ${shown(keys.hugeAmounts!)})`);
    expect(await states(db, keys.delinquent!)).toEqual(['delinquency:suspended']);
  });
});

/** Runs in the ledger; none when suspend's schema was never created. */
async function runsRecorded(db: TestDatabase): Promise<number> {
  const rows = await db
    .knex('suspend.runs')
    .count<{ n: string }[]>({ n: '*' })
    .catch(() => [{ n: '0' }]);
  return Number(rows[0]?.n);
}

describe('a key column that is not unique', () => {
  test('two rows of one key: refused before the run opens, naming the key; unique again, the run goes', async () => {
    const { db, keys } = await setUp('text');
    await db.knex.raw('alter table app.members drop constraint members_pkey cascade');
    const row = await db.knex('app.members').where('Member Key', keys.delinquent!).first();
    await db.knex('app.members').insert(row);
    const r = await backfill(db);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toMatch(
      new RegExp(
        `^error: \\S+:\\d+ source\\.customers\\.key: column "Member Key" of table "app\\.members" names more than one row for "${keys.delinquent}"; map a column that is unique for each customer \\(a primary key\\), or remove the duplicates\\.\\n$`,
      ),
    );
    // Refused before anything: suspend's schema is not even created by it.
    expect(await runsRecorded(db)).toBe(0);
    // Without the duplicate (and still no unique index), the backfill runs.
    await db.knex.raw(
      `delete from app.members where ctid = (select max(ctid) from app.members where "Member Key" = ?)`,
      [keys.delinquent!],
    );
    const again = await backfill(db);
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
  });
});

describe('amounts with a fraction of a cent', () => {
  test('a numeric amount column holding 10.5: the account is skipped as such, not as a balance too large', async () => {
    const { db, keys } = await setUp('text');
    await db.knex.raw('alter table app.bills alter column total type numeric');
    await db.knex.raw(`update app.bills set total = total + 0.5 where member = ?`, [keys.delinquent!]);
    const r = await backfill(db);
    expect(r.code).toBe(0);
    const counts = (JSON.parse(r.stdout) as { counts: { skippedKeys: Record<string, string[]> } }).counts;
    expect(counts.skippedKeys[SKIP_REASONS.fraction]).toEqual([keys.delinquent]);
    expect(counts.skippedKeys[SKIP_REASONS.balance]).toEqual([keys.hugeAmounts]);
  });
});

describe('a key column with nulls', () => {
  test('a row without a key: refused before the run opens, saying how many; keyed again, every account is scanned', async () => {
    const { db, keys } = await setUp('text');
    await db.knex.raw('alter table app.members drop constraint members_pkey cascade');
    await db.knex.raw('alter table app.members alter column "Member Key" drop not null');
    await db.knex.raw('create unique index on app.members ("Member Key")');
    const row = await db.knex('app.members').where('Member Key', keys.delinquent!).first();
    await db.knex('app.members').insert({ ...row, 'Member Key': null });
    // A page of 2,000 holds every row: before this check, it read as empty, and the run succeeded
    // having scanned nobody.
    const r = await backfill(db, '--batch-size', '2000');
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toMatch(
      /^error: \S+:\d+ source\.customers\.key: column "Member Key" of table "app\.members" is null in 1 row\(s\), and an account without a key cannot be paged through or recorded; fill in those keys, or map a column every customer has \(a primary key\)\.\n$/,
    );
    expect(await runsRecorded(db)).toBe(0);
    await db.knex('app.members').whereNull('Member Key').update({ 'Member Key': 'late-key' });
    const again = await backfill(db, '--batch-size', '2000');
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
    const total = await db.knex('app.members').count<{ n: string }[]>({ n: '*' });
    const counts = (JSON.parse(again.stdout) as { counts: { scanned: number; skipped: number } }).counts;
    // Every row is an account now: judged, or skipped for its values (the two uncomputable ones).
    expect(counts.scanned + counts.skipped).toBe(Number(total[0]!.n));
  });
});

describe('dates that look like entry mistakes', () => {
  test('doctor notes unpaid invoices due before they were issued, without failing the check', async () => {
    const { db, keys } = await setUp('text');
    const doctor = () => cli(db, ['doctor'], rulesFile);
    // The index check on its own: the custom tables lack them; create what it prints.
    const first = await doctor();
    expect(first.code).toBe(1);
    expect(first.stdout).not.toContain('note:');
    for (const ddl of first.stdout.split('\n').filter((l) => l.startsWith('create index')))
      await db.knex.raw(ddl);
    // Due a month before it was issued, unpaid; the same dates but paid in full are no concern.
    await db.knex('app.bills').insert([
      {
        no: "b'late",
        member: keys.inactive,
        issued: '2026-11-01',
        due: '2026-10-01',
        total: 500,
        settled: 0,
      },
      {
        no: 'b-paid',
        member: keys.inactive,
        issued: '2026-11-01',
        due: '2026-10-01',
        total: 500,
        settled: 500,
      },
    ]);
    const r = await doctor();
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout.split('\n').filter((l) => l.startsWith('note:'))).toEqual([
      "note: app.bills: 1 unpaid invoice is due before it was issued (due < issued; e.g. no b'late): each counts as overdue from its due date, so its customer can be paused the day it is billed; correct the dates if they are mistakes.",
    ]);
  });
});
