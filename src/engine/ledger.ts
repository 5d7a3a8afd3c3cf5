import os from 'node:os';
import type { Knex } from 'knex';
import type { IsoDate } from '../types';
import { emptyCounts, mergeCounts, restoreCounts, type RunCounts } from './counts';

/** The ledger (`<schema>.runs`): one row per run, written before the run acts and closed after. */

export type RunKind = 'backfill' | 'sweep' | 'revert' | 'reinstate';
export type RunStatus = 'running' | 'succeeded' | 'failed' | 'interrupted' | 'stopped' | 'abandoned';

export interface RunRecord {
  id: string;
  kind: RunKind;
  status: RunStatus;
  asOf: IsoDate;
  rulesHash: string;
  rulesFile: string | null;
  orgFilter: string | null;
  options: Record<string, unknown>;
  counts: Record<string, unknown>;
  error: string | null;
  startedBy: string;
  host: string | null;
  pid: number | null;
  startedAt: Date;
  heartbeatAt: Date;
  finishedAt: Date | null;
  revertsRunId: string | null;
}

/**
 * A runs row's --org list as a jsonb array of text (null: every organization). Kept in
 * `options.orgs`, since `org_filter` joins ids that may hold commas; older rows have only that.
 */
export const RUN_ORGS = "coalesce(options->'orgs', to_jsonb(string_to_array(org_filter, ',')))";

interface RunRow {
  id: string;
  kind: RunKind;
  status: RunStatus;
  as_of: string;
  rules_hash: string;
  rules_file: string | null;
  org_filter: string | null;
  options: Record<string, unknown>;
  counts: Record<string, unknown>;
  error: string | null;
  started_by: string;
  host: string | null;
  pid: number | null;
  started_at: Date;
  heartbeat_at: Date;
  finished_at: Date | null;
  reverts_run_id: string | null;
}

/** Who is acting: --by, else $SUSPEND_ACTOR, else the OS user. */
export function defaultActor(): string {
  if (process.env.SUSPEND_ACTOR) return process.env.SUSPEND_ACTOR;
  try {
    return os.userInfo().username;
  } catch {
    return 'unknown';
  }
}

/** `as_of` is read back as text so no timezone can shift the day. */
const RUN_COLUMNS = [
  'id',
  'kind',
  'status',
  'rules_hash',
  'rules_file',
  'org_filter',
  'options',
  'counts',
  'error',
  'started_by',
  'host',
  'pid',
  'started_at',
  'heartbeat_at',
  'finished_at',
  'reverts_run_id',
] as const;

function runQuery(knex: Knex | Knex.Transaction, schema: string) {
  return knex
    .withSchema(schema)
    .from('runs')
    .select(...RUN_COLUMNS)
    .select(knex.raw("to_char(as_of, 'YYYY-MM-DD') as as_of"));
}

function toRecord(row: RunRow): RunRecord {
  return {
    id: String(row.id),
    kind: row.kind,
    status: row.status,
    asOf: row.as_of,
    rulesHash: row.rules_hash,
    rulesFile: row.rules_file,
    orgFilter: row.org_filter,
    options: row.options,
    counts: row.counts,
    error: row.error,
    startedBy: row.started_by,
    host: row.host,
    pid: row.pid,
    startedAt: row.started_at,
    heartbeatAt: row.heartbeat_at,
    finishedAt: row.finished_at,
    revertsRunId: row.reverts_run_id === null ? null : String(row.reverts_run_id),
  };
}

export interface NewRun {
  kind: RunKind;
  asOf: IsoDate;
  rulesHash: string;
  rulesFile: string | null;
  orgFilter?: string | null;
  options?: Record<string, unknown>;
  startedBy?: string;
  revertsRunId?: string | null;
}

export async function startRun(
  knex: Knex | Knex.Transaction,
  schema: string,
  run: NewRun,
): Promise<RunRecord> {
  const [row] = await knex
    .withSchema(schema)
    .insert({
      kind: run.kind,
      status: 'running',
      as_of: run.asOf,
      rules_hash: run.rulesHash,
      rules_file: run.rulesFile,
      org_filter: run.orgFilter ?? null,
      options: JSON.stringify(run.options ?? {}),
      started_by: run.startedBy ?? defaultActor(),
      host: os.hostname(),
      pid: process.pid,
      reverts_run_id: run.revertsRunId ?? null,
    })
    .into('runs')
    .returning('id');
  const record = await getRun(knex, schema, String((row as { id: string }).id));
  if (!record) throw new Error('the new run row was not found');
  return record;
}

