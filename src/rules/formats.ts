/**
 * The rules file's custom formats: Ajv checks them (`validate.ts`) and the value parsers use the
 * same patterns (`values.ts`).
 */

export const FORMATS = {
  /** `30 days`, `1 day`, `2 weeks`, `12 months`, `1 year`. */
  duration: /^\s*\d+\s*(day|days|week|weeks|month|months|year|years)\s*$/i,
  /** `5.00`, `$5`, `5`, `1,250.50`: not negative, at most 2 decimals. */
  money: /^\s*\$?\s*(\d+|\d{1,3}(,\d{3})+)(\.\d{1,2})?\s*$/,
  /** `500` or `5%` / `2.5%` (more than 0, at most 100). */
  percent: /^\s*(\d+(\.\d+)?)\s*%\s*$/,
  /** A calendar day that exists. */
  date: /^\d{4}-\d{2}-\d{2}$/,
  email: /^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$/,
  /** An address with optional display name: `Billing <billing@example.com>`. */
  mailbox: /^(?:[^<>]*<[^@\s<>]+@[^@\s<>]+>|[^@\s<>]+@[^@\s<>]+)$/,
} as const;
