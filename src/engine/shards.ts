import type { Knex } from 'knex';
import { emptyCounts, mergeCounts, restoreCounts, type RunCounts } from './counts';
import { getRun, revertOfOuterRun, RUN_ORGS, type RunKind, type RunRecord, type RunStatus } from './ledger';
import type { IsoDate } from '../types';
import { UsageError } from '../errors';

/**
 * `--shard I/N` processes share one run: the first shard to start writes the run row, the others
 * join it, each with its own checkpoint rows (`I/N`, or `I/N part k/m` with --workers). The run
 * succeeds once every shard's parts are done; a shard that stops early leaves it interrupted (or
 * stopped) until that shard is resumed. Opening and closing take a transaction-scoped advisory
 * lock, so two shards starting at the same moment cannot both create a run.
 */

const OPEN_LOCK_CLASS = 0x534f; // "SO"

const UNFINISHED: RunStatus[] = ['running', 'interrupted', 'failed', 'stopped'];

export async function withShardLedgerLock<T>(
  knex: Knex,
  schema: string,
  fn: (trx: Knex.Transaction) => Promise<T>,
): Promise<T> {
  return knex.transaction(async (trx) => {
    await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [OPEN_LOCK_CLASS, schema]);
    return fn(trx);
  });
}

/** The checkpoint rows of one shard: its own name, or its workers' parts (`I/N part k/m`). */
function isPartOf(checkpoint: string, shard: string): boolean {
  return checkpoint === shard || checkpoint.startsWith(`${shard} part `);
}

/** `isPartOf` in SQL. */
function partsOf(query: Knex.QueryBuilder, shard: string): Knex.QueryBuilder {
  return query.where((q) => q.where('shard', shard).orWhere('shard', 'like', `${shard} part %`));
}

function shardRuns(trx: Knex | Knex.Transaction, schema: string, kind: RunKind, count: number) {
  return trx
    .withSchema(schema)
    .from('runs')
    .select('id')
    .where({ kind })
    .whereRaw("options->>'shards' = ?", [String(count)])
    .orderBy('id', 'desc');
}

function hasParts(
  trx: Knex | Knex.Transaction,
  schema: string,
  shard: string,
  unfinished: boolean,
): (q: Knex.QueryBuilder) => void {
  return (q) => {
    const parts = partsOf(
      trx
        .withSchema(schema)
        .from('checkpoints')
        .select(trx.raw('1'))
        .whereRaw('checkpoints.run_id = runs.id'),
      shard,
    );
    if (unfinished) parts.where({ done: false });
    q.whereExists(parts);
  };
}

/** The newest run in which this shard started a part and did not finish it, never one that was reverted. */
export async function unfinishedShardRun(
  trx: Knex | Knex.Transaction,
  schema: string,
  kind: RunKind,
  shard: { index: number; count: number },
): Promise<RunRecord | null> {
  const name = `${shard.index}/${shard.count}`;
  const row = (await shardRuns(trx, schema, kind, shard.count)
    .whereIn('status', UNFINISHED)
    .whereNotExists(revertOfOuterRun(trx, schema))
    .where(hasParts(trx, schema, name, true))
    .first()) as { id: string } | undefined;
  return row ? getRun(trx, schema, String(row.id)) : null;
}

/**
 * The unfinished runs a shard of this kind may share (same shard count and organizations): any
 * backfill; a sweep of the same day and rules, stopped ones too (a stopped shard goes on with its
 * sweep when run again, so a second sweep opened beside it would be left running for good).
 */
function unfinishedLike(
  trx: Knex | Knex.Transaction,
  schema: string,
  kind: RunKind,
  count: number,
  sweep: { asOf: IsoDate; rulesHash: string },
  orgs: string[] | null,
) {
  const q = sameScope(trx, schema, kind, count, orgs).whereIn('status', UNFINISHED);
  if (kind === 'sweep') q.where({ as_of: sweep.asOf, rules_hash: sweep.rulesHash });
  return q;
}

async function firstRun(
  trx: Knex | Knex.Transaction,
  schema: string,
  q: Knex.QueryBuilder,
): Promise<RunRecord | null> {
  const row = (await q.first()) as { id: string } | undefined;
  return row ? getRun(trx, schema, String(row.id)) : null;
}

