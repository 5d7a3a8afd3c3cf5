import type { AccountEvaluation } from '../types';
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
  /** Accounts skipped for bad data, by reason. */
  skipped: number;
  skippedByReason: Record<string, number>;
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
    skipped: 0,
    skippedByReason: {},
    transitions: {},
  };
}

/** Counts from an older ledger row may lack newer fields. */
export function restoreCounts(stored: Partial<RunCounts> | null | undefined): RunCounts {
  return { ...emptyCounts(), ...(stored ?? {}) };
}

export function transitionKey(c: Pick<StateChange, 'orgId' | 'policy' | 'kind' | 'from' | 'to'>): string {
  return [c.orgId ?? '', c.policy, c.kind, c.from ?? '', c.to ?? ''].join('|');
}

export function parseTransitionKey(key: string) {
  const [org, policy, kind, from, to] = key.split('|') as [string, string, string, string, string];
  return { org: org || null, policy, kind, from: from || null, to: to || null };
}

function bump(record: Record<string, number>, key: string, by = 1): void {
  record[key] = (record[key] ?? 0) + by;
}

export function countEvaluations(counts: RunCounts, evaluations: AccountEvaluation[]): void {
  counts.scanned += evaluations.length;
  for (const e of evaluations) {
    if (e.excluded) {
      counts.excluded += 1;
      bump(counts.excludedByReason, e.excluded.reason);
    }
    counts.held += e.transitions.filter((t) => t.kind === 'hold').length;
  }
}

export function countChanges(counts: RunCounts, changes: StateChange[]): void {
  counts.changes += changes.length;
  counts.accountsChanged += new Set(changes.map((c) => c.key)).size;
  for (const c of changes) bump(counts.transitions, transitionKey(c));
}

export function countSkipped(counts: RunCounts, skipped: { reason: string }[]): void {
  counts.skipped += skipped.length;
  for (const s of skipped) bump(counts.skippedByReason, s.reason);
}
