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

  const count = async (policy: string, stage: string) =>
    Number(
      (
        await db.knex('suspend.account_states').where({ policy, stage }).count<{ n: string }[]>({ n: '*' })
      )[0]!.n,
    );

  test('the rules as they were: no note', async () => {
    const r = await cli(db, ['report', '--as-of', AS_OF]);
    expect(r.code).toBe(0);
    expect(r.stderr).not.toContain('note:');
  });

  test('a stage renamed: every run names it, with its accounts and what to do', async () => {
    const paused = await count('overdue_pause', 'paused');
    expect(paused).toBeGreaterThan(0);
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
        `note: ${paused} account(s) of policy overdue_pause are in stage paused (${paused} with booking blocked), which the rules no longer have at its place in the ladder (there now: on_hold); runs judge them by that place and keep the stored stage while it applies. Name the stage paused again, or reinstate them.\n`,
      );
    }
  });

  test('a policy removed: the same, and how to reinstate them', async () => {
    const suspended = await count('inactivity', 'suspended');
    expect(suspended).toBeGreaterThan(0);
    const removed =
      ENGINE_RULES.slice(0, ENGINE_RULES.indexOf('  inactivity:')) +
      ENGINE_RULES.slice(ENGINE_RULES.indexOf('  delinquency:'));
    const r = await cli(db, ['report', '--as-of', AS_OF], writeRules(removed));
    expect(r.code).toBe(0);
    expect(r.stderr).toContain(
      `note: ${suspended} account(s) are in stage suspended of policy inactivity (${suspended} with booking blocked), a policy the rules no longer have: no run moves them; reinstate them (\`suspend reinstate KEY --policy inactivity\`) or put the policy back.\n`,
    );
  });
});
