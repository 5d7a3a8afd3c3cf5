import type { TestDatabase } from './helpers/database';
import { ENGINE_RULES, writeRules } from './helpers/fixtures';
import { backfillArgs, cli, seededDatabase } from './helpers/reliability';

/**
 * `backfill --resume` goes on with the run as it started (its organizations, its as-of); flags that
 * would have it cover something else, or pretend to, are refused; the ledger says which rules the
 * pages after a change of the rules file were judged by.
 */

interface RunRow {
  id: string;
  status: string;
  org_filter: string | null;
  rules_hash: string;
  rules_file: string;
}

describe('resuming a stopped backfill', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seededDatabase(1500, 11);
  });
  afterAll(async () => db.drop());

  const runs = async () =>
    (await db
      .knex('suspend.runs')
      .select('id', 'status', 'org_filter', 'rules_hash', 'rules_file')
      .orderBy('id')) as RunRow[];

  test('stopped by the safety limit, it is resumed over every organization, never a part of them', async () => {
    const stopped = await cli(db, [...backfillArgs(100), '--max-changes', '50']);
    expect(stopped.code).toBe(4);
    const [run] = await runs();
    expect(run).toMatchObject({ status: 'stopped', org_filter: null });
    const statesBefore = await db.knex('suspend.account_states').count<{ n: string }[]>({ n: '*' });

    // --org on a run of every organization: refused, nothing changes (it used to finish the run
    // as succeeded after that organization's accounts).
    const oneOrg = await cli(db, [
      'backfill',
      '--resume',
      '--org',
      '2',
      '--no-notify',
      '--max-changes',
      'none',
    ]);
    expect({ code: oneOrg.code, stdout: oneOrg.stdout }).toEqual({ code: 2, stdout: '' });
    expect(oneOrg.stderr).toBe(
      `error: Backfill run ${run!.id} covers every organization, and --resume continues it as it started; leave out --org, or abandon it (\`suspend backfill --abandon ${run!.id}\`) and start the backfill you want.\n`,
    );
    // Another day than the run's: refused, not taken quietly for the run's own.
    const otherDay = await cli(db, ['backfill', '--resume', '--as-of', '2026-12-24', '--no-notify']);
    expect({ code: otherDay.code, stdout: otherDay.stdout }).toEqual({ code: 2, stdout: '' });
    expect(otherDay.stderr).toBe(
      `error: --as-of 2026-12-24: backfill run ${run!.id} judges every page as of 2026-11-23, and --resume continues it so; leave --as-of out, or abandon it (\`suspend backfill --abandon ${run!.id}\`) and start one as of 2026-12-24.\n`,
    );
    // A limit no count can reach is refused, not taken for a number it is not.
    const huge = await cli(db, ['backfill', '--resume', '--max-changes', '99999999999999999999']);
    expect(huge.code).toBe(2);
    expect(huge.stderr).toContain(
      'is more than a count can be here (at most 9007199254740991); write none for no limit.',
    );
    // A dry run neither continues nor gives up a run: refused, not run as something else.
    for (const flag of ['--resume', '--abandon']) {
      const dry = await cli(db, ['backfill', flag, '--dry-run']);
      expect(dry.code).toBe(2);
      expect(dry.stderr).toContain(`cannot be used with option '--dry-run'`);
    }
    // An empty run id (a script's unset variable) is refused, not taken for no --abandon at all,
    // which started a new backfill.
    const blank = await cli(db, ['backfill', '--abandon', '', '--no-notify', '--max-changes', 'none']);
    expect({ code: blank.code, stdout: blank.stdout, stderr: blank.stderr }).toEqual({
      code: 2,
      stdout: '',
      stderr:
        "error: option '--abandon [run]' argument '' is invalid. It is empty; give a run id (`suspend runs` lists them), or leave the value out. See `suspend backfill --help`.\n",
    });
    // So is an empty run id to revert or show: it names no run.
    for (const [args, command, argument] of [
      [['revert', ''], 'revert', 'run-id'],
      [['runs', 'show', ' '], 'runs show', 'id'],
    ] as const) {
      const empty = await cli(db, [...args]);
      expect({ code: empty.code, stderr: empty.stderr }).toEqual({
        code: 2,
        stderr: `error: command-argument value '${args[args.length - 1]}' is invalid for argument '${argument}'. It is empty; give a run id (\`suspend runs\` lists them). See \`suspend ${command} --help\`.\n`,
      });
    }
    expect(await runs()).toEqual([run]);
    expect(await db.knex('suspend.account_states').count<{ n: string }[]>({ n: '*' })).toEqual(statesBefore);

    // Resumed with another rules file: the ledger keeps the rules it started with and lists the new ones.
    const edited = writeRules(ENGINE_RULES.replace('Contact {support_url} to reactivate.', 'Call us.'));
    const resumed = await cli(
      db,
      ['backfill', '--resume', '--no-notify', '--max-changes', 'none', '--format', 'json', '--quiet'],
      edited,
    );
    expect(resumed.code).toBe(0);
    expect(JSON.parse(resumed.stdout)).toMatchObject({ status: 'succeeded', counts: { scanned: 1500 } });
    const [after] = await runs();
    expect(after).toMatchObject({ id: run!.id, status: 'succeeded', rules_hash: run!.rules_hash });
    const shown = await cli(db, ['runs', 'show', run!.id], edited);
    expect(shown.code).toBe(0);
    const hashes = (await db
      .knex('suspend.history')
      .where({ run_id: run!.id })
      .distinct('rules_hash')
      .pluck('rules_hash')) as string[];
    const newHash = hashes.find((h) => h !== run!.rules_hash);
    expect(newHash).toBeDefined();
    expect(shown.stdout).toMatch(
      new RegExp(
        `\\nresumed \\S+ with other rules: file ${edited.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}   rules hash: ${newHash}\\n`,
      ),
    );
  });

  test('a backfill of some organizations resumed without --org goes on over those organizations only', async () => {
    const other = await seededDatabase(1500, 11);
    try {
      const stopped = await cli(other, [...backfillArgs(100), '--org', '2', '--max-changes', '20']);
      expect(stopped.code).toBe(4);
      const resumed = await cli(other, [
        'backfill',
        '--resume',
        '--no-notify',
        '--max-changes',
        'none',
        '--format',
        'json',
        '--quiet',
      ]);
      expect(resumed.code).toBe(0);
      const orgs = (await other
        .knex('suspend.account_states as s')
        .join('customers as c', 'c.id', other.knex.raw('s.customer_key::bigint'))
        .distinct('c.org_id')
        .pluck('c.org_id')) as (string | number)[];
      expect(orgs.map(String)).toEqual(['2']);
      const whole = (
        await other.knex('customers').where({ org_id: 2 }).count<{ n: string }[]>({ n: '*' })
      )[0]!;
      expect(JSON.parse(resumed.stdout)).toMatchObject({
        status: 'succeeded',
        counts: { scanned: Number(whole.n) },
      });
    } finally {
      await other.drop();
    }
  });
});

