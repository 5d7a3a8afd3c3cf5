import type { Format } from 'ajv';
import { isIsoDate } from './dates';
import { FORMATS } from './formats';
import { parseDuration, parseMoney } from './values';

/**
 * The formats of the rules file's JSON Schema (`duration`, `money`, ...), for Ajv. Formats check
 * that the value converts too: "99999999999999999999 days" has the shape of a duration but no amount
 * that fits. The validator compiled at build time loads them from here by name.
 */
export const RULE_FORMATS: Record<string, Format> = {
  duration: { type: 'string', validate: (s: string) => parseDuration(s) !== null },
  // The shape only (up to 4 decimals): how many the currency has is checked by semantics.ts.
  money: { type: 'string', validate: (s: string) => parseMoney(s, 4) !== null },
  'money-number': {
    type: 'number',
    // The number's shortest decimal text: the converter reads the YAML source text itself.
    validate: (n: number) =>
      Number.isFinite(n) && /^\d+(\.\d{1,4})?$/.test(String(n)) && parseMoney(String(n), 4) !== null,
  },
  percent: {
    type: 'string',
    validate: (s: string) => {
      const m = FORMATS.percent.exec(s);
      return m !== null && Number(m[1]) > 0 && Number(m[1]) <= 100;
    },
  },
  date: { type: 'string', validate: (s: string) => FORMATS.date.test(s) && isIsoDate(s) },
  email: FORMATS.email,
  mailbox: FORMATS.mailbox,
  url: { type: 'string', validate: (s: string) => isUrl(s) },
  // What is sent to, or shown to a customer: a scheme the sender speaks (`ftp://` was accepted, then
  // retried by every notify for ever).
  'web-url': { type: 'string', validate: (s: string) => isUrl(s, ['http', 'https']) },
  'smtp-url': { type: 'string', validate: (s: string) => isUrl(s, ['smtp', 'smtps']) },
};

function isUrl(s: string, schemes?: string[]): boolean {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\/\S+$/i.exec(s)?.[1]?.toLowerCase();
  if (!scheme || (schemes && !schemes.includes(scheme))) return false;
  try {
    new URL(s);
    return true;
  } catch {
    return false;
  }
}
