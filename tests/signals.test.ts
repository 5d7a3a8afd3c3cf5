import fc from 'fast-check';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import knexFactory from 'knex';
import { keysAtRanksQuery, pageEndsQuery, readAccounts, readPage, stateTables } from '../src/source/signals';
import { DEFAULT_MAPPING } from '../src/rules/defaults';
import { addDays, daysBetween } from '../src/rules/dates';
import { runCli } from './helpers/cli';
import { writeRules } from './helpers/fixtures';

/**
 * The signal SQL against a day-by-day oracle: the past-due streak, balances and oldest overdue
 * invoice, on random invoices inserted in random order.
 */

const AS_OF = '2026-11-23';

interface Inv {
  dueOffset: number; // due_on = as-of + offset (negative: in the past)
  paidAfter: number | null; // paid_on = due_on + paidAfter; null: unpaid
  amount: number;
  partial: number; // paid_cents when unpaid
}

function dueOn(i: Inv) {
  return addDays(AS_OF, i.dueOffset);
}
function paidOn(i: Inv) {
  return i.paidAfter === null ? null : addDays(dueOn(i), i.paidAfter);
}

/** Whether it ever owed anything: not a credit note, a zero invoice or one paid in full without paid_on. */
function owes(i: Inv): boolean {
  return paidOn(i) === null ? i.amount - i.partial > 0 : i.amount > 0;
}

/** Overdue on day d: it owes something, after the effective due day and before the day it was paid in full. */
function overdueOn(i: Inv, net: number, day: string): boolean {
  const dueEff = addDays(dueOn(i), net);
  const paid = paidOn(i);
  const paidByAsOf = paid !== null && paid <= AS_OF ? paid : null;
  return owes(i) && day > dueEff && (paidByAsOf === null || day < paidByAsOf);
}

function oracle(invoices: Inv[], net: number) {
  const covered = (day: string) => invoices.some((i) => overdueOn(i, net, day));
  let since: string | null = null;
  if (covered(AS_OF)) {
    let first = AS_OF;
    while (covered(addDays(first, -1))) first = addDays(first, -1);
    since = addDays(first, -1); // the due day the streak started after
  }
  const unpaidAmount = (i: Inv) => (paidOn(i) === null ? i.amount - i.partial : i.amount);
  const unpaid = invoices.filter((i) => {
    const p = paidOn(i);
    return (p === null || p > AS_OF) && unpaidAmount(i) > 0;
  });
  const overdue = unpaid.filter((i) => addDays(dueOn(i), net) < AS_OF);
  const oldest = overdue.length
    ? Math.max(...overdue.map((i) => daysBetween(addDays(dueOn(i), net), AS_OF)))
    : null;
  return {
    pastDueSince: since,
    openBalance: unpaid.reduce((s, i) => s + unpaidAmount(i), 0),
    overdueBalance: overdue.reduce((s, i) => s + unpaidAmount(i), 0),
    unpaidInvoiceCount: unpaid.length,
    oldestOverdueDays: oldest,
  };
}

const invoiceArb = fc
  .record({
    dueOffset: fc.integer({ min: -120, max: 20 }),
    paidAfter: fc.option(fc.integer({ min: -10, max: 150 }), { nil: null }),
    // Some owe nothing: a credit note, a zero invoice, one paid in full but never marked paid_on (-1).
    amount: fc.oneof(
      { arbitrary: fc.integer({ min: 100, max: 50_000 }), weight: 6 },
      { arbitrary: fc.constantFrom(0, -500), weight: 1 },
    ),
    partial: fc.oneof(
      { arbitrary: fc.integer({ min: 0, max: 99 }), weight: 6 },
      { arbitrary: fc.constant(-1), weight: 1 },
    ),
  })
  .map((i) => ({ ...i, partial: i.paidAfter !== null ? 0 : i.partial === -1 ? i.amount : i.partial }));

