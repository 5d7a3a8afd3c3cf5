import type { Knex } from 'knex';
import { qualified, readAccounts, type SignalNeeds } from '../source/signals';
import type { PageState } from '../source/states';
import { isNewStateConflict, writeStateChanges, type StateChange, type WriteContext } from '../write/apply';
import { writeHostColumns } from '../write/host-columns';
import { countChanges, mergeCounts, pageCounts, type RunCounts } from './counts';
import {
  planPage,
  rulesForOrg,
  settleHostColumns,
  staleCaptures,
  type HostColumnChange,
  type PagePlan,
  type StageRow,
} from './plan';
import type { Rules, Signals } from '../types';
import { groupBy } from '../collections';
import { confirmLockHeld, type LockProof } from './lock';

/**
 * Writing one page: one transaction that re-checks the accounts about to change (their invoices
 * locked so a payment cannot slip in between), writes host columns, states, history and outbox,
 * and advances the worker's checkpoint. Counts change only once the transaction has committed.
 */

export interface PageToCommit {
  /** The key before the page (null for the first), and its last key: where this worker resumes. */
  after: string | null;
  last: string;
  /** Accounts in the page (candidates or not): what "scanned" counts. */
  total: number;
  signals: Signals[];
  state: PageState;
  plan: PagePlan;
}

export interface CommitTarget {
  rules: Rules;
  ctx: WriteContext;
  /** The signals the page read computed: the re-check compares the same. */
  needs: SignalNeeds;
  /** Policies whose changes lock the account's invoices while written (see policiesReadingInvoices). */
  invoicePolicies: Set<string>;
  /** The checkpoint row of this worker (`checkpoints.shard`). */
  checkpoint: string;
  /** Types of the host columns written so far in this run (filled by the first page that sets one). */
  hostColumnTypes: Map<string, string>;
  /** The run lock, confirmed still held as the page's last statement before it commits. */
  lock: LockProof;
  /** Test seam: runs inside the page transaction, after the read and before the re-check. */
  beforeWrite?: (keys: string[]) => Promise<void>;
}

export interface Committed {
  changes: StateChange[];
  /** The worker's counts after this page (what its checkpoint now holds). */
  counts: RunCounts;
  /** This page's own counts, to add to the run's. */
  page: RunCounts;
}

export async function commitPage(
  knex: Knex,
  target: CommitTarget,
  page: PageToCommit,
  /**
   * The worker's counts before this page, once every earlier page of the worker is committed:
   * awaited just before the checkpoint is saved (a rejection rolls this page back).
   */
  countsBefore: () => Promise<RunCounts>,
): Promise<Committed> {
  try {
    return await writePage(knex, target, page, countsBefore, true);
  } catch (err) {
    // A new state's row was added by another writer after the re-check read (rare): the page's
    // transaction rolled back, and is run again with upserts, which leave that row alone.
    if (!isNewStateConflict(err, target.ctx.schema)) throw err;
    return writePage(knex, target, page, countsBefore, false);
  }
}

async function writePage(
  knex: Knex,
  target: CommitTarget,
  page: PageToCommit,
  countsBefore: () => Promise<RunCounts>,
  insertNew: boolean,
): Promise<Committed> {
  const { rules, ctx } = target;
  const counted = pageCounts(page.total, page.plan.tally);
  return knex.transaction(async (trx) => {
    let changes = page.plan.changes;
    let host = page.plan.hostColumns;
    // The stored states the changes were planned from (read again by the re-check).
    let read = page.state;
    if (changes.length > 0) {
      const keys = [...new Set(changes.map((c) => c.key))];
      await target.beforeWrite?.(keys);
      const checked = await recheck(trx, target, page, keys);
      counted.changedSinceRead += checked.stale;
      counted.beingPaid += checked.busy;
      changes = checked.changes;
      host = checked.hostColumns;
      read = checked.state;
    }
    const old = await writeHostColumns(trx, rules.source, host, target.hostColumnTypes);
    const hostByKey = groupBy(
      host.filter((h) => h.capture),
      (h) => h.key,
    );
    for (const c of changes) {
      const before = old.get(c.key);
      if (!before) continue;
      c.hostOld = before;
      const captured = hostByKey.get(c.key)?.map((h) => h.column) ?? [];
      if (captured.length > 0)
        c.hostBefore = Object.fromEntries(captured.map((col) => [col, before[col] ?? null]));
    }
    const applied = await writeStateChanges(trx, ctx, changes, insertNew);
    const pair = (key: string, policy: string) => `${key}\u0000${policy}`;
    const appliedSet = new Set(applied.map((a) => pair(a.key, a.policy)));
    const written = changes.filter((c) => appliedSet.has(pair(c.key, c.policy)));
    if (written.length < changes.length) {
      const refused = new Set(
        changes.filter((c) => !appliedSet.has(pair(c.key, c.policy))).map((c) => c.key),
      );
      counted.changedSinceRead += refused.size;
      await settleRefusedHostColumns(trx, target, refused, read, changes, written, host, old);
    }
    await dropStaleCaptures(trx, target, read, written);
    // Usually the plan is written as it stands, and its changes are counted already.
    const asPlanned = changes === page.plan.changes && written.length === changes.length;
    if (!asPlanned) countChanges(counted, written);
    const pageCounted = asPlanned ? mergeCounts(counted, page.plan.planned) : counted;
    const merged = mergeCounts(await countsBefore(), pageCounted);
    await saveCheckpoint(trx, ctx, target.checkpoint, page.last, merged);
    await confirmLockHeld(trx, target.lock);
    return { changes: written, counts: merged, page: pageCounted };
  });
}

