/**
 * Placeholders a stage message may use. The rules loader rejects any other name at load time;
 * the evaluator fills them from the account's signals and the settings.
 */
export const PLACEHOLDERS = {
  name: "the customer's name",
  key: "the customer's key (id)",
  balance: 'open balance, formatted as money',
  overdue_balance: 'overdue balance, formatted as money',
  days_past_due: 'days in the current continuous past-due streak',
  past_due_since: 'first day of the current past-due streak',
  invoice: 'id of the oldest overdue invoice',
  invoice_amount: 'unpaid amount of the oldest overdue invoice',
  invoice_days_overdue: 'days the oldest overdue invoice is overdue',
  last_activity: 'day of the last activity (e.g. last reservation), or "never"',
  days_inactive: 'days since the last activity',
  stage: 'the stage name',
  policy: 'the policy name',
  support_url: 'settings.support_url',
  pay_url: 'settings.pay_url with {key} filled in',
} as const;

export type Placeholder = keyof typeof PLACEHOLDERS;
