import { addDays, atLeast, daysBetween } from '../rules/dates';
import { formatMoney } from './money';
import type { Cents, Condition, Duration, IsoDate, Reason, Signals } from '../types';

/**
 * Conditions on signals, each with the reasons it held (or failed) and the evidence behind them.
 * Pure: `asOf` is given, nothing reads the clock.
 */

export interface ConditionContext {
  asOf: IsoDate;
  /** The policy's last manual reinstatement: its clocks count from no earlier than this day. */
  reinstatedOn: IsoDate | null;
  /** For money in reason texts. */
  currency: string;
}

export interface ConditionOutcome {
  holds: boolean;
  /** When the condition holds: why it holds. When it does not: why not (the leaves that failed). */
  reasons: Reason[];
}

type Evidence = Reason['evidence'];

export function durationText(d: Duration): string {
  return d.text.trim() || `${d.amount} ${d.unit}${d.amount === 1 ? '' : 's'}`;
}

function days(n: number): string {
  return `${n} day${n === 1 ? '' : 's'}`;
}

function later(a: IsoDate, b: IsoDate | null): IsoDate {
  return b !== null && b > a ? b : a;
}

function outcome(holds: boolean, condition: string, text: string, evidence: Evidence): ConditionOutcome {
  return { holds, reasons: [{ condition, text, evidence }] };
}

/** Whether at least `duration` passed from `start` (restarted at the reinstatement) to as-of. */
function clockHolds(start: IsoDate, duration: Duration, ctx: ConditionContext): boolean {
  return atLeast(later(start, ctx.reinstatedOn), ctx.asOf, duration);
}

/** The day the oldest overdue invoice fell due, from its age on as-of. */
function overdueSince(daysOverdue: number, ctx: ConditionContext): IsoDate {
  return addDays(ctx.asOf, -daysOverdue);
}

/**
 * A clock: held when at least `duration` passed from `start` (restarted at the reinstatement) to as-of.
 * `what` is the sentence's opening ("past due for"), `since` names where the clock began.
 */
function clock(
  condition: string,
  what: string,
  since: string,
  start: IsoDate,
  duration: Duration,
  ctx: ConditionContext,
  /** A fresh object of the caller's (the clock's own evidence is added to it). */
  evidence: Evidence,
): ConditionOutcome {
  const from = later(start, ctx.reinstatedOn);
  const n = daysBetween(from, ctx.asOf);
  const holds = clockHolds(start, duration, ctx);
  const restarted = from !== start;
  const counted = restarted ? `; counted from the manual reinstatement on ${from}` : '';
  const threshold = durationText(duration);
  const text = `${what} ${days(n)} (${since}${counted}); threshold ${threshold}${holds ? '' : ' not reached'}`;
  // Every caller passes a fresh literal: adding to it saves the copy (a backfill explains hundreds of
  // thousands of clocks).
  evidence.days = n;
  evidence.threshold = threshold;
  if (restarted) evidence.reinstated_on = from;
  return outcome(holds, condition, text, evidence);
}

function balanceOver(
  condition: string,
  label: string,
  evidenceKey: string,
  balance: Cents,
  threshold: Cents,
  ctx: ConditionContext,
): ConditionOutcome {
  const holds = balance > threshold;
  const amount = formatMoney(balance, ctx.currency);
  const limit = formatMoney(threshold, ctx.currency);
  return outcome(holds, condition, `${label} ${amount} is ${holds ? '' : 'not '}over ${limit}`, {
    [evidenceKey]: amount,
    [`${evidenceKey}_cents`]: balance,
    threshold: limit,
    threshold_cents: threshold,
  });
}

function merged(reasons: Reason[]): Evidence {
  return Object.assign({}, ...reasons.map((r) => r.evidence)) as Evidence;
}

/**
 * Whether `condition` holds for one account: exactly `evaluateCondition(...).holds` (a property test
 * compares them), without writing a reason. The batch engine decides every account with this and
 * explains only the policies that move; building reason texts for all of them was a third of a
 * dry run's time.
 */
