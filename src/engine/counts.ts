import type { AccountEvaluation, Transition } from '../types';
import type { StateChange } from '../write/apply';

/** What a run counted; stored in the ledger and the checkpoint, drawn by the report. */
export interface RunCounts {
  scanned: number;
  pages: number;
  /** State changes written (or, in a dry run, that would be written). */
  changes: number;
  /** Accounts with at least one change. */
  accountsChanged: number;
  excluded: number;
  excludedByReason: Record<string, number>;
  /** Conditions cleared under a policy that reinstates only by hand. */
  held: number;
  /** Changes dropped because the account's facts moved between read and write. */
  changedSinceRead: number;
  /**
   * Accounts left alone because another transaction was updating their invoices (a payment in
   * progress) when the page went to lock them: the page does not wait for it.
   */
  beingPaid: number;
  /** Accounts skipped for bad data, by reason. */
  skipped: number;
  skippedByReason: Record<string, number>;
  /** Keys skipped for each reason, at most SKIPPED_KEYS each (those of the pages committed first): which accounts to fix. */
  skippedKeys: Record<string, string[]>;
  /** "org|policy|kind|from|to" → count. */
  transitions: Record<string, number>;
}

export function emptyCounts(): RunCounts {
  return {
    scanned: 0,
    pages: 0,
    changes: 0,
    accountsChanged: 0,
    excluded: 0,
    excludedByReason: {},
    held: 0,
    changedSinceRead: 0,
    beingPaid: 0,
    skipped: 0,
    skippedByReason: {},
    skippedKeys: {},
    transitions: {},
  };
}

/** Skipped keys kept per reason: enough to find the bad rows, never a list as long as the table. */
export const SKIPPED_KEYS = 10;

/** Counts from an older ledger row may lack newer fields. */
export function restoreCounts(stored: Partial<RunCounts> | null | undefined): RunCounts {
  return { ...emptyCounts(), ...(stored ?? {}) };
}

/** What a change counts under: it is one of a transition's (a hold is never counted as a change). */
type Counted = Pick<Transition, 'orgId' | 'policy' | 'kind' | 'from' | 'to'>;

export function transitionKey(c: Counted): string {
  return `${c.orgId ?? ''}|${c.policy}|${c.kind}|${c.from ?? ''}|${c.to ?? ''}`;
}

export function parseTransitionKey(key: string) {
  const [org, policy, kind, from, to] = key.split('|') as [string, string, string, string, string];
  return { org: org || null, policy, kind, from: from || null, to: to || null };
}

function bump(record: Record<string, number>, key: string, by = 1): void {
  record[key] = (record[key] ?? 0) + by;
}

/** The exclusion and holds of one evaluated account ("scanned" counts every account of a page, evaluated or not). */
export function countEvaluation(
  counts: RunCounts,
  e: Pick<AccountEvaluation, 'excluded'> & { transitions: Pick<Transition, 'kind'>[] },
): void {
  if (e.excluded) {
    counts.excluded += 1;
    bump(counts.excludedByReason, e.excluded.reason);
  }
  for (const t of e.transitions) if (t.kind === 'hold') counts.held += 1;
}

/** One account's changes (at least one). */
export function countAccountChanges(counts: RunCounts, changes: Counted[]): void {
  counts.changes += changes.length;
  counts.accountsChanged += 1;
  for (const c of changes) bump(counts.transitions, transitionKey(c));
}

/** Changes of any accounts, in any order. */
export function countChanges(counts: RunCounts, changes: StateChange[]): void {
  counts.changes += changes.length;
  const accounts = new Set<string>();
  for (const c of changes) {
    accounts.add(c.key);
    bump(counts.transitions, transitionKey(c));
  }
  counts.accountsChanged += accounts.size;
}

export function countSkipped(counts: RunCounts, skipped: { key: string; reason: string }[]): void {
  counts.skipped += skipped.length;
  for (const s of skipped) bump(counts.skippedByReason, s.reason);
  counts.skippedKeys = firstKeys(counts.skippedKeys, groupKeys(skipped));
}

function groupKeys(skipped: { key: string; reason: string }[]): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const s of skipped) (out[s.reason] ??= []).push(s.key);
  return out;
}

/** Each reason's keys of `a` then `b`, at most SKIPPED_KEYS (counts of older runs have none). */
function firstKeys(
  a: Record<string, string[]> | undefined,
  b: Record<string, string[]> | undefined,
): Record<string, string[]> {
  const out: Record<string, string[]> = { ...(a ?? {}) };
  for (const [reason, keys] of Object.entries(b ?? {})) {
    const kept = out[reason] ?? [];
    if (kept.length < SKIPPED_KEYS) out[reason] = [...kept, ...keys].slice(0, SKIPPED_KEYS);
  }
  return out;
}

/** What one page counts before anything is written: all its accounts, the evaluated ones' exclusions and holds. */
export function pageCounts(total: number, tally: RunCounts): RunCounts {
  const counts = mergeCounts(emptyCounts(), tally);
  // Skipped accounts are counted apart: scanned + skipped = the accounts the pages held.
  counts.scanned += total - tally.skipped;
  counts.pages += 1;
  return counts;
}

/** The sum of two counts (a worker's and a page's, or the workers' of one run). */
export function mergeCounts(a: RunCounts, b: RunCounts): RunCounts {
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
    beingPaid: a.beingPaid + b.beingPaid,
    skipped: a.skipped + b.skipped,
    skippedByReason: sum(a.skippedByReason, b.skippedByReason),
    skippedKeys: firstKeys(a.skippedKeys, b.skippedKeys),
    transitions: sum(a.transitions, b.transitions),
  };
}
