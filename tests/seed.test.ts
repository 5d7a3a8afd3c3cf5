import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { checksumTables } from './helpers/fixtures';

/** `suspend seed`: the reference data's shape, its determinism, and the refusal to overwrite. */

const AS_OF = '2026-11-23';
const N = 20_000;

function seed(db: TestDatabase, args: string[], env: Record<string, string> = {}) {
  return runCli(['seed', ...args, '--as-of', AS_OF, '--database-url', db.url], { timeoutMs: 300_000, env });
}

async function one<T>(db: TestDatabase, sql: string, bindings: unknown[] = []): Promise<T> {
  const r = await db.knex.raw<{ rows: T[] }>(sql, bindings as never);
  return r.rows[0] as T;
}

describe('20,000 customers with seed 7', () => {
  let db: TestDatabase;
  let stdout: string;
  beforeAll(async () => {
    // The template already holds the empty reference tables (global-setup seeds --customers 0).
    db = await createTestDatabase();
    const r = await seed(db, ['--customers', String(N), '--orgs', '5', '--seed', '7']);
    expect(r).toMatchObject({ code: 0 });
    stdout = r.stdout;
    expect(r.stderr).toMatch(
      /^seeded public: 20000 customers, 5 organizations, \d+ reservations, \d+ invoices, \d+ subscriptions in [\d.]+ s\n$/,
    );
  }, 300_000);
  afterAll(async () => db.drop());

  test('stdout summarizes what was inserted, and the tables hold exactly that', async () => {
    const counts = await one<Record<string, string>>(
      db,
      `select (select count(*) from organizations) as organizations, (select count(*) from customers) as customers,
              (select count(*) from reservations) as reservations, (select count(*) from invoices) as invoices,
              (select count(*) from subscriptions) as subscriptions`,
    );
    for (const [table, n] of Object.entries(counts)) {
      expect(stdout).toMatch(new RegExp(`^  ${table} +${n} rows$`, 'm'));
    }
    expect(Number(counts.customers)).toBe(N);
    expect(Number(counts.organizations)).toBe(5);
    // ~5 reservations and ~2 invoices per customer.
    expect(Number(counts.reservations) / N).toBeGreaterThan(4.5);
    expect(Number(counts.reservations) / N).toBeLessThan(5.5);
    expect(Number(counts.invoices) / N).toBeGreaterThan(1.8);
    expect(Number(counts.invoices) / N).toBeLessThan(2.2);
  });

  test('about 25% of customers have no reservation in the 12 months before as-of, some never booked', async () => {
    const r = await one<{ inactive: number; never: number }>(
      db,
      `select avg((last is null or last < ?::date - interval '12 months')::int)::float as inactive,
              avg((last is null)::int)::float as never
         from (select c.id, max(r.created_at) as last
                 from customers c left join reservations r on r.customer_id = c.id group by c.id) x`,
      [AS_OF],
    );
    expect(r.inactive).toBeGreaterThan(0.22);
    expect(r.inactive).toBeLessThan(0.28);
    expect(r.never).toBeGreaterThan(0.02);
    expect(r.never).toBeLessThan(r.inactive);
  });

  test('about 8% of invoices are unpaid, overdue 0 to 400 days, some partially paid, $1 to $500', async () => {
    const r = await one<{
      unpaid: number;
      partial: string;
      min_amount: string;
      max_amount: string;
      max_overdue: number;
      over_200: string;
      paid_after_as_of: string;
      bad_paid: string;
    }>(
      db,
      `select avg((paid_on is null)::int)::float as unpaid,
              count(*) filter (where paid_on is null and paid_cents > 0 and paid_cents < amount_cents) as partial,
              min(amount_cents) as min_amount, max(amount_cents) as max_amount,
              max(?::date - due_on) filter (where paid_on is null) as max_overdue,
              count(*) filter (where paid_on is null and ?::date - due_on > 200) as over_200,
              count(*) filter (where paid_on > ?::date) as paid_after_as_of,
              count(*) filter (where paid_on is not null and paid_cents <> amount_cents) as bad_paid
         from invoices`,
      [AS_OF, AS_OF, AS_OF],
    );
    expect(r.unpaid).toBeGreaterThan(0.06);
    expect(r.unpaid).toBeLessThan(0.1);
    expect(Number(r.partial)).toBeGreaterThan(0);
    expect(Number(r.min_amount)).toBeGreaterThanOrEqual(100);
    expect(Number(r.max_amount)).toBeLessThanOrEqual(50_000);
    expect(r.max_overdue).toBeLessThanOrEqual(400);
    expect(r.max_overdue).toBeGreaterThan(350);
    expect(Number(r.over_200)).toBeGreaterThan(0);
    expect(Number(r.paid_after_as_of)).toBe(0);
    expect(Number(r.bad_paid)).toBe(0);
  });

  test('broken and continuous past-due streaks are both present', async () => {
    const r = await one<{ broken: string; continuous: string }>(
      db,
      `select count(distinct x.customer_id) filter (where y.due_on > x.paid_on) as broken,
              count(distinct x.customer_id) filter (where y.due_on > x.due_on and y.due_on < x.paid_on) as continuous
         from invoices x
         join invoices y on y.customer_id = x.customer_id and y.paid_on is null and y.due_on < ?::date
        where x.paid_on > x.due_on`,
      [AS_OF],
    );
    expect(Number(r.broken)).toBeGreaterThan(N * 0.005);
    expect(Number(r.continuous)).toBeGreaterThan(N * 0.005);
  });

  test('accounts: ~60% active subscription, ~10% net terms, ~1% vip, ~5% opt-out, 7 days to 5 years old', async () => {
    const r = await one<{
      active_sub: number;
      net: number;
      vip: number;
      opt_out: number;
      youngest: number;
      oldest: number;
      terms: number[];
    }>(
      db,
      `select avg((exists (select 1 from subscriptions s where s.customer_id = c.id and s.status = 'active'))::int)::float
                as active_sub,
              avg((net_terms_days > 0)::int)::float as net, avg(vip::int)::float as vip,
              avg(marketing_opt_out::int)::float as opt_out,
              min(?::date - created_at::date) as youngest, max(?::date - created_at::date) as oldest,
              array(select distinct net_terms_days from customers order by 1) as terms
         from customers c`,
      [AS_OF, AS_OF],
    );
    expect(r.active_sub).toBeGreaterThan(0.57);
    expect(r.active_sub).toBeLessThan(0.63);
    expect(r.net).toBeGreaterThan(0.08);
    expect(r.net).toBeLessThan(0.12);
    expect(r.terms).toEqual([0, 15, 30, 45]);
    expect(r.vip).toBeGreaterThan(0.005);
    expect(r.vip).toBeLessThan(0.02);
    expect(r.opt_out).toBeGreaterThan(0.03);
    expect(r.opt_out).toBeLessThan(0.07);
    expect(r.youngest).toBeGreaterThanOrEqual(7);
    expect(r.oldest).toBeLessThanOrEqual(5 * 366);
    expect(r.oldest).toBeGreaterThan(4 * 365);
  });

  test('nothing happens before the account exists or after as-of; every org has contacts', async () => {
    const r = await one<{
      early: string;
      late: string;
      early_inv: string;
      orphans: string;
      no_contact: string;
    }>(
      db,
      `select (select count(*) from reservations r join customers c on c.id = r.customer_id
                where r.created_at < c.created_at) as early,
              (select count(*) from reservations where created_at >= ?::date) as late,
              (select count(*) from invoices i join customers c on c.id = i.customer_id
                where i.issued_on < c.created_at::date) as early_inv,
              (select count(*) from customers c where not exists (select 1 from organizations o where o.id = c.org_id))
                as orphans,
              (select count(*) from organizations where cardinality(notification_emails) not between 1 and 2
                  or notification_emails[1] <> 'ops@org-' || id || '.example') as no_contact`,
      [AS_OF],
    );
    expect(r).toEqual({ early: '0', late: '0', early_inv: '0', orphans: '0', no_contact: '0' });
  });

  test('the indexes the signal queries need exist and the tables are analyzed', async () => {
    const r = await db.knex.raw<{ rows: { indexname: string }[] }>(
      "select indexname from pg_indexes where schemaname = 'public' order by 1",
    );
    expect(r.rows.map((x) => x.indexname)).toEqual([
      'customers_org_id_idx',
      'customers_pkey',
      'invoices_customer_id_due_on_idx',
      'invoices_pkey',
      'invoices_unpaid_idx',
      'organizations_pkey',
      'reservations_customer_id_created_at_idx',
      'reservations_pkey',
      'subscriptions_active_idx',
      'subscriptions_pkey',
    ]);
    const analyzed = await one<{ n: string }>(
      db,
      `select count(*) as n from pg_stat_user_tables
        where schemaname = 'public' and last_vacuum is not null and last_analyze is not null`,
    );
    expect(Number(analyzed.n)).toBe(5);
  });

  test('without --reset it refuses with exit 2 and one sentence, and changes nothing', async () => {
    const before = await checksumTables(db.knex, ['public']);
    const r = await seed(db, ['--customers', '100', '--seed', '8']);
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/already hold rows .*--reset/);
    expect(await checksumTables(db.knex, ['public'])).toEqual(before);
  });
});

