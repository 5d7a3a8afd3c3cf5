import type { Knex } from 'knex';
import { qualified, regclassText } from '../source/signals';
import { UsageError, errorMessage } from '../errors';
import { driverMessage } from '../db/connection';
import type { Rules, SourceMapping } from '../types';
import type { HostColumnChange } from '../engine/plan';
import { groupBy } from '../collections';

/**
 * Writes the mapped host columns the rules name in `set` actions (e.g. customers.status), one
 * statement per column for the whole page, and returns the values they held before (as text), so
 * history can record them and a clear can restore them. Consent columns are refused at load time.
 * A change with `expected` is written only while the column still holds that value (the one suspend
 * set): a value the host wrote since (an account closed meanwhile) is the host's, and stays.
 */

/**
 * A type as format_type() writes it, to be cast to: a built-in (`character varying(10)`,
 * `timestamp(0) with time zone`, `numeric(12,2)`) or a type of the host's own, qualified and quoted
 * where its name needs it (an enum `"Billing".cust_status` outside the search path, `"Status"`).
 */
const TYPE_NAME = '(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")';
const SAFE_TYPE = new RegExp(
  `^(?:${TYPE_NAME}\\.)?${TYPE_NAME}(?:\\(\\d+(?:,\\d+)?\\))?(?: [a-z]+(?:\\(\\d+\\))?)*(?:\\[\\])?$`,
  'i',
);

/** Column types from the catalog, so text parameters can be cast back to the column's own type. */
export async function columnTypes(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  columns: string[],
): Promise<Map<string, string>> {
  const table = qualified(mapping, mapping.customers.table);
  const result = await knex.raw<{ rows: { name: string; type: string }[] }>(
    `select attname as name, format_type(atttypid, atttypmod) as type
       from pg_attribute where attrelid = to_regclass(?) and attnum > 0 and not attisdropped and attname = any(?::text[])`,
    [regclassText(table), columns],
  );
  const types = new Map(result.rows.map((r) => [r.name, r.type]));
  for (const c of columns) {
    const t = types.get(c);
    if (!t) throw new Error(`column "${c}" of table ${table} does not exist`);
    if (!SAFE_TYPE.test(t)) throw new Error(`column "${c}" of table ${table} has an unsupported type ${t}`);
  }
  return types;
}

/**
 * Where the rules file writes a `set` action's column: in the defaults' stage, or, for a value an
 * organization's override gives (the defaults' stage does not set it so), in that override's ladder
 * of the policy (its stages are merged by name, so the override's own list position is not the
 * ladder's). Undefined without a file.
 */
function setActionPlace(
  rules: Rules,
  orgId: string | null,
  policy: string,
  stage: string,
  column: string,
  value: unknown,
  action: number,
): string | undefined {
  if (!rules.locate) return undefined;
  const own = rules.defaults.policies.find((p) => p.name === policy)?.stages.find((s) => s.name === stage);
  const inDefaults = own?.actions.findIndex(
    (a) => a.type === 'set' && Object.hasOwn(a.columns, column) && a.columns[column] === value,
  );
  if (own && inDefaults !== undefined && inDefaults >= 0)
    return rules.locate(['policies', policy, 'stages', own.index, 'actions', inDefaults, 'set', column]);
  if (orgId === null)
    return rules.locate(['policies', policy, 'stages', own?.index ?? 0, 'actions', action, 'set', column]);
  return rules.locate(['organizations', orgId, 'policies', policy, 'stages']);
}

/**
 * With a signal view, the customers table is read only by `set` actions, which find each account's
 * row by source.customers.key (no other check reads it): a table or key column that is not there
 * is refused at its place in the rules file, not found by the first page's write after the run
 * opened (a backfill left interrupted, "unexpected failure").
 */
