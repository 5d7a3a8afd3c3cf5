import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import path from 'node:path';
import { checksumTables, recordedSweep } from './helpers/fixtures';
import { Gate, startNode, waitForSessionsGone } from './helpers/reliability';
import { ROOT } from './helpers/server';

/**
 * `suspend revert RUN_ID` on states written as the engine writes them: run A changed four accounts,
 * a later run B changed one of them again, and one is excluded now.
 */

let db: TestDatabase;
let runA: string;
let runB: string;

function cli(args: string[]) {
  return runCli([...args, '--database-url', db.url]);
}

async function newRun(kind: string, asOf: string): Promise<string> {
  const [row] = await db
    .knex('suspend.runs')
    .insert({ kind, status: 'succeeded', as_of: asOf, rules_hash: 'test', started_by: 'cron' })
    .returning('id');
  return String((row as { id: string }).id);
}

const suspended = {
  stage: 'suspended',
  stage_index: 0,
  blocks_booking: true,
  allows_login: false,
  message: 'Your account is suspended. Pay at https://pay.example.com.',
  reasons: JSON.stringify([
    { condition: 'past_due_for', text: 'past due for 31 days', evidence: { days: 31 } },
  ]),
};

/** A prior row of customer 11, as to_jsonb(account_states) gives it. */
const prior11 = {
  customer_key: '11',
  policy: 'overdue_pause',
  org_id: null,
  stage: null,
  stage_index: -1,
  blocks_booking: false,
  allows_login: true,
  message: null,
  reasons: [{ condition: 'invoice_overdue_for', text: 'no invoice overdue', evidence: {} }],
  entered_on: '2026-09-01',
  episode_started_on: null,
  reinstated_on: '2026-09-01',
  tags: [],
  host_before: null,
  run_id: null,
  version: 3,
  updated_at: '2026-09-01T00:00:00+00:00',
};

async function stateOf(key: string, policy: string) {
  const [row] = await db
    .knex('suspend.account_states')
    .where({ customer_key: key, policy })
    .select(
      'stage',
      'stage_index',
      'blocks_booking',
      'allows_login',
      'message',
      'reasons',
      'version',
      'run_id',
    )
    .select(
      db.knex.raw("to_char(entered_on, 'YYYY-MM-DD') as entered_on"),
      db.knex.raw("to_char(reinstated_on, 'YYYY-MM-DD') as reinstated_on"),
    );
  return row;
}

beforeAll(async () => {
  db = await createTestDatabase();
  await db.knex('customers').insert([
    { id: 10, name: 'Ten', email: 't@example.com', status: 'suspended', marketing_opt_out: true },
    { id: 11, name: 'Eleven', email: 'e@example.com' },
    { id: 12, name: 'Twelve', email: 'w@example.com', status: 'closed', marketing_opt_out: true },
    { id: 13, name: 'Thirteen', email: 'h@example.com', status: 'suspended' },
    { id: 14, name: 'Fourteen', email: 'f@example.com' },
  ]);
  runA = await newRun('sweep', '2026-11-01');
  runB = await newRun('sweep', '2026-11-15');
  const history = (
    key: string,
    policy: string,
    run: string,
    kind: string,
    to: string | null,
    prev: unknown,
  ) => ({
    run_id: run,
    customer_key: key,
    policy,
    kind,
    to_stage: to,
    to_index: to ? 0 : -1,
    previous_state: prev === null ? null : JSON.stringify(prev),
    as_of: run === runA ? '2026-11-01' : '2026-11-15',
    actor: 'cron',
  });
  // 10: entered delinquency in run A (no prior row); A set customers.status from 'active'.
  await db.knex('suspend.account_states').insert({
    customer_key: '10',
    policy: 'delinquency',
    ...suspended,
    entered_on: '2026-11-01',
    episode_started_on: '2026-11-01',
    host_before: JSON.stringify({ status: 'active' }),
    run_id: runA,
    version: 1,
  });
  await db
    .knex('suspend.history')
    .insert(history('10', 'delinquency', runA, 'enter', 'suspended', { host: { status: 'active' } }));
  // 11: paused by run A over a prior clear row (version 3, reinstated on 2026-09-01).
  await db.knex('suspend.account_states').insert({
    customer_key: '11',
    policy: 'overdue_pause',
    stage: 'paused',
    stage_index: 0,
    blocks_booking: true,
    allows_login: true,
    message: 'Invoice overdue.',
    entered_on: '2026-11-01',
    reinstated_on: '2026-09-01',
    run_id: runA,
    version: 4,
  });
  await db
    .knex('suspend.history')
    .insert(history('11', 'overdue_pause', runA, 'enter', 'paused', { ...prior11, host: null }));
  // 12: suspended by run A, then cleared again by run B: left alone.
  await db.knex('suspend.account_states').insert({
    customer_key: '12',
    policy: 'delinquency',
    stage: null,
    stage_index: -1,
    entered_on: '2026-11-15',
    run_id: runB,
    version: 2,
  });
  await db
    .knex('suspend.history')
    .insert(history('12', 'delinquency', runA, 'enter', 'suspended', { host: { status: 'active' } }));
  await db.knex('suspend.history').insert(
    history('12', 'delinquency', runB, 'clear', null, {
      customer_key: '12',
      policy: 'delinquency',
      stage: 'suspended',
    }),
  );
  // 13: suspended by run A, excluded since: left alone.
  await db.knex('suspend.account_states').insert({
    customer_key: '13',
    policy: 'delinquency',
    ...suspended,
    entered_on: '2026-11-01',
    host_before: JSON.stringify({ status: 'active' }),
    run_id: runA,
    version: 1,
  });
  await db
    .knex('suspend.history')
    .insert(history('13', 'delinquency', runA, 'enter', 'suspended', { host: { status: 'active' } }));
  await db
    .knex('suspend.exclusions')
    .insert({ customer_key: '13', reason: 'under review', created_by: 'ops' });
  // 14: only run B touched it.
  await db.knex('suspend.account_states').insert({
    customer_key: '14',
    policy: 'delinquency',
    ...suspended,
    entered_on: '2026-11-15',
    run_id: runB,
    version: 1,
  });
  await db.knex('suspend.history').insert(history('14', 'delinquency', runB, 'enter', 'suspended', null));
});

