import { hostValueText } from './host';
import type { StoredRow } from './write';
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
}

function severity(stage: Stage): number {
  return (stage.allowsLogin ? 0 : 2000) + (stage.blocksBooking ? 1000 : 0) + stage.index;
}

function setColumns(stage: Stage): Record<string, string | number | boolean | null> {
  const out: Record<string, string | number | boolean | null> = {};
  for (const a of stage.actions) if (a.type === 'set') Object.assign(out, a.columns);
  return out;
}

function winning(stages: Stage[]): Map<string, { value: string | number | boolean | null; rank: number }> {
  const values = new Map<string, { value: string | number | boolean | null; rank: number }>();
  for (const stage of stages) {
    for (const [column, value] of Object.entries(setColumns(stage))) {
      const current = values.get(column);
      if (!current || severity(stage) > current.rank) values.set(column, { value, rank: severity(stage) });
    }
  }
  return values;
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
  const known = (list: StoredRow[]) => list.map(stageOf).filter((s): s is Stage => s !== null);
  const pre = winning(known(current));
  const post = winning(known(remaining));
  // Earlier rows win, as in the engine.
  const hostBefore = rows.reduce<Record<string, unknown>>((acc, r) => ({ ...r.host_before, ...acc }), {});

  const out = new Map<string, string | null>();
  for (const column of new Set([...pre.keys(), ...post.keys()])) {
    const p = pre.get(column);
    const q = post.get(column);
    if (q && (!p || p.value !== q.value)) out.set(column, hostValueText(q.value));
    else if (!q && p && column in hostBefore) out.set(column, hostValueText(hostBefore[column]));
  }
  if (remaining.length === 0) {
    for (const row of current) {
      if (!clearing.has(row.policy) || stageOf(row) !== null) continue;
      for (const [column, value] of Object.entries(row.host_before ?? {})) {
        if (!out.has(column) && !pre.has(column)) out.set(column, hostValueText(value));
      }
    }
  }
  return [...out].map(([column, value]) => ({ key, column, value }));
}
