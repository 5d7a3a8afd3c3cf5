import type { TestDatabase } from './helpers/database';
import {
  cli as runEngineCli,
  Gate,
  outcome,
  seededDatabase,
  startCli,
  waitForSessionsGone,
  waitUntil,
} from './helpers/reliability';
import { ROOT } from './helpers/server';
import { checksumTables, ENGINE_RULES, writeRules } from './helpers/fixtures';
import { runBatch, type BatchOptions } from '../src/engine/run';
import { acquireRunLock, LOCK_CLASS } from '../src/engine/lock';
import { loadRules } from '../src/rules/load';
import type { StateChange } from '../src/write/apply';

/**
 * `--workers N` splits the accounts into N key ranges walked side by side; the SQL pre-filter
 * leaves out accounts no rule can touch. Neither may change what a run decides or writes.
 */

const AS_OF = '2026-11-23';
const rulesFile = writeRules(ENGINE_RULES);

/** 3,000 reference accounts in 5 organizations. */
const seeded = () => seededDatabase(3000, 13);

/**
 * N copies of the seeded database for one describe block (one to change, the others to compare
 * with), created before its tests and dropped after them.
 */
function seededCopies(n: number): TestDatabase[] {
  const copies: TestDatabase[] = [];
  beforeAll(async () => {
    copies.push(...(await Promise.all(Array.from({ length: n }, seeded))));
  });
  afterAll(async () => Promise.all(copies.map((db) => db.drop())));
  return copies;
}

/** Small pages, so each worker walks several. */
const PAGES = ['--format', 'json', '--batch-size', '250'];

function cli(db: TestDatabase, args: string[]) {
  return runEngineCli(db, [...args, '--as-of', AS_OF, '--quiet'], rulesFile);
}

interface ReportJson {
  status: string;
  counts: { scanned: number; changes: number; accountsChanged: number; excluded: number };
}

