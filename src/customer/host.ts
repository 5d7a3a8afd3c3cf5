import type { Knex } from 'knex';
import { accountList, qualified, regclassText } from '../source/signals';
import { columnTypes, writeHostColumns } from '../write/host-columns';
import type { HostColumnChange } from '../engine/plan';
import type { SourceMapping } from '../types';
import { UsageError } from '../errors';

/**
 * The host's customer table, as the customer-side commands need it: does a key exist (in the signal
 * view when the rules read one), what are the name and email of a page of keys (for outbox
 * payloads), and putting mapped status columns back. Consent columns are never written, whatever a
 * stored value says.
 */

/**
 * A key that is not a valid value of the key column's type: 22P02 ("abc" for a bigint key), 22003
 * (a number too large for it).
 */
const NOT_A_KEY_VALUE = new Set(['22P02', '22003']);

/** The table (or signal view) that lists the accounts. */
export function customerTable(mapping: SourceMapping): string {
  return qualified(mapping, accountList(mapping).table);
}

async function tableExists(knex: Knex | Knex.Transaction, table: string): Promise<boolean> {
  const r = await knex.raw<{ rows: { t: string | null }[] }>('select to_regclass(?) as t', [
    regclassText(table),
  ]);
  return Boolean(r.rows[0]?.t);
}

/** Whether the table (or signal view) that lists the accounts is there. */
export async function hostTableExists(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
): Promise<boolean> {
  return tableExists(knex, customerTable(mapping));
}

/**
 * The key as the customer table writes it (its key column as text, which is what suspend stores and
 * matches), or null when no customer has it (or its type cannot hold it). `088` or ` 88` name
 * customer 88 of an integer key column: without this they would match none of its stored rows.
 */
export async function storedCustomerKey(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  key: string,
): Promise<string | null> {
  return (await storedCustomer(knex, mapping, key))?.key ?? null;
}

/** The customer of `key` as the table writes its key, with its organization (null: no such customer). */
export async function storedCustomer(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  key: string,
): Promise<{ key: string; org: string | null } | null> {
  const list = accountList(mapping);
  try {
    // The parameter takes the key column's type, so the primary key index answers.
    const r = await knex.raw<{ rows: { key: string; org: string | null }[] }>(
      'select ??::text as key, ??::text as org from ?? where ?? = ? limit 1',
      [list.key, list.org, customerTable(mapping), list.key, key],
    );
    return r.rows[0] ?? null;
  } catch (err) {
    if (NOT_A_KEY_VALUE.has((err as { code?: string }).code ?? '')) return null;
    throw err;
  }
}

/**
 * A key a customer-side command was given, as suspend stores it: the customer table's own writing
 * when the table is there and has the customer, else as given (a customer since deleted may still
 * have states). `found` says whether the table has it.
 */
export async function accountKey(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  key: string,
): Promise<{ key: string; found: boolean }> {
  // An empty argument ("" from a script's unset variable) names no account: say so, not "no customer  in".
  if (key.trim() === '')
    throw new UsageError('The customer key is empty; give the key of a customer (e.g. suspend status 1042).');
  const stored = (await hostTableExists(knex, mapping)) ? await storedCustomerKey(knex, mapping, key) : null;
  return stored === null ? { key, found: false } : { key: stored, found: true };
}

export interface CustomerContact {
  name: string | null;
  email: string | null;
}

/** Name and email of a page of keys (for outbox payloads); empty when the host table is not there. */
export async function customerContacts(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  keys: string[],
): Promise<Map<string, CustomerContact>> {
  const out = new Map<string, CustomerContact>();
  if (keys.length === 0) return out;
  if (mapping.view) {
    // A signal view names its accounts: their name and email are its columns (the customers table's
    // mapping is only where set actions write, and may name neither).
    const result = await knex.raw<{ rows: { key: string; name: string | null; email: string | null }[] }>(
      'select key::text as key, name::text as name, email::text as email from ?? where key::text = any(?::text[])',
      [qualified(mapping, mapping.view), keys],
    );
    for (const r of result.rows) out.set(r.key, { name: r.name, email: r.email });
    return out;
  }
  const c = mapping.customers;
  const table = qualified(mapping, c.table);
  if (!(await tableExists(knex, table))) return out;
  const types = await columnTypes(knex, mapping, [c.key]);
  const result = await knex.raw<{ rows: { key: string; name: string | null; email: string | null }[] }>(
    `select ??::text as key, ${c.name ? '??::text' : 'null::text'} as name, ${c.email ? '??::text' : 'null::text'} as email
       from ?? where ?? = any(?::text[]::${types.get(c.key)}[])`,
    [c.key, ...(c.name ? [c.name] : []), ...(c.email ? [c.email] : []), table, c.key, keys],
  );
  for (const r of result.rows) out.set(r.key, { name: r.name, email: r.email });
  return out;
}

/**
 * Writes host column values back (one statement per column for all keys) and returns the values
 * they held before, per key. Consent columns and the key column are dropped, never written.
 */
export async function restoreHostColumns(
  trx: Knex.Transaction,
  mapping: SourceMapping,
  values: { key: string; column: string; value: string | null; expected?: string | null }[],
): Promise<Map<string, Record<string, string | null>>> {
  const forbidden = new Set([...mapping.customers.consent, mapping.customers.key]);
  const changes: HostColumnChange[] = values
    .filter((v) => !forbidden.has(v.column))
    .map((v) => ({ ...v, capture: false }));
  if (changes.length === 0) return new Map();
  return writeHostColumns(trx, mapping, changes);
}

/** One account's host columns as text (to say what a column holds when it was not given back). */
export async function hostColumnValues(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  key: string,
  columns: string[],
): Promise<Record<string, string | null>> {
  const c = mapping.customers;
  if (columns.length === 0) return {};
  const types = await columnTypes(knex, mapping, [c.key]);
  const result = await knex.raw<{ rows: Record<string, string | null>[] }>(
    `select ${columns.map(() => '??::text as ??').join(', ')} from ?? where ?? = ?::text::${types.get(c.key)}`,
    [...columns.flatMap((col) => [col, col]), qualified(mapping, c.table), c.key, key],
  );
  return result.rows[0] ?? {};
}

/** A stored host value (jsonb: text, number, boolean or null) as the text writeHostColumns casts. */
export function hostValueText(value: unknown): string | null {
  if (value === null || value === undefined) return null;
  return typeof value === 'string' ? value : JSON.stringify(value);
}