const caseArb = fc.record({
  net: fc.constantFrom(0, 0, 15, 30),
  invoices: fc.array(invoiceArb, { maxLength: 6 }),
});

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase();
  await db.knex('organizations').insert({ id: 1, name: 'Org', timezone: 'UTC', notification_emails: [] });
});
afterAll(async () => db.drop());

test('the past-due streak, balances and oldest overdue match the day-by-day definition, whatever the invoice order', async () => {
  let run = 0;
  await fc.assert(
    fc.asyncProperty(
      fc.array(caseArb, { minLength: 1, maxLength: 15 }),
      fc.integer(),
      async (cases, shuffleSeed) => {
        run += 1;
        const base = run * 100;
        await db.knex.raw('truncate invoices, customers cascade');
        await db.knex('customers').insert(
          cases.map((c, n) => ({
            id: base + n,
            org_id: 1,
            email: `c${n}@example.com`,
            name: `C ${n}`,
            created_at: '2024-01-01',
            net_terms_days: c.net,
          })),
        );
        const rows = cases.flatMap((c, n) =>
          c.invoices.map((i) => ({
            customer_id: base + n,
            issued_on: addDays(dueOn(i), -30),
            due_on: dueOn(i),
            amount_cents: i.amount,
            paid_cents: i.paidAfter === null ? i.partial : i.amount,
            paid_on: paidOn(i),
          })),
        );
        // Insert in a shuffled order: the result must not depend on it.
        const shuffled = rows
          .map((r, n) => ({ r, k: Math.imul(n + 1, shuffleSeed | 1) >>> 0 }))
          .sort((a, b) => a.k - b.k)
          .map(({ r }, n) => ({ id: base * 10 + n, ...r }));
        if (shuffled.length > 0) await db.knex('invoices').insert(shuffled);
        const { signals } = await readAccounts(db.knex, DEFAULT_MAPPING, AS_OF, {
          from: String(base),
          to: String(base + cases.length - 1),
        });
        expect(signals).toHaveLength(cases.length);
        for (const [n, c] of cases.entries()) {
          const got = signals[n]!;
          const want = oracle(c.invoices, c.net);
          expect({
            pastDueSince: got.pastDueSince,
            openBalance: got.openBalance,
            overdueBalance: got.overdueBalance,
            unpaidInvoiceCount: got.unpaidInvoiceCount,
            oldestOverdueDays: got.oldestOverdueDays,
          }).toEqual(want);
        }
      },
    ),
    { numRuns: 60 },
  );
});

test('a full payment ends the streak, a partial payment does not, and net terms shift the due day', async () => {
  await db.knex.raw('truncate invoices, customers cascade');
  await db.knex('customers').insert([
    { id: 1, org_id: 1, created_at: '2024-01-01', net_terms_days: 0 },
    { id: 2, org_id: 1, created_at: '2024-01-01', net_terms_days: 0 },
    { id: 3, org_id: 1, created_at: '2024-01-01', net_terms_days: 30 },
    { id: 4, org_id: 1, created_at: '2024-01-01', net_terms_days: 0 },
  ]);
  await db.knex('invoices').insert([
    // 1: A overdue from Sep 2, paid in full Oct 1 (so Oct 1 is not past due); B, due Oct 1, overdue
    //    from Oct 2: a new streak, past due since B's due day.
    {
      id: 10,
      customer_id: 1,
      issued_on: '2026-08-01',
      due_on: '2026-09-01',
      amount_cents: 1000,
      paid_cents: 1000,
      paid_on: '2026-10-01',
    },
    {
      id: 11,
      customer_id: 1,
      issued_on: '2026-09-01',
      due_on: '2026-10-01',
      amount_cents: 2000,
      paid_cents: 0,
      paid_on: null,
    },
    // 2: one invoice due Sep 1, partially paid: the streak stays.
    {
      id: 20,
      customer_id: 2,
      issued_on: '2026-08-01',
      due_on: '2026-09-01',
      amount_cents: 5000,
      paid_cents: 4000,
      paid_on: null,
    },
    // 4: nothing it owes: a credit note, a zero invoice, and one paid in full that nobody marked
    //    paid_on. None is overdue, so no streak starts (it once did: "$0.00 is 59 days past due").
    ...[
      { id: 40, amount_cents: -5000, paid_cents: 0 },
      { id: 41, amount_cents: 0, paid_cents: 0 },
      { id: 42, amount_cents: 1000, paid_cents: 1000 },
      { id: 43, amount_cents: 1000, paid_cents: 5000 },
    ].map((i) => ({ ...i, customer_id: 4, issued_on: '2026-08-01', due_on: '2026-09-01', paid_on: null })),
    // 3: due Oct 1 with 30 days of net terms: effectively due Oct 31, overdue from Nov 1.
    {
      id: 30,
      customer_id: 3,
      issued_on: '2026-09-01',
      due_on: '2026-10-01',
      amount_cents: 700,
      paid_cents: 0,
      paid_on: null,
    },
  ]);
  const { signals } = await readAccounts(db.knex, DEFAULT_MAPPING, AS_OF, { from: '1', to: '4' });
  const [one, two, three, four] = signals;
  expect(four).toMatchObject({ pastDueSince: null, overdueBalance: 0, unpaidInvoiceCount: 0 });
  expect(one).toMatchObject({ pastDueSince: '2026-10-01', overdueBalance: 2000, oldestOverdueDays: 53 });
  expect(two).toMatchObject({ pastDueSince: '2026-09-01', overdueBalance: 1000, oldestOverdueDays: 83 });
  expect(three).toMatchObject({
    pastDueSince: '2026-10-31',
    overdueBalance: 700,
    oldestOverdueDays: 23,
    netTermsDays: 30,
  });
});

