import type { Knex } from 'knex';
import { UsageError, errorMessage } from '../errors';
import { driverMessage } from '../db/connection';
import { closest, formatPath } from '../rules/problems';
import type { Rules, SourceMapping } from '../types';
import { VIEW_COLUMNS, qualified, regclassText } from './signals';

/**
 * The mapped tables' columns (or a signal view's), checked before a run opens: a name the table does
 * not have, or a column of a type the signal SQL cannot use as the mapping says (a text column as
 * created_at), is one sentence with its place in the rules file (exit 2), not a SQL error from the
 * first page after the run was recorded (a backfill left `interrupted` that a corrected file could
 * not start again).
 */

/**
 * What the signal SQL does with a column: by Postgres type category (pg_type.typcategory) or, where
 * it does day arithmetic on it (`due_on + net terms`, `paid_on - 1`), by base type (domains count
 * as theirs). A column it casts to a day (`created_at::date`, `max(at)::date`) may be any timestamp,
 * or text of ISO days.
 */
const isTimeOfDay = (t: ColumnType) => /^time(tz| with| without|$)/.test(t.base);
const KINDS: Record<Kind, { fits: (t: ColumnType) => boolean; says: string }> = {
  day: {
    fits: (t) => (t.category === 'D' && !isTimeOfDay(t)) || t.category === 'S',
    says: 'a date or timestamp column (or text holding YYYY-MM-DD days)',
  },
  instant: {
    fits: (t) => t.category === 'D' && !isTimeOfDay(t),
    says: 'a date or timestamp column',
  },
  date: { fits: (t) => t.base === 'date', says: 'a date column (day arithmetic: a timestamp will not do)' },
  number: { fits: (t) => t.category === 'N', says: 'a numeric column (integer, numeric)' },
  flag: { fits: (t) => t.category === 'B', says: 'a boolean column' },
  whole: {
    // A numeric declared with decimals (numeric(12,2)) holds dollars, not cents: 100.00 would be read
    // as one dollar.
    fits: (t) =>
      ['smallint', 'integer', 'bigint', 'numeric'].includes(t.base) &&
      !/^numeric\(\d+,[1-9]\d*\)/.test(t.type),
    says: 'an integer or numeric column (whole cents and counts, never a float, nor decimals such as numeric(12,2) dollars)',
  },
  names: {
    fits: (t) => ['text[]', 'character varying[]'].includes(t.base),
    says: 'a text[] column (flag names)',
  },
};
type Kind = 'day' | 'instant' | 'date' | 'number' | 'flag' | 'whole' | 'names';

/**
 * What the view contract (README, "a signal view") asks of a signal view's columns. Its days are read
 * with `v.created_on::date`: a date or a timestamp, not text (no scan of a computed view to find a
 * value that is not a day). Its amounts and counts are read as whole numbers, its flags as names.
 * key, org_id, oldest_overdue_id, name and email are read as they come (key and org_id as text).
 */
const VIEW_KINDS: Partial<Record<(typeof VIEW_COLUMNS)[number], Kind>> = {
  created_on: 'instant',
  last_activity_on: 'instant',
  past_due_since: 'instant',
  open_balance: 'whole',
  overdue_balance: 'whole',
  oldest_overdue_unpaid: 'whole',
  unpaid_count: 'whole',
  oldest_overdue_days: 'whole',
  active_subscriptions: 'whole',
  net_terms_days: 'whole',
  flags: 'names',
};

interface MappedColumn {
  table: string;
  column: string;
  /** Where the rules file names it: `source.invoices.amount` (a default when not written). */
  path: (string | number)[];
  /** The type it must have; none: any (compared as text, or a key). */
  kind?: Kind;
  /** A customer column it is joined to: the two must compare (both numbers, or both text). */
  joins?: 'customer key';
}

