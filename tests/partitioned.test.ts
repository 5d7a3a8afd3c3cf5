import type { TestDatabase } from './helpers/database';
import { AS_OF, cli as engineCli, outcome, seededDatabase } from './helpers/reliability';

/**
 * README "Beyond one machine": suspend over host tables hash-partitioned by customer id. The same
 * seeded data in ordinary tables and in partitioned ones must give the same runs: the same states,
 * history, outbox events and customers.status, after a backfill (one worker or two), a payment and
 * a sweep a month later. The booking guard and `suspend doctor` work on the partitioned tables.
 */

const CUSTOMERS = 2000;
const SEED = 3;
const PARTITIONS = 4;
/** A month after the backfill, with a payment in between. */
const LATER = '2026-12-23';

/**
 * Each customer table, partitioned by hash of its customer column, keyed as a DBA would key it:
 * Postgres wants the partition key in every primary key and unique constraint, so the child tables'
 * keys are (id, customer_id); customers keeps its own (id).
 */
const PARTITIONED: { table: string; by: string; constraints: string }[] = [
  {
    table: 'customers',
    by: 'id',
    constraints: 'primary key (id), foreign key (org_id) references organizations (id)',
  },
  { table: 'reservations', by: 'customer_id', constraints: 'primary key (id, customer_id)' },
  { table: 'invoices', by: 'customer_id', constraints: 'primary key (id, customer_id)' },
  { table: 'subscriptions', by: 'customer_id', constraints: 'primary key (id, customer_id)' },
];

/**
 * Replaces the template's empty reference tables with partitioned ones of the same columns,
 * defaults and checks, so that `suspend seed` fills them (its indexes go on the parents).
 */
async function partitionCustomerTables(db: TestDatabase): Promise<void> {
  await db.knex.raw('create schema plain');
  for (const { table, by, constraints } of PARTITIONED) {
    await db.knex.raw('alter table ?? set schema plain', [table]);
    await db.knex.raw(
      `create table ?? (like ?? including defaults including constraints, ${constraints}) partition by hash (??)`,
      [table, `plain.${table}`, by],
    );
    for (let i = 0; i < PARTITIONS; i++) {
      await db.knex.raw(
        `create table ?? partition of ?? for values with (modulus ${PARTITIONS}, remainder ${i})`,
        [`${table}_p${i}`, table],
      );
    }
  }
  await db.knex.raw('drop schema plain cascade');
}

const ordinaryDatabase = () => seededDatabase(CUSTOMERS, SEED);
const partitionedDatabase = () => seededDatabase(CUSTOMERS, SEED, partitionCustomerTables);

interface ReportJson {
  status: string;
  counts: { scanned: number; changes: number; accountsChanged: number };
}

/** Pages of 250 (8 pages), the JSON report, no delivery (the outbox events stay for the comparison). */
const RUN_FLAGS = ['--batch-size', '250', '--format', 'json', '--no-notify', '--quiet'];

/** A run as a user starts it; its report. */
async function run(db: TestDatabase, args: string[]): Promise<ReportJson> {
  const r = await engineCli(db, [...args, ...RUN_FLAGS]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const report = JSON.parse(r.stdout) as ReportJson;
  expect(report.status).toBe('succeeded');
  return report;
}

/** Every row of the host tables, in key order, as one md5 per table with its row count. */
async function hostRows(db: TestDatabase): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const table of ['organizations', ...PARTITIONED.map((p) => p.table)]) {
    const r = await db.knex.raw<{ rows: { n: string; sum: string }[] }>(
      "select count(*) as n, md5(string_agg(x::text, E'\\n' order by x.id)) as sum from ?? as x",
      [table],
    );
    out[table] = `${r.rows[0]?.n}:${r.rows[0]?.sum}`;
  }
  return out;
}

