import type { Knex } from 'knex';
import { ExitCode, UsageError, errorMessage } from '../errors';
import { migrationStatus, requireMigrated } from '../db/migrate';
import { pageKeysQuery, qualified, readSignals } from '../source/signals';
import { readPageState, type PageState } from '../source/states';
import { writeStateChanges, type StateChange, type WriteContext } from '../write/apply';
import { writeHostColumns } from '../write/host-columns';
import { acquireRunLock, type HeldLock } from './lock';
import { countChanges, countEvaluations, emptyCounts, restoreCounts, type RunCounts } from './counts';
import {
  defaultActor,
  finishRun,
  getRun,
  heartbeat,
  setRunStatus,
  startRun,
  unfinishedRun,
  type RunRecord,
} from './ledger';
import { planPage, type PagePlan } from './plan';
import type { AccountEvaluation, IsoDate, Rules, Signals } from '../types';

/**
 * The batch engine: walks the customers by keyset pages, reads each page's signals with one
 * set-based query, evaluates them in memory with the pure evaluator, and (unless dry) writes the
 * page's changes in one transaction together with the checkpoint. Memory is one page at a time.
 */

export type BatchKind = 'backfill' | 'sweep';

export interface BatchOptions {
  kind: BatchKind;
  asOf: IsoDate;
  dryRun: boolean;
  batchSize: number;
  orgs: string[] | null;
  shard: { index: number; count: number } | null;
  /** Continue the unfinished backfill instead of refusing. */
  resume: boolean;
  /** Wait for the lock instead of failing with exit code 3. */
  wait: boolean;
  actor: string;
  /** Stop cleanly after the current page (Ctrl-C). */
  signal?: AbortSignal;
  /** Called once per page with the changes (the report's account listing streams from here). */
  onPage?: (page: PageReport) => void | Promise<void>;
  onLog?: (message: string) => void;
  /** Test seam: runs inside the page transaction, after the read and before the re-check. */
  beforeWrite?: (keys: string[]) => Promise<void>;
}

export interface PageReport {
  evaluations: AccountEvaluation[];
  changes: StateChange[];
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
  error: string | null;
  exitCode: number;
}

const SHARD_ALL = '0/1';

function shardName(shard: BatchOptions['shard']): string {
  return shard ? `${shard.index}/${shard.count}` : SHARD_ALL;
}

export async function runBatch(knex: Knex, rules: Rules, options: BatchOptions): Promise<BatchResult> {
  const schema = rules.settings.schema;
  if (rules.defaults.policies.length === 0 && Object.keys(rules.organizations).length === 0) {
    throw new UsageError(
      `No policies to apply: ${rules.file ?? 'no rules file was found'}; write them in suspend.config.yaml or pass --rules FILE (see rules.example.yaml).`,
    );
  }
  await checkSource(knex, rules);
  if (options.dryRun) return dryRun(knex, rules, options);

  await requireMigrated(knex, schema);
  const lock = await acquireRunLock(knex, schema, {
    wait: options.wait,
    description: `suspend ${options.kind} by ${options.actor} (pid ${process.pid})`,
    onWait: (holder) => options.onLog?.(`waiting for the lock held by ${holder}`),
  });
  try {
    return await realRun(knex, rules, options);
  } finally {
    await lock.release();
  }
}

/** One sentence when the mapped tables are missing, instead of a SQL error mid-run. */
async function checkSource(knex: Knex, rules: Rules): Promise<void> {
  const m = rules.source;
  const wanted = m.view
    ? [m.view]
    : [m.customers.table, m.activity?.table, m.invoices?.table, m.subscriptions?.table];
  const tables = wanted.filter((t): t is string => Boolean(t));
  for (const t of tables) {
    const name = qualified(m, t);
    const found = await knex.raw<{ rows: { r: string | null }[] }>('select to_regclass(?) as r', [
      name
        .split('.')
        .map((p) => `"${p.replace(/"/g, '""')}"`)
        .join('.'),
    ]);
    if (!found.rows[0]?.r) {
      throw new UsageError(
        `Table "${name}" named in the source mapping does not exist in this database; fix source in the rules file or run \`suspend seed\` for the reference data.`,
      );
    }
  }
}

