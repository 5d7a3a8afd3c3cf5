import type { TestDatabase } from '../helpers/database';
import { ROOT } from '../helpers/server';
import {
  ACTOR,
  AS_OF,
  cli,
  Gate,
  ledger,
  RULES_FILE,
  runLockWaiters,
  seededDatabase,
  startCli,
  waitUntil,
  type RunningCli,
} from '../helpers/reliability';
import { runBatch } from '../../src/engine/run';
import { loadRules } from '../../src/rules/load';

/**
 * Concurrency: two sweeps at once, and a sweep racing a reinstatement. Runs are parked inside a
 * page's transaction with a gate (a trigger waiting on a lock the test holds), never with sleeps.
 */

interface Json {
  runId: string | null;
  status: string;
  counts: { changes: number; changedSinceRead: number };
}

const SWEEP = [
  'sweep',
  '--as-of',
  AS_OF,
  '--batch-size',
  '100',
  '--no-notify',
  '--format',
  'json',
  '--quiet',
];

const dbs: TestDatabase[] = [];
async function database(): Promise<TestDatabase> {
  const db = await seededDatabase(1500, 9);
  dbs.push(db);
  return db;
}
afterAll(async () => Promise.all(dbs.map((d) => d.drop())));

/** The first of `runs` to exit, and the other. */
async function firstToExit(runs: [RunningCli, RunningCli]): Promise<[number, number]> {
  const first = await Promise.race(runs.map((r, i) => r.done.then(() => i)));
  return [first, 1 - first];
}

test('two sweeps started together: one acts, the other exits 3 naming the holder and writes nothing', async () => {
  const db = await database();
  const gate = await Gate.install(db, 'suspend.checkpoints', 'new.pages = 1');
  const names = ['alice', 'bob'];
  const runs: [RunningCli, RunningCli] = [
    startCli(db, [...SWEEP, '--by', 'alice']),
    startCli(db, [...SWEEP, '--by', 'bob']),
  ];
  // Whichever takes the lock first is parked at page 1 holding it; the other cannot get it.
  const [loser, winner] = await firstToExit(runs);
  const lost = await runs[loser]!.done;
  await gate.remove();
  const won = await runs[winner]!.done;

  expect(lost.code).toBe(3);
  expect(lost.stdout).toBe('');
  expect(lost.stderr.trim().split('\n')).toEqual([
    expect.stringMatching(
      new RegExp(
        `^error: Another suspend run holds the lock on schema "suspend": "suspend sweep by ${names[winner]} \\(pid ${runs[winner]!.child.pid}\\)" \\(backend pid \\d+.*\\) since \\S+; wait for it to finish or pass --wait\\.$`,
      ),
    ),
  ]);
  expect(won.code).toBe(0);
  const result = JSON.parse(won.stdout) as Json;
  expect(result.counts.changes).toBeGreaterThan(100);
  expect((await ledger(db.knex)).map((r) => [r.kind, r.status, r.started_by])).toEqual([
    ['sweep', 'succeeded', names[winner]],
  ]);
});

test('with --wait the second sweep runs after the first and changes nothing', async () => {
  const db = await database();
  const gate = await Gate.install(db, 'suspend.checkpoints', 'new.pages = 1');
  const runs: [RunningCli, RunningCli] = [
    startCli(db, [...SWEEP, '--wait', '--by', 'alice']),
    startCli(db, [...SWEEP, '--wait', '--by', 'bob']),
  ];
  await gate.blocked();
  await waitUntil(async () => (await runLockWaiters(db)).length === 1, 'the second sweep waits for the lock');
  await gate.remove();
  const results = await Promise.all(runs.map((r) => r.done));
  expect(results.map((r) => r.code)).toEqual([0, 0]);
  const [a, b] = results.map((r) => JSON.parse(r.stdout) as Json);
  const [first, second] = Number(a!.runId) < Number(b!.runId) ? [a!, b!] : [b!, a!];
  expect(first.counts.changes).toBeGreaterThan(100);
  expect(second.counts.changes).toBe(0);
  const byRun = await db
    .knex('suspend.history')
    .select('run_id')
    .count<{ run_id: string; n: string }[]>({ n: '*' })
    .groupBy('run_id');
  expect(byRun.map((r) => [String(r.run_id), Number(r.n)])).toEqual([[first.runId, first.counts.changes]]);
  expect((await ledger(db.knex)).map((r) => r.status)).toEqual(['succeeded', 'succeeded']);
});

