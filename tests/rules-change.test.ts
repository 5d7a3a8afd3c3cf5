import type { TestDatabase } from './helpers/database';
import { ENGINE_RULES, writeRules } from './helpers/fixtures';
import { AS_OF, backfillArgs, cli, seededDatabase } from './helpers/reliability';

/**
 * Rules change between runs. A stored state whose stage the rules no longer have at its place (a
 * stage renamed, removed or moved) or whose policy is gone is judged by position, or not at all:
 * every run says so, with how many accounts and what to do, instead of keeping them quietly.
 */

describe('states the rules no longer describe', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seededDatabase(1500, 13);
    expect((await cli(db, backfillArgs(500))).code).toBe(0);
  });
  afterAll(async () => db.drop());

  /** The accounts in a stage as the notes name them: "N account(s) of organization(s) 1, 2 (N with booking blocked)". */
  const accounts = async (policy: string, stage: string, org?: string) => {
    const q = db.knex('suspend.account_states').where({ policy, stage });
    if (org) q.where({ org_id: org });
    const rows = (await q.select('org_id', 'blocks_booking')) as {
      org_id: string;
      blocks_booking: boolean;
    }[];
    const orgs = [...new Set(rows.map((r) => r.org_id))].sort();
    const blocking = rows.filter((r) => r.blocks_booking).length;
    const of = orgs.length <= 5 ? `organization(s) ${orgs.join(', ')}` : `${orgs.length} organizations`;
    expect(rows.length).toBeGreaterThan(0);
    return `${rows.length} account(s) of ${of} (${blocking} with booking blocked)`;
  };

  /** ENGINE_RULES with `from` replaced (it must be there). */
  const edited = (from: string, to: string) => {
    expect(ENGINE_RULES).toContain(from);
    return ENGINE_RULES.replace(from, to);
  };
  /** What a report with these rules says on stderr (it must succeed). */
  const reportSays = async (rules: string) => {
    const r = await cli(db, ['report', '--as-of', AS_OF], writeRules(rules));
    expect(r.code).toBe(0);
    return r.stderr;
  };

  test('the rules as they were: no note', async () => {
    const r = await cli(db, ['report', '--as-of', AS_OF]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('note:');
  });

  test('a stage renamed: every run names it, with its accounts and what to do', async () => {
    const paused = await accounts('overdue_pause', 'paused');
    const renamed = ENGINE_RULES.replace(
      '      - name: paused\n        when: { invoice_overdue_for: 10 days }',
      '      - name: on_hold\n        when: { invoice_overdue_for: 10 days }',
    );
    expect(renamed).not.toBe(ENGINE_RULES);
    const file = writeRules(renamed);
    for (const args of [['report'], ['sweep', '--no-notify']]) {
      const r = await cli(db, [...args, '--as-of', AS_OF], file);
      expect(r.code).toBe(0);
      expect(r.stderr).toContain(
        `note: ${paused} are in stage paused of policy overdue_pause, which the rules no longer have at its place in the ladder (there now: on_hold); runs judge them by that place and keep the stored stage while it applies. Name the stage paused again, or reinstate them.\n`,
      );
    }
    // That sweep succeeded with these rules and said it: the next sweep with them does not read every
    // state again to say it once more; a report still does.
    const next = await cli(db, ['sweep', '--no-notify', '--as-of', AS_OF], file);
    expect({ code: next.code, notes: next.stderr.includes('note:') }).toEqual({ code: 0, notes: false });
    expect((await cli(db, ['report', '--as-of', AS_OF], file)).stderr).toContain(
      'are in stage paused of policy',
    );
  });

  test('a stage inserted before others: the accounts stay in their stages, no note, nothing entered or sent again', async () => {
    const inserted = edited(
      '      - name: paused\n        when: { invoice_overdue_for: 10 days }',
      '      - name: reminded\n        when: { invoice_overdue_for: 10 days }\n        actions: [notify]\n      - name: paused\n        when: { invoice_overdue_for: 10 days }',
    );
    const before = await db.knex('suspend.history').count<{ n: string }[]>({ n: '*' });
    const outbox = await db.knex('suspend.outbox').count<{ n: string }[]>({ n: '*' });
    const paused = await db
      .knex('suspend.account_states')
      .where({ policy: 'overdue_pause', stage: 'paused' });
    expect(paused.length).toBeGreaterThan(0);
    const r = await cli(
      db,
      ['sweep', '--no-notify', '--format', 'json', '--as-of', AS_OF],
      writeRules(inserted),
    );
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('note:');
    // Judged by its old place, each paused account "escalated" to paused again, its actions fired anew.
    expect((JSON.parse(r.stdout) as { counts: { changes: number } }).counts.changes).toBe(0);
    expect(await db.knex('suspend.history').count<{ n: string }[]>({ n: '*' })).toEqual(before);
    expect(await db.knex('suspend.outbox').count<{ n: string }[]>({ n: '*' })).toEqual(outbox);
    expect(
      await db.knex('suspend.account_states').where({ policy: 'overdue_pause', stage: 'paused' }),
    ).toEqual(paused);
  });

  test('a policy removed: the same, and how to reinstate them', async () => {
    const suspended = await accounts('inactivity', 'suspended');
    const removed =
      ENGINE_RULES.slice(0, ENGINE_RULES.indexOf('  inactivity:')) +
      ENGINE_RULES.slice(ENGINE_RULES.indexOf('  delinquency:'));
    const said = `${suspended} are in stage suspended of policy inactivity, a policy the rules no longer have: no run moves them; reinstate them (\`suspend reinstate KEY --policy inactivity\`) or put the policy back.`;
    expect(await reportSays(removed)).toContain(`note: ${said}\n`);
    // The report itself keeps it, for whoever reads it later: its Notes, its JSON, even with --quiet.
    const file = writeRules(removed);
    const text = await cli(db, ['report', '--as-of', AS_OF, '--quiet'], file);
    expect({ code: text.code, stderr: text.stderr }).toEqual({ code: 0, stderr: '' });
    expect(text.stdout).toContain(`\nNotes\n\n- ${said}\n`);
    const json = await cli(db, ['report', '--as-of', AS_OF, '--quiet', '--format', 'json'], file);
    expect((JSON.parse(json.stdout) as { notes: string[] }).notes).toEqual([said]);
  });

  test('a policy turned off for one organization: its accounts there are named, with the organization', async () => {
    const there = await accounts('inactivity', 'suspended', '2');
    const off = edited(
      'policies:\n',
      'organizations:\n  "2":\n    policies:\n      inactivity: { enabled: false }\npolicies:\n',
    );
    expect(await reportSays(off)).toContain(
      `note: ${there} are in stage suspended of policy inactivity, which the rules of their organization no longer apply (turned off or removed there): no run moves them; reinstate them (\`suspend reinstate KEY --policy inactivity\`) or apply the policy again.\n`,
    );
  });

  test('a rules exclusion by a key written otherwise ("007") or that no customer has: a note each', async () => {
    const said = await reportSays(
      edited(
        'exclusions:\n',
        'exclusions:\n  - { key: "007", reason: padded }\n  - { key: "99999999", reason: gone }\n',
      ),
    );
    expect(said).toContain(
      'note: the rules exclude key "007", but the customer table writes it "7", and runs match keys as written there: write "7", or it spares nobody.\n',
    );
    expect(said).toContain(
      'note: the rules exclude key "99999999", which no customer has; it spares nobody.\n',
    );
  });

  test("an organization no account belongs to, and an organization's exclusion of another's customer: a note each", async () => {
    const { org } = (await db.knex('customers').where({ id: 1 }).first('org_id as org')) as { org: string };
    const other = String((Number(org) % 13) + 1);
    const said = await reportSays(
      edited(
        'policies:\n',
        `organizations:\n  "33":\n    settings: { support_url: https://help.example }\n  "${other}":\n    exclusions:\n      - { key: "1", reason: pilot }\npolicies:\n`,
      ),
    );
    expect(said).toContain(
      `note: organization ${other} of the rules excludes key "1", but that customer is in organization ${org}, whose rules do not: it is not spared; move the exclusion to its organization or to the top-level exclusions.\n`,
    );
    expect(said).toContain(
      `note: the rules have overrides for organization "33", which no account belongs to; they apply to nobody (check the id against the customers' organization column).\n`,
    );
  });

  test("a stage's set value changed: runs note the accounts that keep the old value; a reinstatement leaves the column and says so", async () => {
    const dormant = edited(
      'actions: [notify, suspend, { set: { status: suspended } }]\n        message: "We have not seen you',
      'actions: [notify, suspend, { set: { status: dormant } }]\n        message: "We have not seen you',
    );
    // Accounts suspended for inactivity: the inactivity stage sets their status (also where delinquency
    // suspends them too: of stages of the same rank, the policy first in the rules file wins).
    const only = (
      await db.knex.raw<{ rows: { key: string }[] }>(
        `select customer_key as key from suspend.account_states group by customer_key
        having bool_or(policy = 'inactivity' and stage is not null)
        order by customer_key::bigint`,
      )
    ).rows.map((r) => r.key);
    expect(only.length).toBeGreaterThan(1);
    const file = writeRules(dormant);
    const said = `${only.length} account(s) in a stage hold status = "suspended", not the "dormant" their stages now set (the host wrote it since, or a stage's set value changed after suspend wrote "suspended"): a column is given back only over the value the rules set, so when they clear, status stays "suspended". If suspend wrote it, set "suspended" in the rules again until they clear, or put status to "dormant" for them.`;
    const report = await cli(db, ['report', '--as-of', AS_OF, '--quiet', '--format', 'json'], file);
    expect(report.code).toBe(0);
    expect((JSON.parse(report.stdout) as { notes: string[] }).notes).toContain(said);
    // The rules as they were: no such note.
    const before = await cli(db, ['report', '--as-of', AS_OF, '--quiet', '--format', 'json']);
    expect((JSON.parse(before.stdout) as { notes: string[] }).notes.join('\n')).not.toContain(' hold status');
    // One of them reinstated by hand: its status is left, and the command says what to put back.
    const key = only[0]!;
    const r = await cli(db, ['reinstate', key, '--reason', 'called', '--as-of', AS_OF], file);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      `Host column status left as it is: it holds "suspended", not the "dormant" the rules' stage sets, so suspend cannot tell whether it wrote that value (the host may have since, or the stage's set value changed); if it did, put back "active" by hand.`,
    );
    expect(await db.knex('customers').where({ id: key }).first('status')).toEqual({ status: 'suspended' });
  });
});
