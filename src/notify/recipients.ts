import type { Knex } from 'knex';
import { qualified } from '../source/signals';
import { errorMessage } from '../errors';
import type { EffectiveRules, OutboxPayload, SourceMapping } from '../types';

/**
 * Who hears of an event. The organization's contacts are the addresses of its effective rules
 * (`notifications.emails`) plus, with `use_organization_column`, those in the mapped column of the
 * organizations table (`source.organizations.notification_emails`: a text[] or a text of addresses
 * separated by commas, semicolons or spaces).
 */

/** Changes that give access back: contacts hear of them whatever the stage's actions said. */
const RETURNS = new Set(['clear', 'deescalate', 'reinstate', 'revert']);

/**
 * Whether the organization's contacts (digest) hear of this event: entering a stage whose actions
 * include `notify`, and every return (cleared, eased, reinstated, reverted).
 */
export function tellsOrganization(payload: OutboxPayload): boolean {
  return payload.actions.includes('notify') || RETURNS.has(payload.event);
}

/** Whether the customer gets the stage message by mail (`notify_customer`, a message and an address). */
export function tellsCustomer(payload: OutboxPayload): boolean {
  return (
    payload.actions.includes('notify_customer') &&
    Boolean(payload.customer.email?.trim()) &&
    Boolean(payload.message?.trim())
  );
}

/** Addresses in a column value: text[] or a delimited text. */
export function addressesOf(value: unknown): string[] {
  const parts = Array.isArray(value)
    ? value.map((v) => String(v ?? ''))
    : typeof value === 'string'
      ? value.split(/[,;\s]+/)
      : [];
  return parts.map((p) => p.trim()).filter((p) => p.includes('@'));
}

/** Case-insensitive de-duplication, first spelling kept. */
export function uniqueAddresses(addresses: string[]): string[] {
  const seen = new Set<string>();
  const out: string[] = [];
  for (const a of addresses) {
    const k = a.trim().toLowerCase();
    if (k === '' || seen.has(k)) continue;
    seen.add(k);
    out.push(a.trim());
  }
  return out;
}

/**
 * Reads organizations' contact addresses from the mapped column, once per organization per call.
 * A column that cannot be read is reported once through `log` and counts as empty: the addresses
 * of the rules file still get the digest.
 */
export class OrganizationContacts {
  private readonly cache = new Map<string, string[]>();
  private broken = false;

  constructor(
    private readonly knex: Knex,
    private readonly mapping: SourceMapping,
    private readonly log: (message: string) => void,
  ) {}

  async recipients(orgId: string | null, rules: EffectiveRules): Promise<string[]> {
    const fromColumn =
      rules.notifications.useOrganizationColumn && orgId !== null ? await this.columnAddresses(orgId) : [];
    return uniqueAddresses([...rules.notifications.emails, ...fromColumn]);
  }

  private async columnAddresses(orgId: string): Promise<string[]> {
    const orgs = this.mapping.organizations;
    if (!orgs?.notificationEmails || this.broken) return [];
    const cached = this.cache.get(orgId);
    if (cached) return cached;
    let found: string[] = [];
    try {
      const r = await this.knex.raw<{ rows: { emails: unknown }[] }>(
        'select ?? as emails from ?? where ??::text = ? limit 1',
        [orgs.notificationEmails, qualified(this.mapping, orgs.table), orgs.key, orgId],
      );
      found = addressesOf(r.rows[0]?.emails);
    } catch (err) {
      this.broken = true;
      this.log(
        `source.organizations.notification_emails: cannot read ${orgs.table}.${orgs.notificationEmails} (${errorMessage(err)}); only the addresses in the rules file get digests.`,
      );
    }
    this.cache.set(orgId, found);
    return found;
  }
}
