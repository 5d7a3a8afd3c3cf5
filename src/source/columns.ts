import type { Knex } from 'knex';
import { UsageError } from '../errors';
import { formatPath } from '../rules/problems';
import type { Rules, SourceMapping } from '../types';
import { qualified, regclassText } from './signals';

/**
 * The mapped tables' columns, checked before a run opens: a name the table does not have is one
 * sentence with its place in the rules file (exit 2), not a SQL error from the first page after the
 * run was recorded (a backfill left `interrupted` that a corrected file could not start again).
 */

interface MappedColumn {
  table: string;
  column: string;
  /** Where the rules file names it: `source.invoices.amount` (a default when not written). */
  path: (string | number)[];
}

/** Every column a run reads through the mapping; none for a signal view (its columns are fixed). */
export function mappedColumns(m: SourceMapping): MappedColumn[] {
  if (m.view) return [];
  const c = m.customers;
  const of = (table: string, section: string, columns: [string, string | null][]): MappedColumn[] =>
    columns.flatMap(([key, column]) =>
      column === null ? [] : [{ table, column, path: ['source', section, key] }],
    );
  return [
    ...of(c.table, 'customers', [
      ['key', c.key],
      ['org', c.org],
      ['created_at', c.createdAt],
      ['email', c.email],
      ['name', c.name],
      ['net_terms_days', c.netTermsDays],
    ]),
    ...Object.entries(c.flags).map(([flag, column]) => ({
      table: c.table,
      column,
      path: ['source', 'customers', 'flags', flag],
    })),
    ...c.consent.map((column, i) => ({
      table: c.table,
      column,
      path: ['source', 'customers', 'consent', i],
    })),
    ...(m.activity
      ? of(m.activity.table, 'activity', [
          ['customer', m.activity.customer],
          ['at', m.activity.at],
        ])
      : []),
    ...(m.invoices
      ? of(m.invoices.table, 'invoices', [
          ['key', m.invoices.key],
          ['customer', m.invoices.customer],
          ['issued_on', m.invoices.issuedOn],
          ['due_on', m.invoices.dueOn],
          ['amount', m.invoices.amount],
          ['paid', m.invoices.paid],
          ['paid_on', m.invoices.paidOn],
        ])
      : []),
    ...(m.subscriptions
      ? of(m.subscriptions.table, 'subscriptions', [
          ['customer', m.subscriptions.customer],
          ['status', m.subscriptions.status],
        ])
      : []),
  ];
}

/**
 * Refuses a mapping that names a column its table lacks. Tables that are not there are left to the
 * table check. The organizations table is not among them: only notify reads it, and says so when
 * it cannot (the addresses in the rules file still get digests).
 */
export async function checkMappedColumns(knex: Knex, rules: Rules): Promise<void> {
  const wanted = mappedColumns(rules.source);
  const tables = [...new Set(wanted.map((w) => w.table))];
  if (tables.length === 0) return;
  const { rows } = await knex.raw<{ rows: { t: string; columns: string[] | null }[] }>(
    `select t, (select array_agg(attname::text order by attnum) from pg_attribute
                 where attrelid = to_regclass(r) and attnum > 0 and not attisdropped) as columns
       from unnest(?::text[], ?::text[]) as x(t, r)`,
    [tables, tables.map((t) => regclassText(qualified(rules.source, t)))],
  );
  const columnsOf = new Map(rows.map((r) => [r.t, r.columns]));
  const missing = wanted.filter((w) => {
    const columns = columnsOf.get(w.table);
    return columns != null && !columns.includes(w.column);
  });
  const first = missing[0];
  if (!first) return;
  const where = rules.locate?.(first.path) ?? `${formatPath(first.path)} (the default mapping)`;
  const has = columnsOf.get(first.table) ?? [];
  const more = missing.length > 1 ? ` (and ${missing.length - 1} more mapped column(s) it lacks)` : '';
  throw new UsageError(
    `${where}: table "${qualified(rules.source, first.table)}" has no column "${first.column}"${more}; name one of its columns (${has.join(', ')}).`,
  );
}