/**
 * The run this shard joins: the newest of those it may share (see unfinishedLike) in which it has
 * no part yet. A backfill takes the joined run's as-of, so one backfill judges one day.
 */
export async function runToJoin(
  trx: Knex.Transaction,
  schema: string,
  kind: RunKind,
  shard: { index: number; count: number },
  sweep: { asOf: IsoDate; rulesHash: string },
  /** --org: only a run of the same list joins (null: of every organization). */
  orgs: string[] | null,
): Promise<RunRecord | null> {
  const name = `${shard.index}/${shard.count}`;
  const q = unfinishedLike(trx, schema, kind, shard.count, sweep, orgs);
  return firstRun(trx, schema, q.whereNot(hasParts(trx, schema, name, false)));
}

/**
 * The unfinished run in which this shard's part is done already (it waits for other shards): run
 * again, the shard has nothing to do there, and must not open a second run beside it, which the
 * other shards would join, leaving the first unfinished for good.
 */
export async function runWithPartDone(
  trx: Knex | Knex.Transaction,
  schema: string,
  kind: RunKind,
  shard: { index: number; count: number },
  sweep: { asOf: IsoDate; rulesHash: string },
  orgs: string[] | null,
): Promise<RunRecord | null> {
  const name = `${shard.index}/${shard.count}`;
  const q = unfinishedLike(trx, schema, kind, shard.count, sweep, orgs)
    .where(hasParts(trx, schema, name, false))
    .whereNot(hasParts(trx, schema, name, true));
  return firstRun(trx, schema, q);
}

/**
 * Refuses (exit 2, naming the run and the shards it waits for) a shard run again once its part of
 * the run it would join is done, while other shards have not finished theirs. A run whose shards are
 * all done is closed here, and the shard goes on to start a new one.
 */
export async function refuseDonePart(
  knex: Knex,
  schema: string,
  kind: RunKind,
  shard: { index: number; count: number },
  sweep: { asOf: IsoDate; rulesHash: string },
  orgs: string[] | null,
): Promise<void> {
  const found = await withShardLedgerLock(knex, schema, async (trx) => {
    const run = await runWithPartDone(trx, schema, kind, shard, sweep, orgs);
    if (!run) return null;
    return {
      run,
      progress: await settleShardRun(trx, schema, run.id, shard.count, { onlyIfFinished: true }),
    };
  });
  if (!found || found.progress.waiting.length === 0) return;
  const { run, progress } = found;
  const name = `${shard.index}/${shard.count}`;
  const many = progress.waiting.length > 1;
  const waits = `the run waits for shard${many ? 's' : ''} ${progress.waiting.join(', ')}: run ${many ? 'those' : 'that one'}`;
  throw new UsageError(
    kind === 'backfill'
      ? `Shard ${name} of backfill run ${run.id} is done already; ${waits}, or abandon the run (\`suspend backfill --abandon ${run.id}\`) to backfill again from the start.`
      : `Shard ${name} of sweep run ${run.id} (as of ${run.asOf}) is done already; ${waits} to finish it.`,
  );
}

/** Shard runs of this count over the same organizations, never one that was reverted. */
function sameScope(
  trx: Knex | Knex.Transaction,
  schema: string,
  kind: RunKind,
  count: number,
  orgs: string[] | null,
): Knex.QueryBuilder {
  return shardRuns(trx, schema, kind, count)
    .where((w) =>
      orgs === null
        ? w.whereNull('org_filter')
        : // The same set in any order (runs opened before lists were sorted keep theirs).
          w.whereRaw(`${RUN_ORGS} @> ?::jsonb and ${RUN_ORGS} <@ ?::jsonb`, [
            JSON.stringify(orgs),
            JSON.stringify(orgs),
          ]),
    )
    .whereNotExists(revertOfOuterRun(trx, schema));
}

export interface ShardProgress {
  /** Shards whose every part is done. */
  done: string[];
  /** Shards not started or not finished. */
  waiting: string[];
  /** The counts of every part so far. */
  counts: RunCounts;
  status: RunStatus;
}

/** Why a shard stopped before its parts were done; kept in `options.parts[shard].stop`. */
export interface ShardStop {
  status: 'interrupted' | 'stopped';
  error: string | null;
}

