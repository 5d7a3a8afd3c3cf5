import { accountTransitions } from '../evaluate/evaluate';
import type { PageState, StoredState } from '../source/states';
import type { StateChange } from '../write/apply';
import { countAccountChanges, countEvaluation, emptyCounts, type RunCounts } from './counts';
import { capturedHostValues, hostColumnMoves, winningHostValues } from '../evaluate/host-values';
import type { EffectiveRules, IsoDate, Policy, Rules, Signals, Stage } from '../types';

/**
 * Pure: turns one page of signals and stored states into the state changes a real run writes (and
 * the counts the report shows). The dry run calls exactly this.
 */

export interface PagePlan {
  /** Accounts evaluated. Their evaluations are not kept (a page's memory is its changes). */
  evaluated: number;
  /** Their exclusions and holds (see countEvaluation). */
  tally: RunCounts;
  /** Every change the evaluation found, counted (changes, accounts changed, transitions only). */
  planned: RunCounts;
  /** The changes, built for writing or showing: all of them, or the first `wanted` (whole accounts). */
  changes: StateChange[];
  /** Desired values of mapped host columns after the changes, per key (only keys whose values move). */
  hostColumns: HostColumnChange[];
}

export interface HostColumnChange {
  key: string;
  column: string;
  /** Value to write, as text (cast back by Postgres); null writes NULL. */
  value: string | null;
  /** True when suspend sets the column for the first time in an episode: keep the host's value first. */
  capture: boolean;
  /**
   * Written only while the column holds this value (as text; null: NULL), the one suspend's stages
   * set: a value the host wrote since is left alone. Absent: written whatever it holds.
   */
  expected?: string | null;
}

export function rulesForOrg(rules: Rules, orgId: string | null): EffectiveRules {
  return (orgId !== null && rules.organizations[orgId]) || rules.defaults;
}

/** An account without stored states (most of a backfill's): shared, never written to. */
const NO_STATES: ReadonlyMap<string, StoredState> = new Map();
const NO_STATE_RECORD: Readonly<Record<string, StoredState>> = Object.freeze({});

export function planPage(
  signals: Signals[],
  page: PageState,
  rules: Rules,
  asOf: IsoDate,
  /** 'now' when every change will be written (see accountTransitions). */
  explain: 'now' | 'later' = 'later',
  /**
   * How many changes to build: a real run writes them all; a dry run counts them all but builds
   * only those its report shows (1M report over the backlog 3.33 -> 3.11 s).
   */
  wanted = Infinity,
): PagePlan {
  const tally = emptyCounts();
  const planned = emptyCounts();
  const changes: StateChange[] = [];
  const hostColumns: HostColumnChange[] = [];
  for (const s of signals) {
    const effective = rulesForOrg(rules, s.orgId);
    const stored = page.states.get(s.key) ?? NO_STATES;
    const evaluation = accountTransitions(
      {
        signals: s,
        rules: effective,
        asOf,
        states: stored.size === 0 ? NO_STATE_RECORD : Object.fromEntries(stored),
        exclusion: page.exclusions.get(s.key) ?? null,
      },
      explain,
    );
    countEvaluation(tally, evaluation);
    const written = evaluation.transitions.filter((t) => t.kind !== 'hold');
    if (written.length === 0) continue;
    countAccountChanges(planned, written);
    if (changes.length >= wanted) continue;
    const accountChanges: StateChange[] = written.map((t) => ({
      key: t.key,
      orgId: t.orgId,
      policy: t.policy,
      kind: t.kind as StateChange['kind'],
      from: t.from,
      fromIndex: stored.get(t.policy)?.stageIndex ?? -1,
      to: t.to,
      toIndex: t.toIndex,
      blocksBooking: t.blocksBooking,
      allowsLogin: t.allowsLogin,
      actions: t.actions,
      expectedVersion: stored.get(t.policy)?.version ?? 0,
      customer: { name: s.name, email: s.email },
      hostBefore: null,
      hostOld: null,
      // Explained already in a real run; in a dry run, once the report shows the change.
      explain: t.explain,
    }));
    // Another policy holds the account when it has a stage stored, or enters one in this same run.
    if (stored.size > 0 || accountChanges.length > 1) markHolds(effective.policies, stored, accountChanges);
    hostColumns.push(...planHostColumns(s.key, effective.policies, stored, accountChanges));
    changes.push(...accountChanges);
  }
  return { evaluated: signals.length, tally, planned, changes, hostColumns };
}

/**
 * A mapped host column (e.g. customers.status) holds the value of the most severe current stage that
 * sets it, across all policies; when no current stage sets it any more, the host's own value comes
 * back (captured before suspend first set it). So clearing one policy never un-suspends an account
 * another policy still holds.
 */
export function planHostColumns(
  key: string,
  policies: Policy[],
  stored: ReadonlyMap<string, StoredState>,
  changes: StateChange[],
): HostColumnChange[] {
  const after = new Map<string, Stage | null>();
  for (const [policy, state] of stored) after.set(policy, stageOf(policies, policy, state.stage));
  const before = stored.size === 0 ? null : new Map(after);
  for (const c of changes) after.set(c.policy, stageOf(policies, c.policy, c.to));
  const post = winningHostValues(after.values(), policies);
  // Nothing stored (a backfill's usual account): each column a new stage sets is captured first.
  if (!before) return [...post].map(([column, q]) => hostColumnChange(key, column, q.value, true));
  const pre = winningHostValues(before.values(), policies);
  if (pre.size === 0 && post.size === 0) return [];
  const hostBefore = capturedHostValues([...stored].map(([policy, s]) => [policy, s.hostBefore] as const));
  // Over a value a stage set, only while the column still holds it; nothing captured (e.g. the
  // rules changed since): the column is left as it is.
  return hostColumnMoves(pre, post, hostBefore).map((m) =>
    hostColumnChange(key, m.column, m.value, m.first, m.over),
  );
}

