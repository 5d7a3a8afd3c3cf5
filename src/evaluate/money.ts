import type { Cents } from '../types';

/**
 * Money is integer minor units. Formatting splits the integer exactly (integer remainders, BigInt
 * past 2^53; never a rounded float division), and takes only the symbol and the number of minor
 * digits from Intl: USD 4200 → "$42.00", EUR 123456 → "€1,234.56", JPY 500 → "¥500", an unknown
 * code XYZ 150 → "XYZ 1.50".
 */

interface CurrencyInfo {
  symbol: string;
  digits: number;
}

const infoCache = new Map<string, CurrencyInfo>();

function currencyInfo(currency: string): CurrencyInfo {
  const known = infoCache.get(currency);
  if (known) return known;
  const code = currency.trim().toUpperCase();
  const cached = infoCache.get(code);
  if (cached) return cached;
  let info: CurrencyInfo = { symbol: `${code} `, digits: 2 };
  try {
    const format = new Intl.NumberFormat('en-US', { style: 'currency', currency: code });
    const symbol = format.formatToParts(0).find((p) => p.type === 'currency')?.value ?? code;
    // Codes Intl does not know come back as the code itself: keep a space after them.
    info = {
      symbol: symbol === code ? `${code} ` : symbol,
      digits: format.resolvedOptions().maximumFractionDigits ?? 2,
    };
  } catch {
    // Not a well-formed currency code: show it as written, with two minor digits.
  }
  infoCache.set(code, info);
  infoCache.set(currency, info);
  return info;
}

/** How many minor digits `currency` has (USD 2, JPY 0, KWD 3; 2 for a code Intl does not know). */
export function minorDigits(currency: string): number {
  return currencyInfo(currency).digits;
}

/** The symbol `currency` is written with (USD "$", EUR "€"; an unknown code and a space). */
export function currencySymbol(currency: string): string {
  return currencyInfo(currency).symbol;
}

function groupThousands(digits: string): string {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** Formats integer minor units of `currency` for people: `formatMoney(4200, 'USD')` → `"$42.00"`. */
export function formatMoney(cents: Cents, currency: string): string {
  const { symbol, digits } = currencyInfo(currency);
  if (!Number.isFinite(cents)) return 'an unknown amount';
  // Cents are integers by contract; round defensively rather than print a fraction of a cent.
  const minor = Math.round(cents);
  const negative = minor < 0;
  const abs = Math.abs(minor);
  let whole: string;
  let rest: string;
  if (Number.isSafeInteger(abs) && digits <= 15) {
    // Exact in doubles: a remainder, and an exact multiple divided (a backfill formats every
    // amount it explains; BigInt took most of the time).
    const base = 10 ** digits;
    const r = abs % base;
    whole = String((abs - r) / base);
    rest = String(r);
  } else {
    const big = BigInt(abs);
    const base = 10n ** BigInt(digits);
    whole = (big / base).toString();
    rest = (big % base).toString();
  }
  const fraction = digits > 0 ? `.${rest.padStart(digits, '0')}` : '';
  return `${negative ? '-' : ''}${symbol}${groupThousands(whole)}${fraction}`;
}