async function checkSetTarget(knex: Knex, rules: Rules): Promise<void> {
  const c = rules.source.customers;
  const table = qualified(rules.source, c.table);
  const { rows } = await knex.raw<{ rows: { table: boolean; key: boolean; columns: string[] | null }[] }>(
    `select to_regclass(?) is not null as table,
            exists (select 1 from pg_attribute where attrelid = to_regclass(?) and attname = ? and attnum > 0 and not attisdropped) as key,
            array(select attname::text from pg_attribute where attrelid = to_regclass(?) and attnum > 0 and not attisdropped order by attnum) as columns`,
    [regclassText(table), regclassText(table), c.key, regclassText(table)],
  );
  const found = rows[0];
  const at = (key: string) =>
    rules.locate?.(['source', 'customers', key]) ?? `source.customers.${key} (the default mapping)`;
  if (!found?.table) {
    throw new UsageError(
      `${at('table')}: table "${table}" does not exist in this database, and the set actions write its columns (with a signal view too); name the table that holds the customers.`,
    );
  }
  if (!found.key) {
    throw new UsageError(
      `${at('key')}: table "${table}" has no column "${c.key}", by which the set actions find the row of each of the view's keys; name one of its columns (${(found.columns ?? []).join(', ')}).`,
    );
  }
}

/**
 * Refuses, before a run starts, `set` actions that name a column the customers table lacks (or one
 * of a type suspend cannot write), or give a value the column cannot take (`suspended` for a boolean,
 * null for a NOT NULL column): one sentence naming the policy and stage, exit 2. Found only when a
 * page was written, the run would stop part way.
 */
export async function checkSetColumns(knex: Knex, rules: Rules): Promise<void> {
  const named = new Map<string, string>();
  /** Where the file writes a column's first set action: `rules.yaml:131 policies.…`. */
  const located = new Map<string, string>();
  const values: { column: string; value: string | null; where: string; at?: string }[] = [];
  for (const effective of [rules.defaults, ...Object.values(rules.organizations)]) {
    for (const policy of effective.policies)
      for (const stage of policy.stages)
        for (const [i, action] of stage.actions.entries())
          if (action.type === 'set')
            for (const [column, value] of Object.entries(action.columns)) {
              const where = `policy ${policy.name}, stage ${stage.name}${effective.orgId === null ? '' : ` of organization ${effective.orgId}`}`;
              if (!named.has(column)) named.set(column, where);
              const at = setActionPlace(rules, effective.orgId, policy.name, stage.name, column, value, i);
              if (at !== undefined && !located.has(column)) located.set(column, at);
              // As the page writes it (see hostColumnChange).
              values.push({
                column,
                value: value === null ? null : String(value),
                where,
                ...(at ? { at } : {}),
              });
            }
  }
  if (named.size === 0) return;
  if (rules.source.view) await checkSetTarget(knex, rules);
  let types: Map<string, string>;
  try {
    types = await columnTypes(knex, rules.source, [...named.keys()]);
  } catch (err) {
    // The column as columnTypes names it, quotes and all (a name may hold one).
    const column = [...named.keys()].find((c) => errorMessage(err).startsWith(`column "${c}" of`));
    const where = column === undefined ? '' : ` (${named.get(column)})`;
    const at = column === undefined ? undefined : located.get(column);
    throw new UsageError(
      at
        ? `${at}: a set action${where} cannot be applied: ${errorMessage(err)}; name a column of that table.`
        : `A set action${where} cannot be applied: ${errorMessage(err)}; name a column of that table in the rules file (${rules.file ?? 'rules'}).`,
    );
  }
  const table = qualified(rules.source, rules.source.customers.table);
  const notNull = new Set(
    (
      await knex.raw<{ rows: { name: string }[] }>(
        `select attname as name from pg_attribute
          where attrelid = to_regclass(?) and attnum > 0 and not attisdropped and attnotnull and attname = any(?::text[])`,
        [regclassText(table), [...named.keys()]],
      )
    ).rows.map((r) => r.name),
  );
  // Each distinct value once; usually one statement for them all.
  const seen = new Set<string>();
  const distinct = values.filter((v) => {
    const id = `${v.column}\u0000${v.value ?? '\u0001'}`;
    return seen.has(id) ? false : (seen.add(id), true);
  });
  const refuse = ({ column, where, at }: (typeof values)[number], why: string) =>
    new UsageError(
      at
        ? `${at}: a set action (${where}) cannot be applied: column "${column}" of ${table} is ${types.get(column)}, and ${why}; give a value it can take.`
        : `A set action (${where}) cannot be applied: column "${column}" of ${table} is ${types.get(column)}, and ${why}; give a value it can take in the rules file (${rules.file ?? 'rules'}).`,
    );
  const nullInto = distinct.find((v) => v.value === null && notNull.has(v.column));
  if (nullInto) throw refuse(nullInto, 'it is NOT NULL, so null cannot be written');
  const given = distinct.filter((v) => v.value !== null);
  if (given.length === 0) return;
  // The casts the page's UPDATE makes (types are the catalog's, checked by columnTypes), back to
  // text: a character type of a set length cuts a longer value short where the others refuse it.
  const cast = (v: (typeof values)[number], i: number) => `?::text::${types.get(v.column)}::text as v${i}`;
  let back: Record<string, string>;
  try {
    back = (
      await knex.raw<{ rows: Record<string, string>[] }>(
        `select ${given.map(cast).join(', ')}`,
        given.map((v) => v.value),
      )
    ).rows[0]!;
  } catch {
    // Which one: each alone.
    for (const v of given) {
      try {
        await knex.raw(`select ${cast(v, 0)}`, [v.value]);
      } catch (err) {
        throw refuse(
          v,
          `${JSON.stringify(v.value)} is not one of its values (${driverMessage(errorMessage(err))})`,
        );
      }
    }
    throw new Error('a set value failed its cast, then passed it alone');
  }
  given.forEach((v, i) => {
    const stored = back[`v${i}`];
    if (/^(character|char|varchar|bpchar)/.test(types.get(v.column) ?? '') && stored !== v.value)
      throw refuse(v, `${JSON.stringify(v.value)} would be stored cut short, as ${JSON.stringify(stored)}`);
  });
}

