import { daysBetween } from '../rules/dates';
import { formatMoney } from './money';
import { PLACEHOLDERS, type Placeholder } from './placeholders';
import type { IsoDate, Settings, Signals } from '../types';

/**
 * Customer-facing stage messages. A template names placeholders in single braces, `{overdue_balance}`
 * (spaces inside the braces are allowed); the names are those of `PLACEHOLDERS`. Every value renders
 * as readable text: a missing one becomes "never", "none", "customer"..., never "undefined" or "null".
 */

export type MessageContext = Record<Placeholder, string>;

const PLACEHOLDER_PATTERN = /\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}/g;

/** The placeholder names a template uses, in order of first use (for the loader's check). */
export function templatePlaceholders(template: string): string[] {
  return [...new Set([...template.matchAll(PLACEHOLDER_PATTERN)].map((m) => m[1] as string))];
}

export function isPlaceholder(name: string): name is Placeholder {
  return Object.prototype.hasOwnProperty.call(PLACEHOLDERS, name);
}

/** Fills the placeholders of `template`; a name that is not a placeholder is left as written. */
export function renderMessage(template: string, context: Partial<MessageContext>): string {
  return template.replace(PLACEHOLDER_PATTERN, (whole, name: string) => {
    if (!isPlaceholder(name)) return whole;
    return context[name] ?? MISSING[name];
  });
}

/** What a placeholder says when the context has no value for it. */
const MISSING: MessageContext = {
  name: 'customer',
  key: 'your account',
  balance: 'your balance',
  overdue_balance: 'your overdue balance',
  days_past_due: '0',
  past_due_since: 'not past due',
  invoice: 'none',
  invoice_amount: 'the unpaid amount',
  invoice_days_overdue: '0',
  last_activity: 'never',
  days_inactive: 'unknown',
  stage: 'this stage',
  policy: 'this policy',
  support_url: 'our support team',
  pay_url: 'our payment page',
};

/** The placeholder values for one account, stage and policy on the as-of day. */
export function messageContext(input: {
  signals: Signals;
  settings: Pick<Settings, 'currency' | 'payUrl' | 'supportUrl'>;
  asOf: IsoDate;
  policy: string;
  stage: string | null;
}): MessageContext {
  const { signals: s, settings, asOf } = input;
  const money = (cents: number) => formatMoney(cents, settings.currency);
  const inactiveSince = s.lastActivityOn ?? s.accountCreatedOn;
  const invoice = s.oldestOverdueInvoice;
  return {
    name: s.name?.trim() ? s.name.trim() : MISSING.name,
    key: s.key,
    balance: money(s.openBalance),
    overdue_balance: money(s.overdueBalance),
    days_past_due: String(s.pastDueSince === null ? 0 : Math.max(0, daysBetween(s.pastDueSince, asOf))),
    past_due_since: s.pastDueSince ?? MISSING.past_due_since,
    invoice: invoice?.id ?? MISSING.invoice,
    invoice_amount: money(invoice?.unpaid ?? 0),
    invoice_days_overdue: String(invoice?.daysOverdue ?? s.oldestOverdueDays ?? 0),
    last_activity: s.lastActivityOn ?? MISSING.last_activity,
    days_inactive: inactiveSince === null ? MISSING.days_inactive : String(daysBetween(inactiveSince, asOf)),
    stage: input.stage ?? 'clear',
    policy: input.policy,
    support_url: settings.supportUrl ?? MISSING.support_url,
    pay_url: settings.payUrl
      ? settings.payUrl.split('{key}').join(encodeURIComponent(s.key))
      : MISSING.pay_url,
  };
}
