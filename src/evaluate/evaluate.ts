/**
 * The pure evaluator: one account's signals + its organization's effective rules + the as-of day →
 * a decision per policy (with reasons and evidence) and the transitions a run would write.
 * No I/O, no clock: `asOf` is given. This is the product's contract:
 *
 * - Each policy is decided on its own. The account belongs in the MOST SEVERE stage (the highest
 *   index) whose condition holds; when none holds it is clear. Every condition that held gives a
 *   reason: one sentence plus the values that met the threshold. A clear decision says why the
 *   first stage does not hold. So any decision can be explained in a sentence (`explainDecision`).
 * - Durations are day-exact and measured on the calendar: `past_due_for: 14 days` holds from the
 *   14th day of the streak (as-of − past-due-since ≥ 14); months and years are calendar months.
 *   A run that comes late simply finds the account further along and enters that stage once.
 * - Inactivity counts from the last activity, or from the creation day when there was none; with
 *   neither it does not hold. Account age needs the creation day. Balances must be strictly over
 *   their threshold; counts at least theirs. Money is integer cents throughout.
 * - After a manual reinstatement a policy's clocks restart: inactivity, past-due and overdue-invoice
 *   durations count from no earlier than the reinstatement day. Balances, counts, flags and the
 *   account's age are facts, not clocks, and do not restart.
 * - From the current stage to the decided one: up = `enter`/`escalate`, firing the entered stage's
 *   actions (and the skipped stages' too when the policy says `fire_skipped_stages`); down = `clear`/
 *   `deescalate` without actions when the policy reinstates automatically, or an informational `hold`
 *   when only a person may reinstate; same = nothing. Re-evaluating with the new state changes nothing.
 * - Exclusions beat every rule that would act against an account. An account excluded on as-of (by
 *   the rules' key or flag, or by the exclusions table; `until` inclusive, expired ones ignored)
 *   still gets its decisions, for the report, but never enters or escalates a stage. It still goes
 *   down: a stage whose reason cleared is cleared (or held, when only a person may reinstate), so a
 *   customer spared while paying gets access back once paid, as the stage's message promises.
 */
import { conditionHolds, evaluateCondition } from './conditions';
import { findExclusion } from './exclusions';
import { CLEAR_STATE, explained, lazyTransition, planTransition, type PlannedTransition } from './transition';
import type {
  AccountEvaluation,
  AccountPolicyState,
  EffectiveRules,
  IsoDate,
  Policy,
  PolicyDecision,
  Settings,
  Signals,
  Stage,
  Transition,
} from '../types';

export { planTransition, CLEAR_STATE } from './transition';
export { renderMessage, renderMessageFor, messageContext, templatePlaceholders } from './message';
export { formatMoney } from './money';
export { conditionHolds, describeCondition, evaluateCondition } from './conditions';

/** The policy's stages, most severe first (sorted once per policy, not once per account). */
const ladders = new WeakMap<Policy, Stage[]>();
function ladderOf(policy: Policy): Stage[] {
  let ladder = ladders.get(policy);
  if (!ladder) {
    ladder = [...policy.stages].sort((a, b) => b.index - a.index);
    ladders.set(policy, ladder);
  }
  return ladder;
}

/** Decides one policy for one account: its most severe holding stage, or clear, with the reasons. */
export function evaluatePolicy(
  signals: Signals,
  policy: Policy,
  asOf: IsoDate,
  state: AccountPolicyState | null | undefined,
  settings: Pick<Settings, 'currency'>,
): PolicyDecision {
  const ctx = { asOf, reinstatedOn: state?.reinstatedOn ?? null, currency: settings.currency };
  const ladder = ladderOf(policy);
  for (const stage of ladder) {
    const result = evaluateCondition(stage.when, signals, ctx);
    if (result.holds) return { policy: policy.name, stage, reasons: result.reasons };
  }
  const first = ladder[ladder.length - 1];
  if (!first) {
    return {
      policy: policy.name,
      stage: null,
      reasons: [{ condition: 'none', text: `policy ${policy.name} has no stages`, evidence: {} }],
    };
  }
  return { policy: policy.name, stage: null, reasons: evaluateCondition(first.when, signals, ctx).reasons };
}

