import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { ENGINE_RULES, writeRules } from './helpers/fixtures';

/**
 * Keep everything: suspend writes only the host columns the rules map (customers.status here).
 * Every other host column stays byte-identical through backfill, a sweep a month later and the
 * revert of both; the reverts put customers.status back too; consent is never touched.
 */

const AS_OF = '2026-11-23';
const rulesFile = writeRules(ENGINE_RULES);
let db: TestDatabase;

beforeAll(async () => {
  db = await createTestDatabase();
  const seeded = await runCli([
    'seed',
    '--customers',
    '3000',
    '--orgs',
    '4',
    '--seed',
    '11',
    '--as-of',
    AS_OF,
    '--reset',
    '--database-url',
    db.url,
    '--quiet',
  ]);
  expect(seeded.code).toBe(0);
}, 120_000);
afterAll(async () => db.drop());

const cli = (args: string[]) => runCli([...args, '--rules', rulesFile, '--database-url', db.url, '--quiet']);

/** md5 of every row of a host table, without the columns suspend may write. */
async function hostChecksum(table: string, without: string[] = []): Promise<string> {
  const cols = (await db
    .knex('information_schema.columns')
    .where({ table_schema: 'public', table_name: table })
    .whereNotIn('column_name', without)
    .orderBy('ordinal_position')
    .pluck('column_name')) as string[];
  const r = await db.knex.raw<{ rows: { sum: string }[] }>(
    `select md5(string_agg(row_text, E'\\n' order by row_text)) as sum
       from (select (${cols.map(() => '??::text').join(` || '|' || `)}) as row_text from ??) t`,
    [...cols, table],
  );
  return r.rows[0]?.sum ?? '';
}

async function snapshot() {
  return {
    customers: await hostChecksum('customers', ['status']),
    consent: await hostChecksum('customers', cols(['id', 'marketing_opt_out'])),
    organizations: await hostChecksum('organizations'),
    reservations: await hostChecksum('reservations'),
    invoices: await hostChecksum('invoices'),
    subscriptions: await hostChecksum('subscriptions'),
  };
}
// Only these columns: the consent checksum is over (id, marketing_opt_out).
function cols(keep: string[]): string[] {
  return ALL_CUSTOMER_COLUMNS.filter((c) => !keep.includes(c));
}
let ALL_CUSTOMER_COLUMNS: string[] = [];

test('backfill + sweep + revert of both, newest first: host data byte-identical, status restored, consent untouched', async () => {
  ALL_CUSTOMER_COLUMNS = (await db
    .knex('information_schema.columns')
    .where({ table_schema: 'public', table_name: 'customers' })
    .pluck('column_name')) as string[];
  const before = await snapshot();
  const status = () => hostChecksum('customers', cols(['id', 'status']));
  const statusBefore = await status();

  const backfill = await cli(['backfill', '--as-of', AS_OF, '--no-notify', '--format', 'json']);
  expect(backfill.code).toBe(0);
  const suspended = await db
    .knex('customers')
    .where({ status: 'suspended' })
    .count<{ count: string }[]>('* as count');
  expect(Number(suspended[0]?.count)).toBeGreaterThan(0);
  expect(await status()).not.toBe(statusBefore);
  expect(await snapshot()).toEqual(before);
  const statusAfterBackfill = await status();

  const sweep = await cli(['sweep', '--as-of', '2026-12-23', '--no-notify', '--format', 'json']);
  expect(sweep.code).toBe(0);
  expect(JSON.parse(sweep.stdout).counts.changes).toBeGreaterThan(0);
  expect(await snapshot()).toEqual(before);
  expect(await status()).not.toBe(statusAfterBackfill);

  const historyBefore = Number(
    (await db.knex('suspend.history').count<{ count: string }[]>('* as count'))[0]?.count,
  );
  const sweepRun = JSON.parse(sweep.stdout).runId as string;
  const revert = await cli(['revert', String(sweepRun)]);
  expect(revert.stderr).toBe('');
  expect(revert.code).toBe(0);
  expect(await snapshot()).toEqual(before);
  expect(await status()).toBe(statusAfterBackfill);
  // History is append-only: the revert added rows, nothing was deleted.
  const historyAfter = Number(
    (await db.knex('suspend.history').count<{ count: string }[]>('* as count'))[0]?.count,
  );
  expect(historyAfter).toBeGreaterThan(historyBefore);

  // Runs revert newest first: with the sweep undone, the backfill reverts completely.
  const backfillRun = JSON.parse(backfill.stdout).runId as string;
  const revertBackfill = await cli(['revert', String(backfillRun)]);
  expect(revertBackfill.stderr).toBe('');
  expect(revertBackfill.code).toBe(0);
  expect(await snapshot()).toEqual(before);
  expect(await status()).toBe(statusBefore);
  const left = await db
    .knex('suspend.account_states')
    .whereNotNull('stage')
    .count<{ count: string }[]>('* as count');
  expect(Number(left[0]?.count)).toBe(0);
}, 180_000);