describe('determinism', () => {
  let a: TestDatabase;
  let b: TestDatabase;
  beforeAll(async () => {
    [a, b] = await Promise.all([createTestDatabase(), createTestDatabase({ template: false })]);
  });
  afterAll(async () => Promise.all([a.drop(), b.drop()]));

  test('the same seed and as-of give the same rows; another seed gives others; --reset refills', async () => {
    const args = ['--customers', '3000', '--orgs', '4', '--seed', '11', '--quiet'];
    // a: into the template's empty tables; b: a bare database, the tables are created.
    const [ra, rb] = await Promise.all([seed(a, args), seed(b, args)]);
    expect([ra.code, rb.code]).toEqual([0, 0]);
    expect(rb.stdout).toMatch(
      /created tables: organizations, customers, reservations, invoices, subscriptions/,
    );
    const sumA = await checksumTables(a.knex, ['public']);
    expect(Object.keys(sumA)).toHaveLength(5);
    expect(await checksumTables(b.knex, ['public'])).toEqual(sumA);

    const other = await seed(b, ['--customers', '3000', '--orgs', '4', '--seed', '12', '--reset', '--quiet']);
    expect(other.code).toBe(0);
    const sumOther = await checksumTables(b.knex, ['public']);
    for (const table of [
      'public.customers',
      'public.reservations',
      'public.invoices',
      'public.subscriptions',
    ]) {
      expect(sumOther[table]).not.toEqual(sumA[table]);
    }

    const again = await seed(b, [...args, '--reset']);
    expect(again.code).toBe(0);
    expect(again.stdout).toMatch(/after truncating the old rows/);
    expect(await checksumTables(b.knex, ['public'])).toEqual(sumA);
  }, 300_000);
});