/** Every column a run reads through the mapping; none for a signal view (see checkViewColumns). */
export function mappedColumns(m: SourceMapping): MappedColumn[] {
  if (m.view) return [];
  const c = m.customers;
  const of = (
    table: string,
    section: string,
    columns: [string, string | null, Pick<MappedColumn, 'kind' | 'joins'>?][],
  ): MappedColumn[] =>
    columns.flatMap(([key, column, use]) =>
      column === null ? [] : [{ table, column, path: ['source', section, key], ...use }],
    );
  return [
    ...of(c.table, 'customers', [
      ['key', c.key],
      ['org', c.org],
      ['created_at', c.createdAt, { kind: 'day' }],
      ['email', c.email],
      ['name', c.name],
      ['net_terms_days', c.netTermsDays, { kind: 'number' }],
    ]),
    ...Object.entries(c.flags).map(([flag, column]) => ({
      table: c.table,
      column,
      path: ['source', 'customers', 'flags', flag],
      kind: 'flag' as const,
    })),
    ...c.consent.map((column, i) => ({
      table: c.table,
      column,
      path: ['source', 'customers', 'consent', i],
    })),
    ...(m.activity
      ? of(m.activity.table, 'activity', [
          ['customer', m.activity.customer, { joins: 'customer key' }],
          ['at', m.activity.at, { kind: 'instant' }],
        ])
      : []),
    ...(m.invoices
      ? of(m.invoices.table, 'invoices', [
          ['key', m.invoices.key],
          ['customer', m.invoices.customer, { joins: 'customer key' }],
          ['issued_on', m.invoices.issuedOn, { kind: 'instant' }],
          ['due_on', m.invoices.dueOn, { kind: 'date' }],
          // Integer cents: a float column would come back as fractions no run can count.
          ['amount', m.invoices.amount, { kind: 'whole' }],
          ['paid', m.invoices.paid, { kind: 'whole' }],
          ['paid_on', m.invoices.paidOn, { kind: 'date' }],
        ])
      : []),
    ...(m.subscriptions
      ? of(m.subscriptions.table, 'subscriptions', [
          ['customer', m.subscriptions.customer, { joins: 'customer key' }],
          ['status', m.subscriptions.status],
        ])
      : []),
  ];
}

/** Every table a run reads through the mapping, with where the rules file names it. */
function mappedTables(m: SourceMapping): { table: string; path: (string | number)[] }[] {
  if (m.view) return [{ table: m.view, path: ['source', 'view'] }];
  const sections = [
    ['customers', m.customers],
    ['activity', m.activity],
    ['invoices', m.invoices],
    ['subscriptions', m.subscriptions],
  ] as const;
  return sections.flatMap(([section, mapped]) =>
    mapped ? [{ table: mapped.table, path: ['source', section, 'table'] }] : [],
  );
}

/**
 * Refuses a mapping that names a table the database lacks: its place in the rules file, and the
 * closest name among the tables it could mean (those of source.schema, else of the search path).
 */
export async function checkMappedTables(knex: Knex, rules: Rules): Promise<void> {
  const m = rules.source;
  if (m.schema !== null) {
    const { rows } = await knex.raw<{ rows: unknown[] }>('select 1 from pg_namespace where nspname = ?', [
      m.schema,
    ]);
    if (rows.length === 0) {
      throw new UsageError(
        `${rules.locate?.(['source', 'schema']) ?? 'source.schema'}: schema "${m.schema}" does not exist in this database; name the schema that holds the host's tables, or null for the connection's search path.`,
      );
    }
  }
  for (const w of mappedTables(m)) {
    const name = qualified(m, w.table);
    const found = await knex.raw<{ rows: { r: string | null }[] }>('select to_regclass(?) as r', [
      regclassText(name),
    ]);
    if (found.rows[0]?.r) continue;
    const { rows } = await knex.raw<{ rows: { name: string }[] }>(
      `select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p', 'v', 'm', 'f')
          and n.nspname = any(coalesce(?::text[], current_schemas(false)))`,
      [m.schema === null ? null : [m.schema]],
    );
    const like = closest(
      w.table,
      rows.map((r) => r.name),
    );
    const where = rules.locate?.(w.path) ?? `${formatPath(w.path)} (the default mapping)`;
    throw new UsageError(
      `${where}: table "${name}" does not exist in this database${like ? ` (did you mean "${like}"?)` : ''}; fix source in the rules file${w.path[1] === 'customers' ? ' or run `suspend seed` for the reference data' : ''}.`,
    );
  }
}

/**
 * Refuses a mapping that names a column its table lacks, or one of a type its use cannot take. Tables
 * that are not there are left to the table check. The organizations table is not among them: only
 * notify reads it, and says so when it cannot (the addresses in the rules file still get digests).
 */
