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
export function parseMoney(text: string, minorDigits = 2): Cents | null {
  const m = MONEY.exec(text);
  if (!m) return null;
  const whole = (m[1] as string).replace(/,/g, '');
  // Decimals past the currency's minor unit may only be zeros: "5.00" yen is 5, "5.50" yen is nothing.
  const written = m[2] ?? '';
  if (/[1-9]/.test(written.slice(minorDigits))) return null;
  const fraction = written.slice(0, minorDigits).padEnd(minorDigits, '0');
  const cents = Number(`${whole}${fraction}`);
  return Number.isSafeInteger(cents) ? cents : null;
}

/** An amount as the rules file writes it: digits, optional thousands commas and a `$`, up to 4 decimals. */
const MONEY = /^\s*\$?\s*(\d+|\d{1,3}(?:,\d{3})+)(?:\.(\d{1,4}))?\s*$/;

/** Whether an amount is written with a `$` (which only a dollar currency may be). */
export function moneyHasDollarSign(text: string): boolean {
  return /^\s*\$/.test(text);
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