export async function finishRun(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
  result: {
    status: Exclude<RunStatus, 'running'>;
    counts?: object;
    error?: string | null;
    /** Leave a row that is no longer running as it is. */
    onlyIfRunning?: boolean;
  },
): Promise<void> {
  await knex
    .withSchema(schema)
    .table('runs')
    .where({ id, ...(result.onlyIfRunning ? { status: 'running' } : {}) })
    .update({
      status: result.status,
      ...(result.counts ? { counts: JSON.stringify(result.counts) } : {}),
      error: result.error ?? null,
      finished_at: knex.fn.now(),
      heartbeat_at: knex.fn.now(),
    });
}

/**
 * What each run's committed pages did, added up from its checkpoints (written in each page's own
 * transaction; a page without changes only every few seconds). Runs without checkpoints are left out.
 */
export async function committedCounts(
  knex: Knex | Knex.Transaction,
  schema: string,
  runIds: string[],
): Promise<Map<string, RunCounts>> {
  const out = new Map<string, RunCounts>();
  if (runIds.length === 0) return out;
  const rows = (await knex
    .withSchema(schema)
    .from('checkpoints')
    .whereIn('run_id', runIds)
    .select(knex.raw('run_id::text as run_id'), 'counts')) as {
    run_id: string;
    counts: Partial<RunCounts> | null;
  }[];
  for (const r of rows)
    out.set(r.run_id, mergeCounts(out.get(r.run_id) ?? emptyCounts(), restoreCounts(r.counts)));
  return out;
}

/**
 * What a run still marked running has done, as far as can be known: its changes from its
 * checkpoints (every page that changed something writes its checkpoint in its own transaction; the
 * row's counts are a heartbeat every few seconds, so a killed run's are behind), its scanned
 * accounts and pages from whichever went further (a page that changed nothing is checkpointed only
 * every few seconds, per worker). A run that closed itself keeps the counts it wrote.
 */
export function runningCounts(stored: Record<string, unknown>, committed: RunCounts | undefined) {
  if (!committed) return stored;
  const most = (key: 'scanned' | 'pages') =>
    Math.max(committed[key], typeof stored[key] === 'number' ? stored[key] : 0);
  return { ...committed, scanned: most('scanned'), pages: most('pages') } as unknown as Record<
    string,
    unknown
  >;
}

/**
 * Runs whose process is gone (the caller holds the run lock) become interrupted, with the counts
 * of the pages they committed. `finished`: also stamp finished_at (a sweep is never resumed).
 */
export async function markInterrupted(
  knex: Knex | Knex.Transaction,
  schema: string,
  ids: string[],
  options: { finished: boolean },
): Promise<void> {
  const counts = await committedCounts(knex, schema, ids);
  for (const id of ids) {
    const row = (await knex.withSchema(schema).from('runs').where({ id }).first('counts')) as
      { counts: Record<string, unknown> } | undefined;
    const furthest = runningCounts(row?.counts ?? {}, counts.get(id));
    await knex
      .withSchema(schema)
      .table('runs')
      .where({ id, status: 'running' })
      .update({
        status: 'interrupted',
        heartbeat_at: knex.fn.now(),
        ...(options.finished ? { finished_at: knex.fn.now() } : {}),
        counts: JSON.stringify(furthest),
      });
  }
}

/**
 * Records the backend pid of the session that holds a run's lock (`options.lockSession`), so that
 * `suspend runs` can tell this run's process from another run's. Set again when a run is resumed.
 */
export async function recordLockSession(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
  pid: number,
): Promise<void> {
  await knex.raw(
    `update ?? set options = options || jsonb_build_object('lockSession', ?::int) where id = ?`,
    [`${schema}.runs`, pid, id],
  );
}

/**
 * A resumed run whose rules changed since it started: its ledger row keeps the rules it started
 * with and lists each later set (the history rows of its pages say which rules judged them).
 */
