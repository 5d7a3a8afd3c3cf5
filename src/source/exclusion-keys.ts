import type { Knex } from 'knex';
import { storedCustomerKey } from '../customer/host';
import type { Rules } from '../types';

/** More keys than this are not looked up one by one before every run. */
const MAX_KEYS = 200;

/**
 * The rules file's exclusions by key, against the customer table: a key no customer has spares
 * nobody, and one written otherwise than the table writes it ("088" for customer 88) never matches,
 * since runs compare keys as the table writes them. Each is a note for the run's log.
 */
export async function exclusionKeyNotes(knex: Knex, rules: Rules): Promise<string[]> {
  const keys = new Set(
    [rules.defaults, ...Object.values(rules.organizations)].flatMap((r) =>
      r.exclusions.flatMap((e) => (e.key === undefined ? [] : [e.key])),
    ),
  );
  if (keys.size === 0 || keys.size > MAX_KEYS) return [];
  const notes: string[] = [];
  for (const key of keys) {
    const stored = await storedCustomerKey(knex, rules.source, key);
    if (stored === null)
      notes.push(
        `note: the rules exclude key ${JSON.stringify(key)}, which no customer has; it spares nobody.`,
      );
    else if (stored !== key)
      notes.push(
        `note: the rules exclude key ${JSON.stringify(key)}, but the customer table writes it ${JSON.stringify(stored)}, and runs match keys as written there: write ${JSON.stringify(stored)}, or it spares nobody.`,
      );
  }
  return notes;
}