describe('empty tables, another schema, and a table that is not ours', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await createTestDatabase({ template: false });
  });
  afterAll(async () => db.drop());

  test('--customers 0 creates the empty tables with their indexes, and can run again', async () => {
    for (let run = 0; run < 2; run++) {
      const r = await seed(db, ['--customers', '0', '--quiet']);
      expect(r).toMatchObject({ code: 0, stderr: '' });
    }
    const r = await one<{ tables: string; rows: string; indexes: string }>(
      db,
      `select (select count(*) from information_schema.tables where table_schema = 'public') as tables,
              (select (select count(*) from customers) + (select count(*) from organizations)
                    + (select count(*) from invoices)) as rows,
              (select count(*) from pg_indexes where schemaname = 'public') as indexes`,
    );
    expect(r).toEqual({ tables: '5', rows: '0', indexes: '10' });
  });

  test('--schema puts the tables elsewhere and leaves public alone', async () => {
    const before = await checksumTables(db.knex, ['public']);
    const r = await seed(db, ['--customers', '500', '--schema', 'demo', '--quiet']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^schema demo, seed 1, as of 2026-11-23$/m);
    const n = await one<{ n: string }>(db, 'select count(*) as n from demo.customers');
    expect(n.n).toBe('500');
    expect(await checksumTables(db.knex, ['public'])).toEqual(before);
  });

  test('a --schema the tables cannot go in, and more --orgs than --customers, are one sentence each before anything is written; exit 2', async () => {
    const before = await checksumTables(db.knex, ['public']);
    const cases: [string[], string][] = [
      [
        ['--customers', '10', '--schema', 'pg_catalog'],
        '--schema "pg_catalog": names that begin with pg_ are reserved for the system schemas of Postgres; name a schema of your own for the reference tables (default public).',
      ],
      [
        ['--customers', '10', '--schema', 'information_schema'],
        '--schema "information_schema": it is the system schema of Postgres that describes the database; name a schema of your own for the reference tables (default public).',
      ],
      [
        ['--customers', '10', '--schema', 'a.b'],
        '--schema "a.b": a dot would be read as a database prefix; name a schema of your own for the reference tables (default public).',
      ],
      [
        ['--customers', '10', '--orgs', '100000000'],
        '--orgs 100000000: more organizations than --customers 10; give at most 10.',
      ],
    ];
    for (const [args, message] of cases) {
      const r = await seed(db, args);
      expect(r).toEqual({ code: 2, stdout: '', stderr: `error: ${message}\n` });
    }
    const schemas = await db.knex.raw<{ rows: unknown[] }>(
      "select 1 from pg_namespace where nspname in ('a.b', 'a') or (nspname = 'information_schema' and exists (select 1 from pg_class where relname = 'customers' and relnamespace = pg_namespace.oid))",
    );
    expect(schemas.rows).toEqual([]);
    expect(await checksumTables(db.knex, ['public'])).toEqual(before);
  });

  test('a customers table of the host with other columns is refused, even with --reset', async () => {
    await db.knex.raw('create schema host; create table host.customers (id int primary key, label text)');
    await db.knex.raw("insert into host.customers values (1, 'keep me')");
    const r = await seed(db, ['--customers', '10', '--schema', 'host', '--reset']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/host\.customers exists but is not the reference table/);
    const rows = await db.knex.raw<{ rows: unknown[] }>('select * from host.customers');
    expect(rows.rows).toEqual([{ id: 1, label: 'keep me' }]);
    const tables = await db.knex.raw<{ rows: unknown[] }>(
      "select 1 from information_schema.tables where table_schema = 'host'",
    );
    expect(tables.rows).toHaveLength(1);
  });
});

