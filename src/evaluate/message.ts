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

/** What a stage message is rendered for: one account, stage and policy on the as-of day. */
export interface MessageInput {
  signals: Signals;
  settings: Pick<Settings, 'currency' | 'payUrl' | 'supportUrl'>;
  asOf: IsoDate;
  policy: string;
  stage: string | null;
}

/** How each placeholder's value is found (see messageContext). */
const VALUES: { [P in Placeholder]: (input: MessageInput) => string } = {
  name: ({ signals: s }) => (s.name?.trim() ? s.name.trim() : MISSING.name),
  key: ({ signals: s }) => s.key,
  balance: ({ signals: s, settings }) => formatMoney(s.openBalance, settings.currency),
  overdue_balance: ({ signals: s, settings }) => formatMoney(s.overdueBalance, settings.currency),
  days_past_due: ({ signals: s, asOf }) =>
    String(s.pastDueSince === null ? 0 : Math.max(0, daysBetween(s.pastDueSince, asOf))),
  past_due_since: ({ signals: s }) => s.pastDueSince ?? MISSING.past_due_since,
  invoice: ({ signals: s }) => s.oldestOverdueInvoice?.id ?? MISSING.invoice,
  invoice_amount: ({ signals: s, settings }) =>
    formatMoney(s.oldestOverdueInvoice?.unpaid ?? 0, settings.currency),
  invoice_days_overdue: ({ signals: s }) =>
    String(s.oldestOverdueInvoice?.daysOverdue ?? s.oldestOverdueDays ?? 0),
  last_activity: ({ signals: s }) => s.lastActivityOn ?? MISSING.last_activity,
  days_inactive: ({ signals: s, asOf }) => {
    const since = s.lastActivityOn ?? s.accountCreatedOn;
    return since === null ? MISSING.days_inactive : String(daysBetween(since, asOf));
  },
  stage: (input) => input.stage ?? 'clear',
  policy: (input) => input.policy,
  support_url: ({ settings }) => settings.supportUrl ?? MISSING.support_url,
  pay_url: ({ signals: s, settings }) =>
    settings.payUrl ? settings.payUrl.split('{key}').join(encodeURIComponent(s.key)) : MISSING.pay_url,
};

/** The placeholder values for one account, stage and policy on the as-of day. */
export function messageContext(input: MessageInput): MessageContext {
  const context = {} as MessageContext;
  for (const name of Object.keys(VALUES) as Placeholder[]) context[name] = VALUES[name](input);
  return context;
}

/**
 * A template split once into literal text (even indexes) and the placeholders between (odd ones):
 * templates come from the rules, a handful per run.
 */
const compiled = new Map<string, string[]>();

function templateParts(template: string): string[] {
  let parts = compiled.get(template);
  if (!parts) {
    parts = [''];
    let at = 0;
    for (const m of template.matchAll(PLACEHOLDER_PATTERN)) {
      const name = m[1] as string;
      if (!isPlaceholder(name)) continue;
      parts[parts.length - 1] += template.slice(at, m.index);
      parts.push(name, '');
      at = (m.index as number) + m[0].length;
    }
    parts[parts.length - 1] += template.slice(at);
    // Bounded like the date memos, should a caller render templates that are not the rules'.
    if (compiled.size >= 1000) compiled.clear();
    compiled.set(template, parts);
  }
  return parts;
}

/**
 * `renderMessage(template, messageContext(input))`, computing only the placeholders the template
 * names: a run renders a message for every change it writes, and most templates name one or two
 * placeholders, or none (formatting every amount for each was a tenth of a backfill's evaluation).
 */
export function renderMessageFor(template: string, input: MessageInput): string {
  const parts = templateParts(template);
  let out = parts[0] as string;
  for (let i = 1; i < parts.length; i += 2)
    out += VALUES[parts[i] as Placeholder](input) + (parts[i + 1] as string);
  return out;
}