export async function checkMappedColumns(knex: Knex, rules: Rules): Promise<void> {
  if (rules.source.view) return checkViewColumns(knex, rules, rules.source.view);
  const wanted = mappedColumns(rules.source);
  const tables = [...new Set(wanted.map((w) => w.table))];
  if (tables.length === 0) return;
  const columnsOf = await columnTypes(knex, rules.source, tables);
  const typeOf = (table: string, column: string) => columnsOf.get(table)?.find((c) => c.name === column);
  const where = (w: MappedColumn) => rules.locate?.(w.path) ?? `${formatPath(w.path)} (the default mapping)`;
  const table = (w: MappedColumn) => `table "${qualified(rules.source, w.table)}"`;

  const missing = wanted.filter((w) => columnsOf.get(w.table) != null && !typeOf(w.table, w.column));
  const first = missing[0];
  if (first) {
    const has = (columnsOf.get(first.table) ?? []).map((c) => c.name);
    const more = missing.length > 1 ? ` (and ${missing.length - 1} more mapped column(s) it lacks)` : '';
    throw new UsageError(
      `${where(first)}: ${table(first)} has no column "${first.column}"${more}; name one of its columns (${has.join(', ')}).`,
    );
  }
  const c = rules.source.customers;
  const key = typeOf(c.table, c.key);
  for (const w of wanted) {
    const type = typeOf(w.table, w.column);
    if (!type) continue;
    if (w.kind && !KINDS[w.kind].fits(type)) {
      throw new UsageError(
        `${where(w)}: column "${w.column}" of ${table(w)} is ${type.type}, and this needs ${KINDS[w.kind].says}; name such a column.`,
      );
    }
    // Text cast to a day: its first values are tried (the whole column would be a scan per run).
    if (w.kind === 'day' && type.category === 'S') {
      try {
        await knex.raw('select ??::date from ?? where ?? is not null limit 1000', [
          w.column,
          qualified(rules.source, w.table),
          w.column,
        ]);
      } catch (err) {
        throw new UsageError(
          `${where(w)}: column "${w.column}" of ${table(w)} is ${type.type} and holds values that are not days (${driverMessage(errorMessage(err))}); name a date or timestamp column, or one of YYYY-MM-DD text.`,
        );
      }
    }
    // Numbers compare with numbers and text with text: a text customer column against a bigint key
    // has no operator ("text = bigint"), nor has uuid against text.
    if (w.joins && key && type.category !== key.category) {
      throw new UsageError(
        `${where(w)}: column "${w.column}" of ${table(w)} is ${type.type}, and it must match the customers' key (source.customers.key: "${c.key}", ${key.type}); name the column that holds the customer's key.`,
      );
    }
  }
  await checkActiveValues(knex, rules);
}

/**
 * A subscriptions status column of an enum type holds only its labels: an active value that is not
 * one of them (a typo, `actve`) matches no subscription (with no other value, every account reads as
 * having none).
 */
async function checkActiveValues(knex: Knex, rules: Rules): Promise<void> {
  const s = rules.source.subscriptions;
  if (!s) return;
  const { rows } = await knex.raw<{ rows: { type: string; labels: string[] }[] }>(
    `select format_type(t.oid, null) as type,
            array(select e.enumlabel::text from pg_enum e where e.enumtypid = t.oid order by e.enumsortorder) as labels
       from pg_attribute a join pg_type ty on ty.oid = a.atttypid
       join pg_type t on t.oid = coalesce(nullif(ty.typbasetype, 0), a.atttypid)
      where a.attrelid = to_regclass(?) and a.attname = ? and a.attnum > 0 and not a.attisdropped
        and t.typtype = 'e'`,
    [regclassText(qualified(rules.source, s.table)), s.status],
  );
  const found = rows[0];
  if (!found) return;
  const i = s.activeValues.findIndex((v) => !found.labels.includes(v));
  if (i < 0) return;
  const path = ['source', 'subscriptions', 'active_values', i];
  const where =
    rules.locate?.(path) ?? rules.locate?.(path.slice(0, 3)) ?? `${formatPath(path)} (the default mapping)`;
  throw new UsageError(
    `${where}: "${s.activeValues[i]}" is not a value of column "${s.status}" of table "${qualified(rules.source, s.table)}" (enum ${found.type}), so it matches no subscription; name values of that type (${found.labels.join(', ')}).`,
  );
}

/**
 * Refuses a signal view without every column of VIEW_COLUMNS, or with one of a type the signal SQL
 * cannot read as the contract says (a float balance, text flags): else the first page fails after
 * the run was recorded, or every account is skipped as bad data and the run says it succeeded.
 */
async function checkViewColumns(knex: Knex, rules: Rules, view: string): Promise<void> {
  const name = qualified(rules.source, view);
  const columns = (await columnTypes(knex, rules.source, [view])).get(view);
  if (!columns) return; // not there: the table check says so
  const where = rules.locate?.(['source', 'view']) ?? 'source.view';
  const missing = VIEW_COLUMNS.filter((c) => !columns.some((has) => has.name === c));
  if (missing.length > 0) {
    throw new UsageError(
      `${where}: view "${name}" has no ${missing.length === 1 ? 'column' : 'columns'} ${quotedList(missing)}; a signal view yields ${VIEW_COLUMNS.join(', ')}, and this one has ${columns.map((c) => c.name).join(', ')}.`,
    );
  }
  const wrong = VIEW_COLUMNS.flatMap((column) => {
    const kind = VIEW_KINDS[column];
    const type = columns.find((c) => c.name === column);
    return kind && type && !KINDS[kind].fits(type)
      ? [`column "${column}" is ${type.type} and needs to be ${KINDS[kind].says}`]
      : [];
  });
  if (wrong.length > 0) {
    throw new UsageError(
      `${where}: view "${name}" cannot be read as signals: ${wrong.join(', ')}; cast ${wrong.length === 1 ? 'it' : 'them'} in the view.`,
    );
  }
}