export async function writeHostColumns(
  trx: Knex.Transaction,
  mapping: SourceMapping,
  changes: HostColumnChange[],
  /** Column types already looked up (a run keeps one per run: one catalog query, not one per page). */
  known: Map<string, string> = new Map(),
): Promise<Map<string, Record<string, string | null>>> {
  const old = new Map<string, Record<string, string | null>>();
  if (changes.length === 0) return old;
  const byColumn = groupBy(changes, (c) => c.column);
  const c = mapping.customers;
  const missing = [...byColumn.keys(), c.key].filter((column) => !known.has(column));
  if (missing.length > 0)
    for (const [column, type] of await columnTypes(trx, mapping, missing)) known.set(column, type);
  const types = known;
  const table = qualified(mapping, c.table);
  for (const [column, rows] of byColumn) {
    // Joining the table again as "before" yields each row's value as it was before this UPDATE.
    // The key list also goes in as an array the planner cannot count, so it looks the rows up by
    // key instead of hashing the whole table (which a list of a thousand keys otherwise gets).
    const keyType = types.get(c.key) as string;
    // Rows with an expected value also carry it (a backfill's captures carry none: no third array).
    const guarded = rows.some((r) => r.expected !== undefined);
    const result = await trx.raw<{ rows: { key: string; old: string | null }[] }>(
      `with x as materialized (select * from unnest(?::text[], ?::text[]${guarded ? ', ?::text[], ?::boolean[]' : ''}) as x(k, v${guarded ? ', e, g' : ''}))
       update ?? as t set ?? = x.v::${types.get(column)}
         from x, ?? as before
        where t.?? = x.k::${keyType} and before.?? = t.??
          and t.?? = any(array(select k::${keyType} from x))
          ${guarded ? `and (not x.g or before.?? is not distinct from x.e::${types.get(column)})` : ''}
        returning t.??::text as key, before.??::text as old`,
      [
        rows.map((r) => r.key),
        rows.map((r) => r.value) as Knex.Value,
        ...(guarded
          ? [
              rows.map((r) => r.expected ?? null) as Knex.Value,
              rows.map((r) => r.expected !== undefined) as Knex.Value,
            ]
          : []),
        table,
        column,
        table,
        c.key,
        c.key,
        c.key,
        c.key,
        ...(guarded ? [column] : []),
        c.key,
        column,
      ],
    );
    for (const r of result.rows) old.set(r.key, { ...old.get(r.key), [column]: r.old });
  }
  return old;
}