test('a page read is a prepared statement; when the server does not know it (a transaction pooler), it runs unnamed', async () => {
  // One connection, so the statement the server drops is the one the client prepared.
  const one = knexFactory({ client: 'pg', connection: db.url, pool: { min: 1, max: 1 } });
  const named = async () =>
    (
      await one.raw<{ rows: { n: number }[] }>(
        "select count(*)::int as n from pg_prepared_statements where name like 'suspend\\_%'",
      )
    ).rows[0]?.n;
  try {
    const scope = {
      after: null,
      until: null,
      limit: 10,
      orgs: null,
      shard: null,
      state: null,
      candidates: null,
    };
    const first = await readPage(one, DEFAULT_MAPPING, AS_OF, scope);
    expect(first.total).toBeGreaterThan(0);
    expect(await named()).toBe(1);
    // What such a pooler does: the next transaction lands on a session that never saw the statement.
    await one.raw('deallocate all');
    expect(await readPage(one, DEFAULT_MAPPING, AS_OF, scope)).toEqual(first);
    expect(await readPage(one, DEFAULT_MAPPING, AS_OF, scope)).toEqual(first);
    expect(await named()).toBe(0);
  } finally {
    await one.destroy();
  }
});

test('page ends found one from the other are the keys at every page size-th rank, with bounds, organizations and shards', async () => {
  await db.knex.raw('truncate invoices, customers cascade');
  await db
    .knex('organizations')
    .insert({ id: 2, name: 'Other', timezone: 'UTC', notification_emails: [] })
    .onConflict('id')
    .ignore();
  // Keys with gaps, two organizations interleaved.
  const ids = Array.from({ length: 230 }, (_, n) => 1000 + n * 7 + (n % 5));
  await db.knex('customers').insert(
    ids.map((id, n) => ({
      id,
      org_id: n % 3 === 0 ? 2 : 1,
      email: `e${id}@example.com`,
      name: `E ${id}`,
      created_at: '2024-01-01',
    })),
  );
  const filters = [
    { orgs: null, shard: null },
    { orgs: ['2'], shard: null },
    { orgs: null, shard: { index: 1, count: 3 } },
    { orgs: ['1'], shard: { index: 0, count: 2 } },
  ];
  const ranges = [
    { after: null, until: null },
    { after: String(ids[40]), until: null },
    { after: String(ids[3]! + 1), until: String(ids[180]) },
  ];
  let compared = 0;
  for (const filter of filters)
    for (const range of ranges)
      for (const [size, count] of [
        [1, 5],
        [7, 8],
        [20, 3],
        [60, 8],
      ] as const) {
        const ranks = Array.from({ length: count }, (_, i) => (i + 1) * size - 1);
        const want = (
          (await keysAtRanksQuery(db.knex, DEFAULT_MAPPING, filter, ranks, range)) as { key: string }[]
        ).map((r) => r.key);
        const got = (
          (await pageEndsQuery(db.knex, DEFAULT_MAPPING, filter, size, count, range)) as {
            rows: { key: string }[];
          }
        ).rows.map((r) => r.key);
        expect({ filter, range, size, got }).toEqual({ filter, range, size, got: want });
        compared += want.length;
      }
  // Full and partial runs of ends were both compared, not only empty ones.
  expect(compared).toBeGreaterThan(150);
});

