import type { Knex } from 'knex';
import { requireMigrated } from '../db/migrate';
import { UsageError, errorMessage } from '../errors';
import {
  acquireRunLock,
  confirmLockHeld,
  runLockHolders,
  type HeldLock,
  type LockProof,
} from '../engine/lock';
import {
  finishRun,
  getRun,
  heartbeat,
  processGone,
  recordLockSession,
  revertChain,
  setRunStatus,
  startRun,
  undoAdvice,
  unfinishedRevert,
  type RevertLink,
  type RunRecord,
} from '../engine/ledger';
import { activeExclusions } from './exclusions';
import { customerContacts, hostValueText, restoreHostColumns } from './host';
import {
  readStoredRows,
  rewriteStates,
  valuesOf,
  type StateRewrite,
  type StateValues,
  type StoredRow,
} from './write';
import { hostValuesAfter, type HostValue } from './host-plan';
import { markHolds, rulesForOrg } from '../engine/plan';
import { groupBy } from '../collections';
import { notHeldByLiveClaimer } from '../notify/outbox';
import type { AccountHold, IsoDate, Reason, Rules } from '../types';

/**
 * `suspend revert RUN_ID`: undoes what one run changed. For each account+policy whose latest history
 * row is from that run, the state recorded in that row's `previous_state` comes back (no prior row:
 * clear), and so do the host column values it overwrote (`previous_state.host`). An account that
 * changed again since (its latest history row is from a later run) or that is excluded now is left
 * alone and listed. Page by page of keys, one transaction per page; history rows (kind 'revert') and
 * outbox events are appended. It is itself a run (kind 'revert', reverts_run_id). `dryRun` reads
 * the same plan and writes nothing: no lock, no run, no rows.
 */

export interface RevertOptions {
  runId: string;
  dryRun: boolean;
  actor: string;
  asOf: IsoDate;
  wait: boolean;
  /** Keys per page (one transaction each). */
  batchSize: number;
  onLog?: (message: string) => void; /** Ctrl-C while waiting for the lock (see acquireRunLock). */
  signal?: AbortSignal;
  onLocked?: () => void;
}

export interface RevertItem {
  key: string;
  policy: string;
  /** The stage now. */
  from: string | null;
  /** The stage it is (or would be) restored to. */
  to: string | null;
}

export interface LeftAlone extends RevertItem {
  /** "changed again by run 12 (sweep)" or "excluded: <reason>". */
  why: string;
}

export interface RevertResult {
  target: RunRecord;
  /** The revert's own run; null for a dry run. */
  run: RunRecord | null;
  /** An earlier revert of the target that stopped part way, which this one continues (its id). */
  continues: string | null;
  /** A dry run's: that revert is not stopped but still running in another process. */
  continuesRunning?: boolean;
  /** What that stopped revert had done (from its history rows): the ledger row counts it with this call's. */
  continuedChanges?: number;
  continuedHostRestored?: number;
  dryRun: boolean;
  restored: RevertItem[];
  leftAlone: LeftAlone[];
  /** Keys whose host columns were (or would be) put back. */
  hostRestored: number;
}

interface PlanRow {
  history_id: string;
  key: string;
  policy: string;
  previous_state: (Partial<StoredRow> & { host?: Record<string, unknown> | null }) | null;
  latest_run: string | null;
  latest_kind: string | null;
  latest_is_target: boolean;
  /**
   * Some history row of this key (any policy) is later than the run's, from another run, not undone,
   * and may hold its host columns (it wrote some, or it entered a stage): the host values are that
   * run's now.
   */
  key_touched_later: boolean;
  /** The stopped revert this one continues restored this account+policy already. */
  done_before: boolean;
  current: StoredRow;
}

