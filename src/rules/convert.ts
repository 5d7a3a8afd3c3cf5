import { DEFAULT_MAPPING, DEFAULT_NOTIFICATIONS, DEFAULT_SETTINGS, defaultStageMessage } from './defaults';
import { parseDuration, parseMaxChanges, parseMoney } from './values';
import type {
  RawAction,
  RawCondition,
  RawExclusion,
  RawNotifications,
  RawPolicy,
  RawSettings,
  RawSource,
  RawStage,
} from './schema';
import type {
  Action,
  Condition,
  Duration,
  ExclusionRule,
  NotificationSettings,
  Policy,
  Settings,
  SourceMapping,
  Stage,
} from '../types';

/**
 * A validated rules file (snake_case, as written) → the domain types of src/types.ts. Every input
 * here has passed the schema and the semantic checks, so a value that does not convert is a bug.
 */

function duration(text: string): Duration {
  const d = parseDuration(text);
  if (!d) throw new Error(`unvalidated duration ${JSON.stringify(text)}`);
  return d;
}

/**
 * Money has been normalized to its source text by `load.ts` (never a float), and its decimals
 * checked against the currency by semantics.ts: `minorDigits` is the currency's (2 for USD, 0 for JPY).
 */
function cents(value: string | number, minorDigits: number): number {
  const c = parseMoney(String(value), minorDigits);
  if (c === null) throw new Error(`unvalidated money ${JSON.stringify(value)}`);
  return c;
}

/** A map of several conditions is their `all`; a single one stays itself. */
export function convertCondition(raw: RawCondition, minorDigits = 2): Condition {
  const parts: Condition[] = [];
  for (const [key, value] of Object.entries(raw)) {
    if (value === undefined) continue;
    switch (key) {
      case 'all':
      case 'any':
        parts.push({
          [key]: (value as RawCondition[]).map((c) => convertCondition(c, minorDigits)),
        } as Condition);
        break;
      case 'not':
        parts.push({ not: convertCondition(value as RawCondition, minorDigits) });
        break;
      case 'inactive_for':
      case 'account_age_at_least':
      case 'past_due_for':
      case 'invoice_overdue_for':
        parts.push({ [key]: duration(value as string) } as Condition);
        break;
      case 'open_balance_over':
      case 'overdue_balance_over':
        parts.push({ [key]: cents(value as string | number, minorDigits) } as Condition);
        break;
      case 'has_active_subscription':
        parts.push({ has_active_subscription: value as boolean });
        break;
      case 'unpaid_invoices_at_least':
        parts.push({ unpaid_invoices_at_least: value as number });
        break;
      case 'flag':
        parts.push({ flag: value as string });
        break;
      default:
        throw new Error(`unvalidated condition ${key}`);
    }
  }
  return parts.length === 1 ? (parts[0] as Condition) : { all: parts };
}

export function convertAction(raw: RawAction): Action {
  if (typeof raw === 'string') return { type: raw };
  if (raw.tag !== undefined) return { type: 'tag', tag: raw.tag };
  return { type: 'set', columns: { ...(raw.set as Record<string, string | number | boolean | null>) } };
}

/** pause → blocks booking, keeps sign-in; suspend → blocks both; neither → blocks nothing. */
export function effectsOf(actions: Action[]): { blocksBooking: boolean; allowsLogin: boolean } {
  if (actions.some((a) => a.type === 'suspend')) return { blocksBooking: true, allowsLogin: false };
  if (actions.some((a) => a.type === 'pause')) return { blocksBooking: true, allowsLogin: true };
  return { blocksBooking: false, allowsLogin: true };
}

export function convertStage(raw: RawStage, index: number, minorDigits = 2): Stage {
  const when = convertCondition(raw.when, minorDigits);
  const actions = (raw.actions ?? []).map(convertAction);
  const effects = effectsOf(actions);
  const stage: Stage = {
    name: raw.name,
    index,
    when,
    actions,
    blocksBooking: raw.blocks_booking ?? effects.blocksBooking,
    allowsLogin: raw.allows_login ?? effects.allowsLogin,
    message: '',
  };
  stage.message = raw.message ?? defaultStageMessage(stage);
  return stage;
}

/** A policy, or null when it is turned off (`enabled: false`). */
export function convertPolicy(name: string, raw: RawPolicy, minorDigits = 2): Policy | null {
  if (raw.enabled === false) return null;
  return {
    name,
    description: raw.description ?? '',
    reinstate: raw.reinstate ?? 'auto',
    fireSkippedStages: raw.fire_skipped_stages ?? false,
    stages: raw.stages.map((s, i) => convertStage(s, i, minorDigits)),
  };
}

