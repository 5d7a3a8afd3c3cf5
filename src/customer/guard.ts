import type { Knex } from 'knex';
import { requireMigrated } from '../db/migrate';
import { UsageError } from '../errors';
import { regclassText } from '../source/signals';

/**
 * The booking guard: a BEFORE INSERT FOR EACH ROW trigger on the host's bookings table that runs
 * `<schema>.booking_guard('<customer column>')` (migration 20261123000200). A customer whose state
 * blocks booking gets SQLSTATE SP001 with the stage's message, and the next step as HINT. The DDL is
 * built by Postgres' format('%I') and run as is: trigger DDL takes no parameters.
 */

export const GUARD_TRIGGER = 'suspend_booking_guard';

export interface GuardTarget {
  schema: string;
  table: string;
}

export interface InstalledGuard {
  trigger: string;
  schema: string;
  table: string;
  customerColumn: string;
  enabled: boolean;
}

/** One sentence when the table or the column is not there. */
async function checkTarget(knex: Knex, target: GuardTarget, column: string | null): Promise<void> {
  const r = await knex.raw<{ rows: { rel: string | null; has_column: boolean }[] }>(
    `select c.oid::regclass::text as rel,
            exists (select 1 from pg_attribute a
                     where a.attrelid = c.oid and a.attname = ? and a.attnum > 0 and not a.attisdropped) as has_column
       from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = ? and c.relname = ? and c.relkind in ('r', 'p')`,
    [column ?? '', target.schema, target.table],
  );
  const found = r.rows[0];
  if (!found) {
    throw new UsageError(
      `There is no table "${target.schema}"."${target.table}" in this database; pass --table (and --schema) of the table that holds the bookings.`,
    );
  }
  if (column !== null && !found.has_column) {
    throw new UsageError(
      `Table "${target.schema}"."${target.table}" has no column "${column}"; pass --customer-column with the column that holds the customer key.`,
    );
  }
}

/** A column's type and its type category (pg_type.typcategory: N numbers, S text, D days...). */
async function typeOf(
  knex: Knex,
  table: string,
  column: string,
): Promise<{ type: string; category: string } | null> {
  const r = await knex.raw<{ rows: { type: string; category: string }[] }>(
    `select format_type(a.atttypid, a.atttypmod) as type, t.typcategory as category
       from pg_attribute a join pg_type t0 on t0.oid = a.atttypid
       join pg_type t on t.oid = coalesce(nullif(t0.typbasetype, 0), a.atttypid)
      where a.attrelid = to_regclass(?) and a.attname = ? and a.attnum > 0 and not a.attisdropped`,
    [table, column],
  );
  return r.rows[0] ?? null;
}

/**
 * The guard compares the column with the customers' key as text: a column of another kind (a
 * timestamp, a boolean) never equals a key, so the guard would block nobody.
 */
async function checkComparable(
  knex: Knex,
  target: GuardTarget,
  column: string,
  key: { table: string; column: string; name: string },
): Promise<void> {
  const [theirs, ours] = await Promise.all([
    typeOf(knex, regclassText(`${target.schema}.${target.table}`), column),
    typeOf(knex, key.table, key.column),
  ]);
  if (!theirs || !ours || theirs.category === ours.category) return;
  throw new UsageError(
    `Column "${column}" of "${target.schema}"."${target.table}" is ${theirs.type}, and it must hold the customers' key (source.customers.key: "${key.column}" of ${key.name}, ${ours.type}): the guard would block nobody; pass --customer-column with the column that holds the customer key.`,
  );
}

export async function installGuard(
  knex: Knex,
  suspendSchema: string,
  target: GuardTarget,
  customerColumn: string,
  /** The customers' key, to check the column can hold one (none: not checked). */
  key?: { table: string; column: string; name: string },
): Promise<InstalledGuard> {
  await requireMigrated(knex, suspendSchema);
  await checkTarget(knex, target, customerColumn);
  if (key) await checkComparable(knex, target, customerColumn, key);
  const ddl = await knex.raw<{ rows: { sql: string }[] }>(
    `select format('create or replace trigger %I before insert on %I.%I for each row execute function %I.booking_guard(%L)',
                   ?::text, ?::text, ?::text, ?::text, ?::text) as sql`,
    [GUARD_TRIGGER, target.schema, target.table, suspendSchema, customerColumn],
  );
  await knex.raw(ddl.rows[0]?.sql as string);
  const installed = (await listGuards(knex, suspendSchema)).find(
    (g) => g.schema === target.schema && g.table === target.table,
  );
  if (!installed) throw new Error('the booking guard trigger was not found after it was created');
  return installed;
}

/** Removes the guard from one table, or from every table when `target` is null; returns what it removed. */
export async function removeGuards(
  knex: Knex,
  suspendSchema: string,
  target: GuardTarget | null,
): Promise<InstalledGuard[]> {
  const installed = await listGuards(knex, suspendSchema);
  const chosen = target
    ? installed.filter((g) => g.schema === target.schema && g.table === target.table)
    : installed;
  if (target && chosen.length === 0) {
    await checkTarget(knex, target, null);
    throw new UsageError(
      `Table "${target.schema}"."${target.table}" has no booking guard; \`suspend guard status\` lists the guarded tables.`,
    );
  }
  for (const g of chosen) {
    const ddl = await knex.raw<{ rows: { sql: string }[] }>(
      `select format('drop trigger if exists %I on %I.%I', ?::text, ?::text, ?::text) as sql`,
      [g.trigger, g.schema, g.table],
    );
    await knex.raw(ddl.rows[0]?.sql as string);
  }
  return chosen;
}

/**
 * Every trigger that runs suspend's booking_guard(), whatever its name. On a partitioned table
 * Postgres clones the trigger onto each partition (`tgparentid` names the original): those go with
 * the parent's and are not listed.
 */
export async function listGuards(knex: Knex, suspendSchema: string): Promise<InstalledGuard[]> {
  const r = await knex.raw<{
    rows: { trigger: string; schema: string; table: string; column: string | null; enabled: boolean }[];
  }>(
    `select t.tgname as trigger, n.nspname as schema, c.relname as "table",
            (string_to_array(encode(t.tgargs, 'escape'), '\\000'))[1] as column,
            t.tgenabled <> 'D' as enabled
       from pg_trigger t
       join pg_class c on c.oid = t.tgrelid
       join pg_namespace n on n.oid = c.relnamespace
       join pg_proc p on p.oid = t.tgfoid
       join pg_namespace pn on pn.oid = p.pronamespace
      where p.proname = 'booking_guard' and pn.nspname = ? and not t.tgisinternal and t.tgparentid = 0
      order by 2, 3`,
    [suspendSchema],
  );
  return r.rows.map((g) => ({
    trigger: g.trigger,
    schema: g.schema,
    table: g.table,
    customerColumn: g.column ?? '',
    enabled: g.enabled,
  }));
}