/** The run's latest history row per account+policy in a page, the account's latest, and its state. */
const PLAN_SQL = `
with target as (
  select distinct on (h.customer_key, h.policy) h.id, h.customer_key, h.policy, h.previous_state
    from :history: h
   where h.run_id = :runId and h.customer_key = any(:keys::text[])
   order by h.customer_key, h.policy, h.id desc
),
-- Later changes that were themselves undone do not count, so runs can be reverted newest first: the
-- rows of a run whose revert restored this account+policy, and the rows of reverts of later runs.
live as (
  select h.* from :history: h
   where h.customer_key = any(:keys::text[])
     and not exists (select 1 from :runs: rv join :history: hr on hr.run_id = rv.id
                      where rv.kind = 'revert' and rv.reverts_run_id = h.run_id and h.run_id <> :runId
                        and hr.customer_key = h.customer_key and hr.policy = h.policy)
     and not exists (select 1 from :runs: rv
                      where rv.id = h.run_id and rv.kind = 'revert' and rv.reverts_run_id > :runId)
),
latest as (
  select distinct on (h.customer_key, h.policy) h.id, h.run_id, h.customer_key, h.policy
    from live h
   order by h.customer_key, h.policy, h.id desc
)
select t.id::text as history_id, t.customer_key as key, t.policy, t.previous_state,
       l.run_id::text as latest_run, r.kind as latest_kind, l.id = t.id as latest_is_target,
       exists (select 1 from live h2
                where h2.customer_key = t.customer_key and h2.id > t.id
                  and h2.run_id is distinct from :runId
                  and h2.run_id is distinct from :continues::bigint
                  -- a change to clear that wrote no host columns holds none (e.g. a stopped revert
                  -- of an earlier run); one into a stage may hold them with the value they had
                  and not (h2.to_stage is null
                           and jsonb_typeof(h2.previous_state->'host') is distinct from 'object')
               ) as key_touched_later,
       exists (select 1 from :history: h3
                where h3.run_id = :continues::bigint and h3.customer_key = t.customer_key
                  and h3.policy = t.policy and h3.id > t.id) as done_before,
       to_jsonb(s) as current
  from target t
  join latest l on l.customer_key = t.customer_key and l.policy = t.policy
  left join :runs: r on r.id = l.run_id
  join :states: s on s.customer_key = t.customer_key and s.policy = t.policy
 order by t.customer_key, t.policy`;

/** The state a history row's previous_state describes; no prior row (or only `host`): clear. */
export function restoredState(previous: PlanRow['previous_state'], current: StoredRow): StateValues {
  if (previous && typeof previous.customer_key === 'string') return valuesOf(previous as StoredRow);
  return {
    orgId: current.org_id,
    stage: null,
    stageIndex: -1,
    blocksBooking: false,
    allowsLogin: true,
    message: null,
    reasons: [],
    enteredOn: null,
    episodeStartedOn: null,
    reinstatedOn: null,
    tags: [],
    hostBefore: null,
  };
}

async function readPlan(
  knex: Knex | Knex.Transaction,
  schema: string,
  runId: string,
  keys: string[],
  options: { lock: boolean; continues: string | null },
): Promise<PlanRow[]> {
  const result = await knex.raw<{ rows: PlanRow[] }>(PLAN_SQL + (options.lock ? ' for update of s' : ''), {
    history: `${schema}.history`,
    states: `${schema}.account_states`,
    runs: `${schema}.runs`,
    runId,
    keys,
    continues: options.continues,
  });
  return result.rows;
}

async function pageKeys(
  knex: Knex,
  schema: string,
  runId: string,
  after: string | null,
  limit: number,
): Promise<string[]> {
  const q = knex
    .withSchema(schema)
    .from('history')
    .distinct('customer_key')
    .where({ run_id: runId })
    .orderBy('customer_key')
    .limit(limit);
  if (after !== null) q.where('customer_key', '>', after);
  return ((await q) as { customer_key: string }[]).map((r) => r.customer_key);
}

interface PagePlan {
  restore: { row: PlanRow; state: StateValues }[];
  leftAlone: LeftAlone[];
  host: { key: string; column: string; value: string | null }[];
}

