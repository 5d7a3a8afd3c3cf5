import type { TestDatabase } from '../helpers/database';
import { checksumTables, ENGINE_RULES, writeRules } from '../helpers/fixtures';
import { runCli } from '../helpers/cli';
import { ACTOR, AS_OF, cli, seededDatabase, STACK_FRAME } from '../helpers/reliability';
import { startSmtp } from '../helpers/smtp';

/**
 * Hostile input: identifiers in the mapping that try SQL injection, customer names with markup in
 * the notification mail, and huge text values.
 */

/** The engine rules with one line of the mapping replaced. */
function mapped(from: string, to: string): string {
  if (!ENGINE_RULES.includes(from)) throw new Error(`not in ENGINE_RULES: ${from}`);
  return ENGINE_RULES.replace(from, to);
}

const yamlString = (s: string) => JSON.stringify(s);

/** Each a mapping entry that would run extra SQL if it were interpolated instead of quoted. */
const INJECTIONS: [string, string][] = [
  [
    'customers.table',
    mapped('    table: customers\n', `    table: ${yamlString('customers; drop table invoices; --')}\n`),
  ],
  [
    'customers.key',
    mapped('    key: id\n', `    key: ${yamlString('id" from customers; drop table invoices; --')}\n`),
  ],
  [
    'customers.org',
    mapped('    org: org_id\n', `    org: ${yamlString("org_id::text || ''); delete from customers; --")}\n`),
  ],
  [
    'customers.name',
    mapped(
      '    name: name\n',
      `    name: ${yamlString('name"::text as name from customers; update customers set email = null; --')}\n`,
    ),
  ],
  [
    'customers.flags',
    mapped(
      'flags: { vip: vip }',
      `flags: { vip: ${yamlString('vip then 1 end; drop table reservations; --')} }`,
    ),
  ],
  [
    'source.schema',
    mapped('source:\n', `source:\n  schema: ${yamlString('public"; drop schema suspend cascade; --')}\n`),
  ],
  [
    'settings.schema',
    mapped('settings:\n', `settings:\n  schema: ${yamlString('suspend"; drop table public.invoices; --')}\n`),
  ],
];

/** A `set` action naming a column that is not there: refused only once the page is written. */
const SET_COLUMN = mapped(
  '{ set: { status: suspended } }]\n        message: "We',
  `{ set: { ${yamlString("status = 'x', email = 'pwned'; --")}: suspended } }]\n        message: "We`,
);