/**
 * Records why shard `name` stopped early (or, with null, that it goes on or finished), then settles
 * the run: see settleShardRun.
 */
export async function closeShard(
  knex: Knex,
  schema: string,
  runId: string,
  count: number,
  name: string,
  stop: ShardStop | null,
): Promise<ShardProgress> {
  return withShardLedgerLock(knex, schema, async (trx) => {
    await trx
      .withSchema(schema)
      .table('runs')
      .where({ id: runId })
      .update({
        options: trx.raw(
          "jsonb_set(options, '{parts}', coalesce(options->'parts', '{}') || jsonb_build_object(?::text, coalesce(options->'parts'->?, '{}') - 'stop' || ?::jsonb))",
          [name, name, JSON.stringify(stop ? { stop } : {})],
        ),
      });
    return settleShardRun(trx, schema, runId, count);
  });
}

/**
 * A shared run's status follows from its shards (called under the ledger lock): succeeded once every
 * shard's parts are done; else stopped or interrupted while a shard that has not finished says it
 * stopped (so one shard joining or resuming does not hide another's stop); else running. The run
 * row's counts are every part's added up.
 */
export async function settleShardRun(
  trx: Knex.Transaction,
  schema: string,
  runId: string,
  count: number,
  options: { onlyIfFinished?: boolean } = {},
): Promise<ShardProgress> {
  const rows = (await trx
    .withSchema(schema)
    .from('checkpoints')
    .where({ run_id: runId })
    .select('shard', 'counts', 'done')) as { shard: string; counts: Partial<RunCounts>; done: boolean }[];
  const counts = rows.reduce((sum, r) => mergeCounts(sum, restoreCounts(r.counts)), emptyCounts());
  const done: string[] = [];
  const waiting: string[] = [];
  for (let i = 0; i < count; i++) {
    const name = `${i}/${count}`;
    const parts = rows.filter((r) => isPartOf(r.shard, name));
    (parts.length > 0 && parts.every((p) => p.done) ? done : waiting).push(name);
  }
  const run = await getRun(trx, schema, runId);
  let status = run?.status ?? 'running';
  if (options.onlyIfFinished && waiting.length > 0) return { done, waiting, counts, status };
  const update: Record<string, unknown> = { counts: JSON.stringify(counts), heartbeat_at: trx.fn.now() };
  if (UNFINISHED.includes(status)) {
    const parts = (run?.options.parts ?? {}) as Record<string, { stop?: ShardStop }>;
    const stops = waiting.flatMap((name) => {
      const stop = parts[name]?.stop;
      return stop ? [{ name, ...stop }] : [];
    });
    if (waiting.length === 0) {
      // Every part is done (a stop that came after a shard's last page changes nothing).
      status = 'succeeded';
      Object.assign(update, { status, error: null, finished_at: trx.fn.now() });
    } else if (stops.length > 0) {
      status = stops.some((s) => s.status === 'stopped') ? 'stopped' : 'interrupted';
      const error = stops.map((s) => `shard ${s.name}: ${s.error ?? s.status}`).join('; ');
      Object.assign(update, { status, error, finished_at: trx.fn.now() });
    } else {
      status = 'running';
      Object.assign(update, { status, error: null, finished_at: null });
    }
  }
  await trx.withSchema(schema).table('runs').where({ id: runId }).update(update);
  return { done, waiting, counts, status };
}

/**
 * Closes the unfinished shared runs (of any kind) whose every shard is done: their last shard
 * finished but could not close the run (its connection dropped between its last page and the close).
 */
export async function settleFinishedShardRuns(knex: Knex, schema: string): Promise<void> {
  await withShardLedgerLock(knex, schema, async (trx) => {
    const rows = (await trx
      .withSchema(schema)
      .from('runs')
      .select('id', trx.raw("(options->>'shards')::int as shards"))
      .whereRaw("options->>'shards' is not null")
      .whereIn('status', UNFINISHED)
      .whereNotExists(
        trx
          .withSchema(schema)
          .from('checkpoints')
          .select(trx.raw('1'))
          .whereRaw('checkpoints.run_id = runs.id')
          .where({ done: false }),
      )) as { id: string; shards: number }[];
    for (const row of rows) {
      await settleShardRun(trx, schema, String(row.id), row.shards, { onlyIfFinished: true });
    }
  });
}