/**
 * Marks each change after which other policies' stages still hold the account so that booking or
 * sign-in is not what the change's own stage says (a clear of one policy while another suspends it):
 * its event then tells the account's state, not only the policy's (see OutboxPayload.account).
 */
export function markHolds(
  policies: Policy[],
  stored: ReadonlyMap<string, { stage: string | null }>,
  changes: Pick<StateChange, 'policy' | 'to' | 'blocksBooking' | 'allowsLogin' | 'account'>[],
): void {
  const after = new Map<string, string | null>();
  for (const [policy, state] of stored) after.set(policy, state.stage);
  for (const c of changes) after.set(c.policy, c.to);
  for (const c of changes) {
    const others = [...after].flatMap(([policy, name]) => {
      const stage = policy === c.policy ? null : stageOf(policies, policy, name);
      return stage ? [{ policy, stage }] : [];
    });
    const blocksBooking = c.blocksBooking || others.some((o) => o.stage.blocksBooking);
    const allowsLogin = c.allowsLogin && others.every((o) => o.stage.allowsLogin);
    if (blocksBooking === c.blocksBooking && allowsLogin === c.allowsLogin) continue;
    // In the rules file's order: the stored states come in no fixed order, and an event's text must not vary.
    const order = (policy: string) => policies.findIndex((p) => p.name === policy);
    const heldBy = others
      .filter((o) => o.stage.blocksBooking || !o.stage.allowsLogin)
      .sort((a, b) => order(a.policy) - order(b.policy))
      .map((o) => `${o.stage.name} under ${o.policy}`);
    c.account = { blocksBooking, allowsLogin, heldBy };
  }
}

/** An account's policy and stage, as stored, with the host values its row captured. */
export interface StageRow {
  policy: string;
  stage: string | null;
  host_before?: Record<string, unknown> | null;
}

/**
 * The host columns of an account some of whose changes were refused (see commitPage), settled from its
 * states as they now are (`current`: the changes written, and whatever refused the others). The
 * columns are those its stages set before the page (`before`) and those the page wrote (`wrote`, with
 * their values before the page in `old`). Each takes the value of the most severe current stage that
 * sets it; else, when a stage set it before, the value captured before suspend first set it (as a
 * clear does); else, when the page wrote it, its value before the page; else it is left as it is.
 * With no rows at all, that puts back what the page wrote.
 */
export function settleHostColumns(
  key: string,
  policies: Policy[],
  before: StageRow[],
  current: StageRow[],
  wrote: HostColumnChange[],
  old: Record<string, unknown>,
): HostColumnChange[] {
  const stages = (rows: StageRow[]) => rows.map((r) => stageOf(policies, r.policy, r.stage));
  const held = winningHostValues(stages(before), policies);
  const now = winningHostValues(stages(current), policies);
  // The rows after the page's write first (a capture it wrote is the newest), then as read before it.
  const captures = (rows: StageRow[]) =>
    capturedHostValues(rows.map((r) => [r.policy, r.host_before] as const));
  const captured = Object.assign(
    Object.create(null) as Record<string, unknown>,
    captures(before),
    captures(current),
  );
  const written = new Set(wrote.filter((h) => Object.hasOwn(old, h.column)).map((h) => h.column));
  const out: HostColumnChange[] = [];
  for (const column of new Set([...held.keys(), ...written])) {
    const winner = now.get(column);
    if (winner) out.push(hostColumnChange(key, column, winner.value, false));
    else if (held.has(column) && Object.hasOwn(captured, column))
      out.push(hostColumnChange(key, column, captured[column], false));
    else if (written.has(column)) out.push(hostColumnChange(key, column, old[column], false));
  }
  return out;
}

/**
 * What an account's other rows captured for columns a page captures again (`captured`: no current
 * stage held them, so those captures are of an episode that ended, and the host may have changed the
 * column since): each row's captures without them. A row in a stage the rules no longer describe may
 * still hold such a column, so it keeps its captures; so does one whose stage sets the column.
 */
export function staleCaptures(
  policies: Policy[],
  stored: ReadonlyMap<string, StoredState>,
  changed: ReadonlySet<string>,
  captured: ReadonlySet<string>,
): { policy: string; version: number; hostBefore: Record<string, unknown> | null }[] {
  const out: { policy: string; version: number; hostBefore: Record<string, unknown> | null }[] = [];
  for (const [policy, state] of stored) {
    if (changed.has(policy) || !state.hostBefore) continue;
    const stage = stageOf(policies, policy, state.stage);
    if (state.stage !== null && !stage) continue;
    const sets = winningHostValues([stage]);
    const kept = Object.entries(state.hostBefore).filter(
      ([column]) => !captured.has(column) || sets.has(column),
    );
    if (kept.length === Object.keys(state.hostBefore).length) continue;
    out.push({
      policy,
      version: state.version,
      hostBefore: kept.length > 0 ? Object.fromEntries(kept) : null,
    });
  }
  return out;
}

/** A stored stage by name, as the rules describe it; null for clear or a stage they no longer have. */
export function stageOf(policies: Policy[], policy: string, name: string | null): Stage | null {
  if (name === null) return null;
  return policies.find((p) => p.name === policy)?.stages.find((st) => st.name === name) ?? null;
}

function hostColumnChange(
  key: string,
  column: string,
  value: unknown,
  capture: boolean,
  expected?: unknown,
): HostColumnChange {
  const text = (v: unknown) => (v === null || v === undefined ? null : String(v));
  return {
    key,
    column,
    value: text(value),
    capture,
    ...(expected !== undefined ? { expected: text(expected) } : {}),
  };
}
