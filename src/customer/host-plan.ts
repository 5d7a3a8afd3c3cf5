import { hostValueText } from './host';
import type { StoredRow } from './write';
import { capturedHostValues, winningHostValues } from '../evaluate/host-values';
import type { Policy, Stage } from '../types';

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
  const stageOf = (row: StoredRow): Stage | null =>
    policies.find((p) => p.name === row.policy)?.stages.find((s) => s.name === row.stage) ?? null;
  const current = rows.filter((r) => r.stage !== null);
  const remaining = current.filter((r) => !clearing.has(r.policy));
  const pre = winningHostValues(current.map(stageOf));
  const post = winningHostValues(remaining.map(stageOf));
  // The policy first by name wins, as in the engine.
  const hostBefore = capturedHostValues(rows.map((r) => [r.policy, r.host_before] as const));

  const out = new Map<string, { value: string | null; expected?: string | null }>();
  // Over a value a stage set, only while the column still holds it (a host's later value stays).
  const over = (p: { value: unknown } | undefined) => (p ? { expected: hostValueText(p.value) } : {});
  for (const column of new Set([...pre.keys(), ...post.keys()])) {
    const p = pre.get(column);
    const q = post.get(column);
    if (q && (!p || p.value !== q.value)) out.set(column, { value: hostValueText(q.value), ...over(p) });
    else if (!q && p && Object.hasOwn(hostBefore, column))
      out.set(column, { value: hostValueText(hostBefore[column]), ...over(p) });
  }
  if (remaining.length === 0) {
    for (const row of current) {
      if (!clearing.has(row.policy) || stageOf(row) !== null) continue;
      for (const [column, value] of Object.entries(row.host_before ?? {})) {
        if (!out.has(column) && !pre.has(column)) out.set(column, { value: hostValueText(value) });
      }
    }
  }
  return [...out].map(([column, v]) => ({ key, column, ...v }));
}