/**
 * A capture starts a new episode of a host column: what the account's other rows captured for it
 * before is of an episode that ended (see staleCaptures), and is dropped so that a later clear cannot
 * give back a value the host has changed since.
 */
async function dropStaleCaptures(
  trx: Knex.Transaction,
  target: CommitTarget,
  read: PageState,
  written: StateChange[],
): Promise<void> {
  // A backfill's usual page: no account has stored rows.
  if (read.states.size === 0) return;
  const rows: {
    key: string;
    policy: string;
    version: number;
    host_before: Record<string, unknown> | null;
  }[] = [];
  for (const [key, changes] of groupBy(written, (c) => c.key)) {
    const stored = read.states.get(key);
    const captured = new Set(changes.flatMap((c) => Object.keys(c.hostBefore ?? {})));
    if (!stored || captured.size === 0) continue;
    const policies = rulesForOrg(target.rules, changes[0]!.orgId).policies;
    const changed = new Set(changes.map((c) => c.policy));
    for (const stale of staleCaptures(policies, stored, changed, captured))
      rows.push({ key, policy: stale.policy, version: stale.version, host_before: stale.hostBefore });
  }
  if (rows.length === 0) return;
  await trx.raw(
    `update ?? as s set host_before = x.host_before
       from jsonb_to_recordset(?::jsonb) as x(key text, policy text, version int, host_before jsonb)
      where s.customer_key = x.key and s.policy = x.policy and s.version = x.version`,
    [`${target.ctx.schema}.account_states`, JSON.stringify(rows)],
  );
}

/**
 * An account with a refused change (its state was written after the re-check by a writer that does
 * not take the run lock, e.g. a hand edit): its host columns are settled from its states as they now
 * are (the changes written and the rows that refused the others), so that host and states agree
 * whichever of its changes were written (see settleHostColumns).
 */
async function settleRefusedHostColumns(
  trx: Knex.Transaction,
  target: CommitTarget,
  refused: Set<string>,
  read: PageState,
  changes: StateChange[],
  written: StateChange[],
  host: HostColumnChange[],
  old: Map<string, Record<string, string | null>>,
): Promise<void> {
  const rows = (await trx
    .withSchema(target.ctx.schema)
    .select('customer_key', 'policy', 'stage', 'host_before')
    .from('account_states')
    .whereIn('customer_key', [...refused])) as (StageRow & { customer_key: string })[];
  const current = groupBy(rows, (r) => r.customer_key);
  const wrote = groupBy(host, (h) => h.key);
  const orgOf = new Map(changes.map((c) => [c.key, c.orgId]));
  const partly = new Set(written.map((c) => c.key));
  const settled = [...refused].flatMap((key) => {
    const policies = rulesForOrg(target.rules, orgOf.get(key) ?? null).policies;
    // None of its changes written: no row holds what the page captured, so what it set goes back
    // to what it was, whatever the refusing rows say (setting their value would lose the host's).
    if (!partly.has(key))
      return settleHostColumns(key, policies, [], [], wrote.get(key) ?? [], old.get(key) ?? {});
    const before = [...(read.states.get(key) ?? [])].map(([policy, s]) => ({
      policy,
      stage: s.stage,
      host_before: s.hostBefore,
    }));
    return settleHostColumns(
      key,
      policies,
      before,
      current.get(key) ?? [],
      wrote.get(key) ?? [],
      old.get(key) ?? {},
    );
  });
  await writeHostColumns(trx, target.rules.source, settled, target.hostColumnTypes);
}

