import { templatePlaceholders } from '../evaluate/message';
import type { SignalNeeds } from './signals';
import type { Condition, Duration, EffectiveRules, IsoDate, Rules } from '../types';

/**
 * The SQL pre-filter of a page: which accounts a rule could possibly touch. Every other account of
 * the page has no stage, no exclusion and no condition that holds, so the evaluator would decide
 * "clear" with nothing to write or count but "scanned": the page query leaves it out instead of
 * sending it to Node and evaluating it (on the reference data that is about two accounts in three).
 *
 * The predicate is an over-approximation, never the decision: whatever it lets through is evaluated
 * by the pure evaluator as before. Clocks get three days of slack, `not` always lets through, and
 * the signal columns are those the page query computes, so a mistake here can only cost time.
 * Accounts suspend already tracks (a current stage, an operator exclusion) are added by the page
 * query itself (see `signalsQuery`).
 */

/** SQL expressions of the page query's signal columns, as `signalsQuery` names them. */
export interface SignalColumns {
  createdOn: string;
  lastActivityOn: string;
  openBalance: string;
  overdueBalance: string;
  unpaidCount: string;
  oldestOverdueDays: string;
  pastDueSince: string;
  activeSubscriptions: string;
  flags: string;
  key: string;
}

/** Adds a value as a positional parameter and returns its placeholder. */
export type Bind = (value: string | number | string[]) => string;

const SLACK_DAYS = 3;

function interval(d: Duration): string {
  const unit = d.unit === 'week' ? 'day' : d.unit;
  const amount = d.unit === 'week' ? d.amount * 7 : d.amount;
  return `${amount} ${unit}${amount === 1 ? '' : 's'}`;
}

/** `start + duration <= as-of` (plus slack); false when start is null. */
function clockSql(start: string, d: Duration, asOf: IsoDate, bind: Bind): string {
  return `coalesce((${start} + ${bind(interval(d))}::interval)::date <= ${bind(asOf)}::date + ${SLACK_DAYS}, false)`;
}

function conditionSql(c: Condition, cols: SignalColumns, asOf: IsoDate, bind: Bind): string {
  if ('all' in c)
    return c.all.length === 0
      ? 'true'
      : `(${c.all.map((x) => conditionSql(x, cols, asOf, bind)).join(' and ')})`;
  if ('any' in c)
    return c.any.length === 0
      ? 'false'
      : `(${c.any.map((x) => conditionSql(x, cols, asOf, bind)).join(' or ')})`;
  // A negation of an over-approximation is not one: let everything through.
  if ('not' in c) return 'true';
  if ('inactive_for' in c)
    return clockSql(`coalesce(${cols.lastActivityOn}, ${cols.createdOn})`, c.inactive_for, asOf, bind);
  if ('account_age_at_least' in c) return clockSql(cols.createdOn, c.account_age_at_least, asOf, bind);
  if ('past_due_for' in c) return clockSql(cols.pastDueSince, c.past_due_for, asOf, bind);
  if ('invoice_overdue_for' in c)
    return clockSql(`(${bind(asOf)}::date - ${cols.oldestOverdueDays})`, c.invoice_overdue_for, asOf, bind);
  if ('open_balance_over' in c) return `coalesce(${cols.openBalance}, 0) > ${bind(c.open_balance_over)}`;
  if ('overdue_balance_over' in c)
    return `coalesce(${cols.overdueBalance}, 0) > ${bind(c.overdue_balance_over)}`;
  if ('unpaid_invoices_at_least' in c)
    return `coalesce(${cols.unpaidCount}, 0) >= ${bind(c.unpaid_invoices_at_least)}`;
  if ('has_active_subscription' in c)
    return `(coalesce(${cols.activeSubscriptions}, 0) > 0) = ${c.has_active_subscription ? 'true' : 'false'}`;
  if ('flag' in c) return `${bind(c.flag)}::text = any(${cols.flags})`;
  return 'true';
}

function ruleSets(rules: Rules): EffectiveRules[] {
  return [rules.defaults, ...Object.values(rules.organizations)];
}

/**
 * True for an account that some stage of some policy might put it in, or that a rules exclusion
 * names (excluded accounts are counted in the report). Organizations' rules are OR-ed together.
 */