export function convertExclusion(raw: RawExclusion): ExclusionRule {
  return {
    ...(raw.key !== undefined ? { key: String(raw.key) } : {}),
    ...(raw.flag !== undefined ? { flag: raw.flag } : {}),
    reason: raw.reason,
    ...(raw.until !== undefined ? { until: raw.until } : {}),
  };
}

export function convertNotifications(
  raw: RawNotifications | undefined,
  base: NotificationSettings = DEFAULT_NOTIFICATIONS,
): NotificationSettings {
  const out: NotificationSettings = {
    emails: raw?.emails ? [...raw.emails] : [...base.emails],
    useOrganizationColumn: raw?.use_organization_column ?? base.useOrganizationColumn,
  };
  const webhook =
    raw?.webhook === null
      ? undefined
      : raw?.webhook
        ? {
            url: raw.webhook.url,
            ...(raw.webhook.secret !== undefined ? { secret: raw.webhook.secret } : {}),
            batch: raw.webhook.batch ?? true,
          }
        : base.webhook;
  if (webhook) out.webhook = webhook;
  return out;
}

export function convertSettings(raw: RawSettings | undefined, base: Settings = DEFAULT_SETTINGS): Settings {
  const s = raw ?? {};
  return {
    schema: s.schema ?? base.schema,
    batchSize: s.batch_size ?? base.batchSize,
    maxChanges: s.max_changes === undefined ? base.maxChanges : parseMaxChanges(s.max_changes),
    supportUrl: s.support_url === undefined ? base.supportUrl : s.support_url,
    payUrl: s.pay_url === undefined ? base.payUrl : s.pay_url,
    currency: s.currency ?? base.currency,
    smtp: {
      url: s.smtp?.url === undefined ? base.smtp.url : s.smtp.url,
      from: s.smtp?.from ?? base.smtp.from,
    },
  };
}

/** Each section given replaces the default section; inside it, fields not given keep the default. */
export function convertSource(raw: RawSource | undefined): SourceMapping {
  const d = DEFAULT_MAPPING;
  const s = raw ?? {};
  const c = s.customers ?? {};
  const pick = <T>(value: T | undefined, fallback: T): T => (value === undefined ? fallback : value);
  const section = <R extends object, T>(
    value: R | null | undefined,
    fallback: T,
    make: (r: R) => T,
  ): T | null => (value === undefined ? fallback : value === null ? null : make(value));
  const inv = d.invoices as NonNullable<SourceMapping['invoices']>;
  const sub = d.subscriptions as NonNullable<SourceMapping['subscriptions']>;
  const org = d.organizations as NonNullable<SourceMapping['organizations']>;
  return {
    schema: pick(s.schema, d.schema),
    customers: {
      table: pick(c.table, d.customers.table),
      key: pick(c.key, d.customers.key),
      org: pick(c.org, d.customers.org),
      createdAt: pick(c.created_at, d.customers.createdAt),
      email: pick(c.email, d.customers.email),
      name: pick(c.name, d.customers.name),
      netTermsDays: pick(c.net_terms_days, d.customers.netTermsDays),
      flags: { ...pick(c.flags, d.customers.flags) },
      consent: [...pick(c.consent, d.customers.consent)],
    },
    activity: section(s.activity, d.activity, (a) => ({ table: a.table, customer: a.customer, at: a.at })),
    invoices: section(s.invoices, d.invoices, (i) => ({
      table: i.table,
      key: pick(i.key, inv.key),
      customer: pick(i.customer, inv.customer),
      issuedOn: pick(i.issued_on, inv.issuedOn),
      dueOn: pick(i.due_on, inv.dueOn),
      amount: pick(i.amount, inv.amount),
      paid: pick(i.paid, inv.paid),
      paidOn: pick(i.paid_on, inv.paidOn),
    })),
    subscriptions: section(s.subscriptions, d.subscriptions, (x) => ({
      table: x.table,
      customer: pick(x.customer, sub.customer),
      status: pick(x.status, sub.status),
      activeValues: [...pick(x.active_values, sub.activeValues)],
    })),
    organizations: section(s.organizations, d.organizations, (o) => ({
      table: o.table,
      key: pick(o.key, org.key),
      timezone: pick(o.timezone, org.timezone),
      notificationEmails: pick(o.notification_emails, org.notificationEmails),
    })),
    view: pick(s.view, d.view),
  };
}