function planPage(rows: PlanRow[], exclusions: Map<string, { reason: string }>): PagePlan {
  const plan: PagePlan = { restore: [], leftAlone: [], host: [] };
  const hostBlocked = new Set(rows.filter((r) => r.key_touched_later).map((r) => r.key));
  const hostDone = new Set<string>();
  const restoreHost = (row: PlanRow) => {
    const host = row.previous_state?.host;
    if (!host || hostBlocked.has(row.key) || hostDone.has(row.key)) return;
    hostDone.add(row.key);
    for (const [column, value] of Object.entries(host)) {
      plan.host.push({ key: row.key, column, value: hostValueText(value) });
    }
  };
  for (const row of rows) {
    const state = restoredState(row.previous_state, row.current);
    const item = { key: row.key, policy: row.policy, from: row.current.stage, to: state.stage };
    const excluded = exclusions.get(row.key);
    if (row.done_before) {
      // The stopped revert this one continues restored the state; the host values it may have had
      // to hold back then (a later run, undone since, had touched the account) come back now.
      restoreHost(row);
      continue;
    }
    if (!row.latest_is_target) {
      plan.leftAlone.push({
        ...item,
        why: `changed again by run ${row.latest_run ?? '?'}${row.latest_kind ? ` (${row.latest_kind})` : ''}`,
      });
    } else if (excluded) {
      plan.leftAlone.push({ ...item, why: `excluded: ${excluded.reason}` });
    } else {
      plan.restore.push({ row, state });
      restoreHost(row);
    }
  }
  return plan;
}

/** Why run `id` cannot be reverted again (its first revert finished), and what to run instead. */
function alreadyReverted(id: string, chain: RevertLink[]): string {
  const last = chain[chain.length - 1] ?? { id, finished: true };
  if (chain.length === 1)
    return `Run ${id} was already reverted by run ${last.id}; to undo that, revert run ${last.id}.`;
  const steps = chain
    .map(
      (r, i) =>
        `run ${r.id} reverted ${i === 0 ? 'it' : `run ${chain[i - 1]?.id}`}${r.finished ? '' : ' in part'}`,
    )
    .join(', ');
  if (chain.length % 2 === 0)
    return `Run ${id}'s changes were reverted and then ${last.finished ? '' : 'partly '}put back (${steps}); to undo them again, ${undoAdvice(id, chain)}.`;
  if (last.finished)
    return `Run ${id}'s changes are already undone (${steps}); to put them back, revert run ${last.id}.`;
  return `Run ${id}'s changes are partly undone (${steps}); to finish, ${undoAdvice(id, chain)}.`;
}

/**
 * Without a rules file no stage is known: an account that another policy's stage still holds would
 * keep whatever host column values the stages set (see hostValuesAfter), a suspension included. A
 * revert of a run with such accounts is refused before anything is read for it or written.
 */
async function refuseWithoutRules(knex: Knex, rules: Rules, target: RunRecord): Promise<void> {
  if (rules.file !== null) return;
  const schema = rules.settings.schema;
  const r = await knex.raw<{ rows: { n: number }[] }>(
    `select count(distinct h.customer_key)::int as n
       from ?? h join ?? s on s.customer_key = h.customer_key and s.policy <> h.policy
      where h.run_id = ? and s.run_id is distinct from h.run_id and s.stage is not null
        and jsonb_typeof(h.previous_state->'host') = 'object'`,
    [`${schema}.history`, `${schema}.account_states`, target.id],
  );
  const n = r.rows[0]?.n ?? 0;
  if (n === 0) return;
  throw new UsageError(
    `Run ${target.id} set host columns of ${n} account(s) that another policy's stage still holds, and without a rules file suspend cannot tell what those columns should hold after the revert; pass --rules FILE (the rules the runs used).`,
  );
}