export function candidatePredicate(rules: Rules, asOf: IsoDate, cols: SignalColumns, bind: Bind): string {
  // Bindings are positional: every part built below appears in the SQL, in the order built.
  const conditions = new Map<string, Condition>();
  const flags = new Set<string>();
  const keys = new Set<string>();
  for (const set of ruleSets(rules)) {
    for (const policy of set.policies)
      for (const stage of policy.stages) conditions.set(JSON.stringify(stage.when), stage.when);
    for (const ex of set.exclusions) {
      if (ex.flag !== undefined) flags.add(ex.flag);
      else if (ex.key !== undefined) keys.add(ex.key);
    }
  }
  const parts = [...conditions.values()].map((c) => conditionSql(c, cols, asOf, bind));
  for (const flag of flags) parts.push(`${bind(flag)}::text = any(${cols.flags})`);
  if (keys.size > 0) parts.push(`${cols.key}::text = any(${bind([...keys])}::text[])`);
  return parts.length === 0 ? 'false' : `(${parts.join('\n      or ')})`;
}

const ACTIVITY_PLACEHOLDERS = new Set(['last_activity', 'days_inactive']);
const OLDEST_INVOICE_PLACEHOLDERS = new Set(['invoice', 'invoice_amount', 'invoice_days_overdue']);
const INVOICE_PLACEHOLDERS = new Set([
  'balance',
  'overdue_balance',
  'days_past_due',
  'past_due_since',
  ...OLDEST_INVOICE_PLACEHOLDERS,
]);

/** Which groups of signals one policy uses: in a condition, or in a stage message. */
function signalsUsedBy(policy: EffectiveRules['policies'][number]): SignalNeeds {
  const needs: SignalNeeds = { activity: false, invoices: false, oldestInvoice: false, subscriptions: false };
  const visit = (c: Condition): void => {
    if ('all' in c) c.all.forEach(visit);
    else if ('any' in c) c.any.forEach(visit);
    else if ('not' in c) visit(c.not);
    else if ('inactive_for' in c) needs.activity = true;
    else if ('has_active_subscription' in c) needs.subscriptions = true;
    else if ('invoice_overdue_for' in c) Object.assign(needs, { invoices: true, oldestInvoice: true });
    else if (
      'open_balance_over' in c ||
      'overdue_balance_over' in c ||
      'past_due_for' in c ||
      'unpaid_invoices_at_least' in c
    )
      needs.invoices = true;
    else if (!('account_age_at_least' in c) && !('flag' in c)) {
      // A condition this list does not know: compute everything rather than guess.
      Object.assign(needs, { activity: true, invoices: true, oldestInvoice: true, subscriptions: true });
    }
  };
  for (const stage of policy.stages) {
    visit(stage.when);
    for (const name of templatePlaceholders(stage.message)) {
      if (ACTIVITY_PLACEHOLDERS.has(name)) needs.activity = true;
      if (INVOICE_PLACEHOLDERS.has(name)) needs.invoices = true;
      if (OLDEST_INVOICE_PLACEHOLDERS.has(name)) needs.oldestInvoice = true;
    }
  }
  return needs;
}

/**
 * Which groups of signals the rules use, in any organization's policies. A run computes only those
 * (subscriptions alone cost a seventh of a page read).
 */
export function signalsUsed(rules: Rules): SignalNeeds {
  const needs: SignalNeeds = { activity: false, invoices: false, oldestInvoice: false, subscriptions: false };
  for (const set of ruleSets(rules)) {
    for (const policy of set.policies) {
      const used = signalsUsedBy(policy);
      needs.activity ||= used.activity;
      needs.invoices ||= used.invoices;
      needs.oldestInvoice ||= used.oldestInvoice;
      needs.subscriptions ||= used.subscriptions;
    }
  }
  return needs;
}

/**
 * The policies that read invoices in some organization: a payment can change only their decisions,
 * so only their changes need the account's invoices locked while they are written.
 */
export function policiesReadingInvoices(rules: Rules): Set<string> {
  const names = new Set<string>();
  for (const set of ruleSets(rules)) {
    for (const policy of set.policies) if (signalsUsedBy(policy).invoices) names.add(policy.name);
  }
  return names;
}