/** `run`, sent Ctrl-C once `waiting` says it waits, as it exits. */
async function interruptedOnceWaiting(run: RunningCli, waiting: () => Promise<boolean>) {
  await waitUntil(waiting, 'the run waits for the lock', run);
  run.child.kill('SIGINT');
  return run.done;
}

test('Ctrl-C ends a --wait: exit 3, no run opened, and no lock left held or queued', async () => {
  const db = await database();
  const gate = await Gate.install(db, 'suspend.checkpoints', 'new.pages = 1');
  const first = startCli(db, [...SWEEP, '--shard', '0/2', '--by', 'alice']);
  await gate.blocked(first);
  // A run over every account waits in a blocking lock call, cancelled from another session.
  const stopped = await interruptedOnceWaiting(
    startCli(db, [...SWEEP, '--wait', '--by', 'bob']),
    async () => (await runLockWaiters(db)).length === 1,
  );
  expect(stopped.code).toBe(3);
  expect(stopped.stdout).toBe('');
  expect(stopped.stderr).toMatch(
    /^error: Stopped waiting behind "suspend sweep --shard 0\/2 by alice \(pid \d+\)" \(backend pid \d+[^)]*\) since \S+ \(interrupted\); this run did not start and wrote nothing\.\n$/,
  );
  expect(await runLockWaiters(db)).toEqual([]);

  // A shard of another count waits between looks for the other split to end: the pause ends at once.
  // Not --quiet: it says when it starts to wait, so Ctrl-C comes during the pause.
  const shard = startCli(db, [
    ...SWEEP.filter((a) => a !== '--quiet'),
    ...['--shard', '0/3', '--wait', '--by', 'carol'],
  ]);
  let said = '';
  shard.child.stderr?.on('data', (d: Buffer) => (said += d.toString()));
  const shardStopped = await interruptedOnceWaiting(shard, async () =>
    said.includes('waiting behind "suspend sweep --shard 0/2 by alice'),
  );
  expect(shardStopped.code).toBe(3);
  expect(shardStopped.stderr).toMatch(
    /^waiting behind "suspend sweep --shard 0\/2 by alice \(pid \d+\)" \(backend pid \d+\)\ninterrupt: stopping \(a run under way finishes its current page first; one still waiting to start ends now\)\nerror: Stopped waiting behind "suspend sweep --shard 0\/2 by alice \(pid \d+\)" \(backend pid \d+\) \(interrupted\); this run did not start and wrote nothing\.\n$/,
  );

  await gate.remove();
  expect((await first.done).code).toBe(0);
  expect((await ledger(db.knex)).map((r) => r.started_by)).toEqual(['alice']);
  const locks = await db.knex.raw<{ rows: { n: string }[] }>(
    `select count(*) as n from pg_locks
      where locktype = 'advisory' and database = (select oid from pg_database where datname = current_database())`,
  );
  expect(Number(locks.rows[0]!.n)).toBe(0);
});

test('Ctrl-C ends a reinstate --wait too: exit 3, nothing reinstated, nothing left in the lock queue', async () => {
  const db = await database();
  const gate = await Gate.install(db, 'suspend.checkpoints', 'new.pages = 1');
  const sweep = startCli(db, [...SWEEP, '--by', 'alice']);
  await gate.blocked(sweep);
  const stopped = await interruptedOnceWaiting(
    startCli(db, ['reinstate', '1', '--reason', 'promised', '--wait', '--by', 'carol']),
    async () => (await runLockWaiters(db)).length === 1,
  );
  expect({ code: stopped.code, stdout: stopped.stdout }).toEqual({ code: 3, stdout: '' });
  expect(stopped.stderr).toMatch(
    /\nerror: Stopped waiting behind "suspend sweep by alice \(pid \d+\)" .*\(interrupted\); this run did not start and wrote nothing\.\n$/,
  );
  expect(await runLockWaiters(db)).toEqual([]);
  await gate.remove();
  expect((await sweep.done).code).toBe(0);
  expect((await ledger(db.knex)).map((r) => r.kind)).toEqual(['sweep']);
});

/** A key on the first page of 100 that the sweep suspends for inactivity (so it sets customers.status). */
async function suspendedOnFirstPage(db: TestDatabase): Promise<string> {
  const r = await cli(db, ['report', '--as-of', AS_OF, '--accounts', '--format', 'json']);
  expect(r.code).toBe(0);
  const accounts = (JSON.parse(r.stdout) as { accounts: { key: string; policy: string; to: string }[] })
    .accounts;
  const firstPage = new Set(
    ((await db.knex('customers').orderBy('id').limit(100).pluck('id')) as string[]).map(String),
  );
  const key = accounts.find(
    (a) => firstPage.has(a.key) && a.policy === 'inactivity' && a.to === 'suspended',
  )?.key;
  expect(key).toBeDefined();
  return key as string;
}

