import type { Condition, NotificationSettings, Settings, SourceMapping, Stage } from '../types';

/** The reference schema that `suspend seed` creates is the default mapping. */
export const DEFAULT_MAPPING: SourceMapping = {
  schema: null,
  customers: {
    table: 'customers',
    key: 'id',
    org: 'org_id',
    createdAt: 'created_at',
    email: 'email',
    name: 'name',
    netTermsDays: 'net_terms_days',
    flags: {},
    consent: ['marketing_opt_out'],
  },
  activity: { table: 'reservations', customer: 'customer_id', at: 'created_at' },
  invoices: {
    table: 'invoices',
    key: 'id',
    customer: 'customer_id',
    issuedOn: 'issued_on',
    dueOn: 'due_on',
    amount: 'amount_cents',
    paid: 'paid_cents',
    paidOn: 'paid_on',
  },
  subscriptions: {
    table: 'subscriptions',
    customer: 'customer_id',
    status: 'status',
    activeValues: ['active'],
  },
  organizations: {
    table: 'organizations',
    key: 'id',
    timezone: 'timezone',
    notificationEmails: 'notification_emails',
  },
  view: null,
};

export const DEFAULT_SETTINGS: Settings = {
  schema: 'suspend',
  batchSize: 2000,
  maxChanges: null,
  supportUrl: null,
  payUrl: null,
  currency: 'USD',
  smtp: { url: null, from: 'suspend <suspend@localhost>' },
};

export const DEFAULT_NOTIFICATIONS: NotificationSettings = {
  emails: [],
  useOrganizationColumn: true,
};

/** Condition keys about money owed: a stage that tests them tells the customer how to pay. */
const MONEY_CONDITIONS = [
  'open_balance_over',
  'overdue_balance_over',
  'past_due_for',
  'invoice_overdue_for',
  'unpaid_invoices_at_least',
];

function mentionsMoney(condition: Condition): boolean {
  if ('all' in condition) return condition.all.some(mentionsMoney);
  if ('any' in condition) return condition.any.some(mentionsMoney);
  if ('not' in condition) return false;
  return Object.keys(condition).some((k) => MONEY_CONDITIONS.includes(k));
}

/**
 * The customer-facing message of a stage that gives none: what happened and the next step (pay,
 * or contact support), from the stage's effects and whether its condition is about money owed.
 */
export function defaultStageMessage(stage: Pick<Stage, 'when' | 'blocksBooking' | 'allowsLogin'>): string {
  const money = mentionsMoney(stage.when);
  if (stage.blocksBooking && !stage.allowsLogin) {
    return money
      ? 'Your account is suspended because {overdue_balance} is past due. Pay at {pay_url} to restore it, or contact {support_url}.'
      : 'Your account is suspended. Contact {support_url} to restore it.';
  }
  if (stage.blocksBooking) {
    return money
      ? 'Booking is paused on your account because {overdue_balance} is past due; you can still sign in. Pay at {pay_url} and you can book again right away.'
      : 'Booking is paused on your account; you can still sign in. Contact {support_url} to book again.';
  }
  return money
    ? 'A reminder: {overdue_balance} is past due on your account. Pay at {pay_url} to keep your account in good standing.'
    : 'Your account needs attention. Contact {support_url} if you have questions.';
}