export async function recordRulesChange(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
  rules: { hash: string; file: string | null },
  /** How the rules came in: a resume, or a shard joining; and the shard, for a `--shard` run. */
  how: { joined: boolean; shard: string | null } = { joined: false, shard: null },
): Promise<void> {
  const entry = {
    rulesHash: rules.hash,
    rulesFile: rules.file,
    ...(how.joined ? { joined: true } : {}),
    ...(how.shard ? { shard: how.shard } : {}),
  };
  await knex.raw(
    `update ?? set options = jsonb_set(options, '{rulesChanged}', coalesce(options->'rulesChanged', '[]'::jsonb)
       || jsonb_build_array(?::jsonb || jsonb_build_object('at', now())))
      where id = ?`,
    [`${schema}.runs`, JSON.stringify(entry), id],
  );
  // A shard's own rules: what its resume compares with (shards of one run may go on with others).
  if (how.shard)
    await knex.raw(
      `update ?? set options = jsonb_set(options, array['parts', ?::text, 'rulesHash'], to_jsonb(?::text))
        where id = ? and options->'parts'->? is not null`,
      [`${schema}.runs`, how.shard, rules.hash, id, how.shard],
    );
}

/**
 * Whether a run still marked running has no process left, given the sessions holding the run lock
 * (runLockHolders): the session it recorded holds none; a run without one (an older row) is alive
 * while anyone holds it. A shared --shard run waits for shards that may not have started: no process
 * is expected, so it is never judged gone.
 */
export function processGone(run: RunRecord, holders: ReadonlySet<number>): boolean {
  if (run.status !== 'running' || typeof run.options.shards === 'number') return false;
  const session = run.options.lockSession;
  return typeof session === 'number' ? !holders.has(session) : holders.size === 0;
}

/** Keeps `heartbeat_at` fresh so `suspend runs` can tell a live run from a crashed one. */
export async function heartbeat(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
  counts: object | null,
): Promise<void> {
  await knex
    .withSchema(schema)
    .table('runs')
    .where({ id })
    .update({ heartbeat_at: knex.fn.now(), ...(counts ? { counts: JSON.stringify(counts) } : {}) });
}

export async function getRun(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
): Promise<RunRecord | null> {
  // Run ids are bigint: a number past its range names no run (and would make the query fail).
  if (!/^\d+$/.test(id) || BigInt(id) > 9223372036854775807n) return null;
  const row = (await runQuery(knex, schema).where({ id }).first()) as RunRow | undefined;
  return row ? toRecord(row) : null;
}

/** One revert in a chain of reverts: `finished` unless it stopped part way (or is still running). */
export interface RevertLink {
  id: string;
  finished: boolean;
}

/**
 * Which reverts count (in a chain, and as unfinished): one that finished or wrote anything before it
 * stopped (either way it changed accounts), and one still marked running, even before its first page:
 * killed there, it is continued by the next revert of the same run as one killed later is (that one
 * holds the run lock, so the process is gone), and it is not reverted itself until then.
 */
const REVERT_COUNTS =
  "(r.status in ('succeeded', 'running') or exists (select 1 from ?? h where h.run_id = r.id))";

/** Whether `run` is a revert that did not finish but counts (see REVERT_COUNTS): it cannot be reverted. */
export async function unfinishedRevert(
  knex: Knex | Knex.Transaction,
  schema: string,
  run: RunRecord,
): Promise<boolean> {
  if (run.kind !== 'revert' || run.status === 'succeeded') return false;
  const found = await knex
    .withSchema(schema)
    .from('runs as r')
    .where('r.id', run.id)
    .whereRaw(REVERT_COUNTS, [`${schema}.history`])
    .first(knex.raw('1'));
  return found !== undefined;
}

/**
 * The reverts that follow run `id`: the one that reverted it, the one that reverted that revert,
 * and so on; at each step the newest that counts (REVERT_COUNTS). Odd positions undo the run's
 * changes, even ones put them back.
 */
export async function revertChain(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
): Promise<RevertLink[]> {
  const chain: RevertLink[] = [];
  for (let at = id; ;) {
    const next = (await knex
      .withSchema(schema)
      .from('runs as r')
      .where('r.reverts_run_id', at)
      .whereRaw(REVERT_COUNTS, [`${schema}.history`])
      .orderBy('r.id', 'desc')
      .first(knex.raw('r.id::text as id'), 'r.status')) as { id: string; status: string } | undefined;
    if (!next) return chain;
    chain.push({ id: next.id, finished: next.status === 'succeeded' });
    at = next.id;
  }
}