describe('backfill --workers', () => {
  const copies = seededCopies(2);

  test('--dry-run with --workers 2 writes nothing and reports what one worker reports', async () => {
    const [, two] = copies as [TestDatabase, TestDatabase];
    const before = await checksumTables(two.knex, ['public', 'suspend']);
    const single = await cli(two, ['backfill', '--dry-run', ...PAGES]);
    const split = await cli(two, ['backfill', '--dry-run', '--workers', '2', ...PAGES]);
    expect([single.code, split.code]).toEqual([0, 0]);
    expect((JSON.parse(split.stdout) as ReportJson).counts).toEqual(
      (JSON.parse(single.stdout) as ReportJson).counts,
    );
    expect(await checksumTables(two.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('two workers write exactly the states, history, outbox and host columns of one', async () => {
    const [one, two] = copies as [TestDatabase, TestDatabase];
    const a = await cli(one, ['backfill', '--no-notify', ...PAGES]);
    const b = await cli(two, ['backfill', '--no-notify', '--workers', '2', ...PAGES]);
    expect([a.code, b.code]).toEqual([0, 0]);
    const ra = JSON.parse(a.stdout) as ReportJson;
    const rb = JSON.parse(b.stdout) as ReportJson;
    expect(rb.counts).toEqual(ra.counts);
    expect(ra.counts.changes).toBeGreaterThan(300);
    const [oa, ob] = [await outcome(one), await outcome(two)];
    expect(ob).toEqual(oa);
    expect(oa.history).toHaveLength(ra.counts.changes);
    expect(oa.outbox).toHaveLength(ra.counts.changes);
    // Each worker kept its own checkpoint, and finished its range.
    const checkpoints = await two.knex('suspend.checkpoints').select('shard', 'done').orderBy('shard');
    expect(checkpoints).toEqual([
      { shard: '0/1 part 1/2', done: true },
      { shard: '0/1 part 2/2', done: true },
    ]);
    const sweep = await cli(two, ['sweep', '--no-notify', '--workers', '2', '--format', 'json']);
    expect((JSON.parse(sweep.stdout) as ReportJson).counts.changes).toBe(0);
  });
});

describe('a run with workers stopped by the safety limit resumes with its own split', () => {
  const copies = seededCopies(2);

  test('--resume continues each worker after its checkpoint and ends where an uninterrupted run ends', async () => {
    const [stopped, clean] = copies as [TestDatabase, TestDatabase];
    const args = ['backfill', '--no-notify', '--workers', '2', '--batch-size', '200', '--format', 'json'];
    const first = await cli(stopped, [...args, '--max-changes', '400']);
    expect(first.code).toBe(4);
    // No --as-of: a resumed run keeps its own.
    const resumed = await runEngineCli(
      stopped,
      ['backfill', '--resume', '--no-notify', '--max-changes', 'none', '--format', 'json', '--quiet'],
      rulesFile,
    );
    expect(resumed.code).toBe(0);
    expect(await cli(clean, args)).toMatchObject({ code: 0 });
    const [a, b] = [await outcome(stopped), await outcome(clean)];
    expect(a.states).toEqual(b.states);
    expect(a.status).toEqual(b.status);
    expect(a.history).toEqual(b.history);
    const [run] = await stopped.knex('suspend.runs').select('status', 'counts');
    expect(run.status).toBe('succeeded');
    expect(run.counts.scanned).toBe(3000);
  });
});

describe('the SQL pre-filter', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seeded();
    // Exclusions from the table and accounts that already have a stage are candidates too.
    await db.knex.raw(
      `insert into suspend.exclusions (customer_key, reason, created_by) values ('17', 'test', 'me')`,
    );
  });
  afterAll(async () => db.drop());

  async function dry(allAccounts: boolean, asOf: string) {
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    const changes: StateChange[] = [];
    let evaluated = 0;
    const options: BatchOptions = {
      kind: 'sweep',
      asOf,
      dryRun: true,
      batchSize: 400,
      orgs: null,
      shard: null,
      allAccounts,
      resume: false,
      wait: false,
      actor: 'test',
      onPage: (page) => {
        evaluated += page.evaluated;
        changes.push(...page.changes);
      },
    };
    const result = await runBatch(db.knex, rules, options);
    const line = (c: StateChange) =>
      [c.key, c.policy, c.kind, c.from, c.to, JSON.stringify(c.explain().reasons), c.explain().message].join(
        '|',
      );
    return { counts: result.counts, changes: changes.map(line).sort(), evaluated };
  }
  const decided = ({ counts, changes }: Awaited<ReturnType<typeof dry>>) => ({ counts, changes });

  test('evaluating only the candidates decides exactly what evaluating every account decides', async () => {
    for (const asOf of [AS_OF, '2027-03-01']) {
      const all = await dry(true, asOf);
      const candidates = await dry(false, asOf);
      expect(decided(candidates)).toEqual(decided(all));
      expect(all.evaluated).toBe(3000);
      expect(candidates.evaluated).toBeLessThan(2000);
    }
    // And again once accounts have stages, a month later (clears, escalations, holds).
    expect(await cli(db, ['backfill', '--no-notify'])).toMatchObject({ code: 0 });
    const all = await dry(true, '2026-12-23');
    expect(all.changes.length).toBeGreaterThan(0);
    expect(decided(await dry(false, '2026-12-23'))).toEqual(decided(all));
  });
});

describe('--shard I/N processes share one run', () => {
  const copies = seededCopies(13);
  const runs = (db: TestDatabase) =>
    db.knex('suspend.runs').orderBy('id').select('id', 'kind', 'status', 'counts');
  const historyRunIds = async (db: TestDatabase) =>
    (await db.knex('suspend.history').distinct('run_id').orderBy('run_id')).map((r: { run_id: string }) =>
      String(r.run_id),
    );

  /** `backfill --shard 0/2` in the background, parked in the transaction of its page `page + 1`. */
  async function parkShard0(db: TestDatabase, page: number) {
    const gate = await Gate.install(db, 'suspend.checkpoints', `new.shard = '0/2' and new.pages > ${page}`);
    const parked = startCli(
      db,
      ['backfill', '--shard', '0/2', '--no-notify', '--quiet', '--as-of', AS_OF, ...PAGES],
      rulesFile,
    );
    await gate.blocked(parked);
    return { gate, parked };
  }

  test('shard 1/2 runs while 0/2 is inside a page; a run over every account or a second 0/2 exits 3; together they write what one run writes, under one run id', async () => {
    const [sharded, whole] = copies as [TestDatabase, TestDatabase];
    // Parks shard 0/2 in its first page's transaction (its opening checkpoint rows have 0 pages).
    const { gate, parked } = await parkShard0(sharded, 0);
    try {
      const other = await runEngineCli(
        sharded,
        ['backfill', '--shard', '1/2', '--no-notify', ...PAGES],
        rulesFile,
      );
      expect(other.code).toBe(0);
      expect(other.stderr).toContain('shard 1/2 finished; run ');
      expect(other.stderr).toContain('goes on until shard 0/2 finishes');
      // The run shard 0/2 opened, joined by 1/2: still running, since 0/2 has not finished.
      const [open] = await runs(sharded);
      expect(open).toMatchObject({ kind: 'backfill', status: 'running' });
      // Its part succeeded; the run it shares goes on, and the report says so.
      expect(JSON.parse(other.stdout)).toMatchObject({
        runId: String(open.id),
        status: 'succeeded',
        shard: { name: '1/2', runStatus: 'running', waitingFor: ['0/2'] },
      });
      const everyAccount = await cli(sharded, ['sweep', '--no-notify', ...PAGES]);
      expect(everyAccount.code).toBe(3);
      expect(everyAccount.stderr).toContain('holds the lock on schema "suspend"');
      const sameShard = await cli(sharded, ['backfill', '--shard', '0/2', '--no-notify', ...PAGES]);
      expect(sameShard.code).toBe(3);
      expect(sameShard.stderr).toContain('holds shard 0/2');
      // Shards of another count share accounts with 0/2 (a sixth of them): refused, naming 0/2's run.
      for (const kind of ['backfill', 'sweep']) {
        const otherSplit = await cli(sharded, [kind, '--shard', '1/3', '--no-notify', ...PAGES]);
        expect({ code: otherSplit.code, stdout: otherSplit.stdout }).toEqual({ code: 3, stdout: '' });
        expect(otherSplit.stderr).toMatch(
          /^error: Another suspend run splits the accounts another way: "suspend backfill --shard 0\/2 by [^"]+" \(backend pid \d+\) runs a shard of another count than --shard 1\/3, and shards of different counts share accounts; give every shard the same count, or wait for it to finish or pass --wait\.\n$/,
        );
      }
    } finally {
      await gate.remove();
    }
    const first = await parked.done;
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    const reference = await cli(whole, ['backfill', '--no-notify', ...PAGES]);
    expect(reference.code).toBe(0);
    const counts = (JSON.parse(reference.stdout) as ReportJson).counts;
    expect(counts.changes).toBeGreaterThan(300);
    expect(await outcome(sharded)).toEqual(await outcome(whole));
    // One run row for both shards, closed by the last one with the counts of both.
    const ledger = await runs(sharded);
    expect(ledger).toHaveLength(1);
    expect(ledger[0]).toMatchObject({ status: 'succeeded' });
    expect(ledger[0].counts).toMatchObject({ scanned: 3000, changes: counts.changes });
    expect(await historyRunIds(sharded)).toEqual([String(ledger[0].id)]);
    const shown = await runEngineCli(sharded, ['runs', 'show', String(ledger[0].id)], rulesFile);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(/^checkpoint 0\/2: done, \d+ pages, \d+ scanned/m);
    expect(shown.stdout).toMatch(/^checkpoint 1\/2: done, \d+ pages, \d+ scanned/m);

    // A month later both shards sweep: one sweep run with both shards' changes.
    const later = ['sweep', '--no-notify', '--as-of', '2026-12-23', '--quiet', ...PAGES];
    const sweepWhole = await runEngineCli(whole, later, rulesFile);
    const sweepCounts = (JSON.parse(sweepWhole.stdout) as ReportJson).counts;
    expect(sweepCounts.changes).toBeGreaterThan(0);
    // Started at the same moment: one opens the run, the other joins it.
    const both = await Promise.all(
      ['0/2', '1/2'].map((shard) => runEngineCli(sharded, [...later, '--shard', shard], rulesFile)),
    );
    expect(both.map((r) => r.code)).toEqual([0, 0]);
    const sweeps = (await runs(sharded)).filter((r) => r.kind === 'sweep');
    expect(sweeps).toHaveLength(1);
    expect(sweeps[0]).toMatchObject({ status: 'succeeded' });
    expect(sweeps[0].counts).toMatchObject({ scanned: 3000, changes: sweepCounts.changes });
    expect(await outcome(sharded)).toEqual(await outcome(whole));
    // A shard that sweeps again the same day has done its part of that run: it starts the next one.
    expect(await runEngineCli(sharded, [...later, '--shard', '0/2'], rulesFile)).toMatchObject({ code: 0 });
    expect((await runs(sharded)).filter((r) => r.kind === 'sweep').map((r) => r.status)).toEqual([
      'succeeded',
      'running',
    ]);
  });

  test('a killed shard leaves the shared run unfinished: that shard refuses to start over, --resume finishes the one run', async () => {
    const [, , killed, whole] = copies as TestDatabase[] as [
      TestDatabase,
      TestDatabase,
      TestDatabase,
      TestDatabase,
    ];
    // Killed in its third page, with two pages committed.
    const { gate, parked } = await parkShard0(killed, 2);
    try {
      parked.child.kill('SIGKILL');
      expect((await parked.done).signal).toBe('SIGKILL');
    } finally {
      await gate.remove();
    }
    await waitForSessionsGone(killed);
    expect(await cli(killed, ['backfill', '--shard', '1/2', '--no-notify', ...PAGES])).toMatchObject({
      code: 0,
    });
    expect((await runs(killed)).map((r) => r.status)).toEqual(['running']);

    const again = await cli(killed, ['backfill', '--shard', '0/2', '--no-notify', ...PAGES]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(
      /^error: Backfill run \d+ .* did not finish on shard 0\/2 \(interrupted\); continue it with `suspend backfill --shard 0\/2 --resume`/,
    );
    expect((await runs(killed)).map((r) => r.status)).toEqual(['interrupted']);

    const resumed = await runEngineCli(
      killed,
      ['backfill', '--shard', '0/2', '--resume', '--no-notify', '--quiet', ...PAGES],
      rulesFile,
    );
    expect(resumed).toMatchObject({ code: 0, stderr: '' });
    const ledger = await runs(killed);
    expect(ledger.map((r) => r.status)).toEqual(['succeeded']);
    expect(await historyRunIds(killed)).toEqual([String(ledger[0].id)]);
    expect(await cli(whole, ['backfill', '--no-notify', ...PAGES])).toMatchObject({ code: 0 });
    expect(await outcome(killed)).toEqual(await outcome(whole));

    // A shard joins only a run over the same organizations, and never a reverted one.
    const later = ['sweep', '--no-notify', '--as-of', '2026-12-23', '--quiet', ...PAGES];
    const sweepsOf = async () => (await runs(killed)).filter((r) => r.kind === 'sweep');
    expect(await runEngineCli(killed, [...later, '--shard', '0/2', '--org', '1'], rulesFile)).toMatchObject({
      code: 0,
    });
    expect(await runEngineCli(killed, [...later, '--shard', '1/2'], rulesFile)).toMatchObject({ code: 0 });
    expect((await sweepsOf()).map((r) => r.status)).toEqual(['running', 'running']);
    const waiting = (await sweepsOf())[1] as { id: string };
    expect(await runEngineCli(killed, ['revert', String(waiting.id), '--quiet'], rulesFile)).toMatchObject({
      code: 0,
    });
    expect(await runEngineCli(killed, [...later, '--shard', '0/2'], rulesFile)).toMatchObject({ code: 0 });
    const sweeps = await sweepsOf();
    expect(sweeps).toHaveLength(3);
    expect(await killed.knex('suspend.checkpoints').where({ run_id: waiting.id }).pluck('shard')).toEqual([
      '1/2',
    ]);
  });
  test('shards given --org in another order share one run; a shard with other rules joins it with a note; each shard resumes against its own rules', async () => {
    const db = copies[6]!;
    const stopAt = ['--max-changes', '10'];
    const first = await cli(db, [
      'backfill',
      '--no-notify',
      ...PAGES,
      ...stopAt,
      '--shard',
      '0/2',
      '--org',
      '2',
      '1',
    ]);
    expect(first.code).toBe(4);
    const [open] = await runs(db);
    expect(open).toMatchObject({ kind: 'backfill', status: 'stopped' });
    // As a version before lists were sorted stored it: in the order given.
    await db
      .knex('suspend.runs')
      .where({ id: open.id })
      .update({ org_filter: '2,1', options: db.knex.raw(`jsonb_set(options, '{orgs}', '["2","1"]')`) });
    const edited = writeRules(ENGINE_RULES.replace('inactive_for: 12 months', 'inactive_for: 13 months'));
    const shard = (name: string, rules: string, ...args: string[]) =>
      runEngineCli(
        db,
        ['backfill', '--no-notify', '--as-of', AS_OF, ...PAGES, '--shard', name, ...args],
        rules,
      );
    const second = await shard('1/2', edited, ...stopAt, '--org', '1', '2');
    expect(second.code).toBe(4);
    expect(second.stderr).toContain(
      `note: shard 1/2 joins backfill run ${open.id}, which went on with other rules so far; this shard's pages use the current rules (\`suspend runs show ${open.id}\` lists each)`,
    );
    expect((await runs(db)).map((r: { id: string }) => String(r.id))).toEqual([String(open.id)]);
    // Each shard is compared with its own rules: 0/2 goes on with the ones it started with, 1/2 changes.
    const changed = `note: the rules changed since run ${open.id} started; the remaining pages use the current rules`;
    const resumed0 = await shard('0/2', rulesFile, '--resume', '--max-changes', 'none');
    expect(resumed0.code).toBe(0);
    expect(resumed0.stderr).not.toContain(changed);
    const resumed1 = await shard('1/2', rulesFile, '--resume', '--max-changes', 'none');
    expect(resumed1.code).toBe(0);
    expect(resumed1.stderr).toContain(changed);
    expect((await runs(db)).map((r: { status: string }) => r.status)).toEqual(['succeeded']);
    const shown = await runEngineCli(db, ['runs', 'show', String(open.id)], rulesFile);
    expect(shown.stdout).toMatch(
      new RegExp(
        `\\njoined \\S+ by shard 1/2 with other rules: file ${edited.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `,
      ),
    );
    expect(shown.stdout).toMatch(
      new RegExp(
        `\\nresumed \\S+ by shard 1/2 with other rules: file ${rulesFile.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} `,
      ),
    );
  });

  test('a shard refused because a run waiting for the whole lock goes first is told so, naming that run', async () => {
    const db = copies[7]!;
    const { gate, parked } = await parkShard0(db, 0);
    const queued = startCli(db, ['sweep', '--wait', '--no-notify', '--quiet', '--as-of', AS_OF], rulesFile);
    try {
      await waitUntil(
        async () =>
          (
            await db.knex.raw<{ rows: unknown[] }>(
              "select 1 from pg_locks where locktype = 'advisory' and not granted and mode = 'ExclusiveLock' and classid = ?",
              [LOCK_CLASS],
            )
          ).rows.length > 0,
        'the sweep waits for the lock',
        queued,
      );
      const sibling = await cli(db, ['backfill', '--shard', '1/2', '--no-notify', ...PAGES]);
      expect({ code: sibling.code, stdout: sibling.stdout }).toEqual({ code: 3, stdout: '' });
      expect(sibling.stderr).toMatch(
        /^error: Another suspend run waits for the lock on schema "suspend" \("suspend sweep by [^"]+" \(backend pid \d+[^)]*\) since \S+\) and goes first, so this run cannot start beside the ones that hold it; pass --wait to run after it\.\n$/,
      );
    } finally {
      await gate.remove();
    }
    expect((await parked.done).code).toBe(0);
    // The sweep ran after shard 0/2; the backfill it left waits for shard 1/2 (a sweep does not judge it).
    expect((await queued.done).code).toBe(0);
  });

  test('a killed sweep shard run again on its day goes on with its part of that sweep, which then succeeds', async () => {
    const db = copies[8]!;
    expect(await cli(db, ['backfill', '--no-notify', ...PAGES])).toMatchObject({ code: 0 });
    const later = ['sweep', '--no-notify', '--as-of', '2026-12-23', '--quiet', ...PAGES];
    // Shard 0/2 of the sweep killed in its second page; 1/2 joins and finishes.
    const gate = await Gate.install(db, 'suspend.checkpoints', `new.shard = '0/2' and new.pages > 1`);
    const parked = startCli(db, [...later, '--shard', '0/2'], rulesFile);
    try {
      await gate.blocked(parked);
      parked.child.kill('SIGKILL');
      expect((await parked.done).signal).toBe('SIGKILL');
    } finally {
      await gate.remove();
    }
    await waitForSessionsGone(db);
    expect(await runEngineCli(db, [...later, '--shard', '1/2'], rulesFile)).toMatchObject({ code: 0 });
    const again = await runEngineCli(db, [...later, '--shard', '0/2'], rulesFile);
    expect(again).toMatchObject({ code: 0, stderr: '' });
    const sweeps = (await runs(db)).filter((r: { kind: string }) => r.kind === 'sweep');
    expect(sweeps.map((r: { status: string }) => r.status)).toEqual(['succeeded']);
    expect(JSON.parse(again.stdout)).toMatchObject({
      runId: String(sweeps[0].id),
      status: 'succeeded',
      shard: { name: '0/2', runStatus: 'succeeded', waitingFor: [] },
    });
  });

  test('splits are per suspend schema: another schema takes a shard of another count beside a parked one', async () => {
    const db = copies[9]!;
    const { gate, parked } = await parkShard0(db, 0);
    try {
      const take = (schema: string) =>
        acquireRunLock(db.knex, schema, { wait: false, description: 'a test run', shard: '1/3' });
      // Another schema (its own tables, its own runs): the split 0/2 holds in "suspend" is not its.
      const beside = await take('suspend_other');
      await beside.release();
      await expect(take('suspend')).rejects.toThrow(
        /^Another suspend run splits the accounts another way: "suspend backfill --shard 0\/2 by /,
      );
    } finally {
      await gate.remove();
    }
    expect((await parked.done).code).toBe(0);
  });

  test("one shard's stop stays on the run while another joins it; a run whose shards are all done but was never closed is closed by the next run; --abandon names the run when more than one did not finish", async () => {
    const [, , , , stopped, two] = copies as TestDatabase[] as TestDatabase[] as [
      TestDatabase,
      TestDatabase,
      TestDatabase,
      TestDatabase,
      TestDatabase,
      TestDatabase,
    ];
    const shard = (db: TestDatabase, args: string[]) =>
      cli(db, ['backfill', '--no-notify', ...PAGES, ...args]);
    const first = await shard(stopped, ['--shard', '0/2', '--max-changes', '10']);
    expect(first).toMatchObject({ code: 4 });
    // The stopped shard waits for the other, not for itself: its own stop is its status.
    expect(JSON.parse(first.stdout)).toMatchObject({
      status: 'stopped',
      shard: { name: '0/2', runStatus: 'stopped', waitingFor: ['1/2'] },
    });
    const joined = await runEngineCli(
      stopped,
      ['backfill', '--no-notify', '--as-of', AS_OF, ...PAGES, '--shard', '1/2'],
      rulesFile,
    );
    expect(joined.code).toBe(0);
    // 1/2 joined and finished; the run still says 0/2 stopped.
    const [run] = await stopped.knex('suspend.runs').select('id', 'status', 'error');
    expect(joined.stderr).toContain(
      `shard 1/2 finished; run ${run.id} stays stopped: shard 0/2 did not finish (see \`suspend runs show ${run.id}\`)`,
    );
    expect(run).toMatchObject({ status: 'stopped' });
    // Its JSON says the same: the shard succeeded, the run it shares stays stopped.
    expect(JSON.parse(joined.stdout)).toMatchObject({
      status: 'succeeded',
      shard: { name: '1/2', runStatus: 'stopped', waitingFor: ['0/2'] },
    });
    expect(run.error).toMatch(/^shard 0\/2: safety limit: max_changes 10 would be crossed/);
    const again = await shard(stopped, ['--shard', '0/2']);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain(
      `did not finish on shard 0/2 (stopped); continue it with \`suspend backfill --shard 0/2 --resume\` or give it up with \`suspend backfill --abandon ${run.id}\``,
    );
    expect(await stopped.knex('suspend.runs').pluck('status')).toEqual(['stopped']);
    expect(await shard(stopped, ['--shard', '0/2', '--resume', '--max-changes', 'none'])).toMatchObject({
      code: 0,
    });
    expect(await stopped.knex('suspend.runs').select('status', 'error')).toEqual([
      { status: 'succeeded', error: null },
    ]);

    // The last shard's close failed (say its connection dropped): every part is done, the row says
    // running. It is not something to abandon, and the next run closes it.
    await stopped.knex('suspend.runs').update({ status: 'running', finished_at: null });
    const abandon = await cli(stopped, ['backfill', '--abandon']);
    expect(abandon.code).toBe(2);
    expect(abandon.stderr).toContain('There is no unfinished backfill to abandon.');
    expect(await stopped.knex('suspend.runs').pluck('status')).toEqual(['succeeded']);
    await stopped.knex('suspend.runs').update({ status: 'running', finished_at: null });
    const later = ['sweep', '--no-notify', '--as-of', '2026-12-23', '--quiet', ...PAGES, '--shard', '0/2'];
    expect(await runEngineCli(stopped, later, rulesFile)).toMatchObject({ code: 0 });
    expect(await stopped.knex('suspend.runs').orderBy('id').pluck('status')).toEqual([
      'succeeded',
      'running',
    ]);

    // A shared backfill and one over every account, both stopped by the safety limit.
    expect(await shard(two, ['--shard', '0/2', '--max-changes', '10'])).toMatchObject({ code: 4 });
    expect(await shard(two, ['--max-changes', '10'])).toMatchObject({ code: 4 });
    const ids = (await two.knex('suspend.runs').orderBy('id').pluck('id')).map(String);
    expect(ids).toHaveLength(2);
    const [sharedRun, wholeRun] = ids as [string, string];
    const vague = await cli(two, ['backfill', '--abandon']);
    expect(vague.code).toBe(2);
    expect(vague.stderr).toContain(
      `There are 2 unfinished backfills (runs ${wholeRun}, ${sharedRun}); name the one to give up, e.g. \`suspend backfill --abandon ${wholeRun}\`.`,
    );
    const named = await cli(two, ['backfill', '--abandon', sharedRun]);
    expect(named).toMatchObject({ code: 0, stderr: '' });
    expect(named.stdout).toContain(`Backfill run ${sharedRun} (as of ${AS_OF}) abandoned`);
    const wrong = await cli(two, ['backfill', '--abandon', sharedRun]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toContain(
      `Run ${sharedRun} is not an unfinished backfill; the unfinished backfill is run ${wholeRun}.`,
    );
    expect(await cli(two, ['backfill', '--abandon'])).toMatchObject({ code: 0 });
    expect(await two.knex('suspend.runs').orderBy('id').pluck('status')).toEqual(['abandoned', 'abandoned']);
  });

  test('a backfill shard run again once its part is done opens no second backfill: exit 2, the run waits for the others', async () => {
    const db = copies[10]!;
    const shard = (i: number) => cli(db, ['backfill', '--shard', `${i}/3`, '--no-notify', ...PAGES]);
    expect((await shard(1)).code).toBe(0);
    const again = await shard(1);
    expect({ code: again.code, stdout: again.stdout }).toEqual({ code: 2, stdout: '' });
    expect(again.stderr).toBe(
      'error: Shard 1/3 of backfill run 1 is done already; the run waits for shards 0/3, 2/3: run those, or abandon the run (`suspend backfill --abandon 1`) to backfill again from the start.\n',
    );
    expect((await runs(db)).map((r) => [String(r.id), r.status])).toEqual([['1', 'running']]);
    // The others join that run, which then succeeds; a shard run after that starts a new backfill.
    expect((await shard(0)).code).toBe(0);
    expect((await shard(2)).code).toBe(0);
    expect((await runs(db)).map((r) => [String(r.id), r.status])).toEqual([['1', 'succeeded']]);
    expect((await shard(1)).code).toBe(0);
    expect((await runs(db)).map((r) => [String(r.id), r.status])).toEqual([
      ['1', 'succeeded'],
      ['2', 'running'],
    ]);
  });

  test('a sweep shard run again once its part is done opens no second sweep: exit 2, the other shard finishes the one run', async () => {
    const db = copies[11]!;
    const shard = (i: number) => cli(db, ['sweep', '--shard', `${i}/2`, '--no-notify', ...PAGES]);
    expect((await shard(1)).code).toBe(0);
    const again = await shard(1);
    expect({ code: again.code, stdout: again.stdout }).toEqual({ code: 2, stdout: '' });
    expect(again.stderr).toBe(
      `error: Shard 1/2 of sweep run 1 (as of ${AS_OF}) is done already; the run waits for shard 0/2: run that one to finish it.\n`,
    );
    expect((await runs(db)).map((r) => [String(r.id), r.kind, r.status])).toEqual([
      ['1', 'sweep', 'running'],
    ]);
    // Shard 0/2 joins that run, which then succeeds: no run is left running.
    const last = await shard(0);
    expect(last.code).toBe(0);
    expect(JSON.parse(last.stdout)).toMatchObject({
      runId: '1',
      status: 'succeeded',
      shard: { name: '0/2', runStatus: 'succeeded', waitingFor: [] },
    });
    expect((await runs(db)).map((r) => [String(r.id), r.kind, r.status])).toEqual([
      ['1', 'sweep', 'succeeded'],
    ]);
    expect(await historyRunIds(db)).toEqual(['1']);
  });

  test('a sweep shard started after another stopped joins that sweep: one run, which succeeds once the stopped one goes on', async () => {
    const db = copies[12]!;
    const shard = (i: number, ...more: string[]) =>
      cli(db, ['sweep', '--shard', `${i}/2`, '--no-notify', ...PAGES, ...more]);
    expect((await shard(0, '--max-changes', '10')).code).toBe(4);
    expect((await runs(db)).map((r) => [String(r.id), r.status])).toEqual([['1', 'stopped']]);
    // Before, 1/2 opened a sweep of its own, and 0/2 went back to the first: the second stayed running.
    const joined = await shard(1);
    expect(joined.code).toBe(0);
    expect(JSON.parse(joined.stdout)).toMatchObject({
      runId: '1',
      status: 'succeeded',
      shard: { name: '1/2', runStatus: 'stopped', waitingFor: ['0/2'] },
    });
    const last = await shard(0, '--max-changes', 'none');
    expect(last.code).toBe(0);
    expect(JSON.parse(last.stdout)).toMatchObject({ runId: '1', shard: { runStatus: 'succeeded' } });
    expect((await runs(db)).map((r) => [String(r.id), r.kind, r.status])).toEqual([
      ['1', 'sweep', 'succeeded'],
    ]);
    expect(await historyRunIds(db)).toEqual(['1']);
  });
});

describe('a resumed run with more ranges than --workers asks for', () => {
  const copies = seededCopies(1);

  test('gets connections for every range it walks: each range writes its two pages at once', async () => {
    const [db] = copies as [TestDatabase];
    const stop = await cli(db, [
      'backfill',
      '--no-notify',
      '--workers',
      '3',
      '--batch-size',
      '100',
      '--max-changes',
      '30',
    ]);
    expect(stop.code).toBe(4);
    const rules = await loadRules({ file: rulesFile, cwd: ROOT });
    // Resumed without --workers: its three ranges, two pages each, park inside their transactions.
    let inside = 0;
    let most = 0;
    let release: () => void = () => undefined;
    const released = new Promise<void>((resolve) => (release = resolve));
    const result = await runBatch(db.knex, rules, {
      kind: 'backfill',
      asOf: AS_OF,
      dryRun: false,
      batchSize: 100,
      orgs: null,
      shard: null,
      resume: true,
      wait: false,
      actor: 'test',
      beforeWrite: async () => {
        most = Math.max(most, ++inside);
        // A fallback that must not outlive the test (jest would wait for it).
        if (most === 1) setTimeout(release, 5000).unref();
        if (most >= 6) release();
        await released;
        inside--;
      },
    });
    expect(result.status).toBe('succeeded');
    expect(most).toBe(6);
  });
});