async function countAccounts(knex: Knex, rules: Rules, options: BatchOptions): Promise<number> {
  const c = rules.source.customers;
  const q = knex.from(qualified(rules.source, c.table)).count<{ n: string }[]>({ n: '*' });
  if (options.orgs && options.orgs.length > 0) q.whereRaw('??::text = any(?::text[])', [c.org, options.orgs]);
  if (options.shard && options.shard.count > 1) {
    q.whereRaw('abs(hashtext(??::text)) % ? = ?', [c.key, options.shard.count, options.shard.index]);
  }
  const [row] = await q;
  return Number(row?.n ?? 0);
}

/** Reads pages one at a time; the connection goes back to the pool between pages. */
async function* readPages(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  after: string | null,
  readState: (keys: string[]) => Promise<PageState>,
): AsyncGenerator<{ keys: string[]; signals: Signals[]; state: PageState }> {
  let last = after;
  for (;;) {
    if (options.signal?.aborted) return;
    const rows = (await pageKeysQuery(knex, rules.source, {
      after: last,
      limit: options.batchSize,
      orgs: options.orgs,
      shard: options.shard,
    })) as { key: string }[];
    if (rows.length === 0) return;
    const keys = rows.map((r) => r.key);
    const first = keys[0] as string;
    last = keys[keys.length - 1] as string;
    const [signals, state] = await Promise.all([
      readSignals(knex, rules.source, options.asOf, { from: first, to: last, orgs: options.orgs }),
      readState(keys),
    ]);
    // The range query also returns keys of other shards between first and last: keep the page's own.
    const own = new Set(keys);
    yield { keys, signals: signals.filter((s) => own.has(s.key)), state };
    if (rows.length < options.batchSize) return;
  }
}

async function dryRun(knex: Knex, rules: Rules, options: BatchOptions): Promise<BatchResult> {
  const schema = rules.settings.schema;
  // A dry run writes nothing, not even suspend's schema: without it every account is simply clear.
  const migrated = (await migrationStatus(knex, schema)).applied.length > 0;
  const noState: PageState = { states: new Map(), exclusions: new Map() };
  const total = await countAccounts(knex, rules, options);
  const counts = emptyCounts();
  for await (const page of readPages(knex, rules, options, null, (keys) =>
    migrated ? readPageState(knex, schema, keys, options.asOf) : Promise.resolve(noState),
  )) {
    const plan = planPage(page.signals, page.state, rules, options.asOf);
    counts.pages += 1;
    countEvaluations(counts, plan.evaluations);
    countChanges(counts, plan.changes);
    await options.onPage?.({ evaluations: plan.evaluations, changes: plan.changes, counts, total });
  }
  const status = options.signal?.aborted ? 'interrupted' : 'succeeded';
  return { run: null, status, counts, total, limit: null, error: null, exitCode: ExitCode.ok };
}

function maxChangesFor(rules: Rules, total: number): number | null {
  const m = rules.settings.maxChanges;
  if (!m) return null;
  return 'count' in m ? m.count : Math.floor(m.fraction * total);
}

async function openRun(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
): Promise<{ run: RunRecord; after: string | null; counts: RunCounts }> {
  const schema = rules.settings.schema;
  const shard = shardName(options.shard);
  if (options.kind === 'backfill') {
    const unfinished = await unfinishedRun(knex, schema, 'backfill');
    if (unfinished && !options.resume) {
      throw new UsageError(
        `Backfill run ${unfinished.id} (as of ${unfinished.asOf}, started ${unfinished.startedAt.toISOString()} by ${unfinished.startedBy}) did not finish (${unfinished.status}); continue it with \`suspend backfill --resume\` or give it up with \`suspend backfill --abandon\`.`,
      );
    }
    if (options.resume) {
      if (!unfinished)
        throw new UsageError('There is no unfinished backfill to resume; start one with `suspend backfill`.');
      if (unfinished.rulesHash !== rules.hash) {
        options.onLog?.(
          `note: the rules changed since run ${unfinished.id} started; the remaining pages use the current rules`,
        );
      }
      await setRunStatus(knex, schema, unfinished.id, 'running');
      const checkpoint = (await knex
        .withSchema(schema)
        .from('checkpoints')
        .where({ run_id: unfinished.id, shard })
        .first()) as { last_key: string | null; counts: Partial<RunCounts> } | undefined;
      options.onLog?.(
        `resuming backfill run ${unfinished.id} as of ${unfinished.asOf} after key ${checkpoint?.last_key ?? '(start)'}`,
      );
      // The run keeps its own as-of, so every page of one backfill is judged on the same day.
      options.asOf = unfinished.asOf;
      return {
        run: unfinished,
        after: checkpoint?.last_key ?? null,
        counts: restoreCounts(checkpoint?.counts),
      };
    }
  } else {
    // A sweep that crashed left its row "running"; we hold the lock now, so it is dead.
    await knex
      .withSchema(schema)
      .table('runs')
      .where({ kind: options.kind, status: 'running' })
      .update({ status: 'interrupted', finished_at: knex.fn.now() });
  }
  const run = await startRun(knex, schema, {
    kind: options.kind,
    asOf: options.asOf,
    rulesHash: rules.hash,
    rulesFile: rules.file,
    orgFilter: options.orgs?.join(',') ?? null,
    options: { batchSize: options.batchSize, shard, dryRun: false },
    startedBy: options.actor,
  });
  return { run, after: null, counts: emptyCounts() };
}

