import type { Policy, Stage } from '../types';

/**
 * Pure: the value each mapped host column (e.g. customers.status) takes from an account's current
 * stages. The most severe stage that sets a column wins: suspend-like beats pause-like beats
 * notify-only, then the later stage of its ladder. The engine's page plan and a manual
 * reinstatement (customer/host-plan.ts) both decide by it.
 */

export type HostValue = string | number | boolean | null;

export interface WinningValue {
  value: HostValue;
  rank: number;
}

export function severity(stage: Stage): number {
  return (stage.allowsLogin ? 0 : 2000) + (stage.blocksBooking ? 1000 : 0) + stage.index;
}

/** The columns a stage's set actions write (a later action wins), worked out once per stage. */
const setColumnsOf = new WeakMap<Stage, [string, HostValue][]>();

function setColumns(stage: Stage): [string, HostValue][] {
  let columns = setColumnsOf.get(stage);
  if (!columns) {
    // No prototype: a column may be named like one of Object's own properties.
    const out: Record<string, HostValue> = Object.create(null) as Record<string, HostValue>;
    for (const a of stage.actions) if (a.type === 'set') Object.assign(out, a.columns);
    setColumnsOf.set(stage, (columns = Object.entries(out)));
  }
  return columns;
}

const NONE: ReadonlyMap<string, WinningValue> = new Map();

/**
 * Each column some stage sets, with the winning stage's value and rank (null stages are skipped).
 * Stages of the same rank in several policies (a suspended stage first in each of two ladders): the
 * policy first in `policies` (the rules file's order) wins, whatever order the stages come in, so
 * that a run and a manual reinstatement, which read an account's states in different orders, agree.
 */
export function winningHostValues(
  stages: Iterable<Stage | null>,
  policies: readonly Policy[] = [],
): ReadonlyMap<string, WinningValue> {
  let values: Map<string, WinningValue & { stage: Stage }> | null = null;
  const order = (stage: Stage) => {
    const i = policies.findIndex((p) => p.stages.includes(stage));
    return i < 0 ? policies.length : i;
  };
  for (const stage of stages) {
    if (!stage) continue;
    const columns = setColumns(stage);
    if (columns.length === 0) continue;
    const rank = severity(stage);
    values ??= new Map();
    for (const [column, value] of columns) {
      const current = values.get(column);
      if (
        !current ||
        rank > current.rank ||
        (rank === current.rank && current.stage !== stage && order(stage) < order(current.stage))
      )
        values.set(column, { value, rank, stage });
    }
  }
  return values ?? NONE;
}

/**
 * The host values captured before suspend first set them, from an account's state rows as (policy,
 * capture) pairs: the row of the policy first in name order wins, whatever order the rows came in,
 * so the engine and a manual reinstatement give back the same value. Ask it with `Object.hasOwn`: it
 * has no prototype, so a column named `constructor` or `__proto__` is only there when it was captured.
 */
export function capturedHostValues(
  captures: Iterable<readonly [policy: string, captured: Record<string, unknown> | null | undefined]>,
): Record<string, unknown> {
  const out = Object.create(null) as Record<string, unknown>;
  const rows = [...captures].filter(([, captured]) => captured);
  rows.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [, captured] of rows) {
    for (const column of Object.keys(captured!))
      if (!Object.hasOwn(out, column)) out[column] = captured![column];
  }
  return out;
}

/** One column's move from what the stages gave (`pre`) to what they give (`post`). */
export interface HostColumnMove {
  column: string;
  value: unknown;
  /** No stage set it before: the host's own value is to be captured first. */
  first: boolean;
  /** The value a stage set before, which the column must still hold to be written (absent: first). */
  over?: HostValue;
}

/**
 * The rule the engine's page plan, a reinstatement and a revert share: each column takes the value of
 * the most severe stage that sets it now; when none does any more but one did, the value captured
 * before suspend first set it comes back (unless `giveBack` is false, or nothing was captured).
 */
export function hostColumnMoves(
  pre: ReadonlyMap<string, WinningValue>,
  post: ReadonlyMap<string, WinningValue>,
  captured: Record<string, unknown>,
  giveBack = true,
): HostColumnMove[] {
  const out: HostColumnMove[] = [];
  for (const column of new Set([...pre.keys(), ...post.keys()])) {
    const p = pre.get(column);
    const q = post.get(column);
    if (q && (!p || p.value !== q.value))
      out.push({ column, value: q.value, first: !p, ...(p ? { over: p.value } : {}) });
    else if (!q && p && giveBack && Object.hasOwn(captured, column))
      out.push({ column, value: captured[column], first: false, over: p.value });
  }
  return out;
}