test('a page reads the same stored states by key number as by key probes: negative keys, page ends, keys that are not numbers', async () => {
  await db.knex.raw('truncate invoices, customers cascade');
  await db.knex('suspend.account_states').del();
  // Negative keys, zero and gaps.
  const ids = [
    ...Array.from({ length: 25 }, (_, n) => -49 + 2 * n),
    0,
    ...Array.from({ length: 100 }, (_, n) => 1 + 3 * n),
  ];
  await db.knex('customers').insert(
    ids.map((id) => ({
      id,
      org_id: 1,
      email: `e${id}@example.com`,
      name: `E ${id}`,
      created_at: '2024-01-01',
    })),
  );
  const state = (key: string, policy: string, stage: string | null) => ({
    customer_key: key,
    policy,
    stage,
    stage_index: stage ? 0 : -1,
  });
  await db.knex('suspend.account_states').insert([
    ...ids.filter((id) => Math.abs(id) % 2 === 1).map((id) => state(String(id), 'inactivity', 'suspended')),
    ...ids.filter((id) => id % 5 === 0).map((id) => state(String(id), 'delinquency', null)),
    // Rows of no account of these pages: a key that is no number, and 7 written as 007.
    state('abc', 'inactivity', 'suspended'),
    state('007', 'inactivity', 'suspended'),
  ]);
  const tables = await stateTables(db.knex, 'suspend', DEFAULT_MAPPING);
  expect(tables.keyNumbers).toBe(true);
  const statesOf = async (
    scope: { after: string | null; until: string | null; limit: number | null },
    keyNumbers: boolean,
  ) => {
    const page = await readPage(db.knex, DEFAULT_MAPPING, AS_OF, {
      ...scope,
      orgs: null,
      shard: null,
      state: { ...tables, keyNumbers },
      candidates: null,
    });
    return { last: page.last, states: [...page.state.states].map(([k, m]) => [k, Object.fromEntries(m)]) };
  };
  let compared = 0;
  for (const limit of [1, 7, 50]) {
    let after: string | null = null;
    for (;;) {
      const byNumber = await statesOf({ after, until: null, limit }, true);
      expect(byNumber).toEqual(await statesOf({ after, until: null, limit }, false));
      compared += byNumber.states.length;
      if (byNumber.last === null) break;
      after = String(byNumber.last);
    }
  }
  // A page between known ends (no limit).
  const between = { after: '-20', until: '40', limit: null };
  expect(await statesOf(between, true)).toEqual(await statesOf(between, false));
  expect(compared).toBeGreaterThan(150);
});