describe('a stopped backfill that was reverted', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seededDatabase(1500, 11);
  });
  afterAll(async () => db.drop());

  const changesOf = async (runId: string) =>
    Number(
      ((await db.knex('suspend.history').where({ run_id: runId }).count({ n: '*' })) as { n: string }[])[0]!
        .n,
    );

  test.each([
    ['over every account', [] as string[]],
    ['of a shard', ['--shard', '0/2']],
  ])('%s is not resumed: its revert stays whole', async (_what, shard) => {
    const stopped = await cli(db, [...backfillArgs(100), ...shard, '--max-changes', '50']);
    expect(stopped.code).toBe(4);
    const run = (await db.knex('suspend.runs').max({ id: 'id' }))[0]!.id as string;
    const reverted = await cli(db, ['revert', String(run), '--quiet']);
    expect(reverted.code).toBe(0);
    const before = await changesOf(run);

    // It used to go on with the reverted run: changes under a run whose revert is done, which
    // `suspend revert` then refused to undo ("already reverted").
    const resumed = await cli(db, [...backfillArgs(100), ...shard, '--resume', '--max-changes', 'none']);
    expect({ code: resumed.code, stdout: resumed.stdout }).toEqual({ code: 2, stdout: '' });
    expect(resumed.stderr).toContain('There is no unfinished backfill');
    expect(await changesOf(run)).toBe(before);

    // A new backfill starts a run of its own instead of being told to resume the reverted one.
    const fresh = await cli(db, [...backfillArgs(100), ...shard, '--max-changes', 'none']);
    expect(fresh.code).toBe(0);
    expect(await changesOf(run)).toBe(before);
    expect((await cli(db, ['revert', String(Number(run) + 2), '--quiet'])).code).toBe(0);
  });
});