/** What to revert so that run `id`'s changes, (partly) in force after `chain`, are undone. */
export function undoAdvice(id: string, chain: RevertLink[]): string {
  const last = chain[chain.length - 1];
  if (!last) return `revert run ${id}`;
  // The run a stopped revert was reverting: reverting it again continues that revert.
  const before = chain[chain.length - 2]?.id ?? id;
  if (chain.length % 2 === 0) {
    return last.finished
      ? `revert run ${last.id} (which put back run ${id}'s changes)`
      : `revert run ${before} to finish run ${last.id} (which was putting back run ${id}'s changes), then revert run ${last.id}`;
  }
  return last.finished
    ? `revert run ${id}`
    : `revert run ${before} (it continues run ${last.id}, which stopped part way)`;
}

export async function listRuns(
  knex: Knex,
  schema: string,
  options: { limit?: number; kind?: RunKind } = {},
): Promise<RunRecord[]> {
  let q = runQuery(knex, schema)
    .orderBy('id', 'desc')
    .limit(options.limit ?? 20);
  if (options.kind) q = q.where({ kind: options.kind });
  return ((await q) as RunRow[]).map(toRecord);
}

/**
 * Backfills that did not finish (crashed, interrupted, stopped by the safety limit), newest first.
 * Never one a revert undid (or is undoing): going on with it would write changes under a run whose
 * revert is done, which `suspend revert` then refuses to undo.
 */
export async function unfinishedRuns(
  knex: Knex,
  schema: string,
  kind: RunKind,
  /** Only the runs of this `--shard` (`0/1`: over every account); any shard when absent. */
  shard?: string,
): Promise<RunRecord[]> {
  const query = runQuery(knex, schema);
  // Over every account: not a run the shards share (see shards.ts).
  if (shard) query.whereRaw("coalesce(options->>'shard', '0/1') = ? and options->>'shards' is null", [shard]);
  const rows = (await query
    .where({ kind })
    .whereIn('status', ['running', 'interrupted', 'failed', 'stopped'])
    .whereNotExists(revertOfOuterRun(knex, schema))
    .orderBy('id', 'desc')) as RunRow[];
  return rows.map(toRecord);
}

/** A subquery for `whereNotExists`: a revert whose target is the `runs` row of the outer query. */
export function revertOfOuterRun(knex: Knex | Knex.Transaction, schema: string): Knex.QueryBuilder {
  return knex
    .withSchema(schema)
    .from('runs as reverting')
    .select(knex.raw('1'))
    .whereRaw('reverting.reverts_run_id = runs.id');
}

/** The newest unfinished run: resumable. */
export async function unfinishedRun(
  knex: Knex,
  schema: string,
  kind: RunKind,
  shard?: string,
): Promise<RunRecord | null> {
  return (await unfinishedRuns(knex, schema, kind, shard))[0] ?? null;
}

export async function setRunStatus(
  knex: Knex | Knex.Transaction,
  schema: string,
  id: string,
  status: RunStatus,
): Promise<void> {
  // A run that goes on again has not finished.
  const reopened = status === 'running' ? { finished_at: null } : {};
  await knex
    .withSchema(schema)
    .table('runs')
    .where({ id })
    .update({ status, ...reopened, heartbeat_at: knex.fn.now() });
}

export interface CheckpointRecord {
  /** `I/N`, or `I/N part k/m` for one of a run's --workers. */
  shard: string;
  lastKey: string | null;
  pages: number;
  scanned: number;
  done: boolean;
  updatedAt: Date;
}

/** Where each shard and worker of a run got to. */
export async function runCheckpoints(
  knex: Knex | Knex.Transaction,
  schema: string,
  runId: string,
): Promise<CheckpointRecord[]> {
  const rows = (await knex
    .withSchema(schema)
    .from('checkpoints')
    .where({ run_id: runId })
    .orderBy('shard')
    .select('shard', 'last_key', 'pages', 'scanned', 'done', 'updated_at')) as {
    shard: string;
    last_key: string | null;
    pages: number;
    scanned: string;
    done: boolean;
    updated_at: Date;
  }[];
  return rows.map((r) => ({
    shard: r.shard,
    lastKey: r.last_key,
    pages: r.pages,
    scanned: Number(r.scanned),
    done: r.done,
    updatedAt: r.updated_at,
  }));
}