test('stored states come back as the evaluator reads them, their days as YYYY-MM-DD whatever the DateStyle, an infinite one as none', async () => {
  // A session that writes dates day first, as a DBA may set the server.
  const dmy = knexFactory({
    client: 'pg',
    connection: db.url,
    pool: {
      min: 1,
      max: 1,
      afterCreate: (
        conn: { query: (sql: string, cb: (err: Error | null) => void) => void },
        done: (err: Error | null, conn: unknown) => void,
      ) => conn.query("set datestyle = 'SQL, DMY'", (err) => done(err, conn)),
    },
  });
  try {
    await db.knex('customers').insert({ id: 9001, org_id: 1, created_at: '2020-01-01' });
    await db.knex('suspend.account_states').insert([
      {
        customer_key: '9001',
        policy: 'inactivity',
        stage: 'suspended',
        stage_index: 0,
        version: 3,
        host_before: { status: 'active' },
        entered_on: '2026-09-01',
        reinstated_on: '2026-10-05',
      },
      { customer_key: '9001', policy: 'delinquency', stage: null, stage_index: -1, version: 2 },
      // An infinite day (only a hand edit makes one) reads as none.
      { customer_key: '9001', policy: 'overdue_pause', stage: null, version: 1, reinstated_on: 'infinity' },
    ]);
    const shown = await dmy.raw<{ rows: { d: string }[] }>("select '2026-09-01'::date::text as d");
    expect(shown.rows[0]?.d).toBe('01/09/2026');
    // As a run finds them: the page reads states as a range of key numbers, the re-check by keys.
    const state = await stateTables(dmy, 'suspend', DEFAULT_MAPPING);
    expect(state).toMatchObject({ states: true, keyNumbers: true });
    const expected = new Map([
      [
        'inactivity',
        {
          stage: 'suspended',
          stageIndex: 0,
          version: 3,
          hostBefore: { status: 'active' },
          enteredOn: '2026-09-01',
          reinstatedOn: '2026-10-05',
        },
      ],
      [
        'delinquency',
        { stage: null, stageIndex: -1, version: 2, hostBefore: null, enteredOn: null, reinstatedOn: null },
      ],
      [
        'overdue_pause',
        { stage: null, stageIndex: -1, version: 1, hostBefore: null, enteredOn: null, reinstatedOn: null },
      ],
    ]);
    const page = await readPage(dmy, DEFAULT_MAPPING, AS_OF, {
      after: '9000',
      until: '9001',
      limit: null,
      orgs: null,
      shard: null,
      state,
      candidates: null,
    });
    expect(page.state.states.get('9001')).toEqual(expected);
    // The re-check reads them with the same SQL.
    const rechecked = await readAccounts(dmy, DEFAULT_MAPPING, AS_OF, { keys: ['9001'], state });
    expect(rechecked.state.states.get('9001')).toEqual(expected);
  } finally {
    await dmy.destroy();
    await db.knex('suspend.account_states').where({ customer_key: '9001' }).del();
    await db.knex('customers').where({ id: 9001 }).del();
  }
});

test("a timestamp's day is its UTC day, whatever TimeZone the database or role is set to", async () => {
  const zoned = await createTestDatabase();
  try {
    // 13:00 UTC on 2025-12-01 is already 2025-12-02 at UTC+14.
    await zoned
      .knex('organizations')
      .insert({ id: 1, name: 'Org', timezone: 'UTC', notification_emails: [] });
    await zoned.knex('customers').insert({ id: 1, org_id: 1, created_at: '2020-01-01T00:00:00Z' });
    await zoned.knex('reservations').insert({ id: 1, customer_id: 1, created_at: '2025-12-01T13:00:00Z' });
    await zoned.knex.raw(`alter database ?? set timezone = 'Pacific/Kiritimati'`, [zoned.name]);
    const rules = writeRules(`policies:
  inactivity:
    stages:
      - { name: suspended, when: { inactive_for: 12 months }, actions: [suspend] }
`);
    const r = await runCli([
      'report',
      '--as-of',
      '2026-12-01',
      '--accounts',
      '--format',
      'json',
      '--quiet',
      '--rules',
      rules,
      '--database-url',
      zoned.url,
    ]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    const report = JSON.parse(r.stdout) as { accounts: { key: string; reasons: string }[] };
    expect(report.accounts.map((a) => [a.key, a.reasons])).toEqual([
      ['1', 'inactive for 365 days (last activity 2025-12-01); threshold 12 months'],
    ]);
  } finally {
    await zoned.drop();
  }
});