/** "a", "b" and "c". */
function quotedList(names: readonly string[]): string {
  const quoted = names.map((n) => `"${n}"`);
  return quoted.length === 1 ? (quoted[0] ?? '') : `${quoted.slice(0, -1).join(', ')} and ${quoted.at(-1)}`;
}

/** The columns of each table (by its name in the mapping) with their types; none for a missing table. */
async function columnTypes(
  knex: Knex,
  mapping: SourceMapping,
  tables: string[],
): Promise<Map<string, ColumnType[] | null>> {
  const { rows } = await knex.raw<{ rows: { t: string; columns: ColumnType[] | null }[] }>(
    `select t, (select json_agg(json_build_object('name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                                                   'base', format_type(coalesce(nullif(ty.typbasetype, 0), a.atttypid), null),
                                                   'category', ty.typcategory) order by a.attnum)
                  from pg_attribute a join pg_type ty on ty.oid = a.atttypid
                 where a.attrelid = to_regclass(r) and a.attnum > 0 and not a.attisdropped) as columns
       from unnest(?::text[], ?::text[]) as x(t, r)`,
    [tables, tables.map((t) => regclassText(qualified(mapping, t)))],
  );
  return new Map(rows.map((r) => [r.t, r.columns]));
}

interface ColumnType {
  name: string;
  type: string;
  /** The type a domain is over (the type itself for any other). */
  base: string;
  category: string;
}

/**
 * The customers' key must name one account: with two rows of one key (a key column without a unique
 * index), the page that holds both fails its write ("ON CONFLICT DO UPDATE command cannot affect
 * row a second time") after the pages before it committed. Looked for (a scan of the key column)
 * only when no unique index covers the key alone; refused before the run opens.
 */
export async function checkUniqueKey(knex: Knex, rules: Rules): Promise<void> {
  const m = rules.source;
  if (m.view) return;
  const table = qualified(m, m.customers.table);
  const where = () =>
    rules.locate?.(['source', 'customers', 'key']) ?? 'source.customers.key (the default mapping)';
  // A row without a key cannot be paged to (keyset pages compare keys) nor recorded: a page holding
  // one read as empty, and a run passed over its accounts saying it succeeded. Only looked for where
  // the column may hold nulls (a primary key cannot).
  const nullable = await knex.raw<{ rows: { nulls: string | null }[] }>(
    `select case when not a.attnotnull then (select count(*) from ${knex.raw('??', [table]).toQuery()} where ${knex.raw('??', [m.customers.key]).toQuery()} is null) end as nulls
       from pg_attribute a where a.attrelid = to_regclass(?) and a.attname = ?`,
    [regclassText(table), m.customers.key],
  );
  const nulls = Number(nullable.rows[0]?.nulls ?? 0);
  if (nulls > 0) {
    throw new UsageError(
      `${where()}: column "${m.customers.key}" of table "${table}" is null in ${nulls} row(s), and an account without a key cannot be paged through or recorded; fill in those keys, or map a column every customer has (a primary key).`,
    );
  }
  const unique = await knex.raw<{ rows: unknown[] }>(
    `select 1 from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = i.indkey[0]
      where i.indrelid = to_regclass(?) and i.indisunique and i.indnkeyatts = 1 and i.indpred is null
        and a.attname = ?`,
    [regclassText(table), m.customers.key],
  );
  if (unique.rows.length > 0) return;
  const { rows } = await knex.raw<{ rows: { key: string }[] }>(
    'select ??::text as key from ?? group by 1 having count(*) > 1 order by 1 limit 3',
    [m.customers.key, table],
  );
  if (rows.length === 0) return;
  throw new UsageError(
    `${where()}: column "${m.customers.key}" of table "${table}" names more than one row for ${rows
      .map((r) => JSON.stringify(r.key))
      .join(
        ', ',
      )}${rows.length === 3 ? ' (and maybe more)' : ''}; map a column that is unique for each customer (a primary key), or remove the duplicates.`,
  );
}
