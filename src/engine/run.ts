import type { Knex } from 'knex';
import { ExitCode, UsageError, errorMessage } from '../errors';
import { migrationStatus, requireMigrated } from '../db/migrate';
import type pg from 'pg';
import { knexWithPool, onLiveConnection, raiseIdleTimeout } from '../db/connection';
import { namesStatements } from '../db/prepared';
import { policiesReadingInvoices, signalsUsed } from '../source/candidates';
import { addDays, todayUtc } from '../rules/dates';
import { countAccountsQuery, stateTables } from '../source/signals';
import type { StateChange, WriteContext } from '../write/apply';
import { checkSetColumns } from '../write/host-columns';
import { checkMappedColumns, checkMappedTables, checkUniqueKey } from '../source/columns';
import { hostValueNotes, staleStageNotes } from '../source/stale-stages';
import { exclusionKeyNotes, organizationNotes } from '../source/exclusion-keys';
import { acquireRunLock, confirmLockHeld, lockStillOurs, type HeldLock, type LockProof } from './lock';
import { checkConnectionRoom } from './connections';
import {
  closeShard,
  refuseDonePart,
  runToJoin,
  settleFinishedShardRuns,
  settleShardRun,
  unfinishedShardRun,
  withShardLedgerLock,
} from './shards';
import { commitPage, saveCheckpoint, type CommitTarget } from './commit';
import { PIPELINE_CONNECTIONS, WRITE_DEPTH } from './pipeline';
import { emptyCounts, mergeCounts, pageCounts, restoreCounts, type RunCounts } from './counts';
import {
  defaultActor,
  finishRun,
  getRun,
  heartbeat,
  markInterrupted,
  recordLockSession,
  recordRulesChange,
  revertChain,
  setRunStatus,
  startRun,
  unfinishedRun,
  unfinishedRuns,
  undoAdvice,
  RUN_ORGS,
  type RunRecord,
} from './ledger';
import type { PagePlan } from './plan';
import {
  evaluated,
  readAhead,
  readPages,
  splitRange,
  WHOLE_RANGE,
  type AccountFilter,
  type KeyRange,
  type Page,
  type PageSource,
} from './pages';
import type { IsoDate, Rules } from '../types';

/**
 * The batch engine: walks the customers by keyset pages, reads each page's signals with one
 * set-based query (only the accounts a rule could touch, see source/candidates.ts), evaluates them
 * in memory with the pure evaluator, and (unless dry) writes the page's changes in one transaction
 * together with the checkpoint. Each worker walks its own key range and reads its next pages while
 * it writes the current two (see READ_DEPTH, WRITE_DEPTH); memory is a few pages per worker.
 */

export type BatchKind = 'backfill' | 'sweep';

export interface BatchOptions {
  kind: BatchKind;
  asOf: IsoDate;
  /** --as-of was given (else asOf is today's): a resume refuses a day other than its run's. */
  asOfGiven?: boolean;
  dryRun: boolean;
  batchSize: number;
  orgs: string[] | null;
  shard: { index: number; count: number } | null;
  /** Page pipelines over disjoint key ranges (`--workers N`, default 1). A resumed run keeps its own. */
  workers?: number;
  /** Evaluate every account, not only the SQL pre-filter's candidates (the tests compare both). */
  allAccounts?: boolean;
  /** Continue the unfinished backfill instead of refusing. */
  resume: boolean;
  /** Wait for the lock instead of failing with exit code 3. */
  wait: boolean;
  actor: string;
  /** Stop cleanly after the current page (Ctrl-C). */
  signal?: AbortSignal;
  /** Called once per page with the changes (the report's account listing streams from here). */
  onPage?: (page: PageReport) => void | Promise<void>;
  /**
   * A dry run's onPage gets only this many more changes, asked before each page is evaluated (the
   * report's sample; all when it lists accounts); the others are counted, never built. Default: all.
   */
  changesWanted?: () => number;
  onLog?: (message: string) => void;
  /** Test seam: runs inside the page transaction, after the read and before the re-check. */
  beforeWrite?: (keys: string[]) => Promise<void>;
}

export interface PageReport {
  /** Accounts of the page the evaluator saw: those a rule could touch (all with `allAccounts`). */
  evaluated: number;
  changes: StateChange[];
  /** The run's counts so far (all workers). */
  counts: RunCounts;
  total: number;
}

export type BatchStatus = 'succeeded' | 'interrupted' | 'stopped' | 'failed';

export interface BatchResult {
  run: RunRecord | null;
  status: BatchStatus;
  counts: RunCounts;
  total: number;
  /** Set when the safety limit stopped the run. */
  limit: { max: number; wouldReach: number } | null;
  /** A dry run's changes over the safety limit: the real run would stop before making them all. */
  wouldStopAtLimit?: { max: number; changes: number } | null;
  error: string | null;
  exitCode: number;
  /**
   * A `--shard` run's part ended, and the run it shares has this status now: `running` until its
   * other shards finish, `stopped` or `interrupted` while one of them waits for its resume.
   * `waitingFor`: the other shards it waits for (this one, stopped, is said by its own status).
   */
  shard?: { name: string; runStatus: string; waitingFor: string[] };
  /**
   * What the rules say of the data (stages the rules no longer describe, host columns holding other
   * values than their stages set, exclusions and overrides that match no account), each a sentence:
   * logged as the run starts, and kept in its report.
   */
  notes?: string[];
}

const SHARD_ALL = '0/1';

function shardName(shard: BatchOptions['shard']): string {
  return shard ? `${shard.index}/${shard.count}` : SHARD_ALL;
}

/** The checkpoint row of worker i of n: the shard's own name when there is one worker. */
function checkpointName(shard: string, i: number, n: number): string {
  return n === 1 ? shard : `${shard} part ${i + 1}/${n}`;
}

