import type { Cents, Duration, DurationUnit, Settings } from '../types';
import { FORMATS } from './formats';

/**
 * The rules file's value types, from validated text to domain values: durations, money (integer
 * cents from the decimal digits, never through a float) and the safety limit.
 */

/** Longer than any account's life (9999 years), and small enough for calendar arithmetic. */
const MAX_DURATION_AMOUNT = 9999;

/** `"30 days"` → `{ amount: 30, unit: 'day', text: '30 days' }`; null when it is not a duration. */
export function parseDuration(text: string): Duration | null {
  if (!FORMATS.duration.test(text)) return null;
  const m = /^\s*(\d+)\s*([a-z]+?)s?\s*$/i.exec(text);
  if (!m) return null;
  const amount = Number(m[1]);
  if (!Number.isSafeInteger(amount) || amount > MAX_DURATION_AMOUNT) return null;
  return {
    amount,
    unit: (m[2] as string).toLowerCase() as DurationUnit,
    text: text.trim().replace(/\s+/g, ' '),
  };
}

/** `30 days` as the file would say it. */
export function durationToText(d: Duration): string {
  return d.text || `${d.amount} ${d.unit}${d.amount === 1 ? '' : 's'}`;
}

/**
 * Money text (`"5.00"`, `"$5"`, `"1,250.5"`, or a YAML number's source digits `19.99`) → integer cents,
 * by string arithmetic. Null when it is not an amount with at most 2 decimals.
 */
export function parseMoney(text: string): Cents | null {
  const m = /^\s*\$?\s*(\d+|\d{1,3}(?:,\d{3})+)(?:\.(\d{1,2}))?\s*$/.exec(text);
  if (!m) return null;
  const whole = (m[1] as string).replace(/,/g, '');
  const fraction = (m[2] ?? '').padEnd(2, '0');
  const cents = Number(`${whole}${fraction}`);
  return Number.isSafeInteger(cents) ? cents : null;
}

/** Cents back to the file's decimal text: 2999 → `"29.99"`. */
export function centsToText(cents: Cents): string {
  const sign = cents < 0 ? '-' : '';
  const digits = String(Math.abs(Math.trunc(cents))).padStart(3, '0');
  return `${sign}${digits.slice(0, -2)}.${digits.slice(-2)}`;
}

/** `500` → a count; `"5%"` → a fraction of the accounts scanned; null → no limit. */
export function parseMaxChanges(value: number | string | null | undefined): Settings['maxChanges'] {
  if (value === null || value === undefined) return null;
  if (typeof value === 'number') return { count: value };
  const m = FORMATS.percent.exec(value);
  return m ? { fraction: Number(m[1]) / 100 } : null;
}

export function maxChangesToText(value: Settings['maxChanges']): number | string | null {
  if (value === null) return null;
  return 'count' in value ? value.count : `${Number((value.fraction * 100).toPrecision(12))}%`;
}