/** The account's stored state under `policy` (clear when it has none). */
function stateOf(states: Record<string, AccountPolicyState>, policy: Policy): AccountPolicyState {
  const stored = (Object.prototype.hasOwnProperty.call(states, policy.name) && states[policy.name]) || null;
  if (!stored || stored.stage === null) return stored ?? CLEAR_STATE;
  // A stored stage is where its name now is: a stage inserted or removed before it moves it, and
  // judged by its old place the account would "escalate" to its own stage and fire its actions
  // again. A name the ladder no longer has (renamed) is judged by its place (see stale-stages.ts).
  const named = policy.stages.find((s) => s.name === stored.stage);
  return named && named.index !== stored.stageIndex ? { ...stored, stageIndex: named.index } : stored;
}

/** One sentence: "delinquency: suspended, because overdue balance $42.00 is over $5.00 and ...". */
export function explainDecision(decision: PolicyDecision): string {
  const because =
    decision.reasons.length > 0 ? `, because ${decision.reasons.map((r) => r.text).join(' and ')}` : '';
  return `${decision.policy}: ${decision.stage ? decision.stage.name : 'clear'}${because}`;
}

/** An enter or escalation: what an exclusion keeps from happening. */
function goesUp(kind: Transition['kind']): boolean {
  return kind === 'enter' || kind === 'escalate';
}

/**
 * Evaluates every policy of the account's effective rules. `states` holds the account's current
 * state per policy name (missing: clear). An excluded account gets its decisions, and transitions
 * only down (a clear, a de-escalation, a hold).
 */
export function evaluateAccount(input: {
  signals: Signals;
  rules: EffectiveRules;
  asOf: IsoDate;
  states: Record<string, AccountPolicyState>;
  exclusion: { reason: string; until: IsoDate | null } | null;
}): AccountEvaluation {
  const { signals, rules, asOf, states } = input;
  const excluded = findExclusion(signals, rules.exclusions, input.exclusion, asOf);
  const decisions: PolicyDecision[] = [];
  const transitions: Transition[] = [];
  for (const policy of rules.policies) {
    const state = stateOf(states, policy);
    const decision = evaluatePolicy(signals, policy, asOf, state, rules.settings);
    decisions.push(decision);
    const transition = planTransition({ signals, policy, state, decision, asOf, settings: rules.settings });
    if (transition && !(excluded && goesUp(transition.kind))) transitions.push(transition);
  }
  return { key: signals.key, orgId: signals.orgId, excluded, decisions, transitions };
}

/**
 * What `evaluateAccount` says of the account's transitions and exclusion, without its decisions: a
 * policy whose decided stage is the current one is settled with `conditionHolds` alone, and only
 * the policies that move are explained: right away ('now'), or on their first `explain()` ('later').
 * The batch engine calls this for every account (a property test checks both modes against
 * evaluateAccount).
 */
export function accountTransitions(
  input: Parameters<typeof evaluateAccount>[0],
  /** 'now' for a run that writes every change; 'later' for a dry run (see lazyTransition). */
  explain: 'now' | 'later' = 'later',
): Pick<AccountEvaluation, 'key' | 'orgId' | 'excluded'> & { transitions: PlannedTransition[] } {
  const { signals, rules, asOf, states } = input;
  const excluded = findExclusion(signals, rules.exclusions, input.exclusion, asOf);
  const transitions: PlannedTransition[] = [];
  for (const policy of rules.policies) {
    const state = stateOf(states, policy);
    const ctx = { asOf, reinstatedOn: state.reinstatedOn, currency: rules.settings.currency };
    const decided = ladderOf(policy).find((stage) => conditionHolds(stage.when, signals, ctx));
    // planTransition returns nothing when the decided stage is the current one; an excluded
    // account only goes down (see evaluateAccount).
    if ((decided?.index ?? -1) === state.stageIndex) continue;
    if (excluded && (decided?.index ?? -1) > state.stageIndex) continue;
    if (explain === 'now') {
      const decision = evaluatePolicy(signals, policy, asOf, state, rules.settings);
      const planned = planTransition({ signals, policy, state, decision, asOf, settings: rules.settings });
      if (planned) transitions.push(explained(planned));
      continue;
    }
    const transition = lazyTransition({
      signals,
      policy,
      state,
      target: decided ?? null,
      decide: () => evaluatePolicy(signals, policy, asOf, state, rules.settings),
      asOf,
      settings: rules.settings,
    });
    if (transition) transitions.push(transition);
  }
  return { key: signals.key, orgId: signals.orgId, excluded, transitions };
}