export async function revertRun(knex: Knex, rules: Rules, options: RevertOptions): Promise<RevertResult> {
  const schema = rules.settings.schema;
  await requireMigrated(knex, schema);
  const target = await getRun(knex, schema, options.runId);
  if (!target) throw new UsageError(`There is no run ${options.runId}; \`suspend runs\` lists them.`);
  if (await unfinishedRevert(knex, schema, target)) {
    // Reverting part of a revert would leave the target's changes split between runs (and one killed
    // before its first page is continued by the next revert of its run, as revertChain says).
    throw new UsageError(
      `Run ${target.id} is a revert of run ${target.revertsRunId ?? '?'} that did not finish; \`suspend revert ${target.revertsRunId ?? '?'}\` finishes it, and then it can be reverted.`,
    );
  }
  await refuseWithoutRules(knex, rules, target);
  const result: RevertResult = {
    target,
    run: null,
    continues: null,
    dryRun: options.dryRun,
    restored: [],
    leftAlone: [],
    hostRestored: 0,
  };
  // What reverted this run so far; a revert of it that stopped part way is continued, not repeated.
  const checkChain = async () => {
    const chain = await revertChain(knex, schema, target.id);
    if (chain[0]?.finished) throw new UsageError(alreadyReverted(target.id, chain));
    result.continues = chain[0]?.id ?? null;
  };
  let lock: HeldLock | null = null;
  if (options.dryRun) {
    await checkChain();
    // A dry run takes no lock: the unfinished revert may be one another process is running now.
    const unfinished = result.continues === null ? null : await getRun(knex, schema, result.continues);
    if (unfinished?.status === 'running' && !processGone(unfinished, await runLockHolders(knex, schema)))
      result.continuesRunning = true;
  } else {
    lock = await acquireRunLock(knex, schema, {
      wait: options.wait,
      description: `suspend revert ${target.id} by ${options.actor} (pid ${process.pid})`,
      onWait: options.onLog,
      signal: options.signal,
      onLocked: options.onLocked,
    });
  }
  try {
    if (!options.dryRun) {
      // Checked under the lock: a revert that waited for another one sees what it did.
      await checkChain();
      if (result.continues !== null) {
        await setRunStatus(knex, schema, result.continues, 'running');
        result.run = await getRun(knex, schema, result.continues);
        // From its history rows, which commit with their page (its ledger row may be a page behind).
        const done = await knex.raw<{ rows: { changes: string; host: string }[] }>(
          `select count(*) as changes,
                  count(distinct customer_key) filter (where jsonb_typeof(previous_state->'host') = 'object') as host
             from ?? where run_id = ?`,
          [`${schema}.history`, result.continues],
        );
        result.continuedChanges = Number(done.rows[0]?.changes ?? 0);
        result.continuedHostRestored = Number(done.rows[0]?.host ?? 0);
        options.onLog?.(`continuing revert run ${result.continues}, which stopped part way`);
      } else {
        result.run = await startRun(knex, schema, {
          kind: 'revert',
          asOf: options.asOf,
          rulesHash: rules.hash,
          rulesFile: rules.file,
          options: { batchSize: options.batchSize },
          startedBy: options.actor,
          revertsRunId: target.id,
        });
      }
      // So that `suspend runs` and a dry run can tell this process from another run's.
      if (lock) await recordLockSession(knex, schema, result.run!.id, lock.proof.pid);
    }
    try {
      await revertPages(knex, rules, options, result, lock?.proof ?? null);
      if (result.run) {
        await finishRun(knex, schema, result.run.id, { status: 'succeeded', counts: countsOf(result) });
        result.run = (await getRun(knex, schema, result.run.id)) ?? result.run;
      }
      return result;
    } catch (err) {
      if (result.run) {
        await finishRun(knex, schema, result.run.id, {
          status: 'failed',
          counts: countsOf(result),
          error: errorMessage(err),
        }).catch(() => undefined);
      }
      throw err;
    }
  } finally {
    await lock?.release();
  }
}