describe('loading in two sessions', () => {
  let db: TestDatabase;
  beforeEach(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => db.drop());

  test('when one session fails, the other rolls back too: no rows anywhere, indexes kept', async () => {
    // Only the invoices insert (second session) fails; reservations (first session) would succeed.
    await db.knex.raw('alter table invoices add constraint reject_all check (amount_cents < 0)');
    const r = await seed(db, ['--customers', '2000', '--quiet']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^error: Loading organizations, customers, invoices, subscriptions into schema "public" failed: .*"reject_all"; nothing was loaded\.\n$/,
    );
    const rows = await one<Record<string, string>>(
      db,
      `select (select count(*) from organizations) as o, (select count(*) from customers) as c,
              (select count(*) from reservations) as r, (select count(*) from invoices) as i,
              (select count(*) from subscriptions) as s,
              (select count(*) from pg_indexes where schemaname = 'public') as indexes`,
    );
    expect(rows).toEqual({ o: '0', c: '0', r: '0', i: '0', s: '0', indexes: '10' });
  });

  test('the session guarding the load is not ended while it idles (idle_in_transaction_session_timeout)', async () => {
    // Every session of the seed: a transaction idle for 100 ms is ended (PGOPTIONS, read by
    // node-postgres). The guard's transaction idles for the whole load, and a load session done
    // first idles until the others are done: here the invoices' session ends 300 ms after the
    // other (statement-level trigger), so the other idles at least that long.
    await db.knex.raw(`create function slow_load() returns trigger language plpgsql as $$
      begin perform pg_sleep(0.3); return null; end $$;
      create trigger slow_load after insert on invoices for each statement execute function slow_load()`);
    const r = await seed(db, ['--customers', String(N), '--quiet'], {
      PGOPTIONS: '-c idle_in_transaction_session_timeout=100',
    }).finally(() => db.knex.raw('drop trigger slow_load on invoices; drop function slow_load()'));
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const n = await one<{ n: string }>(db, 'select count(*) as n from customers');
    expect(n.n).toBe(String(N));
  });

  test('two seeds at once: one fills the tables, the other waits, then refuses', async () => {
    const args = ['--customers', '2000', '--quiet'];
    const results = await Promise.all([seed(db, args), seed(db, args)]);
    expect(results.map((r) => r.code).sort()).toEqual([0, 2]);
    expect(results.find((r) => r.code === 2)?.stderr).toMatch(/already hold rows/);
    const n = await one<{ n: string }>(db, 'select count(*) as n from customers');
    expect(n.n).toBe('2000');
  });
});