async function statesOf(db: TestDatabase, key: string) {
  return db
    .knex('suspend.account_states')
    .where({ customer_key: key })
    .select('policy', 'stage', db.knex.raw("to_char(reinstated_on, 'YYYY-MM-DD') as reinstated_on"))
    .orderBy('policy');
}

async function historyOf(db: TestDatabase, key: string): Promise<string[]> {
  const rows = (await db
    .knex('suspend.history')
    .where({ customer_key: key })
    .orderBy('id')
    .select('kind', 'policy', 'to_stage')) as { kind: string; policy: string; to_stage: string | null }[];
  return rows.map((h) => `${h.kind} ${h.policy} ${h.to_stage ?? 'clear'}`);
}

test('a shard of another count that waits goes before shards of the running count started after it', async () => {
  const db = await database();
  // Parks the first page of shards of 2 only.
  const gate = await Gate.install(db, 'suspend.checkpoints', "new.pages = 1 and new.shard like '%/2'");
  const first = startCli(db, [...SWEEP, '--shard', '0/2', '--by', 'alice']);
  await gate.blocked(first);
  const turns = async () => {
    const r = await db.knex.raw<{ rows: { n: string }[] }>(
      `select count(*) as n from pg_locks where locktype = 'advisory' and granted and objsubid = 1
          and objid >= 1073741824 and database = (select oid from pg_database where datname = current_database())`,
    );
    return Number(r.rows[0]!.n);
  };
  // 0/3 waits for 0/2 to end, and takes its turn meanwhile.
  const otherCount = startCli(db, [...SWEEP, '--shard', '0/3', '--wait', '--by', 'carol']);
  await waitUntil(async () => (await turns()) === 1, 'the shard of 3 waits for its turn', otherCount);
  // 1/2 would share no account with 0/2, but 0/3 waits for it: 1/2 does not start before 0/3.
  const sibling = await cli(db, [...SWEEP, '--shard', '1/2', '--by', 'dave']);
  expect({ code: sibling.code, stdout: sibling.stdout }).toEqual({ code: 3, stdout: '' });
  expect(sibling.stderr).toMatch(
    /^error: Another suspend run waits to split the accounts another way: "suspend sweep --shard 0\/3 by carol \(pid \d+\)" \(backend pid \d+, waiting for its turn\) waits to run a shard of another count than --shard 1\/2 and goes first, since shards of different counts share accounts; pass --wait to run after it\.\n$/,
  );
  const later = startCli(db, [...SWEEP, '--shard', '1/2', '--wait', '--by', 'erin']);
  await waitUntil(
    async () =>
      (await db.knex('pg_stat_activity').where('application_name', 'like', '%1/2 by erin%')).length > 0,
    'the later shard of 2 waits',
    later,
  );
  await gate.remove();
  const results = await Promise.all([first.done, otherCount.done, later.done]);
  expect(results.map((r) => r.code)).toEqual([0, 0, 0]);
  // In the order of their writes: 0/2, then all of 0/3, then 1/2 (which joined 0/2's run).
  const order = (await db.knex('suspend.history').orderBy('id').pluck('run_id')).map(String);
  const segments = order.filter((runId, i) => i === 0 || runId !== order[i - 1]);
  expect(segments).toHaveLength(3);
  expect(segments[0]).toBe(segments[2]);
  expect(await turns()).toBe(0);
});