/**
 * Where a worker resumes and what it counted so far; `done` once its range is finished. Written in
 * a page's transaction, or alone for pages that had nothing to write.
 */
export async function saveCheckpoint(
  knex: Knex | Knex.Transaction,
  ctx: Pick<WriteContext, 'schema' | 'runId'>,
  checkpoint: string,
  lastKey: string | null,
  counts: RunCounts,
  done = false,
): Promise<void> {
  await knex
    .withSchema(ctx.schema)
    .insert({
      run_id: ctx.runId,
      shard: checkpoint,
      last_key: lastKey,
      pages: counts.pages,
      scanned: counts.scanned,
      counts: JSON.stringify(counts),
      done,
      updated_at: knex.fn.now(),
    })
    .into('checkpoints')
    .onConflict(['run_id', 'shard'])
    .merge();
}

/** Structural equality of plain data (signals, stored states): what JSON would compare, without JSON. */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (a instanceof Map || b instanceof Map) {
    if (!(a instanceof Map && b instanceof Map) || a.size !== b.size) return false;
    for (const [k, v] of a) if (!b.has(k) || !same(v, b.get(k))) return false;
    return true;
  }
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  // for-in rather than Object.keys: the re-check compares every changed account's signals, and
  // the key arrays were a noticeable share of a backfill's garbage.
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  let keys = 0;
  for (const k in x) {
    if (!Object.prototype.hasOwnProperty.call(y, k) || !same(x[k], y[k])) return false;
    keys++;
  }
  for (const k in y) if (Object.prototype.hasOwnProperty.call(y, k)) keys--;
  return keys === 0;
}

/** Whether everything the evaluation of one account depends on (besides rules and as-of) is as read. */
function unchanged(
  key: string,
  before: Signals | undefined,
  read: PageState,
  fresh: Signals | undefined,
  now: PageState,
): boolean {
  return (
    before !== undefined &&
    same(before, fresh) &&
    same(read.states.get(key), now.states.get(key)) &&
    same(read.exclusions.get(key), now.exclusions.get(key))
  );
}

/**
 * Re-reads the accounts about to change, their invoices locked. An account whose signals, states
 * and exclusion are exactly as read keeps its planned changes (evaluation is pure, so it would
 * decide the same). The others are evaluated again; if a planned change no longer comes out the
 * same, the account is left alone and counted as changed since read.
 */
async function recheck(
  trx: Knex.Transaction,
  target: CommitTarget,
  page: PageToCommit,
  changedKeys: string[],
): Promise<{
  changes: StateChange[];
  hostColumns: HostColumnChange[];
  stale: number;
  busy: number;
  state: PageState;
}> {
  const { rules, ctx } = target;
  // A signal view hides which tables it reads: nothing to lock; the re-read still sees a payment
  // committed before it.
  const inv = rules.source.view ? null : rules.source.invoices;
  // Locked only for changes a payment could undo: an inactivity suspension does not wait for them.
  const locked = new Set(
    page.plan.changes.filter((c) => target.invoicePolicies.has(c.policy)).map((c) => c.key),
  );
  const busy =
    inv && locked.size > 0 ? await lockInvoices(trx, target, inv, page, [...locked]) : new Set<string>();
  // An account being paid right now is left whole for the next run, which sees how the payment ended.
  const planned =
    busy.size === 0
      ? page.plan
      : {
          changes: page.plan.changes.filter((c) => !busy.has(c.key)),
          hostColumns: page.plan.hostColumns.filter((h) => !busy.has(h.key)),
        };
  const keys = busy.size === 0 ? changedKeys : changedKeys.filter((k) => !busy.has(k));
  // States and exclusions are read whatever the run found at its start: another process may have
  // written some for these accounts since.
  const tables = { schema: ctx.schema, states: true, exclusions: true, keyNumbers: false };
  const { signals, state } = await readAccounts(
    trx,
    rules.source,
    ctx.asOf,
    { keys, state: tables },
    target.needs,
  );
  const readBefore = new Map(page.signals.map((s) => [s.key, s]));
  const freshByKey = new Map(signals.map((s) => [s.key, s]));
  const moved = new Set(
    keys.filter((k) => !unchanged(k, readBefore.get(k), page.state, freshByKey.get(k), state)),
  );
  if (moved.size === 0)
    return { changes: planned.changes, hostColumns: planned.hostColumns, stale: 0, busy: busy.size, state };

  const fresh = planPage(
    signals.filter((s) => moved.has(s.key)),
    state,
    rules,
    ctx.asOf,
    'now',
  );
  const sameAs = new Set(
    fresh.changes.map((f) => [f.key, f.policy, f.kind, f.to, f.expectedVersion].join('\u0000')),
  );
  const stale = new Set([
    ...planned.changes
      .filter(
        (c) =>
          moved.has(c.key) && !sameAs.has([c.key, c.policy, c.kind, c.to, c.expectedVersion].join('\u0000')),
      )
      .map((c) => c.key),
    // A change that now reads invoices which were not locked is left for the next run.
    ...fresh.changes
      .filter((f) => target.invoicePolicies.has(f.policy) && !locked.has(f.key))
      .map((f) => f.key),
  ]);
  const keep = (key: string) => !moved.has(key);
  const redo = (key: string) => moved.has(key) && !stale.has(key);
  return {
    changes: [...planned.changes.filter((c) => keep(c.key)), ...fresh.changes.filter((c) => redo(c.key))],
    hostColumns: [
      ...planned.hostColumns.filter((h) => keep(h.key)),
      ...fresh.hostColumns.filter((h) => redo(h.key)),
    ],
    stale: stale.size,
    busy: busy.size,
    state,
  };
}