afterAll(async () => db.drop());

test('--dry-run lists what would be restored and what is left alone, and writes nothing', async () => {
  const before = await checksumTables(db.knex, ['public', 'suspend']);
  const r = await cli(['revert', runA, '--dry-run', '--as-of', '2026-11-23']);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(
    `Dry run: reverting run ${runA} (sweep as of 2026-11-01) would restore 2 account state(s) and leave 2 alone; nothing was written.`,
  );
  expect(r.stdout).toContain('10  delinquency: suspended -> clear');
  expect(r.stdout).toContain('11  overdue_pause: paused -> clear');
  expect(r.stdout).toContain(`12  delinquency: clear (changed again by run ${runB} (sweep))`);
  expect(r.stdout).toContain('13  delinquency: suspended (excluded: under review)');
  expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
});

test('revert restores the previous states and host columns, leaves the others alone, and records itself', async () => {
  const hostBefore = await db.knex('customers').select('*').orderBy('id');
  const r = await cli([
    'revert',
    runA,
    '--by',
    'erin',
    '--as-of',
    '2026-11-23',
    '--batch-size',
    '1',
    '--json',
  ]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  const result = JSON.parse(r.stdout);
  expect(result.restored).toEqual([
    { key: '10', policy: 'delinquency', from: 'suspended', to: null },
    { key: '11', policy: 'overdue_pause', from: 'paused', to: null },
  ]);
  expect(result.leftAlone.map((x: { key: string }) => x.key)).toEqual(['12', '13']);
  const revertRunId = result.run.id as string;

  // 10 had no prior row: clear. 11 gets its prior row back (reasons, reinstated_on...), one version on.
  expect(await stateOf('10', 'delinquency')).toMatchObject({
    stage: null,
    stage_index: -1,
    blocks_booking: false,
    allows_login: true,
    message: null,
    version: 2,
    run_id: revertRunId,
  });
  expect(await stateOf('11', 'overdue_pause')).toMatchObject({
    stage: null,
    blocks_booking: false,
    reasons: prior11.reasons,
    entered_on: '2026-09-01',
    reinstated_on: '2026-09-01',
    version: 5,
  });
  // Left alone: unchanged.
  expect(await stateOf('12', 'delinquency')).toMatchObject({ stage: null, version: 2, run_id: runB });
  expect(await stateOf('13', 'delinquency')).toMatchObject({ stage: 'suspended', version: 1, run_id: runA });
  expect(await stateOf('14', 'delinquency')).toMatchObject({ stage: 'suspended', version: 1, run_id: runB });

  // Host: only customers.status of 10 moved back; consent and all else byte-identical.
  const hostAfter = await db.knex('customers').select('*').orderBy('id');
  expect(hostAfter).toEqual(hostBefore.map((c) => (c.id === '10' ? { ...c, status: 'active' } : c)));

  const history = await db.knex('suspend.history').where({ run_id: revertRunId }).orderBy('customer_key');
  expect(history.map((h) => [h.customer_key, h.kind, h.from_stage, h.to_stage, h.actor])).toEqual([
    ['10', 'revert', 'suspended', null, 'erin'],
    ['11', 'revert', 'paused', null, 'erin'],
  ]);
  expect(history[0].previous_state).toMatchObject({
    stage: 'suspended',
    version: 1,
    host: { status: 'suspended' },
  });
  const outbox = await db.knex('suspend.outbox').where({ run_id: revertRunId }).orderBy('customer_key');
  expect(outbox.map((o) => [o.customer_key, o.event, o.payload.event, o.payload.from, o.payload.to])).toEqual(
    [
      ['10', 'revert', 'revert', 'suspended', null],
      ['11', 'revert', 'revert', 'paused', null],
    ],
  );
  expect(outbox[0].payload).toMatchObject({
    runId: revertRunId,
    customer: { key: '10', name: 'Ten', email: 't@example.com' },
    actor: 'erin',
    asOf: '2026-11-23',
  });
  const [run] = await db.knex('suspend.runs').where({ id: revertRunId });
  expect(run).toMatchObject({
    kind: 'revert',
    status: 'succeeded',
    reverts_run_id: runA,
    started_by: 'erin',
  });
  expect(run.counts).toMatchObject({ changes: 2, leftAlone: 2 });
});

test('a run cannot be reverted twice; an unknown run is one sentence', async () => {
  const again = await cli(['revert', runA]);
  expect(again.code).toBe(2);
  expect(again.stderr).toContain(`Run ${runA} was already reverted by run`);
  const unknown = await cli(['revert', '999']);
  expect(unknown.code).toBe(2);
  expect(unknown.stderr).toContain('There is no run 999');
  // Past the bigint run id's range: the same sentence, not a failed query.
  for (const args of [
    ['revert', '99999999999999999999', '--dry-run'],
    ['runs', 'show', '99999999999999999999'],
  ]) {
    const huge = await cli(args);
    expect(huge.code).toBe(2);
    expect(huge.stderr).toBe('error: There is no run 99999999999999999999; `suspend runs` lists them.\n');
  }
});

test('reinstate then revert of the reinstatement brings the suspension and its host status back', async () => {
  const before = await db.knex('customers').where({ id: 14 }).first();
  const r = await cli([
    'reinstate',
    '14',
    '--reason',
    'goodwill',
    '--by',
    'finn',
    '--as-of',
    '2026-11-23',
    '--json',
  ]);
  expect(r.code).toBe(0);
  const reinstated = JSON.parse(r.stdout);
  expect(await stateOf('14', 'delinquency')).toMatchObject({
    stage: null,
    reinstated_on: '2026-11-23',
    version: 2,
  });
  const undo = await cli(['revert', reinstated.run.id, '--by', 'finn']);
  expect(undo.code).toBe(0);
  expect(undo.stdout).toContain('14  delinquency: clear -> suspended');
  expect(await stateOf('14', 'delinquency')).toMatchObject({
    stage: 'suspended',
    blocks_booking: true,
    allows_login: false,
    entered_on: '2026-11-15',
    reinstated_on: null,
    version: 3,
  });
  expect(await db.knex('customers').where({ id: 14 }).first()).toEqual(before);
  const status = await cli(['status', '14']);
  expect(status.stdout).toMatch(
    /delinquency: revert clear -> suspended {2}by finn \(run \d+ revert\)\n[^\n]*\n {2}2026-11-23 {2}delinquency: reinstate suspended -> clear {2}by finn/,
  );
});

test('a database error nothing foresaw names its cause, not the first line of the statement', async () => {
  await db.knex.raw(`create function suspend.no_runs() returns trigger language plpgsql as $$
    begin raise exception 'no runs today (a test trigger)'; end $$`);
  await db.knex.raw(
    'create trigger no_runs before insert on suspend.runs for each row execute function suspend.no_runs()',
  );
  try {
    const r = await cli(['revert', runB, '--as-of', '2026-11-23']);
    expect(r).toMatchObject({
      code: 1,
      stderr:
        'error: unexpected failure: no runs today (a test trigger)\nRun again with --debug for details.\n',
    });
  } finally {
    await db.knex.raw('drop trigger no_runs on suspend.runs');
  }
});

describe('a revert killed before its first page', () => {
  let own: TestDatabase;
  const suspend = (args: string[]) => runCli([...args, '--database-url', own.url]);
  afterAll(async () => own?.drop());

  test('is continued and closed by reverting its run again, said stopped by --dry-run, and not reverted itself', async () => {
    own = await createTestDatabase();
    await own.knex('customers').insert([
      { id: 20, name: 'Twenty', email: 'tw@example.com', status: 'suspended' },
      { id: 21, name: 'Twenty-one', email: 'to@example.com' },
    ]);
    const sweep = await recordedSweep(own.knex);
    for (const key of ['20', '21']) {
      await own.knex('suspend.account_states').insert({
        customer_key: key,
        policy: 'delinquency',
        ...suspended,
        entered_on: '2026-11-01',
        host_before: key === '20' ? JSON.stringify({ status: 'active' }) : null,
        run_id: sweep,
        version: 1,
      });
      await own.knex('suspend.history').insert({
        run_id: sweep,
        customer_key: key,
        policy: 'delinquency',
        kind: 'enter',
        to_stage: 'suspended',
        to_index: 0,
        previous_state: key === '20' ? JSON.stringify({ host: { status: 'active' } }) : null,
        as_of: '2026-11-01',
        actor: 'cron',
      });
    }

    // Parked as its first page inserts its history rows (nothing committed yet), then kill -9.
    const gate = await Gate.install(own, 'suspend.history', "new.kind = 'revert'");
    try {
      const killed = startNode([
        path.join(ROOT, 'bin/suspend'),
        'revert',
        sweep,
        '--as-of',
        '2026-11-23',
        '--database-url',
        own.url,
      ]);
      await gate.blocked(killed);
      killed.child.kill('SIGKILL');
      expect((await killed.done).signal).toBe('SIGKILL');
      // The parked backend finishes its statement into a closed socket: its transaction rolls back.
      await gate.release();
      await waitForSessionsGone(own);
    } finally {
      await gate.remove();
    }
    const reverts = await own.knex('suspend.runs').where({ reverts_run_id: sweep }).select('id', 'status');
    expect(reverts).toHaveLength(1);
    const stopped = String(reverts[0].id);
    expect(reverts[0].status).toBe('running');
    expect(await own.knex('suspend.history').where({ run_id: stopped }).pluck('id')).toEqual([]);
    const runs = JSON.parse((await suspend(['runs', '--format', 'json'])).stdout) as {
      id: string;
      processGone?: boolean;
    }[];
    expect(runs.find((r) => r.id === stopped)).toMatchObject({ status: 'running', processGone: true });

    const dry = await suspend(['revert', sweep, '--dry-run', '--as-of', '2026-11-23']);
    expect(dry).toMatchObject({ code: 0, stderr: '' });
    expect(dry.stdout).toContain(
      `Dry run: reverting run ${sweep} (sweep as of 2026-11-01) would restore 2 more account state(s) (continuing revert run ${stopped}, which stopped part way) and leave 0 alone; nothing was written.`,
    );

    // Not reverted itself until it has finished.
    const itself = await suspend(['revert', stopped, '--as-of', '2026-11-23']);
    expect(itself).toMatchObject({
      code: 2,
      stdout: '',
      stderr: `error: Run ${stopped} is a revert of run ${sweep} that did not finish; \`suspend revert ${sweep}\` finishes it, and then it can be reverted.\n`,
    });

    const again = await suspend(['revert', sweep, '--as-of', '2026-11-23']);
    expect(again.code).toBe(0);
    expect(again.stderr).toContain(`continuing revert run ${stopped}, which stopped part way`);
    expect(again.stdout).toContain(
      `Run ${sweep} (sweep as of 2026-11-01) reverted by run ${stopped}: 2 more account state(s) restored, 0 left alone.`,
    );
    // The same run, closed: no new run, nothing left running.
    expect(await own.knex('suspend.runs').orderBy('id').select('id', 'kind', 'status')).toEqual([
      { id: sweep, kind: 'sweep', status: 'succeeded' },
      { id: stopped, kind: 'revert', status: 'succeeded' },
    ]);
    expect(
      await own.knex('suspend.account_states').whereIn('customer_key', ['20', '21']).pluck('stage'),
    ).toEqual([null, null]);
    expect(await own.knex('customers').where({ id: 20 }).pluck('status')).toEqual(['active']);
    // The ledger says which run undid which: in the table, in JSON and in `runs show`.
    const table = (await suspend(['runs'])).stdout.split('\n');
    expect(table.find((l) => l.startsWith(`${sweep} `))).toMatch(
      / sweep +succeeded \(reverted by run \d+\) /,
    );
    expect(table.find((l) => l.startsWith(`${stopped} `))).toMatch(
      new RegExp(` revert of ${sweep} +succeeded `),
    );
    const listed = JSON.parse((await suspend(['runs', '--format', 'json'])).stdout) as {
      id: string;
      revertedBy?: { id: string; status: string };
    }[];
    expect(listed.find((r) => r.id === sweep)?.revertedBy).toEqual({ id: stopped, status: 'succeeded' });
    expect((await suspend(['runs', 'show', sweep])).stdout).toContain(`\nreverted by run ${stopped}`);
    // Finished, it can be reverted like any run.
    const undo = await suspend(['revert', stopped, '--dry-run', '--as-of', '2026-11-23']);
    expect(undo).toMatchObject({ code: 0, stderr: '' });
    expect(undo.stdout).toContain(
      `Dry run: reverting run ${stopped} (revert as of 2026-11-23) would restore 2 account state(s) and leave 0 alone; nothing was written.`,
    );
  });
});

describe('a revert without a rules file', () => {
  let own: TestDatabase;
  const example = path.join(ROOT, 'rules.example.yaml');
  const on = (args: string[], cwd?: string) =>
    runCli([...args, '--database-url', own.url], cwd ? { cwd } : {});

  beforeAll(async () => {
    own = await createTestDatabase();
    for (const args of [
      ['seed', '--customers', '2000', '--orgs', '3', '--seed', '1', '--as-of', '2026-12-02', '--quiet'],
      ['migrate', '--quiet'],
      ...[
        ['backfill', '2026-12-02'],
        ['sweep', '2027-01-05'],
      ].map(([kind, day]) => [
        kind!,
        '--as-of',
        day!,
        '--rules',
        example,
        '--no-notify',
        '--max-changes',
        'none',
        '--quiet',
      ]),
    ])
      expect((await on(args)).code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await own?.drop();
  });

  test('is refused when the run set host columns of accounts another policy still holds; with the rules it runs', async () => {
    // The later sweep put some of the backfill's accounts in stages of other policies.
    const held = await own.knex.raw<{ rows: { n: number }[] }>(
      `select count(distinct h.customer_key)::int as n from suspend.history h
         join suspend.account_states s on s.customer_key = h.customer_key and s.policy <> h.policy
        where h.run_id = 1 and s.run_id = 2 and s.stage is not null and jsonb_typeof(h.previous_state->'host') = 'object'`,
    );
    const n = held.rows[0]!.n;
    expect(n).toBeGreaterThan(0);
    const states = await checksumTables(own.knex, ['suspend', 'public']);
    // A folder with no rules file: suspend falls back to its defaults, which know no stage.
    const nowhere = path.parse(ROOT).root;
    for (const dry of [[], ['--dry-run']]) {
      const r = await on(['revert', '1', ...dry], nowhere);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 2,
        stderr: `error: Run 1 set host columns of ${n} account(s) that another policy's stage still holds, and without a rules file suspend cannot tell what those columns should hold after the revert; pass --rules FILE (the rules the runs used).\n`,
      });
    }
    expect(await checksumTables(own.knex, ['suspend', 'public'])).toEqual(states);
    const r = await on(['revert', '1', '--rules', example, '--quiet']);
    expect(r.code).toBe(0);
    // Every account with a suspending stage left is still suspended in the host column.
    const wrong = await own.knex.raw<{ rows: unknown[] }>(
      `select c.id from customers c where c.status <> 'suspended' and exists (
         select 1 from suspend.account_states s where s.customer_key = c.id::text and s.stage is not null
            and not s.allows_login)`,
    );
    expect(wrong.rows).toEqual([]);
  });
});
