import type { Knex } from 'knex';
import { qualified, regclassText } from './signals';
import type { SourceMapping } from '../types';

/**
 * Which indexes the per-page signal query needs, whether the database has them, and the DDL to
 * create the missing ones. Each page reads a key range of every mapped table, so each needs an
 * index led by its customer column (the re-check before a write and its invoice locks use the
 * same ones).
 */

export interface IndexCheck {
  table: string;
  columns: string[];
  why: string;
  present: boolean;
  ddl: string;
}

interface IndexRow {
  table_name: string;
  columns: string[];
}

function quote(knex: Knex, name: string): string {
  return knex.raw('??', [name]).toQuery();
}

/**
 * The statement that creates a missing index, concurrently so that writes go on. Postgres cannot
 * build an index on a partitioned table concurrently: there it is a plain `create index`, which
 * blocks writes to the table while it builds, with a comment saying so.
 */
function indexDdl(knex: Knex, table: string, columns: string[], partitioned: boolean): string {
  const on = `${quote(knex, table)} (${columns.map((x) => quote(knex, x)).join(', ')})`;
  if (!partitioned) return `create index concurrently on ${on};`;
  return `-- ${table} is partitioned: Postgres cannot index it concurrently, so this blocks writes to it while it builds
create index on ${on};`;
}

export function neededIndexes(knex: Knex, mapping: SourceMapping): Omit<IndexCheck, 'present'>[] {
  if (mapping.view) return [];
  const out: Omit<IndexCheck, 'present'>[] = [];
  const c = mapping.customers;
  const add = (table: string, columns: string[], why: string) =>
    out.push({
      table,
      columns,
      why,
      ddl: indexDdl(knex, qualified(mapping, table), columns, false),
    });
  add(c.table, [c.key], 'keyset pagination walks customers in key order');
  if (mapping.activity) {
    add(
      mapping.activity.table,
      [mapping.activity.customer, mapping.activity.at],
      'last activity per customer, index-only',
    );
  }
  if (mapping.invoices) {
    const i = mapping.invoices;
    add(
      i.table,
      [i.customer, i.dueOn],
      'invoices of a page in one pass: balances, oldest overdue and the past-due streak (paid late ones too)',
    );
  }
  if (mapping.subscriptions)
    add(mapping.subscriptions.table, [mapping.subscriptions.customer], 'active subscriptions of a page');
  return out;
}

export async function checkIndexes(knex: Knex, mapping: SourceMapping): Promise<IndexCheck[]> {
  const needed = neededIndexes(knex, mapping);
  const tables = [...new Set(needed.map((n) => qualified(mapping, n.table)))];
  const regclasses = tables.map(regclassText);
  const partitioned = await knex.raw<{ rows: { name: string }[] }>(
    `select t as name from unnest(?::text[]) t join pg_class c on c.oid = to_regclass(t) where c.relkind = 'p'`,
    [regclasses],
  );
  const isPartitioned = new Set(partitioned.rows.map((r) => tables[regclasses.indexOf(r.name)]));
  const result = await knex.raw<{ rows: IndexRow[] }>(
    `select c.oid::regclass::text as table_name,
            array(select a.attname::text from unnest(i.indkey) with ordinality k(attnum, n)
                   join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
                  where k.n <= i.indnkeyatts order by k.n) as columns
       from pg_index i join pg_class c on c.oid = i.indrelid
      where c.oid = any(array(select to_regclass(t) from unnest(?::text[]) t))`,
    [regclasses],
  );
  return needed.map((n) => {
    const table = qualified(mapping, n.table);
    const bare = (name: string) => name.split('.').pop()?.replace(/"/g, '');
    const present = result.rows.some(
      (r) => bare(r.table_name) === bare(table) && n.columns.every((col, k) => r.columns[k] === col),
    );
    const ddl = isPartitioned.has(table) ? indexDdl(knex, table, n.columns, true) : n.ddl;
    return { ...n, table, present, ddl };
  });
}

/**
 * Rows the signals take as they stand but that look like entry mistakes, pointed out by `suspend
 * doctor`: an unpaid invoice due before it was issued counts as overdue from its due date, so its
 * customer can be paused the day it is billed.
 */
export async function dataNotes(knex: Knex, mapping: SourceMapping): Promise<string[]> {
  const inv = mapping.view ? null : mapping.invoices;
  if (!inv?.issuedOn) return [];
  const r = await knex.raw<{ rows: { n: string; example: string | null }[] }>(
    `select count(*) as n, min(??::text) as example from ??
      where ?? < ??::date and coalesce(??, 0) < ??`,
    [inv.key, qualified(mapping, inv.table), inv.dueOn, inv.issuedOn, inv.paid, inv.amount],
  );
  const n = Number(r.rows[0]?.n ?? 0);
  if (n === 0) return [];
  const table = qualified(mapping, inv.table);
  return [
    `${table}: ${n} unpaid invoice${n === 1 ? ' is' : 's are'} due before ${n === 1 ? 'it was' : 'they were'} issued (${inv.dueOn} < ${inv.issuedOn}; e.g. ${inv.key} ${r.rows[0]?.example}): each counts as overdue from its due date, so its customer can be paused the day it is billed; correct the dates if they are mistakes.`,
  ];
}
