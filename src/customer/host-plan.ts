import { hostValueText } from './host';
import type { StoredRow } from './write';
import { capturedHostValues, hostColumnMoves, winningHostValues } from '../evaluate/host-values';
import { stageOf } from '../engine/plan';
import type { Policy } from '../types';

/**
 * Pure: which mapped host columns (e.g. customers.status) a manual reinstatement puts back, by the
 * engine's own rule (engine/plan.ts `planHostColumns`): a column holds the value of the most severe
 * current stage that sets it; once no current stage sets it, the host's own value comes back (the
 * one captured in `host_before` when suspend first set it). So reinstating one policy never
 * un-suspends an account another policy still holds.
 *
 * A stage the rules no longer describe (the rules changed, or none are loaded) cannot say what it set:
 * its row's captured values come back only when the reinstatement leaves no stage current at all.
 */

export interface HostValue {
  key: string;
  column: string;
  value: string | null;
  /** Written only while the column holds this (the value a stage set; see HostColumnChange). */
  expected?: string | null;
}

export function reinstateHostValues(
  key: string,
  policies: Policy[],
  rows: StoredRow[],
  clearing: ReadonlySet<string>,
): HostValue[] {
  const out = new Map(
    // As reinstatements always did: what a known stage set comes back, whatever else stays.
    hostValuesAfter(key, policies, rows, new Map([...clearing].map((p) => [p, null])), false).map((v) => [
      v.column,
      v,
    ]),
  );
  const current = rows.filter((r) => r.stage !== null);
  const remaining = current.filter((r) => !clearing.has(r.policy));
  const pre = winningHostValues(
    current.map((r) => stageOf(policies, r.policy, r.stage)),
    policies,
  );
  if (remaining.length === 0) {
    for (const row of current) {
      if (!clearing.has(row.policy) || stageOf(policies, row.policy, row.stage) !== null) continue;
      for (const [column, value] of Object.entries(row.host_before ?? {})) {
        if (!out.has(column) && !pre.has(column))
          out.set(column, { key, column, value: hostValueText(value) });
      }
    }
  }
  return [...out.values()];
}

/**
 * The host columns of an account whose policies in `after` move to those stages (null: clear), the
 * others staying as `rows` store them: each column the value of the most severe stage that then sets
 * it, else (a stage set it before, and no stage the rules no longer describe stays) the value
 * captured before suspend first set it. Each is written
 * only over the value a stage set (`expected`), so a value the host wrote since stays.
 */
export function hostValuesAfter(
  key: string,
  policies: Policy[],
  rows: StoredRow[],
  after: ReadonlyMap<string, string | null>,
  /** Give nothing back while a stage the rules no longer describe stays (it may set the column). */
  holdUnderUnknown = true,
): HostValue[] {
  const current = rows.filter((r) => r.stage !== null);
  const next = rows.map((r) => ({
    policy: r.policy,
    stage: after.has(r.policy) ? after.get(r.policy)! : r.stage,
  }));
  const pre = winningHostValues(
    current.map((r) => stageOf(policies, r.policy, r.stage)),
    policies,
  );
  const staying = next.filter((r) => r.stage !== null);
  const post = winningHostValues(
    staying.map((r) => stageOf(policies, r.policy, r.stage)),
    policies,
  );
  // A stage the rules no longer describe may set the column: nothing is given back under it.
  const unknown = holdUnderUnknown && staying.some((r) => stageOf(policies, r.policy, r.stage) === null);
  // The policy first by name wins, as in the engine.
  const hostBefore = capturedHostValues(rows.map((r) => [r.policy, r.host_before] as const));
  return hostColumnMoves(pre, post, hostBefore, !unknown).map((m) => ({
    key,
    column: m.column,
    value: hostValueText(m.value),
    ...(m.over !== undefined ? { expected: hostValueText(m.over) } : {}),
  }));
}