function filterOf(options: BatchOptions): AccountFilter {
  return { orgs: options.orgs, shard: options.shard };
}

export async function runBatch(knex: Knex, rules: Rules, given: BatchOptions): Promise<BatchResult> {
  // One order for a set of organizations: shards given `--org 1 2` and `--org 2 1` share one run.
  const options = given.orgs ? { ...given, orgs: [...new Set(given.orgs)].sort() } : given;
  const schema = rules.settings.schema;
  if (rules.defaults.policies.length === 0 && Object.keys(rules.organizations).length === 0) {
    throw new UsageError(
      `No policies to apply: ${rules.file ?? 'no rules file was found'}; write them in suspend.config.yaml or pass --rules FILE (see rules.example.yaml).`,
    );
  }
  const workers = options.workers ?? 1;
  if (!Number.isSafeInteger(workers) || workers < 1 || workers > 64) {
    throw new UsageError(`--workers ${workers}: give a number of page pipelines from 1 to 64.`);
  }
  refuseFarFuture(options);
  await checkSource(knex, rules);
  const notes = [
    ...(await staleStageNotes(knex, rules, options)),
    ...(await hostValueNotes(knex, rules, options)),
    ...(await exclusionKeyNotes(knex, rules)),
    ...(await organizationNotes(knex, rules)),
  ];
  for (const note of notes) options.onLog?.(note);
  const withNotes = (result: BatchResult): BatchResult =>
    notes.length > 0 ? { ...result, notes: notes.map((n) => n.replace(/^note: /, '')) } : result;
  if (options.dryRun) {
    if (workers > 1) await checkConnectionRoom(knex, { workers, perWorker: PIPELINE_CONNECTIONS });
    return withNotes(await withPipelinePool(knex, workers, (pool) => dryRun(knex, pool, rules, options)));
  }

  await requireMigrated(knex, schema);
  const lock = await acquireRunLock(knex, schema, {
    wait: options.wait,
    shard: sharded(options.shard) ? shardName(options.shard) : null,
    description: `suspend ${options.kind}${sharded(options.shard) ? ` --shard ${shardName(options.shard)}` : ''} by ${options.actor} (pid ${process.pid})`,
    onWait: options.onLog,
    signal: options.signal,
  });
  try {
    return withNotes(await realRun(knex, rules, options, lock.proof));
  } finally {
    await lock.release();
  }
}

/**
 * The workers' own connections, four each (shared by three reads of the next pages, two writes of
 * the pages before them and the page-ends query), set up for page work:
 * - JIT compilation off: it costs more than it saves on page-sized queries (64 ms of a 160 ms read);
 * - asynchronous commit: a page's transaction returns without waiting for its WAL flush. A server
 *   crash can then lose the last pages that committed, but each with its checkpoint, so the run
 *   resumes before them; the ledger's final row is written on another connection with a normal
 *   commit, which flushes every page before it, before a run reports success or sends anything;
 * - a plan for each page's own values, even from a prepared statement (see db/prepared.ts).
 * They name their statements only when the run's knex does. With --no-prepared-statements (a pooler
 * that shares server sessions between clients) they set nothing either: a setting made on a shared
 * session would outlive the run there, and asynchronous commit would reach other clients' writes.
 */
const SESSION_SETUP = `select set_config(name, value, false)
  from (values ('jit', 'off'), ('synchronous_commit', 'off'), ('plan_cache_mode', 'force_custom_plan')) v(name, value)
 where exists (select 1 from pg_settings s where s.name = v.name)`;

async function withPipelinePool<T>(knex: Knex, workers: number, fn: (pool: Knex) => Promise<T>): Promise<T> {
  const ownSessions = namesStatements(knex);
  const pool = knexWithPool(knex, {
    min: 0,
    max: PIPELINE_CONNECTIONS * workers,
    afterCreate: (conn: pg.Client, done: (err: Error | null, conn: unknown) => void) => {
      if (!ownSessions) return done(null, conn);
      // Settings that only make pages faster: a session they fail on is used as it is (see
      // raiseIdleTimeout, which the page sessions get too: they idle between pages).
      void conn
        .query(SESSION_SETUP)
        .catch(() => undefined)
        .then(() => raiseIdleTimeout(conn))
        .then(() => done(null, conn));
    },
  });
  try {
    return await fn(pool);
  } finally {
    await pool.destroy();
  }
}

/** Days after today an as-of may be for a run that writes: a year covers any planned run or test. */
const FUTURE_AS_OF_DAYS = 366;

/**
 * A writing run as of a day years ahead (2062 for 2026) would make every later run as of an
 * earlier day refuse to start (see refuseEarlierAsOf) until it is reverted: refused up front.
 */
function refuseFarFuture(options: BatchOptions): void {
  if (options.dryRun) return;
  const latest = addDays(todayUtc(), FUTURE_AS_OF_DAYS);
  if (options.asOf <= latest) return;
  throw new UsageError(
    `--as-of ${options.asOf} is more than a year after today (${todayUtc()}, UTC): a run that writes as of it would make every later run as of an earlier day refuse to start until it is reverted. Check the date (up to ${latest}), or preview it with --dry-run.`,
  );
}

/** One sentence when the mapped tables or columns are missing, instead of a SQL error mid-run. */
export async function checkSource(knex: Knex, rules: Rules): Promise<void> {
  await checkMappedTables(knex, rules);
  await checkMappedColumns(knex, rules);
  await checkUniqueKey(knex, rules);
  await checkSetColumns(knex, rules);
}

async function countAccounts(knex: Knex, rules: Rules, options: BatchOptions): Promise<number> {
  const [row] = (await countAccountsQuery(knex, rules.source, filterOf(options))) as { n: string }[];
  return Number(row?.n ?? 0);
}