function countsOf(result: RevertResult): Record<string, unknown> {
  const changes = result.restored.length + (result.continuedChanges ?? 0);
  return {
    changes,
    transitions: { revert: changes },
    leftAlone: result.leftAlone.length,
    hostRestored: result.hostRestored + (result.continuedHostRestored ?? 0),
  };
}

async function revertPages(
  knex: Knex,
  rules: Rules,
  options: RevertOptions,
  result: RevertResult,
  lock: LockProof | null,
): Promise<void> {
  const schema = rules.settings.schema;
  let after: string | null = null;
  for (;;) {
    const keys = await pageKeys(knex, schema, result.target.id, after, options.batchSize);
    if (keys.length === 0) return;
    after = keys[keys.length - 1] as string;
    if (options.dryRun) {
      const plan = planPage(
        await readPlan(knex, schema, result.target.id, keys, { lock: false, continues: result.continues }),
        await activeExclusions(knex, schema, keys, options.asOf),
      );
      collect(result, plan);
    } else {
      const plan = await knex.transaction(async (trx) => {
        const planned = await revertPage(trx, rules, options, result, keys);
        if (lock) await confirmLockHeld(trx, lock);
        return planned;
      });
      collect(result, plan);
      if (result.run) await heartbeat(knex, schema, result.run.id, countsOf(result));
    }
    if (keys.length < options.batchSize) return;
  }
}

function collect(result: RevertResult, plan: PagePlan): void {
  result.restored.push(
    ...plan.restore.map(({ row, state }) => ({
      key: row.key,
      policy: row.policy,
      from: row.current.stage,
      to: state.stage,
    })),
  );
  result.leftAlone.push(...plan.leftAlone);
  result.hostRestored += new Set(plan.host.map((h) => h.key)).size;
}

/**
 * Host columns of accounts a later run touched too: the values the target run overwrote may not be
 * theirs to get back (planPage holds them back), so each column takes what the account's stages
 * give once the target's are restored, by the engine's rule (see hostValuesAfter): a stage the later
 * run left that sets it, else the value captured before suspend first set it.
 */
function settleTouchedLater(
  rules: Rules,
  plan: PagePlan,
  stored: ReadonlyMap<string, StoredRow[]>,
): HostValue[] {
  const touched = plan.restore.filter((r) => r.row.key_touched_later);
  return [...groupBy(touched, (r) => r.row.key)].flatMap(([key, restored]) =>
    hostValuesAfter(
      key,
      rulesForOrg(rules, restored[0]!.row.current.org_id).policies,
      stored.get(key) ?? [],
      new Map(restored.map((r) => [r.row.policy, r.state.stage])),
    ),
  );
}

/**
 * For each restored state (in plan order), what still holds its account under the other policies
 * after the revert, when that is not what the restored state says (see OutboxPayload.account).
 */
function accountHolds(
  rules: Rules,
  plan: PagePlan,
  stored: ReadonlyMap<string, StoredRow[]>,
): (AccountHold | undefined)[] {
  const changes = plan.restore.map(({ row, state }) => ({
    key: row.key,
    orgId: row.current.org_id,
    policy: row.policy,
    to: state.stage,
    blocksBooking: state.blocksBooking,
    allowsLogin: state.allowsLogin,
    account: undefined as AccountHold | undefined,
  }));
  for (const [key, mine] of groupBy(changes, (c) => c.key)) {
    const states = new Map((stored.get(key) ?? []).map((r) => [r.policy, { stage: r.stage }]));
    markHolds(rulesForOrg(rules, mine[0]!.orgId).policies, states, mine);
  }
  return changes.map((c) => c.account);
}