describe('customer tables hash-partitioned by customer id', () => {
  let ordinary: TestDatabase;
  let partitioned: TestDatabase;
  /** A fresh partitioned copy for `backfill --workers 2`. */
  let partitionedForWorkers: TestDatabase;
  /** What one worker's backfill wrote to the ordinary tables. */
  let backfilled: Awaited<ReturnType<typeof outcome>>;

  const made: TestDatabase[] = [];
  beforeAll(async () => {
    const settled = await Promise.allSettled([
      ordinaryDatabase(),
      partitionedDatabase(),
      partitionedDatabase(),
    ]);
    // The ones that were made are dropped after the tests even when another failed.
    made.push(...settled.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : [])));
    const failed = settled.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    [ordinary, partitioned, partitionedForWorkers] = made as [TestDatabase, TestDatabase, TestDatabase];
  });
  afterAll(async () => Promise.all(made.map((db) => db.drop())));

  test('suspend seed fills the partitions with exactly the rows of the ordinary tables', async () => {
    // Every table is partitioned, and every partition holds its share of the rows.
    for (const { table } of PARTITIONED) {
      const r = await partitioned.knex.raw<{ rows: { partition: string; n: string }[] }>(
        `select c.relname as partition, (select count(*) from ?? x where x.tableoid = c.oid) as n
           from pg_inherits i join pg_class c on c.oid = i.inhrelid
          where i.inhparent = ?::regclass order by 1`,
        [table, table],
      );
      expect(r.rows.map((x) => x.partition)).toEqual(
        Array.from({ length: PARTITIONS }, (_, i) => `${table}_p${i}`),
      );
      for (const x of r.rows) expect(Number(x.n)).toBeGreaterThan(0);
    }
    const rows = await hostRows(ordinary);
    expect(Number(rows.customers?.split(':')[0])).toBe(CUSTOMERS);
    expect(await hostRows(partitioned)).toEqual(rows);
  });

  test('backfill writes the same states, history, outbox and customers.status as on ordinary tables', async () => {
    const a = await run(ordinary, ['backfill', '--as-of', AS_OF]);
    backfilled = await outcome(ordinary);
    expect(a.counts.changes).toBeGreaterThan(500);
    expect(backfilled.status.length).toBeGreaterThan(300);
    const b = await run(partitioned, ['backfill', '--as-of', AS_OF]);
    expect(b.counts).toEqual(a.counts);
    expect(await outcome(partitioned)).toEqual(backfilled);
  });

  test('backfill --workers 2 on a fresh partitioned copy writes what one worker wrote on ordinary tables', async () => {
    expect(backfilled).toBeDefined();
    await run(partitionedForWorkers, ['backfill', '--as-of', AS_OF, '--workers', '2']);
    expect(await outcome(partitionedForWorkers)).toEqual(backfilled);
  });

  test('a payment clears the account and a sweep a month later matches the ordinary tables', async () => {
    // Ten accounts suspended for delinquency only (inactivity suspends for good; it also sets status).
    const paid = (
      await ordinary.knex.raw<{ rows: { key: string }[] }>(
        `select d.customer_key as key from suspend.account_states d
          where d.policy = 'delinquency' and d.stage = 'suspended'
            and not exists (select 1 from suspend.account_states o
                             where o.customer_key = d.customer_key and o.policy = 'inactivity' and o.stage is not null)
          order by d.customer_key::bigint limit 10`,
      )
    ).rows.map((r) => r.key);
    expect(paid).toHaveLength(10);
    for (const db of [ordinary, partitioned]) {
      expect(await statusOf(db, paid)).toEqual(paid.map(() => 'suspended'));
      await db
        .knex('invoices')
        .whereIn('customer_id', paid)
        .whereNull('paid_on')
        .update({ paid_cents: db.knex.ref('amount_cents'), paid_on: '2026-12-01' });
    }
    const [a, b] = [
      await run(ordinary, ['sweep', '--as-of', LATER]),
      await run(partitioned, ['sweep', '--as-of', LATER]),
    ];
    expect(b.counts).toEqual(a.counts);
    expect(a.counts.changes).toBeGreaterThan(paid.length);
    expect(await outcome(partitioned)).toEqual(await outcome(ordinary));
    // On the partitioned tables as on the others: cleared by `reinstate: auto`, status given back.
    const cleared = await partitioned
      .knex('suspend.history')
      .where({ policy: 'delinquency', kind: 'clear', from_stage: 'suspended' })
      .whereIn('customer_key', paid)
      .pluck('customer_key');
    expect(cleared.sort()).toEqual([...paid].sort());
    expect(await statusOf(partitioned, paid)).toEqual(paid.map(() => 'active'));
  });

  test('the booking guard on the partitioned reservations rejects a suspended customer, listed once', async () => {
    const guard = async (args: string[]) => {
      const r = await engineCli(partitioned, ['guard', ...args]);
      expect(r).toMatchObject({ code: 0, stderr: '' });
      return r.stdout.trim().split('\n');
    };
    expect(await guard(['install', '--table', 'reservations', '--customer-column', 'customer_id'])).toEqual([
      'Booking guard installed on "public"."reservations" (customer column "customer_id").',
    ]);
    // The trigger Postgres clones onto each partition is the same guard, not four more.
    expect(await guard(['status'])).toEqual([
      'guarded: "public"."reservations" (customer column "customer_id")',
    ]);
    const [key] = (await partitioned
      .knex('suspend.account_states')
      .where({ policy: 'delinquency', stage: 'suspended' })
      .orderBy('customer_key')
      .limit(1)
      .pluck('customer_key')) as string[];
    const booking = partitioned.knex('reservations').insert({ id: 1e9, customer_id: key, created_at: LATER });
    await expect(booking).rejects.toMatchObject({ code: 'SP001' });
    expect(await guard(['remove'])).toEqual([
      'Booking guard removed from "public"."reservations" (customer column "customer_id").',
    ]);
  });

  test('doctor finds the indexes on the partitioned parents, and prints DDL Postgres runs there', async () => {
    const doctor = async (code = 0) => {
      const r = await engineCli(partitioned, ['doctor']);
      expect(r).toMatchObject({ code, stderr: '' });
      return r.stdout;
    };
    expect(await doctor()).toContain('All indexes the signal queries need are present.');
    await partitioned.knex.raw('drop index reservations_customer_id_created_at_idx');
    // Exit 1 while one is missing: a deploy check can fail on it.
    const out = await doctor(1);
    expect(out).toContain('MISSING  reservations (customer_id, created_at)');
    // `create index concurrently` is refused on a partitioned table: the DDL is a plain one.
    const ddl = out.split('\n').filter((line) => line.startsWith('create index'));
    expect(ddl).toEqual(['create index on "reservations" ("customer_id", "created_at");']);
    for (const statement of ddl) await partitioned.knex.raw(statement);
    expect(await doctor()).toContain('All indexes the signal queries need are present.');
  });
});

/** customers.status of these accounts, in their order. */
async function statusOf(db: TestDatabase, keys: string[]): Promise<string[]> {
  const rows = (await db.knex('customers').whereIn('id', keys).select('id', 'status')) as {
    id: string;
    status: string;
  }[];
  return keys.map((k) => rows.find((r) => String(r.id) === k)?.status ?? 'missing');
}