export function conditionHolds(condition: Condition, s: Signals, ctx: ConditionContext): boolean {
  if ('all' in condition) return condition.all.every((c) => conditionHolds(c, s, ctx));
  if ('any' in condition) return condition.any.some((c) => conditionHolds(c, s, ctx));
  if ('not' in condition) return !conditionHolds(condition.not, s, ctx);
  if ('inactive_for' in condition) {
    const start = s.lastActivityOn ?? s.accountCreatedOn;
    return start !== null && clockHolds(start, condition.inactive_for, ctx);
  }
  if ('account_age_at_least' in condition) {
    return (
      s.accountCreatedOn !== null && atLeast(s.accountCreatedOn, ctx.asOf, condition.account_age_at_least)
    );
  }
  if ('open_balance_over' in condition) return s.openBalance > condition.open_balance_over;
  if ('overdue_balance_over' in condition) return s.overdueBalance > condition.overdue_balance_over;
  if ('past_due_for' in condition) {
    return s.pastDueSince !== null && clockHolds(s.pastDueSince, condition.past_due_for, ctx);
  }
  if ('invoice_overdue_for' in condition) {
    return (
      s.oldestOverdueDays !== null &&
      clockHolds(overdueSince(s.oldestOverdueDays, ctx), condition.invoice_overdue_for, ctx)
    );
  }
  if ('has_active_subscription' in condition) {
    return s.activeSubscriptions > 0 === condition.has_active_subscription;
  }
  if ('unpaid_invoices_at_least' in condition)
    return s.unpaidInvoiceCount >= condition.unpaid_invoices_at_least;
  if ('flag' in condition) return s.flags.includes(condition.flag);
  return evaluateCondition(condition, s, ctx).holds;
}

/** Evaluates `condition` for one account; see `ConditionOutcome` for what the reasons say. */
export function evaluateCondition(condition: Condition, s: Signals, ctx: ConditionContext): ConditionOutcome {
  if ('all' in condition) {
    if (condition.all.length === 0) return outcome(true, 'all', 'an empty "all" always holds', {});
    const parts = condition.all.map((c) => evaluateCondition(c, s, ctx));
    const holds = parts.every((p) => p.holds);
    return { holds, reasons: parts.filter((p) => p.holds === holds).flatMap((p) => p.reasons) };
  }
  if ('any' in condition) {
    if (condition.any.length === 0) return outcome(false, 'any', 'an empty "any" never holds', {});
    const parts = condition.any.map((c) => evaluateCondition(c, s, ctx));
    const holds = parts.some((p) => p.holds);
    return { holds, reasons: parts.filter((p) => p.holds === holds).flatMap((p) => p.reasons) };
  }
  if ('not' in condition) {
    const inner = evaluateCondition(condition.not, s, ctx);
    const texts = inner.reasons.map((r) => r.text).join('; ');
    const described = `not (${describeCondition(condition.not, ctx.currency)})`;
    return outcome(
      !inner.holds,
      'not',
      inner.holds ? `${described} does not hold: ${texts}` : `${described}: ${texts}`,
      merged(inner.reasons),
    );
  }
  if ('inactive_for' in condition) {
    const d = condition.inactive_for;
    if (s.lastActivityOn !== null) {
      return clock(
        'inactive_for',
        'inactive for',
        `last activity ${s.lastActivityOn}`,
        s.lastActivityOn,
        d,
        ctx,
        {
          last_activity: s.lastActivityOn,
        },
      );
    }
    if (s.accountCreatedOn !== null) {
      return clock(
        'inactive_for',
        'inactive for',
        `never active; account created ${s.accountCreatedOn}`,
        s.accountCreatedOn,
        d,
        ctx,
        { last_activity: null, account_created: s.accountCreatedOn },
      );
    }
    return outcome(
      false,
      'inactive_for',
      `neither the last activity nor the creation day is known; threshold ${durationText(d)} cannot be measured`,
      { last_activity: null, account_created: null, threshold: durationText(d) },
    );
  }
  if ('account_age_at_least' in condition) {
    const d = condition.account_age_at_least;
    const created = s.accountCreatedOn;
    if (created === null) {
      return outcome(
        false,
        'account_age_at_least',
        `account creation day unknown; threshold ${durationText(d)}`,
        {
          account_created: null,
          threshold: durationText(d),
        },
      );
    }
    // Account age is a fact about the account, not a clock of the policy: a reinstatement does not restart it.
    const holds = atLeast(created, ctx.asOf, d);
    const n = daysBetween(created, ctx.asOf);
    return outcome(
      holds,
      'account_age_at_least',
      `account ${days(n)} old (created ${created}); threshold ${durationText(d)}${holds ? '' : ' not reached'}`,
      { account_created: created, days: n, threshold: durationText(d) },
    );
  }
  if ('open_balance_over' in condition) {
    return balanceOver(
      'open_balance_over',
      'open balance',
      'open_balance',
      s.openBalance,
      condition.open_balance_over,
      ctx,
    );
  }
  if ('overdue_balance_over' in condition) {
    return balanceOver(
      'overdue_balance_over',
      'overdue balance',
      'overdue_balance',
      s.overdueBalance,
      condition.overdue_balance_over,
      ctx,
    );
  }
  if ('past_due_for' in condition) {
    const d = condition.past_due_for;
    if (s.pastDueSince === null) {
      return outcome(false, 'past_due_for', `not past due; threshold ${durationText(d)}`, {
        past_due_since: null,
        days: 0,
        threshold: durationText(d),
      });
    }
    return clock('past_due_for', 'past due for', `since ${s.pastDueSince}`, s.pastDueSince, d, ctx, {
      past_due_since: s.pastDueSince,
    });
  }
  if ('invoice_overdue_for' in condition) {
    const d = condition.invoice_overdue_for;
    if (s.oldestOverdueDays === null) {
      return outcome(false, 'invoice_overdue_for', `no overdue invoice; threshold ${durationText(d)}`, {
        invoice: null,
        days: 0,
        threshold: durationText(d),
      });
    }
    const since = overdueSince(s.oldestOverdueDays, ctx);
    const inv = s.oldestOverdueInvoice;
    const what = inv
      ? `invoice ${inv.id} (${formatMoney(inv.unpaid, ctx.currency)} unpaid) overdue for`
      : 'oldest invoice overdue for';
    return clock('invoice_overdue_for', what, `since ${since}`, since, d, ctx, {
      invoice: inv?.id ?? null,
      ...(inv ? { unpaid_cents: inv.unpaid } : {}),
      overdue_since: since,
    });
  }
  if ('has_active_subscription' in condition) {
    const wanted = condition.has_active_subscription;
    const n = s.activeSubscriptions;
    const has = n > 0;
    const actual = has ? `${n} active subscription${n === 1 ? '' : 's'}` : 'no active subscription';
    const required = wanted ? 'an active subscription' : 'no active subscription';
    return outcome(has === wanted, 'has_active_subscription', `${actual}; required: ${required}`, {
      active_subscriptions: n,
      required: wanted,
    });
  }
  if ('unpaid_invoices_at_least' in condition) {
    const k = condition.unpaid_invoices_at_least;
    const n = s.unpaidInvoiceCount;
    return outcome(
      n >= k,
      'unpaid_invoices_at_least',
      `${n} unpaid invoice${n === 1 ? '' : 's'}; threshold ${k}${n >= k ? '' : ' not reached'}`,
      { unpaid_invoices: n, threshold: k },
    );
  }
  if ('flag' in condition) {
    const set = s.flags.includes(condition.flag);
    return outcome(set, 'flag', `flag ${condition.flag} is ${set ? '' : 'not '}set`, {
      flag: condition.flag,
      set,
    });
  }
  throw new Error(
    `Unknown condition ${JSON.stringify(condition)}: the rules loader should have rejected it.`,
  );
}