async function revertPage(
  trx: Knex.Transaction,
  rules: Rules,
  options: RevertOptions,
  result: RevertResult,
  keys: string[],
): Promise<PagePlan> {
  const schema = rules.settings.schema;
  const run = result.run as RunRecord;
  const plan = planPage(
    await readPlan(trx, schema, result.target.id, keys, { lock: true, continues: result.continues }),
    await activeExclusions(trx, schema, keys, options.asOf),
  );
  if (plan.restore.length === 0 && plan.host.length === 0) return plan;
  // Every state of the accounts restored, read once: their host columns and events depend on them.
  const restoredKeys = [...new Set(plan.restore.map((r) => r.row.key))];
  const stored = groupBy(
    restoredKeys.length > 0 ? await readStoredRows(trx, schema, restoredKeys) : [],
    (r) => r.customer_key,
  );
  plan.host.push(...settleTouchedLater(rules, plan, stored));
  const old = await restoreHostColumns(trx, rules.source, plan.host);
  const contacts = await customerContacts(trx, rules.source, [
    ...new Set(plan.restore.map((r) => r.row.key)),
  ]);
  const holds = accountHolds(rules, plan, stored);
  const rewrites: StateRewrite[] = plan.restore.map(({ row, state }, i) => {
    const reason: Reason = {
      condition: 'revert',
      text: `run ${result.target.id} (${result.target.kind} as of ${result.target.asOf}) reverted by ${options.actor}`,
      evidence: { reverted_run: result.target.id, reverted_history_id: row.history_id, actor: options.actor },
    };
    const contact = contacts.get(row.key);
    return {
      key: row.key,
      policy: row.policy,
      kind: 'revert',
      state,
      expectedVersion: row.current.version,
      reasons: [reason],
      hostOld: old.get(row.key) ?? null,
      payload: {
        event: 'revert',
        runId: run.id,
        asOf: options.asOf,
        orgId: state.orgId,
        customer: { key: row.key, name: contact?.name ?? null, email: contact?.email ?? null },
        policy: row.policy,
        from: row.current.stage,
        to: state.stage,
        blocksBooking: state.blocksBooking,
        allowsLogin: state.allowsLogin,
        message: state.message,
        // Why first (the revert), then what the restored stage says: a digest row is never blank.
        reasons: [reason, ...state.reasons],
        actions: [],
        // The tags the restored state carries for its episode, as an event into a stage does.
        ...(state.tags.length > 0 ? { tags: state.tags } : {}),
        actor: options.actor,
        ...(holds[i] ? { account: holds[i] } : {}),
      },
    };
  });
  await rewriteStates(
    trx,
    { schema, runId: run.id, asOf: options.asOf, rulesHash: rules.hash, actor: options.actor },
    rewrites,
  );
  // The undone changes' events not sent yet would tell a customer of a pause that is gone: withdrawn
  // (kept, never claimed), unless a delivering process holds one right now (a killed one does not).
  const withdrawn = await trx.raw<{ rows: { history_id: string; unheard: boolean }[] }>(
    `update ?? as o set status = 'withdrawn', last_error = ?
      where o.history_id = any(?::bigint[]) and o.status = 'pending' and ${notHeldByLiveClaimer('o')}
      returning o.history_id::text as history_id, o.delivered = '{}'::jsonb as unheard`,
    [
      `${schema}.outbox`,
      `its change was reverted by run ${run.id} before it was sent`,
      plan.restore.map((r) => r.row.history_id),
    ],
  );
  // Nobody heard of those changes (nothing of their events went out): the revert's own events, which
  // would tell of undoing them, are withdrawn too.
  const unheard = new Set(withdrawn.rows.filter((w) => w.unheard).map((w) => w.history_id));
  const silent = plan.restore.filter((r) => unheard.has(r.row.history_id)).map((r) => r.row);
  if (silent.length > 0)
    await trx.raw(
      `update ?? as o set status = 'withdrawn', last_error = ?
         from unnest(?::text[], ?::text[]) as x(key, policy)
        where o.run_id = ? and o.status = 'pending' and o.customer_key = x.key and o.payload->>'policy' = x.policy`,
      [
        `${schema}.outbox`,
        'the change it reverts was never sent',
        silent.map((r) => r.key),
        silent.map((r) => r.policy),
        run.id,
      ],
    );
  return plan;
}
