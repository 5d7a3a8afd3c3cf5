import { evaluateCondition } from './conditions';
import { renderMessageFor } from './message';
import type {
  AccountPolicyState,
  Action,
  IsoDate,
  Policy,
  PolicyDecision,
  Reason,
  Settings,
  Signals,
  Stage,
  Transition,
  TransitionKind,
} from '../types';

/**
 * From the account's current stage (index c, −1 = clear) to the decision's target (t):
 * t = c: nothing. t > c: `enter` (from clear) or `escalate`, firing the target's actions, plus those
 * of the skipped stages c+1..t−1 when the policy fires skipped stages (deduplicated, ladder order).
 * t < c: `clear` or `deescalate` when the policy reinstates automatically (no actions); with manual
 * reinstatement a `hold`, which the engine does not write and the report counts.
 */

export const CLEAR_STATE: AccountPolicyState = {
  stage: null,
  stageIndex: -1,
  enteredOn: null,
  reinstatedOn: null,
};

function actionKey(action: Action): string {
  if (action.type !== 'set') return JSON.stringify(action);
  const columns = Object.keys(action.columns)
    .sort()
    .map((k) => [k, action.columns[k]]);
  return JSON.stringify({ type: 'set', columns });
}

function dedupeActions(actions: Action[]): Action[] {
  const seen = new Set<string>();
  return actions.filter((a) => {
    const key = actionKey(a);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function dedupeReasons(reasons: Reason[]): Reason[] {
  const seen = new Set<string>();
  return reasons.filter((r) => !seen.has(r.text) && Boolean(seen.add(r.text)));
}

/** Entry actions per policy and (from, target): a run asks for the same few sets millions of times. */
const entryMemo = new WeakMap<Policy, Map<string, Action[]>>();

/** The actions entering `target` from index `from` fires (a shared array: do not change it). */
export function entryActions(policy: Policy, from: number, target: Stage): Action[] {
  let memo = entryMemo.get(policy);
  if (!memo) entryMemo.set(policy, (memo = new Map()));
  const key = `${from}|${target.index}|${target.name}`;
  let actions = memo.get(key);
  if (!actions) memo.set(key, (actions = collectEntryActions(policy, from, target)));
  return actions;
}

function collectEntryActions(policy: Policy, from: number, target: Stage): Action[] {
  const skipped = policy.fireSkippedStages
    ? policy.stages.filter((s) => s.index > from && s.index < target.index).sort((a, b) => a.index - b.index)
    : [];
  return dedupeActions([...skipped.flatMap((s) => s.actions), ...target.actions]);
}

/** The target stage's message, rendered; null when clear or when the stage has no message. */
export function stageMessage(
  stage: Stage | null,
  policy: Policy,
  signals: Signals,
  settings: Settings,
  asOf: IsoDate,
): string | null {
  if (!stage || stage.message.trim() === '') return null;
  return renderMessageFor(stage.message, { signals, settings, asOf, policy: policy.name, stage: stage.name });
}

type TransitionShape = Omit<Transition, 'key' | 'orgId' | 'message' | 'reasons'>;

/** What moving from the account's state to `target` is, without its explanation; null: it stays. */
function transitionShape(
  policy: Policy,
  state: AccountPolicyState,
  target: Stage | null,
): TransitionShape | null {
  const current = state.stageIndex;
  const to = target?.index ?? -1;
  if (to === current) return null;
  let kind: TransitionKind;
  let actions: Action[] = [];
  if (target && to > current) {
    kind = current === -1 ? 'enter' : 'escalate';
    actions = entryActions(policy, current, target);
  } else {
    kind = policy.reinstate === 'auto' ? (to === -1 ? 'clear' : 'deescalate') : 'hold';
  }
  return {
    policy: policy.name,
    kind,
    from: state.stage,
    to: target?.name ?? null,
    toIndex: to,
    actions,
    blocksBooking: target?.blocksBooking ?? false,
    allowsLogin: target?.allowsLogin ?? true,
  };
}

/** Why: the decision's reasons; on a step down, first why the current stage no longer holds. */
function transitionReasons(
  input: { signals: Signals; policy: Policy; state: AccountPolicyState; asOf: IsoDate; settings: Settings },
  decision: PolicyDecision,
): Reason[] {
  const { signals, policy, state, asOf, settings } = input;
  const to = decision.stage?.index ?? -1;
  if (decision.stage && to > state.stageIndex) return decision.reasons;
  const stage = policy.stages.find(
    (s) => s.index === state.stageIndex && (state.stage === null || s.name === state.stage),
  );
  if (!stage) return decision.reasons;
  const ctx = { asOf, reinstatedOn: state.reinstatedOn, currency: settings.currency };
  const now = evaluateCondition(stage.when, signals, ctx);
  return dedupeReasons([...(now.holds ? [] : now.reasons), ...decision.reasons]);
}

/** The transition a decision implies for one policy, or null when the account stays where it is. */
export function planTransition(input: {
  signals: Signals;
  policy: Policy;
  state: AccountPolicyState | null | undefined;
  decision: PolicyDecision;
  asOf: IsoDate;
  settings: Settings;
}): Transition | null {
  const { signals, policy, decision, asOf, settings } = input;
  const state = input.state ?? CLEAR_STATE;
  const shape = transitionShape(policy, state, decision.stage);
  if (!shape) return null;
  return {
    key: signals.key,
    orgId: signals.orgId,
    ...shape,
    message: stageMessage(decision.stage, policy, signals, settings, asOf),
    reasons: transitionReasons({ signals, policy, state, asOf, settings }, decision),
  };
}

/** A transition's explanation: why, and what the customer is told. */
export interface Explanation {
  reasons: Reason[];
  message: string | null;
}

/** A transition whose explanation is worked out when first asked for (then kept). */
export type PlannedTransition = Omit<Transition, 'message' | 'reasons'> & { explain(): Explanation };

/** A transition explained already. */
export function explained(t: Transition): PlannedTransition {
  const explanation: Explanation = { reasons: t.reasons, message: t.message };
  // Field by field: an object rest (`{ reasons, message, ...shape }`) costs V8 several times more.
  return {
    key: t.key,
    orgId: t.orgId,
    policy: t.policy,
    kind: t.kind,
    from: t.from,
    to: t.to,
    toIndex: t.toIndex,
    actions: t.actions,
    blocksBooking: t.blocksBooking,
    allowsLogin: t.allowsLogin,
    explain: () => explanation,
  };
}

/**
 * `planTransition` for a target already decided, explained only when asked: `explain()` computes the
 * reasons (from `decide()`, the full decision) and the message once. A dry run asks for its sample of
 * accounts only; a real run, for every change it writes.
 */
export function lazyTransition(input: {
  signals: Signals;
  policy: Policy;
  state: AccountPolicyState;
  target: Stage | null;
  decide: () => PolicyDecision;
  asOf: IsoDate;
  settings: Settings;
}): PlannedTransition | null {
  const { signals, policy, state, target, asOf, settings } = input;
  const shape = transitionShape(policy, state, target);
  if (!shape) return null;
  let explained: Explanation | null = null;
  return {
    key: signals.key,
    orgId: signals.orgId,
    ...shape,
    explain: () =>
      (explained ??= {
        reasons: transitionReasons(input, input.decide()),
        message: stageMessage(target, policy, signals, settings, asOf),
      }),
  };
}
