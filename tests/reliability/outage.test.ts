import { createKnex, onLiveConnection } from '../../src/db/connection';
import type { TestDatabase } from '../helpers/database';
import {
  ACTOR,
  AS_OF,
  cli,
  Gate,
  finalState,
  ledger,
  seededDatabase,
  startCli,
  STACK_FRAME,
  suspendSessions,
  waitForSessionsGone,
} from '../helpers/reliability';

/** Database outage: the connection cut mid-run by pg_terminate_backend. */

const BACKFILL = ['backfill', '--as-of', AS_OF, '--batch-size', '100', '--no-notify', '--by', ACTOR];

let reference: Record<string, string>;
const dbs: TestDatabase[] = [];

beforeAll(async () => {
  const db = await seededDatabase(2000, 4);
  dbs.push(db);
  const r = await cli(db, [...BACKFILL, '--quiet']);
  expect(r.code).toBe(0);
  reference = await finalState(db.knex);
});
afterAll(async () => Promise.all(dbs.map((d) => d.drop())));

async function cutMidRun(which: 'page' | 'all'): Promise<void> {
  const db = await seededDatabase(2000, 4);
  dbs.push(db);
  const gate = await Gate.install(db, 'suspend.checkpoints', 'new.pages = 6');
  const run = startCli(db, [...BACKFILL, '--quiet']);
  const parked = await gate.blocked(run);
  const victims = which === 'page' ? [parked] : await suspendSessions(db);
  expect(victims.length).toBeGreaterThanOrEqual(1);
  await db.knex.raw('select pg_terminate_backend(pid) from unnest(?::int[]) as pid', [victims]);
  const result = await run.done;
  await gate.remove();
  await waitForSessionsGone(db);

  expect(result.stdout).toBe('');
  expect(result.stderr).not.toMatch(STACK_FRAME);
  const lines = result.stderr.trim().split('\n');
  expect(lines).toHaveLength(1);
  expect(lines[0]).toMatch(/^error: Lost the connection to Postgres at (?:socket )?\S+\/suspend_test_\w+/);
  expect(lines[0]).toContain('suspend backfill --resume');
  expect(result.code).toBe(1);

  const [run1] = await ledger(db.knex);
  expect(run1).toMatchObject({ kind: 'backfill', status: 'interrupted' });
  expect(run1?.error).toBeTruthy();

  const resumed = await cli(db, ['backfill', '--resume', '--no-notify', '--quiet', '--by', ACTOR]);
  expect(resumed.stderr).toBe('');
  expect(resumed.code).toBe(0);
  expect(await finalState(db.knex)).toEqual(reference);
}

test('the page connection terminated mid-run: one sentence, exit 1, ledger interrupted, resume completes', async () => {
  await cutMidRun('page');
});

test('every session of the run terminated (pool and lock): the same', async () => {
  await cutMidRun('all');
});

test('a statement after every pooled session was killed gets a new connection instead of a dead one', async () => {
  const db = dbs[0] as TestDatabase;
  const pool = createKnex(db.url, { pool: 3, applicationName: 'suspend killed pool' });
  try {
    // Ten rounds: the pool's idle sessions are killed and the next statement runs at once, before
    // (most times) their end reaches the client, which is when the run marks itself interrupted.
    for (let round = 0; round < 10; round++) {
      await Promise.all([1, 2, 3].map(() => pool.raw('select pg_sleep(0.01)')));
      await db.knex.raw(
        "select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'suspend killed pool'",
      );
      const r = await onLiveConnection(pool, () => pool.raw<{ rows: { one: number }[] }>('select 1 as one'));
      expect(r.rows).toEqual([{ one: 1 }]);
    }
  } finally {
    await pool.destroy();
  }
});
