import type { Knex } from 'knex';
import { storedCustomer } from '../customer/host';
import { orgsWithoutAccounts } from './signals';
import type { Rules } from '../types';

/** More keys than this are not looked up one by one before every run. */
const MAX_KEYS = 200;

/**
 * The rules file's exclusions by key, against the customer table: a key no customer has spares
 * nobody, and one written otherwise than the table writes it ("088" for customer 88) never matches,
 * since runs compare keys as the table writes them. Each is a note for the run's log.
 */
export async function exclusionKeyNotes(knex: Knex, rules: Rules): Promise<string[]> {
  // Each key with the organizations whose own exclusions name it (none: the defaults' do).
  const keys = new Map<string, Set<string>>();
  const add = (key: string | undefined, orgId: string | null) => {
    if (key === undefined) return;
    const orgs = keys.get(key) ?? new Set<string>();
    if (orgId !== null) orgs.add(orgId);
    keys.set(key, orgs);
  };
  for (const e of rules.defaults.exclusions) add(e.key, null);
  const inDefaults = new Set(rules.defaults.exclusions);
  for (const [orgId, org] of Object.entries(rules.organizations))
    for (const e of org.exclusions) if (!inDefaults.has(e)) add(e.key, orgId);
  if (keys.size === 0 || keys.size > MAX_KEYS) return [];
  const notes: string[] = [];
  for (const [key, orgs] of keys) {
    const stored = await storedCustomer(knex, rules.source, key);
    if (stored === null)
      notes.push(
        `note: the rules exclude key ${JSON.stringify(key)}, which no customer has; it spares nobody.`,
      );
    else if (stored.key !== key)
      notes.push(
        `note: the rules exclude key ${JSON.stringify(key)}, but the customer table writes it ${JSON.stringify(stored.key)}, and runs match keys as written there: write ${JSON.stringify(stored.key)}, or it spares nobody.`,
      );
    else if (orgs.size > 0 && (stored.org === null || !orgs.has(stored.org)))
      notes.push(
        `note: organization ${[...orgs].join(', ')} of the rules excludes key ${JSON.stringify(key)}, but that customer is in ${stored.org === null ? 'no organization' : `organization ${stored.org}`}, whose rules do not: it is not spared; move the exclusion to its organization or to the top-level exclusions.`,
      );
  }
  return notes;
}

/** The rules' organizations that no account belongs to: their overrides apply to nobody (a mistyped id). */
export async function organizationNotes(knex: Knex, rules: Rules): Promise<string[]> {
  const ids = Object.keys(rules.organizations);
  if (ids.length === 0 || ids.length > MAX_KEYS) return [];
  const missing = await orgsWithoutAccounts(knex, rules.source, ids);
  return missing.map(
    (id) =>
      `note: the rules have overrides for organization ${JSON.stringify(id)}, which no account belongs to; they apply to nobody (check the id against the customers' organization column).`,
  );
}