describe('SQL injection through the mapping', () => {
  let db: TestDatabase;
  let tables: string[];
  beforeAll(async () => {
    db = await seededDatabase(300, 21);
    tables = await db
      .knex('information_schema.tables')
      .whereIn('table_schema', ['public', 'suspend'])
      .orderBy(['table_schema', 'table_name'])
      .pluck('table_name');
  });
  afterAll(async () => db.drop());

  /** The sweep is refused with one sentence, exit 2; the tables are all there and nothing changed. */
  async function refusedAndNothingHappens(rules: string): Promise<void> {
    const file = writeRules(rules);
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    // The dry run writes nothing whatever happens (a set action is not executed by it).
    const report = await cli(db, ['report', '--as-of', AS_OF], file);
    expect(report.stderr).not.toMatch(STACK_FRAME);
    const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify', '--by', ACTOR], file);
    expect(r.stdout).toBe('');
    expect(r.stderr).not.toMatch(STACK_FRAME);
    expect(r.stderr).not.toContain('unexpected failure');
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^error: (\S+:\d+ .+|[^\n]+\.)$/)]);
    expect(r.code).toBe(2);
    expect(
      await db
        .knex('information_schema.tables')
        .whereIn('table_schema', ['public', 'suspend'])
        .orderBy(['table_schema', 'table_name'])
        .pluck('table_name'),
    ).toEqual(tables);
    const after = await checksumTables(db.knex, ['public', 'suspend']);
    // A run that started has its ledger row (interrupted); nothing else changed.
    const { 'suspend.runs': _runsAfter, ...rest } = after;
    const { 'suspend.runs': _runsBefore, ...restBefore } = before;
    expect(rest).toEqual(restBefore);
    const succeeded = await db
      .knex('suspend.runs')
      .where({ status: 'succeeded' })
      .count<{ n: string }[]>({ n: '*' });
    expect(succeeded).toEqual([{ n: '0' }]);
  }

  test.each(INJECTIONS)(
    '%s: quoted as a name, the sweep is refused with one sentence (exit 2), nothing else happens',
    async (_what, rules) => refusedAndNothingHappens(rules),
  );

  test('a set action on a column that is not there: refused with one sentence, exit 2', async () =>
    refusedAndNothingHappens(SET_COLUMN));

  test('a set value longer than its varchar column: refused, not written cut short', async () => {
    await db.knex.raw('alter table customers add column if not exists tier varchar(4)');
    const rules = mapped('{ set: { status: suspended } }', '{ set: { tier: suspended } }');
    await refusedAndNothingHappens(rules);
    const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify', '--by', ACTOR], writeRules(rules));
    expect(r.stderr).toMatch(
      /^error: \S+:\d+ policies\.inactivity\.stages\[0\]\.actions\[\d+\]\.set\.tier: a set action \(policy inactivity, stage suspended\) cannot be applied: column "tier" of customers is character varying\(4\), and "suspended" would be stored cut short, as "susp"; give a value it can take\.\n$/,
    );
  });

  test('a set column whose name holds a double quote: the sentence names its policy and stage', async () => {
    const rules = mapped(
      '{ set: { status: suspended } }',
      `{ set: { ${yamlString('st"atus')}: suspended } }`,
    );
    await refusedAndNothingHappens(rules);
    const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify', '--by', ACTOR], writeRules(rules));
    // With the place in the file that writes it.
    expect(r.stderr).toMatch(
      /^error: \S+:\d+ policies\.inactivity\.stages\[0\]\.actions\[\d+\]\.set\[\S+\]: a set action \(policy inactivity, stage suspended\) cannot be applied: column "st"atus" of table customers does not exist; name a column of that table\.\n$/,
    );
  });

  test("an organization's set action on a column that is not there, or with a value it cannot take: its line in the override", async () => {
    const override = (set: string) =>
      mapped(
        'policies:\n',
        `organizations:\n  "3":\n    policies:\n      inactivity:\n        stages:\n          - name: suspended\n            actions: [notify, suspend, { set: ${set} }]\npolicies:\n`,
      );
    for (const [set, why] of [
      ['{ nosuch: x }', 'column "nosuch" of table customers does not exist; name a column of that table.'],
      [
        '{ status: null }',
        'column "status" of customers is text, and it is NOT NULL, so null cannot be written; give a value it can take.',
      ],
    ]) {
      const rules = override(set!);
      const line = rules.split('\n').indexOf('        stages:') + 1;
      const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify', '--by', ACTOR], writeRules(rules));
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toMatch(
        new RegExp(
          `^error: \\S+:${line} organizations\\.3\\.policies\\.inactivity\\.stages: a set action \\(policy inactivity, stage suspended of organization 3\\) cannot be applied: `,
        ),
      );
      expect(r.stderr).toContain(why!);
    }
  });

  test.each([
    [
      '{ on_hold: suspended }',
      'column "on_hold" of customers is boolean, and "suspended" is not one of its values (invalid input syntax for type boolean: "suspended")',
    ],
    [
      '{ status: null }',
      'column "status" of customers is text, and it is NOT NULL, so null cannot be written',
    ],
  ])(
    'a set value the column cannot take (%s): refused before the run with one sentence, exit 2',
    async (set, why) => {
      const rules = mapped(
        '{ set: { status: suspended } }]\n        message: "We',
        `{ set: ${set} }]\n        message: "We`,
      );
      await db.knex.raw('alter table customers add column if not exists on_hold boolean');
      const runs = () => db.knex('suspend.runs').count<{ n: string }[]>({ n: '*' });
      const runsBefore = await runs();
      await refusedAndNothingHappens(rules);
      const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify', '--by', ACTOR], writeRules(rules));
      // With the place in the file that writes it.
      expect(r.stderr).toMatch(
        /^error: \S+:\d+ policies\.inactivity\.stages\[0\]\.actions\[\d+\]\.set\.\w+: /,
      );
      expect(r.stderr).toContain(
        `: a set action (policy inactivity, stage suspended) cannot be applied: ${why}; give a value it can take.\n`,
      );
      // Refused before the run opened: not even a ledger row.
      expect(await runs()).toEqual(runsBefore);
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Markup in customer names, through the real mail

/** The decoded text/html parts of a raw message (quoted-printable, base64 or plain). */
function htmlParts(raw: string): string[] {
  const out: string[] = [];
  for (const m of raw.matchAll(/content-type: text\/html[^\r\n]*((?:\r\n[^\r\n]+)*)\r\n\r\n/gi)) {
    const headers = m[0].toLowerCase();
    const start = (m.index ?? 0) + m[0].length;
    const end = raw.indexOf('\r\n--', start);
    const body = raw.slice(start, end < 0 ? undefined : end);
    if (headers.includes('base64'))
      out.push(Buffer.from(body.replace(/\s+/g, ''), 'base64').toString('utf8'));
    else if (headers.includes('quoted-printable'))
      out.push(
        Buffer.from(
          body
            .replace(/=\r\n/g, '')
            .replace(/=([0-9A-F]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
          'latin1',
        ).toString('utf8'),
      );
    else out.push(body);
  }
  return out;
}

const HOSTILE_NAME = `<script>alert("pwned")</script> & <img src=x onerror=alert(1)> O'Brien`;

const NOTIFY_RULES = `
version: 1
settings:
  pay_url: https://pay.example.com/{key}
notifications:
  emails: [ops@example.com]
  use_organization_column: false
policies:
  inactivity:
    stages:
      - name: warned
        when: { inactive_for: 12 months }
        actions: [notify, notify_customer]
        message: "Hello {name}, we have not seen you since {last_activity}."
`;

describe('markup in customer names', () => {
  let db: TestDatabase;
  let smtp: Awaited<ReturnType<typeof startSmtp>>;
  beforeAll(async () => {
    [db, smtp] = await Promise.all([seededDatabase(200, 23), startSmtp()]);
    // Few accounts per organization, so each digest lists them in its HTML table.
    await db.knex('customers').where('id', '>', 40).delete();
    await db.knex('customers').update({ name: HOSTILE_NAME });
  });
  afterAll(async () => Promise.all([db.drop(), smtp.close()]));

  test('is escaped in every HTML part of the digests and the customer notices', async () => {
    const rules = writeRules(NOTIFY_RULES);
    const run = await cli(db, ['backfill', '--as-of', AS_OF, '--by', ACTOR, '--quiet', '--no-notify'], rules);
    expect(run.code).toBe(0);
    const r = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: smtp.url },
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const html = smtp.mails.map((m) => m.raw).flatMap(htmlParts);
    expect(smtp.mails.length).toBeGreaterThan(1);
    expect(html).toHaveLength(smtp.mails.length);
    const escaped =
      'Hello &lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt; O&#39;Brien';
    expect(html.filter((h) => h.includes(escaped)).length).toBeGreaterThan(1);
    for (const h of html) {
      expect(h).not.toMatch(/<script|<img|onerror=alert\(1\)>/i);
    }
    // The stored message keeps the name as it is: escaping belongs to where HTML is made.
    const [state] = await db
      .knex('suspend.account_states')
      .whereNotNull('message')
      .limit(1)
      .select('message');
    expect(state.message).toContain(`Hello ${HOSTILE_NAME},`);
  });
});

// ---------------------------------------------------------------------------------------------
// Huge text values

describe('huge text values', () => {
  let db: TestDatabase;
  const name = `${'N'.repeat(2_000_000)}!`;
  beforeAll(async () => {
    db = await seededDatabase(300, 24);
    await db
      .knex('customers')
      .where('id', '<=', 5)
      .update({ name, email: `${'e'.repeat(100_000)}@example.com` });
    await db
      .knex('organizations')
      .where({ id: 1 })
      .update({ name: 'O'.repeat(1_000_000) });
  });
  afterAll(async () => db.drop());

  test('a 2 MB name and a 100 kB email go through a backfill, the report and status intact', async () => {
    const rules = writeRules(NOTIFY_RULES);
    const r = await runCli([
      'backfill',
      '--as-of',
      AS_OF,
      '--by',
      ACTOR,
      '--no-notify',
      '--format',
      'json',
      '--accounts',
      '--rules',
      rules,
      '--database-url',
      db.url,
    ]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as { status: string; accounts: { key: string }[] };
    expect(report.status).toBe('succeeded');
    const keys = (await db.knex('customers').where('id', '<=', 5).pluck('id')).map(String);
    const warned = report.accounts.filter((a) => keys.includes(a.key)).map((a) => a.key);
    expect(warned.length).toBeGreaterThan(0);
    const [state] = await db
      .knex('suspend.account_states')
      .where({ customer_key: warned[0] })
      .select('message');
    expect(state.message).toBe(
      `Hello ${name}, we have not seen you since ${state.message.split(' since ')[1]}`,
    );
    const [event] = await db.knex('suspend.outbox').where({ customer_key: warned[0] }).select('payload');
    expect(event.payload.customer.name).toBe(name);

    const status = await runCli(['status', warned[0]!, '--json', '--rules', rules, '--database-url', db.url]);
    expect(status.code).toBe(0);
    expect(status.stdout).toContain(name);
  });
});