async function realRun(knex: Knex, rules: Rules, options: BatchOptions): Promise<BatchResult> {
  const schema = rules.settings.schema;
  const { run, after, counts } = await openRun(knex, rules, options);
  const total = await countAccounts(knex, rules, options);
  const max = maxChangesFor(rules, total);
  const ctx: WriteContext = {
    schema,
    runId: run.id,
    asOf: options.asOf,
    rulesHash: rules.hash,
    actor: options.actor,
  };
  const shard = shardName(options.shard);
  try {
    for await (const page of readPages(knex, rules, options, after, (keys) =>
      readPageState(knex, schema, keys, options.asOf),
    )) {
      const plan = planPage(page.signals, page.state, rules, options.asOf);
      if (max !== null && counts.changes + plan.changes.length > max) {
        const wouldReach = counts.changes + plan.changes.length;
        await finishRun(knex, schema, run.id, {
          status: 'stopped',
          counts: { ...counts },
          error: `safety limit: max_changes ${max} would be crossed (${wouldReach} changes)`,
        });
        return {
          run,
          status: 'stopped',
          counts,
          total,
          limit: { max, wouldReach },
          error: null,
          exitCode: ExitCode.safetyLimit,
        };
      }
      const written = await commitPage(knex, rules, options, ctx, shard, page.keys, plan, counts);
      await options.onPage?.({ evaluations: plan.evaluations, changes: written, counts, total });
    }
    if (options.signal?.aborted) {
      await finishRun(knex, schema, run.id, { status: 'interrupted', counts: { ...counts } });
      return {
        run,
        status: 'interrupted',
        counts,
        total,
        limit: null,
        error: null,
        exitCode: ExitCode.failed,
      };
    }
    await finishRun(knex, schema, run.id, { status: 'succeeded', counts: { ...counts } });
    return {
      run: await getRun(knex, schema, run.id),
      status: 'succeeded',
      counts,
      total,
      limit: null,
      error: null,
      exitCode: ExitCode.ok,
    };
  } catch (err) {
    // Mark the run interrupted when the database still answers; if it does not, the row stays
    // "running" and the next run (which then holds the lock) knows it died.
    await finishRun(knex, schema, run.id, {
      status: 'interrupted',
      counts: { ...counts },
      error: errorMessage(err),
    }).catch(() => undefined);
    throw err;
  }
}

/**
 * One transaction per page: re-check the changed accounts (their invoices locked so a payment
 * cannot slip in between), write host columns, states, history and outbox, then the checkpoint.
 * Counts are updated only once the transaction has committed.
 */
