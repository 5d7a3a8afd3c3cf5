import type { TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { checksumTables } from './helpers/fixtures';
import {
  backfillArgs,
  cli,
  leastPrivilegeRole,
  ledger,
  RULES_FILE,
  seededDatabase,
  type TestRole,
} from './helpers/reliability';

/**
 * `--workers N` opens four connections per worker plus up to four of the run's own. A run that needs
 * more than the server (or its role, or the database) has room for is refused before the run is
 * opened or a page read: one sentence, exit code 2, no run record, and the next run is not blocked.
 *
 * 50 accounts: a `--workers 64` run that got past the check would walk a single range and never
 * come near max_connections, so this suite cannot starve the shared server. A role's connection
 * limit is what a run really runs into here (without the check, `--workers 3` fails mid-run).
 */

let db: TestDatabase;
let runner: TestRole;

beforeAll(async () => {
  db = await seededDatabase(50, 5);
  runner = await leastPrivilegeRole(db, 'suspend_room');
  await db.knex.raw('alter role ?? connection limit 10', [runner.name]);
});

afterAll(async () => {
  await db.drop();
  await runner.drop();
});

const asRole = (args: string[]) => runCli([...args, '--rules', RULES_FILE, '--database-url', runner.url]);

const unchanged = async () => checksumTables(db.knex, ['public', 'suspend']);

const ROOM = String.raw`(?<who>the server|role "[^"]+") has room for (?<room>-?\d+) \((?<setting>max_connections|its connection limit) (?<limit>\d+)(?:, (?<reserved>\d+) reserved)?, (?<inUse>\d+) in use\)`;
const NEW_RUN = new RegExp(
  String.raw`^error: --workers (?<workers>\d+) needs (?<needed>\d+) connections but ${ROOM}; (?:use --workers (?<fits>\d+) or fewer, or|close some of them or) raise \k<setting>\.\n$`,
);
const RESUMED_RUN = new RegExp(
  String.raw`^error: Run (?<run>\d+) continues with the (?<workers>\d+) workers it started with, which need (?<needed>\d+) connections, but ${ROOM}; raise \k<setting>, or give the run up with \`suspend backfill --abandon \k<run>\`\.\n$`,
);

/** The one line on stderr, checked against the numbers it gives. */
function refusal(stderr: string, sentence = NEW_RUN) {
  const g = sentence.exec(stderr)?.groups;
  if (!g) throw new Error(`not the sentence: ${stderr}`);
  const n = (k: string) => Number(g[k] ?? 0);
  // Four connections a worker and four for the run; the room is what the cap leaves.
  expect(n('needed')).toBe(4 * n('workers') + 4);
  expect(n('room')).toBe(n('limit') - n('reserved') - n('inUse'));
  expect(n('needed')).toBeGreaterThan(n('room'));
  if (g.fits !== undefined) expect(n('fits')).toBe(Math.floor((n('room') - 4) / 4));
  return { who: g.who, workers: n('workers'), run: g.run };
}

test('--workers 64 beyond max_connections: one sentence, exit 2, nothing written, for a run, a shard and a dry run', async () => {
  const max = (
    await db.knex.raw<{ rows: { m: number }[] }>("select current_setting('max_connections')::int as m")
  ).rows[0]?.m;
  expect(max).toBeLessThan(4 * 64 + 4); // a server with room for 64 workers cannot show this
  const before = await unchanged();
  for (const args of [
    [...backfillArgs(10), '--workers', '64'],
    [...backfillArgs(10), '--workers', '64', '--shard', '0/2'],
    ['sweep', '--no-notify', '--workers', '64'],
    ['report', '--workers', '64'],
  ]) {
    const r = await cli(db, args);
    expect({ args, code: r.code, stdout: r.stdout }).toEqual({ args, code: 2, stdout: '' });
    expect(refusal(r.stderr)).toMatchObject({ who: 'the server', workers: 64 });
  }
  expect(await unchanged()).toEqual(before);
  expect(await ledger(db.knex)).toEqual([]);
});

test("a role's connection limit: a new run and a resumed one are refused, nothing changes, and the run resumes once there is room", async () => {
  const before = await unchanged();
  const fresh = await asRole([...backfillArgs(2), '--workers', '3']);
  expect(fresh.code).toBe(2);
  expect(refusal(fresh.stderr)).toMatchObject({ who: `role "${runner.name}"`, workers: 3 });
  expect(await unchanged()).toEqual(before);
  expect(await ledger(db.knex)).toEqual([]);

  // A backfill split three ways (by a superuser, whom no role limit holds) stops at the safety limit.
  const stopped = await cli(db, [...backfillArgs(10), '--workers', '3', '--max-changes', '1']);
  expect(stopped.code).toBe(4);
  const [run] = await ledger(db.knex);
  expect(run).toMatchObject({ kind: 'backfill', status: 'stopped' });

  // Its resume keeps the three workers, which the role has no room for.
  const atStop = await unchanged();
  const resumed = await asRole(['backfill', '--resume', '--no-notify']);
  expect(resumed.code).toBe(2);
  expect(refusal(resumed.stderr, RESUMED_RUN)).toMatchObject({
    who: `role "${runner.name}"`,
    workers: 3,
    run: run!.id,
  });
  expect(await unchanged()).toEqual(atStop);
  expect(await ledger(db.knex)).toEqual([run]);

  await db.knex.raw('alter role ?? connection limit 16', [runner.name]);
  const done = await asRole(['backfill', '--resume', '--no-notify', '--max-changes', 'none', '--quiet']);
  expect(done.stderr).toBe('');
  expect(done.code).toBe(0);
  expect((await ledger(db.knex)).map((r) => [r.id, r.status])).toEqual([[run!.id, 'succeeded']]);
});

test('a run without --workers is not checked: under a role limit of 6 (a worker counts 8), a report and a sweep run as before', async () => {
  await db.knex.raw('alter role ?? connection limit 6', [runner.name]);
  try {
    const later = ['--as-of', '2026-12-30', '--batch-size', '10', '--format', 'json', '--quiet'];
    const report = await asRole(['report', ...later]);
    expect(report.stderr).toBe('');
    expect(report.code).toBe(0);
    const planned = (JSON.parse(report.stdout) as { counts: { changes: number } }).counts.changes;
    expect(planned).toBeGreaterThan(0);
    const sweep = await asRole(['sweep', '--no-notify', '--max-changes', 'none', ...later]);
    expect(sweep.stderr).toBe('');
    expect(sweep.code).toBe(0);
    expect((JSON.parse(sweep.stdout) as { counts: { changes: number } }).counts.changes).toBe(planned);
  } finally {
    await db.knex.raw('alter role ?? connection limit 10', [runner.name]);
  }
});