/**
 * A dry run's accounts counted while it starts reading: the count (a scan of the key index, about
 * 0.1-0.2 s at 1M) is awaited only where its number is needed (splitting for --workers, progress and
 * the result); its failure surfaces there. A real run counts first: a run that cannot count is
 * refused before it opens, not failed after writing pages.
 */
function countingAccounts(knex: Knex, rules: Rules, options: BatchOptions): Promise<number> {
  const counting = countAccounts(knex, rules, options);
  counting.catch(() => undefined);
  return counting;
}

/** Where one worker starts: its range (after its checkpoint when resuming) and what it counted. */
interface WorkerStart {
  range: KeyRange;
  checkpoint: string;
  counts: RunCounts;
  done: boolean;
}

/** A page with nothing to write is not committed; a checkpoint is still saved this often. */
const CHECKPOINT_MS = 5000;

/** A page being written: committed (and counted), then done (progress and heartbeat too). */
interface PageWrite {
  committed: Promise<StateChange[]>;
  done: Promise<void>;
}

/** Waits for every promise to settle, then throws the first failure (earlier outcomes first). */
async function settled(promises: Promise<unknown>[], earlier: PromiseSettledResult<unknown>[] = []) {
  const outcomes = [...earlier, ...(await Promise.allSettled(promises))];
  const failed = outcomes.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/**
 * Runs one page pipeline per range at once. `handle` gets each page read and evaluated, while the
 * next page is already being read and evaluated; it returns false to stop this worker. The first
 * failure stops the others after the pages they already read and is thrown once all have stopped.
 */
async function runWorkers(
  pool: Knex,
  source: Omit<PageSource, 'signal'>,
  ranges: KeyRange[],
  signal: AbortSignal | undefined,
  handle: (page: Page & { plan: PagePlan }, worker: number) => Promise<boolean>,
  onRangeDone: (worker: number) => Promise<void> = async () => undefined,
): Promise<void> {
  const stopped = new AbortController();
  const both = signal ? AbortSignal.any([signal, stopped.signal]) : stopped.signal;
  await settled(
    ranges.map(async (range, worker) => {
      try {
        // Three stages, each ahead of the next: Postgres reads the next pages (READ_DEPTH at once)
        // while Node evaluates page N+1 while page N is written (a real run writes page N-1 as well).
        const pages = readAhead(readPages(pool, { ...source, signal: both }, range));
        for await (const page of readAhead(evaluated(pages, source))) {
          if (!(await handle(page, worker))) return;
        }
        if (!both.aborted) await onRangeDone(worker);
      } catch (err) {
        stopped.abort();
        throw err;
      }
    }),
  );
}

async function pageSource(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  stateSchema: string | null,
): Promise<Omit<PageSource, 'signal'>> {
  return {
    rules,
    asOf: options.asOf,
    batchSize: options.batchSize,
    filter: filterOf(options),
    state: stateSchema === null ? null : await stateTables(knex, stateSchema, rules.source),
    allAccounts: Boolean(options.allAccounts),
    needs: signalsUsed(rules),
    explain: options.dryRun ? 'later' : 'now',
    wanted: options.dryRun ? options.changesWanted : undefined,
  };
}

async function dryRun(knex: Knex, pool: Knex, rules: Rules, options: BatchOptions): Promise<BatchResult> {
  const schema = rules.settings.schema;
  // A dry run writes nothing, not even suspend's schema: without it every account is simply clear.
  const migrated = (await migrationStatus(knex, schema)).applied.length > 0;
  const total = countingAccounts(knex, rules, options);
  const ranges = await splitRange(knex, rules, filterOf(options), total, options.workers ?? 1);
  let counts = emptyCounts();
  await runWorkers(
    pool,
    await pageSource(knex, rules, options, migrated ? schema : null),
    ranges,
    options.signal,
    async ({ plan, total: pageTotal }) => {
      counts = mergeCounts(counts, mergeCounts(pageCounts(pageTotal, plan.tally), plan.planned));
      await options.onPage?.({
        evaluated: plan.evaluated,
        changes: plan.changes,
        counts,
        total: await total,
      });
      return true;
    },
  );
  const status = options.signal?.aborted ? 'interrupted' : 'succeeded';
  const max = maxChangesFor(rules, await total);
  return {
    run: null,
    status,
    counts,
    total: await total,
    limit: null,
    wouldStopAtLimit: max !== null && counts.changes > max ? { max, changes: counts.changes } : null,
    error: null,
    exitCode: ExitCode.ok,
  };
}

function maxChangesFor(rules: Rules, total: number): number | null {
  const m = rules.settings.maxChanges;
  if (!m) return null;
  return 'count' in m ? m.count : Math.floor(m.fraction * total);
}

function storedRanges(run: RunRecord, shard: string): KeyRange[] {
  const parts = run.options.parts as Record<string, { ranges?: unknown }> | undefined;
  const ranges = parts ? parts[shard]?.ranges : run.options.ranges;
  if (!Array.isArray(ranges) || ranges.length === 0) return [WHOLE_RANGE];
  return ranges.map((r) => {
    const [after, until] = r as [string | null, string | null];
    return { after, until };
  });
}

async function openRun(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  total: number,
): Promise<{ run: RunRecord; workers: WorkerStart[] }> {
  // A shared run whose last shard could not close it is closed by whichever run starts next.
  await settleFinishedShardRuns(knex, rules.settings.schema);
  if (sharded(options.shard)) return openShardRun(knex, rules, options, options.shard, total);
  const schema = rules.settings.schema;
  if (options.kind === 'backfill') {
    const unfinished = await unfinishedRun(knex, schema, 'backfill', SHARD_ALL);
    if (unfinished?.status === 'running') {
      // We hold the run lock, so the process that wrote "running" is gone (killed, or cut off
      // from the server before it could say so): the ledger says interrupted from now on.
      await markInterrupted(knex, schema, [unfinished.id], { finished: false });
      unfinished.status = 'interrupted';
    }
    if (unfinished && !options.resume) throw unfinishedBackfill(unfinished, '');
    if (options.resume) {
      if (!unfinished) throw nothingToResume('');
      return { run: unfinished, workers: await resumeRun(knex, rules, options, unfinished, SHARD_ALL) };
    }
  } else {
    // A sweep that crashed left its row "running"; we hold the lock over every account, so it is dead.
    const dead = (await knex
      .withSchema(schema)
      .from('runs')
      .where({ kind: options.kind, status: 'running' })
      .pluck('id')) as string[];
    await markInterrupted(knex, schema, dead.map(String), { finished: true });
  }
  const ranges = await splitRange(knex, rules, filterOf(options), total, options.workers ?? 1);
  const run = await startRun(
    knex,
    schema,
    newRun(rules, options, { shard: SHARD_ALL, ...rangeOptions(ranges) }),
  );
  return { run, workers: freshWorkers(ranges, SHARD_ALL) };
}

/**
 * The rules `shard` of a run went on with last: its part's own (a shard's rules are its own; other
 * shards may have joined or resumed with others), else the run's.
 */
function rulesHashOf(run: RunRecord, shard: string): string {
  const part = (run.options.parts as Record<string, { rulesHash?: unknown }> | undefined)?.[shard];
  return typeof part?.rulesHash === 'string' ? part.rulesHash : lastRulesHash(run);
}

/** The rules a run went on with last: those it started with, or the last a resume or shard changed to. */
function lastRulesHash(run: RunRecord): string {
  const changes = run.options.rulesChanged;
  return Array.isArray(changes) && changes.length > 0
    ? (changes[changes.length - 1] as { rulesHash: string }).rulesHash
    : run.rulesHash;
}

/** The --org list a run was started with (null: every organization). */
function orgsOfRun(run: RunRecord): string[] | null {
  const listed = run.options.orgs;
  if (Array.isArray(listed)) return listed.map(String);
  return run.orgFilter === null ? null : run.orgFilter.split(',');
}

function sameOrgs(a: string[] | null, b: string[] | null): boolean {
  if (a === null || b === null) return a === b;
  const set = new Set(a);
  return set.size === new Set(b).size && b.every((o) => set.has(o));
}

/** The ledger's `org_filter`: the --org list, or null for every organization. */
function orgFilterOf(options: BatchOptions): string | null {
  return options.orgs?.join(',') ?? null;
}

function sharded(shard: BatchOptions['shard']): shard is { index: number; count: number } {
  return shard !== null && shard.count > 1;
}

function unfinishedBackfill(run: RunRecord, shard: string): UsageError {
  const flag = shard ? ` --shard ${shard}` : '';
  return new UsageError(
    `Backfill run ${run.id} (as of ${run.asOf}, started ${run.startedAt.toISOString()} by ${run.startedBy}) did not finish${shard ? ` on shard ${shard}` : ''} (${run.status}); continue it with \`suspend backfill${flag} --resume\` or give it up with \`suspend backfill --abandon ${run.id}\`.`,
  );
}

function nothingToResume(shard: string): UsageError {
  return new UsageError(
    `There is no unfinished backfill${shard ? ` on shard ${shard}` : ''} to resume; start one with \`suspend backfill${shard ? ` --shard ${shard}` : ''}\`.`,
  );
}

/** Where each worker's range ends, so a resumed run splits the accounts the same way. */
function rangeOptions(ranges: KeyRange[]) {
  return {
    workers: ranges.length,
    ...(ranges.length > 1 ? { ranges: ranges.map((r) => [r.after, r.until]) } : {}),
  };
}

function newRun(rules: Rules, options: BatchOptions, scope: Record<string, unknown>) {
  return {
    kind: options.kind,
    asOf: options.asOf,
    rulesHash: rules.hash,
    rulesFile: rules.file,
    orgFilter: orgFilterOf(options),
    options: {
      batchSize: options.batchSize,
      ...(options.orgs ? { orgs: options.orgs } : {}),
      ...scope,
      dryRun: false,
    },
    startedBy: options.actor,
  };
}

function freshWorkers(ranges: KeyRange[], shard: string): WorkerStart[] {
  return ranges.map((range, i) => ({
    range,
    checkpoint: checkpointName(shard, i, ranges.length),
    counts: emptyCounts(),
    done: false,
  }));
}

/**
 * A `--shard I/N` run: resume this shard's unfinished part, or join the run the other shards
 * started (see shards.ts), or start the run they will join. The shard's checkpoint rows are
 * written at once, in the same transaction, so a shard starting next sees this one's part.
 */
async function openShardRun(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  shard: { index: number; count: number },
  total: number,
): Promise<{ run: RunRecord; workers: WorkerStart[] }> {
  const schema = rules.settings.schema;
  const name = shardName(shard);
  // We hold this shard's lock: a part of it still marked unfinished belongs to a dead process.
  const mine = await unfinishedShardRun(knex, schema, options.kind, shard);
  const recorded = (mine?.options.parts as Record<string, { stop?: unknown }> | undefined)?.[name]?.stop;
  // A sweep shard run again on its day with the same rules and organizations goes on with its part
  // of that sweep: a new run would wait for its other shards, which finished in the first.
  const sameSweep =
    mine !== null &&
    options.kind === 'sweep' &&
    mine.asOf === options.asOf &&
    rulesHashOf(mine, name) === rules.hash &&
    sameOrgs(options.orgs ?? null, orgsOfRun(mine));
  if (mine && sameSweep) return { run: mine, workers: await resumeRun(knex, rules, options, mine, name) };
  if (mine && !recorded && !(options.kind === 'backfill' && options.resume)) {
    const progress = await closeShard(knex, schema, mine.id, shard.count, name, {
      status: 'interrupted',
      error: 'its process ended before its last page',
    });
    mine.status = progress.status;
  }
  if (mine && options.kind === 'backfill') {
    if (!options.resume) throw unfinishedBackfill(mine, name);
    return { run: mine, workers: await resumeRun(knex, rules, options, mine, name) };
  }
  if (options.resume) throw nothingToResume(name);
  // A shard whose part of the run it would join is done exits 2 rather than open a second run.
  const judged = { asOf: options.asOf, rulesHash: rules.hash };
  await refuseDonePart(knex, schema, options.kind, shard, judged, options.orgs ?? null);
  const ranges = await splitRange(knex, rules, filterOf(options), total, options.workers ?? 1);
  const workers = freshWorkers(ranges, name);
  const run = await withShardLedgerLock(knex, schema, async (trx) => {
    const joined = await runToJoin(
      trx,
      schema,
      options.kind,
      shard,
      { asOf: options.asOf, rulesHash: rules.hash },
      options.orgs ?? null,
    );
    if (joined)
      await refuseEarlierAsOf(trx, schema, { asOf: joined.asOf, orgs: options.orgs, shard, run: joined });
    const run = joined ?? (await startRun(trx, schema, newRun(rules, options, { shards: shard.count })));
    // Another shard may have opened the run with other rules: the ledger says which judge this part.
    if (joined && lastRulesHash(joined) !== rules.hash) {
      options.onLog?.(
        `note: shard ${name} joins backfill run ${joined.id}, which went on with other rules so far; this shard's pages use the current rules (\`suspend runs show ${joined.id}\` lists each)`,
      );
      await recordRulesChange(trx, schema, joined.id, rules, { joined: true, shard: name });
    }
    if (joined && joined.asOf !== options.asOf) {
      options.onLog?.(
        `note: shard ${name} joins backfill run ${joined.id} and judges as of its day, ${joined.asOf}`,
      );
      options.asOf = joined.asOf;
    }
    await trx
      .withSchema(schema)
      .table('runs')
      .where({ id: run.id })
      .update({
        // Each shard's own split, for its resume.
        options: trx.raw("jsonb_set(options, '{parts}', coalesce(options->'parts', '{}') || ?::jsonb)", [
          JSON.stringify({ [name]: { ...rangeOptions(ranges), rulesHash: rules.hash } }),
        ]),
      });
    for (const w of workers) {
      await saveCheckpoint(trx, { schema, runId: run.id }, w.checkpoint, w.range.after, w.counts);
    }
    // Running again, unless another shard's stop is still to be resumed.
    if (joined) await settleShardRun(trx, schema, run.id, shard.count);
    return run;
  });
  return { run, workers };
}

async function resumeRun(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  unfinished: RunRecord,
  shard: string,
): Promise<WorkerStart[]> {
  const schema = rules.settings.schema;
  // The run goes on over the organizations it started with: an --org list that differs would end
  // it as succeeded with the others' accounts never judged (and no run left to resume them).
  const runOrgs = orgsOfRun(unfinished);
  if (options.orgs && !sameOrgs(options.orgs, runOrgs)) {
    throw new UsageError(
      `Backfill run ${unfinished.id} covers ${runOrgs ? `organization(s) ${runOrgs.join(', ')}` : 'every organization'}, and --resume continues it as it started; leave out --org${runOrgs ? ` or give --org ${runOrgs.join(' ')}` : ''}, or abandon it (\`suspend backfill --abandon ${unfinished.id}\`) and start the backfill you want.`,
    );
  }
  options.orgs = runOrgs;
  // Against the rules the run went on with last (a resume with the same edited file again adds
  // nothing; going back to the first rules is a change too).
  const changedRules = rulesHashOf(unfinished, shard) !== rules.hash;
  if (changedRules) {
    options.onLog?.(
      `note: the rules changed since run ${unfinished.id} started; the remaining pages use the current rules`,
    );
  }
  await refuseEarlierAsOf(knex, schema, {
    asOf: unfinished.asOf,
    orgs: options.orgs,
    shard: options.shard,
    run: unfinished,
  });
  const ranges = storedRanges(unfinished, shard);
  // Before the run is marked running again, so a refused resume leaves it as it was.
  if (ranges.length > 1) {
    await checkConnectionRoom(knex, {
      workers: ranges.length,
      perWorker: PIPELINE_CONNECTIONS,
      resumedRun: unfinished.id,
    });
  }
  if ((options.workers ?? 1) !== ranges.length) {
    options.onLog?.(
      `note: run ${unfinished.id} continues with the ${ranges.length} worker(s) it started with`,
    );
  }
  // Every page of one backfill is judged on the same day: a day asked for that is not the run's
  // would not be the one used.
  if (options.asOfGiven && options.asOf !== unfinished.asOf) {
    throw new UsageError(
      `--as-of ${options.asOf}: backfill run ${unfinished.id} judges every page as of ${unfinished.asOf}, and --resume continues it so; leave --as-of out, or abandon it (\`suspend backfill --abandon ${unfinished.id}\`) and start one as of ${options.asOf}.`,
    );
  }
  // Refused no more: the ledger says which rules the rest of the run is judged by.
  if (changedRules)
    await recordRulesChange(knex, schema, unfinished.id, rules, {
      joined: false,
      shard: typeof unfinished.options.shards === 'number' ? shard : null,
    });
  const shards = unfinished.options.shards;
  if (typeof shards === 'number') await closeShard(knex, schema, unfinished.id, shards, shard, null);
  else await setRunStatus(knex, schema, unfinished.id, 'running');
  const rows = (await knex
    .withSchema(schema)
    .from('checkpoints')
    .where({ run_id: unfinished.id })
    .select('shard', 'last_key', 'counts', 'done')) as {
    shard: string;
    last_key: string | null;
    counts: Partial<RunCounts>;
    done: boolean;
  }[];
  const workers = ranges.map((range, i) => {
    const checkpoint = checkpointName(shard, i, ranges.length);
    const row = rows.find((r) => r.shard === checkpoint);
    return {
      range: { after: row?.last_key ?? range.after, until: range.until },
      checkpoint,
      counts: restoreCounts(row?.counts),
      done: row?.done ?? false,
    };
  });
  options.onLog?.(
    `resuming ${unfinished.kind} run ${unfinished.id} as of ${unfinished.asOf} after key ${workers
      .map((w) => w.range.after ?? '(start)')
      .join(', ')}`,
  );
  // The run keeps its own as-of, so every page of one backfill is judged on the same day.
  options.asOf = unfinished.asOf;
  return workers;
}

const HEARTBEAT_MS = 2000;

/**
 * Page reads and writes look account states up by key lists. Until account_states has planner
 * statistics (a new table, a first backfill) Postgres guesses such a list matches most of the table
 * and scans all of it, a cost that grows with every page. So as soon as the table has rows and no
 * statistics, analyze it once; its key statistics then scale as it grows. Returns whether it is done.
 */
async function analyzeStatesOnce(knex: Knex, schema: string): Promise<boolean> {
  const result = await knex.raw<{ rows: { analyzed: boolean; empty: boolean }[] }>(
    `select exists (select 1 from pg_stats where schemaname = ? and tablename = 'account_states' and attname = 'customer_key') as analyzed,
            not exists (select 1 from ??) as empty`,
    [schema, `${schema}.account_states`],
  );
  const row = result.rows[0];
  if (!row || row.analyzed) return true;
  if (row.empty) return false;
  await knex.raw('analyze ??', [`${schema}.account_states`]);
  return true;
}

/**
 * Opens the run (or resumes or joins one), then walks it with a pool sized for its workers: a resumed
 * run keeps the key ranges it started with, whatever --workers says now.
 */
async function realRun(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  lock: LockProof,
): Promise<BatchResult> {
  if (!options.resume)
    await refuseEarlierAsOf(knex, rules.settings.schema, {
      asOf: options.asOf,
      orgs: options.orgs,
      shard: options.shard,
      run: null,
    });
  // A resumed run is counted once it is open: it goes on over its own organizations (see resumeRun).
  const total = options.resume ? 0 : await countAccounts(knex, rules, options);
  // Before the run is opened, so a refused run leaves nothing behind; a resumed run is checked for
  // the split it started with (see resumeRun).
  if (!options.resume && (options.workers ?? 1) > 1) {
    await checkConnectionRoom(knex, { workers: options.workers ?? 1, perWorker: PIPELINE_CONNECTIONS });
  }
  const opened = await openRun(knex, rules, options, total);
  const accounts = options.resume ? await countAccounts(knex, rules, options) : total;
  // A run the shards share has a session per shard: `runs` does not judge it.
  if (!sharded(options.shard)) await recordLockSession(knex, rules.settings.schema, opened.run.id, lock.pid);
  return withPipelinePool(knex, opened.workers.length, (pool) =>
    walkRun(knex, pool, rules, options, { ...opened, total: accounts, lock }),
  );
}

/**
 * A run moves accounts forward in time: judging them as of a day before a finished run's would clear
 * or step down what that run found (stages not reached yet on that day), most likely from a wrong
 * --as-of or a machine's clock. Checked for the day a run will judge by (a new run's, or that of the
 * run it resumes or joins) against the runs of the organizations it covers that finished or wrote
 * pages, unless undone by a revert; refused before anything is written. A dry run may look at any day.
 */
async function refuseEarlierAsOf(
  knex: Knex | Knex.Transaction,
  schema: string,
  judged: { asOf: string; orgs: string[] | null; shard: BatchOptions['shard']; run: RunRecord | null },
): Promise<void> {
  const later = (await knex
    .withSchema(schema)
    .from('runs')
    .whereIn('kind', ['backfill', 'sweep'])
    // A run that stopped early counts when the pages it wrote stand.
    .where((q) =>
      q
        .where('status', 'succeeded')
        .orWhereExists((h) => h.from(`${schema}.history`).whereRaw('history.run_id = runs.id')),
    )
    .where('as_of', '>', judged.asOf)
    .modify((q) => {
      if (judged.orgs)
        q.where((o) =>
          o
            .whereNull('org_filter')
            .orWhereRaw(`array(select jsonb_array_elements_text(${RUN_ORGS})) && ?::text[]`, [judged.orgs]),
        );
    })
    .orderBy([
      { column: 'as_of', order: 'desc' },
      { column: 'id', order: 'desc' },
    ])
    .select('id', 'kind', 'options', knex.raw("to_char(as_of, 'YYYY-MM-DD') as as_of"))) as {
    id: string;
    kind: string;
    options: { shards?: number; parts?: Record<string, unknown> };
    as_of: string;
  }[];
  if (later.length === 0) return;
  // Another shard of the same split covers other accounts.
  const shard = sharded(judged.shard) ? judged.shard : null;
  const otherAccounts = (r: (typeof later)[number]) =>
    shard !== null &&
    r.options.shards === shard.count &&
    !Object.hasOwn(r.options.parts ?? {}, shardName(shard));
  const reverts = (await knex
    .withSchema(schema)
    .from('runs')
    .whereNotNull('reverts_run_id')
    .select(
      'id',
      'reverts_run_id',
      'status',
      knex.raw(`exists (select 1 from ?? h where h.run_id = runs.id) as wrote`, [`${schema}.history`]),
    )) as { id: string; reverts_run_id: string; status: string; wrote: boolean }[];
  const revertsOf = (id: string) => reverts.filter((r) => String(r.reverts_run_id) === String(id));
  // Undone by a revert that finished and that no revert has touched since (one that wrote anything
  // and is not undone itself: a revert of a revert, even a failed one, puts findings back). A revert
  // only ever reverts an earlier run, so this ends.
  const undone = (id: string): boolean =>
    revertsOf(id).some((r) => r.status === 'succeeded' && !touched(r.id));
  const touched = (id: string): boolean =>
    revertsOf(id).some((r) => (r.status === 'succeeded' || r.wrote) && !undone(r.id));
  const found = later.find((r) => !otherAccounts(r) && !undone(r.id));
  if (!found) return;
  const day = `${found.kind} run ${found.id} (as of ${found.as_of})`;
  const { run } = judged;
  const undo = undoAdvice(found.id, await revertChain(knex, schema, found.id));
  throw new UsageError(
    run
      ? `Backfill run ${run.id} judges as of ${judged.asOf}, earlier than ${day}, and would undo what it found; give it up with \`suspend backfill --abandon ${run.id}\`, or ${undo} if its day was wrong.`
      : `A run as of ${judged.asOf} is earlier than ${day} and would undo what it found; pass --as-of ${found.as_of} or later, ${undo} if its day was wrong, or preview ${judged.asOf} with --dry-run.`,
  );
}

async function walkRun(
  knex: Knex,
  pool: Knex,
  rules: Rules,
  options: BatchOptions,
  { run, workers, total, lock }: { run: RunRecord; workers: WorkerStart[]; total: number; lock: LockProof },
): Promise<BatchResult> {
  const schema = rules.settings.schema;
  const max = maxChangesFor(rules, total);
  const ctx: WriteContext = {
    schema,
    runId: run.id,
    asOf: options.asOf,
    rulesHash: rules.hash,
    actor: options.actor,
  };
  let counts = workers.reduce((sum, w) => mergeCounts(sum, w.counts), emptyCounts());
  const workerCounts = workers.map((w) => w.counts);
  const lastKeys = workers.map((w) => w.range.after);
  const savedAt = workers.map(() => Date.now());
  // Changes planned by pages being written right now, so concurrent workers respect the limit together.
  let inFlight = 0;
  let limit: BatchResult['limit'] = null;
  let lastBeat = Date.now();
  let analyzed = await analyzeStatesOnce(knex, schema);
  let analyzing: Promise<boolean> | null = null;
  const active = workers.filter((w) => !w.done);
  let shardOutcome: BatchResult['shard'];
  const result = (status: BatchStatus, exitCode: number, runRecord: RunRecord | null = run): BatchResult => ({
    run: runRecord,
    status,
    counts,
    total,
    limit,
    error: null,
    exitCode,
    ...(shardOutcome ? { shard: shardOutcome } : {}),
  });
  const shards = sharded(options.shard) ? options.shard : null;
  /** Closes the run, or this shard's part of a shared run (the run closes with its last shard). */
  const close = async (
    stopped: { status: 'interrupted' | 'stopped'; error: string | null } | null,
    db: Knex = knex,
  ) => {
    if (!shards) {
      // A stop only over a row still running: a run that resumed this one after it lost its lock
      // may have finished it already. Success is written under the confirmed lock.
      await finishRun(db, schema, run.id, {
        status: stopped?.status ?? 'succeeded',
        counts,
        error: stopped?.error,
        onlyIfRunning: stopped !== null,
      });
      return;
    }
    const name = shardName(shards);
    const progress = await closeShard(db, schema, run.id, shards.count, name, stopped);
    shardOutcome = {
      name,
      runStatus: progress.status,
      waitingFor: progress.waiting.filter((other) => other !== name),
    };
    if (!stopped && progress.status !== 'running' && progress.waiting.length > 0) {
      options.onLog?.(
        `shard ${name} finished; run ${run.id} stays ${progress.status}: shard${progress.waiting.length > 1 ? 's' : ''} ${progress.waiting.join(', ')} did not finish (see \`suspend runs show ${run.id}\`)`,
      );
    } else if (!stopped && progress.waiting.length > 0) {
      options.onLog?.(
        `shard ${name} finished; run ${run.id} goes on until shard${progress.waiting.length > 1 ? 's' : ''} ${progress.waiting.join(', ')} finish${progress.waiting.length > 1 ? '' : 'es'}`,
      );
    }
  };
  /**
   * Closes a run that stops before its end (an error, the safety limit, Ctrl-C) on a new connection
   * if the pool's were killed with the one that failed, and only while no other run holds the lock
   * this one may have lost: otherwise the row is that run's (it may be resuming this one).
   */
  const closeStopped = (stopped: { status: 'interrupted' | 'stopped'; error: string | null }) =>
    onLiveConnection(knex, (db) =>
      db.transaction(async (trx) => {
        if (await lockStillOurs(trx, lock)) await close(stopped, trx);
      }),
    );
  /** Each worker's pages being written, oldest first (at most WRITE_DEPTH). */
  const writing: PageWrite[][] = workers.map(() => []);
  try {
    const source = await pageSource(knex, rules, options, schema);
    const target: Omit<CommitTarget, 'checkpoint'> = {
      rules,
      ctx,
      needs: source.needs,
      invoicePolicies: policiesReadingInvoices(rules),
      hostColumnTypes: new Map(),
      lock,
      beforeWrite: options.beforeWrite,
    };
    /**
     * Writes one page of worker w. Its transaction overlaps the previous page's, but the page is
     * counted and its checkpoint saved only once that page has committed, so a checkpoint never
     * passes a page that did not commit (and a failed page fails the one after it). The work after
     * the commit (progress, heartbeat) follows page order without holding the next page's
     * transaction open.
     */
    const writePage = (
      w: number,
      worker: WorkerStart,
      page: Page & { plan: PagePlan },
      previous: PageWrite | null,
    ): PageWrite => {
      const { plan } = page;
      const committed = (async (): Promise<StateChange[]> => {
        if (plan.changes.length === 0 && Date.now() - (savedAt[w] as number) < CHECKPOINT_MS) {
          // Nothing to write: count the page; the worker's next checkpoint records it.
          await previous?.committed;
          const counted = pageCounts(page.total, plan.tally);
          workerCounts[w] = mergeCounts(workerCounts[w] as RunCounts, counted);
          counts = mergeCounts(counts, counted);
          return [];
        }
        inFlight += plan.changes.length;
        try {
          const done = await commitPage(
            pool,
            { ...target, checkpoint: worker.checkpoint },
            page,
            async () => {
              await previous?.committed;
              return workerCounts[w] as RunCounts;
            },
          );
          savedAt[w] = Date.now();
          workerCounts[w] = done.counts;
          counts = mergeCounts(counts, done.page);
          return done.changes;
        } finally {
          inFlight -= plan.changes.length;
        }
      })();
      const done = (async () => {
        const written = await committed;
        await previous?.done;
        lastKeys[w] = page.last;
        if (!analyzed && written.length > 0) {
          analyzing ??= analyzeStatesOnce(knex, schema).finally(() => (analyzing = null));
          analyzed = await analyzing;
        }
        if (Date.now() - lastBeat >= HEARTBEAT_MS) {
          lastBeat = Date.now();
          // A shared run's counts are added up from every shard's checkpoints when a shard closes.
          await heartbeat(knex, schema, run.id, shards ? null : counts);
        }
        await options.onPage?.({ evaluated: plan.evaluated, changes: written, counts, total });
      })();
      // A failure surfaces where the page is awaited (the handler, the range's end, after the walk).
      committed.catch(() => undefined);
      done.catch(() => undefined);
      return { committed, done };
    };
    const walk = runWorkers(
      pool,
      source,
      active.map((w) => w.range),
      options.signal,
      async ({ plan, ...page }, i) => {
        const worker = active[i] as WorkerStart;
        const w = workers.indexOf(worker);
        const queue = writing[w] as PageWrite[];
        while (queue.length >= WRITE_DEPTH) await queue.shift()?.done;
        if (limit) return false;
        if (max !== null && counts.changes + inFlight + plan.changes.length > max) {
          limit = { max, wouldReach: counts.changes + inFlight + plan.changes.length };
          return false;
        }
        queue.push(writePage(w, worker, { ...page, plan }, queue[queue.length - 1] ?? null));
        return true;
      },
      async (i) => {
        const w = workers.indexOf(active[i] as WorkerStart);
        const worker = workers[w] as WorkerStart;
        await settled((writing[w] as PageWrite[]).splice(0).map((p) => p.done));
        // A range marked done under a lost lock would let a shard run close as succeeded.
        await knex.transaction(async (trx) => {
          await saveCheckpoint(
            trx,
            ctx,
            worker.checkpoint,
            lastKeys[w] ?? null,
            workerCounts[w] as RunCounts,
            true,
          );
          await confirmLockHeld(trx, lock);
        });
      },
    );
    // Pages still being written finish (or fail) before the run closes.
    const walked = await Promise.allSettled([walk]);
    await settled(
      writing.flatMap((q) => q.splice(0).map((p) => p.done)),
      walked,
    );
    if (limit) {
      const { wouldReach } = limit;
      await closeStopped({
        status: 'stopped',
        error: `safety limit: max_changes ${max} would be crossed (${wouldReach} changes)`,
      });
      return result('stopped', ExitCode.safetyLimit);
    }
    if (options.signal?.aborted) {
      await closeStopped({ status: 'interrupted', error: null });
      return result('interrupted', ExitCode.failed);
    }
    // Not "succeeded" over a run that another process may have taken up since the lock was lost.
    await knex.transaction(async (trx) => {
      await close(null, trx);
      await confirmLockHeld(trx, lock);
    });
    return result('succeeded', ExitCode.ok, await getRun(knex, schema, run.id));
  } catch (err) {
    // Marked interrupted when the database still answers; if it does not, the row stays "running"
    // and the next run that holds the lock knows it died.
    await closeStopped({ status: 'interrupted', error: errorMessage(err) }).catch(() => undefined);
    throw err;
  }
}

/**
 * `suspend backfill --abandon [RUN]`: gives up an unfinished backfill so a new one can start. With
 * more than one unfinished (a run over every account and a `--shard` run, say) the run must be named.
 */
export async function abandonBackfill(knex: Knex, rules: Rules, runId: string | null): Promise<RunRecord> {
  const schema = rules.settings.schema;
  await requireMigrated(knex, schema);
  const lock: HeldLock = await acquireRunLock(knex, schema, {
    wait: false,
    description: `suspend backfill --abandon by ${defaultActor()}`,
  });
  try {
    // A shared run whose shards all finished is done, not something to give up.
    await settleFinishedShardRuns(knex, schema);
    const unfinished = await unfinishedRuns(knex, schema, 'backfill');
    if (unfinished.length === 0) throw new UsageError('There is no unfinished backfill to abandon.');
    const ids = unfinished.map((r) => r.id).join(', ');
    const run = runId === null ? unfinished[0] : unfinished.find((r) => r.id === runId);
    if (!run) {
      throw new UsageError(
        `Run ${runId} is not an unfinished backfill; the unfinished backfill${unfinished.length > 1 ? 's are' : ' is'} run ${ids}.`,
      );
    }
    if (runId === null && unfinished.length > 1) {
      throw new UsageError(
        `There are ${unfinished.length} unfinished backfills (runs ${ids}); name the one to give up, e.g. \`suspend backfill --abandon ${run.id}\`.`,
      );
    }
    // A backfill killed while running is dead (we hold the lock): its counts from what it committed.
    if (run.status === 'running') await markInterrupted(knex, schema, [run.id], { finished: false });
    await finishRun(knex, schema, run.id, { status: 'abandoned', error: run.error });
    return run;
  } finally {
    await lock.release();
  }
}