async function commitPage(
  knex: Knex,
  rules: Rules,
  options: BatchOptions,
  ctx: WriteContext,
  shard: string,
  pageKeys: string[],
  plan: PagePlan,
  counts: RunCounts,
): Promise<StateChange[]> {
  const pageCounts = emptyCounts();
  countEvaluations(pageCounts, plan.evaluations);
  const written = await knex.transaction(async (trx) => {
    let changes = plan.changes;
    let host = plan.hostColumns;
    if (changes.length > 0) {
      const keys = [...new Set(changes.map((c) => c.key))];
      await options.beforeWrite?.(keys);
      const fresh = await recheck(trx, rules, ctx, keys);
      const same = (c: StateChange) =>
        fresh.changes.some(
          (f) =>
            f.key === c.key &&
            f.policy === c.policy &&
            f.kind === c.kind &&
            f.to === c.to &&
            f.expectedVersion === c.expectedVersion,
        );
      const stale = new Set(changes.filter((c) => !same(c)).map((c) => c.key));
      pageCounts.changedSinceRead += stale.size;
      changes = fresh.changes.filter((c) => !stale.has(c.key) && keys.includes(c.key));
      host = fresh.hostColumns.filter((h) => !stale.has(h.key));
    }
    const old = await writeHostColumns(trx, rules.source, host);
    for (const c of changes) {
      const before = old.get(c.key);
      if (!before) continue;
      c.hostOld = before;
      const captured = host.filter((h) => h.key === c.key && h.capture).map((h) => h.column);
      if (captured.length > 0)
        c.hostBefore = Object.fromEntries(captured.map((col) => [col, before[col] ?? null]));
    }
    const applied = await writeStateChanges(trx, ctx, changes);
    const appliedSet = new Set(applied.map((a) => `${a.key}\u0000${a.policy}`));
    const result = changes.filter((c) => appliedSet.has(`${c.key}\u0000${c.policy}`));
    pageCounts.changedSinceRead += new Set(
      changes.filter((c) => !appliedSet.has(`${c.key}\u0000${c.policy}`)).map((c) => c.key),
    ).size;
    countChanges(pageCounts, result);
    const merged = mergeCounts(counts, pageCounts);
    merged.pages += 1;
    await trx
      .withSchema(ctx.schema)
      .insert({
        run_id: ctx.runId,
        shard,
        last_key: pageKeys[pageKeys.length - 1],
        pages: merged.pages,
        scanned: merged.scanned,
        counts: JSON.stringify(merged),
        updated_at: trx.fn.now(),
      })
      .into('checkpoints')
      .onConflict(['run_id', 'shard'])
      .merge();
    await heartbeat(trx, ctx.schema, ctx.runId, merged);
    return { result, merged };
  });
  Object.assign(counts, written.merged);
  return written.result;
}

async function recheck(
  trx: Knex.Transaction,
  rules: Rules,
  ctx: WriteContext,
  keys: string[],
): Promise<PagePlan> {
  const inv = rules.source.invoices;
  if (inv) {
    await trx.raw('select 1 from ?? where ?? = any(?) for share', [
      qualified(rules.source, inv.table),
      inv.customer,
      keys,
    ]);
  }
  // One connection: the two reads run in turn.
  const signals = await readSignals(trx, rules.source, ctx.asOf, { keys });
  const state = await readPageState(trx, ctx.schema, keys, ctx.asOf);
  return planPage(signals, state, rules, ctx.asOf);
}

function mergeCounts(a: RunCounts, b: RunCounts): RunCounts {
  const sum = (x: Record<string, number>, y: Record<string, number>) => {
    const out = { ...x };
    for (const [k, v] of Object.entries(y)) out[k] = (out[k] ?? 0) + v;
    return out;
  };
  return {
    scanned: a.scanned + b.scanned,
    pages: a.pages + b.pages,
    changes: a.changes + b.changes,
    accountsChanged: a.accountsChanged + b.accountsChanged,
    excluded: a.excluded + b.excluded,
    excludedByReason: sum(a.excludedByReason, b.excludedByReason),
    held: a.held + b.held,
    changedSinceRead: a.changedSinceRead + b.changedSinceRead,
    skipped: a.skipped + b.skipped,
    skippedByReason: sum(a.skippedByReason, b.skippedByReason),
    transitions: sum(a.transitions, b.transitions),
  };
}

/** `suspend backfill --abandon`: gives up the unfinished backfill so a new one can start. */
export async function abandonBackfill(knex: Knex, rules: Rules): Promise<RunRecord> {
  const schema = rules.settings.schema;
  await requireMigrated(knex, schema);
  const lock: HeldLock = await acquireRunLock(knex, schema, {
    wait: false,
    description: `suspend backfill --abandon by ${defaultActor()}`,
  });
  try {
    const unfinished = await unfinishedRun(knex, schema, 'backfill');
    if (!unfinished) throw new UsageError('There is no unfinished backfill to abandon.');
    await finishRun(knex, schema, unfinished.id, { status: 'abandoned', error: unfinished.error });
    return unfinished;
  } finally {
    await lock.release();
  }
}