/** A short human description of a condition, e.g. `past due for 30 days and has an active subscription`. */
export function describeCondition(condition: Condition, currency: string): string {
  const join = (parts: Condition[], word: string) =>
    parts.length === 1
      ? describeCondition(parts[0] as Condition, currency)
      : `(${parts.map((c) => describeCondition(c, currency)).join(` ${word} `)})`;
  if ('all' in condition) return condition.all.length === 0 ? 'always' : join(condition.all, 'and');
  if ('any' in condition) return condition.any.length === 0 ? 'never' : join(condition.any, 'or');
  if ('not' in condition) return `not ${describeCondition(condition.not, currency)}`;
  if ('inactive_for' in condition) return `inactive for ${durationText(condition.inactive_for)}`;
  if ('account_age_at_least' in condition)
    return `account at least ${durationText(condition.account_age_at_least)} old`;
  if ('open_balance_over' in condition)
    return `open balance over ${formatMoney(condition.open_balance_over, currency)}`;
  if ('overdue_balance_over' in condition) {
    return `overdue balance over ${formatMoney(condition.overdue_balance_over, currency)}`;
  }
  if ('past_due_for' in condition) return `past due for ${durationText(condition.past_due_for)}`;
  if ('invoice_overdue_for' in condition)
    return `an invoice overdue for ${durationText(condition.invoice_overdue_for)}`;
  if ('has_active_subscription' in condition) {
    return condition.has_active_subscription ? 'has an active subscription' : 'has no active subscription';
  }
  if ('unpaid_invoices_at_least' in condition)
    return `at least ${condition.unpaid_invoices_at_least} unpaid invoices`;
  return `flag ${condition.flag}`;
}
