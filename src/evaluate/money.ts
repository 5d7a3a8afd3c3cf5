import type { Cents } from '../types';

/**
 * Money is integer minor units. Formatting splits the integer with BigInt arithmetic (never a float
 * division), and takes only the symbol and the number of minor digits from Intl: USD 4200 → "$42.00",
 * EUR 123456 → "€1,234.56", JPY 500 → "¥500", an unknown code XYZ 150 → "XYZ 1.50".
 */

interface CurrencyInfo {
  symbol: string;
  digits: number;
}

const infoCache = new Map<string, CurrencyInfo>();

function currencyInfo(currency: string): CurrencyInfo {
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
  return info;
}

function groupThousands(digits: string): string {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** Formats integer minor units of `currency` for people: `formatMoney(4200, 'USD')` → `"$42.00"`. */
export function formatMoney(cents: Cents, currency: string): string {
  const { symbol, digits } = currencyInfo(currency);
  if (!Number.isFinite(cents)) return 'an unknown amount';
  // Cents are integers by contract; round defensively rather than print a fraction of a cent.
  const minor = BigInt(Math.round(cents));
  const negative = minor < 0n;
  const abs = negative ? -minor : minor;
  const base = 10n ** BigInt(digits);
  const whole = groupThousands((abs / base).toString());
  const fraction = digits > 0 ? `.${(abs % base).toString().padStart(digits, '0')}` : '';
  return `${negative ? '-' : ''}${symbol}${whole}${fraction}`;
}