/**
 * Locks the invoices of `keys` (FOR SHARE, so a payment made while the page is written waits for its
 * commit) without waiting for rows another transaction is updating: a payment in progress would hold
 * the page, and past the role's lock_timeout stop the run. Returns the accounts with an invoice it
 * could not lock. One statement, one snapshot: the row versions it locked are compared with all of them.
 */
async function lockInvoices(
  trx: Knex.Transaction,
  target: CommitTarget,
  inv: NonNullable<Rules['source']['invoices']>,
  page: PageToCommit,
  keys: string[],
): Promise<Set<string>> {
  const table = qualified(target.rules.source, inv.table);
  // Bounded by the page's key range as well: a long key list alone makes the planner scan the
  // whole table.
  const range =
    page.after === null
      ? { sql: '?? <= ? and ?? = any(?)', bindings: [inv.customer, page.last, inv.customer, keys] }
      : {
          sql: '?? > ? and ?? <= ? and ?? = any(?)',
          bindings: [inv.customer, page.after, inv.customer, page.last, inv.customer, keys],
        };
  // Rows are told apart by where they are (tableoid for a partitioned table, ctid), never null or
  // shared as an invoice key column may be; a row a payment moved since the snapshot reads as busy.
  // Usually every row is locked: the counts say so and the comparison is not run (2.5 instead of
  // 3.3 ms for a page's 1,300 invoices; a plain FOR SHARE takes 1.1). EXCEPT ALL, not an anti-join:
  // the planner, which cannot count the CTE's rows, chose a nested loop over it (78 ms; a 1M
  // backfill 22 -> 26.5 s). Every scan is bounded by the page's range: no index needed but the
  // customer column's.
  const rangeOf = () => [table, ...range.bindings];
  const { rows } = await trx.raw<{ rows: { key: string }[] }>(
    `with got as materialized (select tableoid, ctid from ?? where ${range.sql} for share skip locked)
     select distinct ??::text as key from ?? where ${range.sql}
        and (select count(*) from got) < (select count(*) from ?? where ${range.sql})
        and (tableoid, ctid) in (select tableoid, ctid from ?? where ${range.sql}
                                 except all select tableoid, ctid from got)`,
    [...rangeOf(), inv.customer, ...rangeOf(), ...rangeOf(), ...rangeOf()],
  );
  const busy = new Set(rows.map((r) => r.key));
  const wanted = new Set(keys);
  if ([...busy].every((k) => wanted.has(k))) return busy;
  // The invoices' customer column writes some key differently from the customers' key (11.0 for 11):
  // which account is being paid is unknown, so the page waits for every payment, as a plain lock does.
  await trx.raw(`select 1 from ?? where ${range.sql} for share`, [table, ...range.bindings]);
  return new Set();
}