test('reinstate on an account in the page a sweep is writing: exit 3 without --wait; with --wait it applies after, nothing lost', async () => {
  const db = await database();
  const key = await suspendedOnFirstPage(db);
  const [{ status: statusBefore }] = await db.knex('customers').where({ id: key }).select('status');
  const gate = await Gate.install(db, 'suspend.checkpoints', 'new.pages = 1');
  const sweep = startCli(db, [...SWEEP, '--by', ACTOR]);
  await gate.blocked(sweep);

  const reinstate = ['reinstate', key, '--reason', 'called back, still in business', '--as-of', AS_OF];
  const refused = await cli(db, [...reinstate, '--by', 'carol']);
  expect(refused.code).toBe(3);
  expect(refused.stderr).toContain(`"suspend sweep by ${ACTOR} (pid ${sweep.child.pid})"`);

  const waiting = startCli(db, [...reinstate, '--by', 'carol', '--wait']);
  await waitUntil(
    async () => (await runLockWaiters(db)).length === 1,
    'reinstate waits for the lock',
    waiting,
  );
  await gate.remove();
  const swept = await sweep.done;
  const reinstated = await waiting.done;
  expect(swept.code).toBe(0);
  expect(reinstated.stderr).toMatch(
    new RegExp(`^waiting behind "suspend sweep by ${ACTOR} \\(pid ${sweep.child.pid}\\)" [^\\n]+\\n$`),
  );
  expect(reinstated.code).toBe(0);
  expect(reinstated.stdout).toContain(`Reinstated customer ${key}`);

  // Both writes are there, in order: the sweep's entries, then the reinstatement of each.
  const history = await historyOf(db, key);
  const entered = history.filter((h) => h.startsWith('enter '));
  expect(entered).toContain('enter inactivity suspended');
  expect(history).toEqual([
    ...entered,
    ...entered.map((h) => h.replace(/^enter (\S+) \S+$/, 'reinstate $1 clear')).sort(),
  ]);
  expect((await statesOf(db, key)).every((s) => s.stage === null && s.reinstated_on === AS_OF)).toBe(true);
  expect(await db.knex('customers').where({ id: key }).select('status')).toEqual([{ status: statusBefore }]);

  // The next sweep on the same day respects the reinstatement: the clocks restarted.
  const again = await cli(db, [...SWEEP, '--by', ACTOR]);
  expect(again.code).toBe(0);
  expect((JSON.parse(again.stdout) as Json).counts.changes).toBe(0);
  expect(await historyOf(db, key)).toEqual(history);
});

test('a sweep started while a reinstatement holds the lock waits for it and does not undo it', async () => {
  const db = await database();
  const key = await suspendedOnFirstPage(db);
  const backfill = await cli(db, ['backfill', '--as-of', AS_OF, '--no-notify', '--quiet', '--by', ACTOR]);
  expect(backfill.code).toBe(0);
  const before = await historyOf(db, key);

  const gate = await Gate.install(db, 'suspend.history', "new.kind = 'reinstate'");
  const reinstate = startCli(db, [
    'reinstate',
    key,
    '--reason',
    'verified',
    '--as-of',
    AS_OF,
    '--by',
    'carol',
  ]);
  await gate.blocked(reinstate);
  const sweep = startCli(db, [...SWEEP, '--wait', '--by', ACTOR]);
  await waitUntil(async () => (await runLockWaiters(db)).length === 1, 'the sweep waits for the lock', sweep);
  await gate.remove();
  expect((await reinstate.done).code).toBe(0);
  const swept = await sweep.done;
  expect(swept.code).toBe(0);
  expect((JSON.parse(swept.stdout) as Json).counts.changes).toBe(0);
  expect((await statesOf(db, key)).every((s) => s.stage === null && s.reinstated_on === AS_OF)).toBe(true);
  const after = await historyOf(db, key);
  expect(after.slice(0, before.length)).toEqual(before);
  expect(after.slice(before.length).every((h) => h.startsWith('reinstate '))).toBe(true);
});

test('a state written by another session between a page’s read and write is not overwritten', async () => {
  const db = await database();
  const key = await suspendedOnFirstPage(db);
  const rules = await loadRules({ file: RULES_FILE, cwd: ROOT });
  let wrote = false;
  const result = await runBatch(db.knex, rules, {
    kind: 'sweep',
    asOf: AS_OF,
    dryRun: false,
    batchSize: 100,
    orgs: null,
    shard: null,
    resume: false,
    wait: false,
    actor: ACTOR,
    beforeWrite: async (keys) => {
      if (wrote || !keys.includes(key)) return;
      wrote = true;
      // Another session (one that does not take the run lock) reinstates the account by hand.
      await db.knex('suspend.account_states').insert({
        customer_key: key,
        policy: 'inactivity',
        stage: null,
        reinstated_on: AS_OF,
        reasons: JSON.stringify([{ condition: 'reinstate', text: 'by hand', evidence: {} }]),
      });
    },
  });
  expect(wrote).toBe(true);
  expect(result.status).toBe('succeeded');
  expect(result.counts.changedSinceRead).toBeGreaterThanOrEqual(1);
  const rows = await db.knex('suspend.account_states').where({ customer_key: key, policy: 'inactivity' });
  expect(rows).toEqual([expect.objectContaining({ stage: null, version: 1, run_id: null })]);
  expect(await historyOf(db, key)).not.toContain('enter inactivity suspended');
});
