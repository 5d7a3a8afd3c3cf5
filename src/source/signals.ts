import type { Knex } from 'knex';
import { runPrepared } from '../db/prepared';
import { candidatePredicate } from './candidates';
import type { PageState, StoredState } from './states';
import type { IsoDate, Rules, Signals, SourceMapping } from '../types';

/**
 * SQL builders for reading accounts and their signals. The real run, the dry run and the race
 * re-check all use these same builders, so a dry run reads exactly what a real run would.
 *
 * Signal definitions (the contract, see README "Signals"):
 * - an invoice's effective due day is `due_on + net_terms_days`; it is overdue on every day after it
 *   until the day it is fully paid (`paid_on`), exclusive: paid on day D means not overdue on day D;
 * - an invoice that owes nothing (amount not above what was paid, or not above zero) is never overdue;
 * - the account is past due on a day when at least one invoice is overdue that day; the streak is the
 *   unbroken run of past-due days that includes as-of (a day with nothing overdue ends it; a partial
 *   payment does not). `past_due_since` is the effective due day just before the streak's first
 *   day, so "N days past due" = as-of − past_due_since, the same count as an invoice's days overdue;
 * - as-of in the past: an invoice paid after as-of counts as unpaid in full on as-of.
 */

/** Net terms beyond a century are not terms but bad data (and far enough out overflow a date). */
const MAX_NET_TERMS_DAYS = 36500;

/** Why an account was skipped instead of judged (the run counts them by these). */
export const SKIP_REASONS = {
  netTerms: `net terms out of range (more than ${MAX_NET_TERMS_DAYS} days either way)`,
  balance: 'balance too large to count in cents (over 2^53)',
  fraction: 'amounts with a fraction of a cent (a numeric amount column holding 10.5)',
} as const;

export function qualified(mapping: SourceMapping, table: string): string {
  return mapping.schema ? `${mapping.schema}.${table}` : table;
}

/** A qualified name as SQL text for `to_regclass()`, which reads names as SQL does: each part quoted. */
export function regclassText(name: string): string {
  return name
    .split('.')
    .map((p) => `"${p.replace(/"/g, '""')}"`)
    .join('.');
}

/** The table that lists the accounts, with its key and organization columns (unqualified). */
export function accountList(mapping: SourceMapping): { table: string; key: string; org: string } {
  // With a signal view, the view is the list of accounts: its `key` and `org_id` columns.
  return mapping.view
    ? { table: mapping.view, key: 'key', org: 'org_id' }
    : { table: mapping.customers.table, key: mapping.customers.key, org: mapping.customers.org };
}

/** Which of `orgs` (the --org values) have no account at all: most likely a mistyped id. */
export async function orgsWithoutAccounts(
  knex: Knex,
  mapping: SourceMapping,
  orgs: string[],
): Promise<string[]> {
  const list = accountList(mapping);
  const r = await knex.raw<{ rows: { org: string }[] }>(
    `select o.org from unnest(?::text[]) with ordinality as o(org, n)
      where not exists (select 1 from ?? a where a.??::text = o.org) order by o.n`,
    [orgs, qualified(mapping, list.table), list.org],
  );
  return r.rows.map((row) => row.org);
}

/**
 * The number `--shard I/N` takes modulo N: the key's text hash, made positive. As a bigint, since
 * abs() of the one int hash -2^31 has no int (every shard run would fail on such a key).
 */
function shardOf(key: string): string {
  return `abs(hashtext(${key}::text)::bigint)`;
}

function filterAccounts(
  q: Knex.QueryBuilder,
  column: { key: string; org: string },
  filter: { orgs?: string[] | null; shard?: { index: number; count: number } | null },
): Knex.QueryBuilder {
  if (filter.orgs && filter.orgs.length > 0)
    q.whereRaw('??::text = any(?::text[])', [column.org, filter.orgs]);
  if (filter.shard && filter.shard.count > 1) {
    q.whereRaw(`${shardOf('??')} % ? = ?`, [column.key, filter.shard.count, filter.shard.index]);
  }
  return q;
}

/**
 * Accounts, in key order, at the given ranks (0-based) after `range.after` (up to `range.until`), with
 * the run's filters: where N workers split the key space (page ends, evenly spaced, use
 * pageEndsQuery). One index scan in key order that stops at the highest rank; fewer rows when fewer
 * accounts remain.
 */
export function keysAtRanksQuery(
  knex: Knex,
  mapping: SourceMapping,
  filter: { orgs?: string[] | null; shard?: { index: number; count: number } | null },
  ranks: number[],
  range: { after: string | null; until: string | null } = { after: null, until: null },
): Knex.QueryBuilder {
  const c = accountList(mapping);
  // Not aliased `key`: the key column of a signal view is named key, and `order by key` would then
  // sort by the text alias (the limit keeping the wrong rows) instead of the column.
  const listed = knex
    .select(
      knex.raw('??::text as suspend_key', [c.key]),
      knex.raw('row_number() over (order by ??) - 1 as rank', [c.key]),
    )
    .from(qualified(mapping, c.table));
  if (range.after !== null) listed.where(c.key, '>', range.after);
  if (range.until !== null) listed.where(c.key, '<=', range.until);
  const numbered = filterAccounts(listed.orderBy(c.key).limit(Math.max(0, ...ranks) + 1), c, filter);
  return knex
    .select('suspend_key as key')
    .from(numbered.as('n'))
    .whereRaw('rank = any(?::bigint[])', [ranks])
    .orderBy('rank');
}

/**
 * Where the next `count` pages of `pageSize` accounts end after `range.after` (up to `range.until`),
 * with the run's filters: fewer keys when fewer full pages remain. Each end is found from the one
 * before it (skip pageSize - 1 keys, take one), in one recursive statement: the same keys as
 * keysAtRanksQuery at ranks pageSize - 1, 2·pageSize - 1..., without numbering every key by a window
 * (1M sweep after a backfill: 16 ms -> 5 ms per eight pages, most keys' rows fetched for visibility).
 */
export function pageEndsQuery(
  knex: Knex,
  mapping: SourceMapping,
  filter: { orgs?: string[] | null; shard?: { index: number; count: number } | null },
  pageSize: number,
  count: number,
  range: { after: string | null; until: string | null },
): Knex.Raw {
  const c = accountList(mapping);
  const key = `a.${c.key}`;
  /** The end of the page after `lower` (null: from the first account). */
  const end = (lower: Knex.Ref<string, object> | string | null) => {
    const q = knex.select(key).from(`${qualified(mapping, c.table)} as a`);
    if (lower !== null) q.where(key, '>', lower);
    if (range.until !== null) q.where(key, '<=', range.until);
    return filterAccounts(q, { key, org: `a.${c.org}` }, filter)
      .orderBy(key)
      .offset(pageSize - 1)
      .limit(1);
  };
  return knex.raw(
    `with recursive suspend_ends (suspend_n, suspend_end) as (
       select 1, (?)
       union all
       select suspend_n + 1, (?) from suspend_ends where suspend_n < ? and suspend_end is not null)
     select suspend_end::text as key from suspend_ends where suspend_end is not null order by suspend_n`,
    [end(range.after), end(knex.ref('suspend_ends.suspend_end')), count],
  );
}

/** How many accounts a run covers. */
export function countAccountsQuery(
  knex: Knex,
  mapping: SourceMapping,
  filter: { orgs?: string[] | null; shard?: { index: number; count: number } | null },
): Knex.QueryBuilder {
  const c = accountList(mapping);
  return filterAccounts(
    knex.from(qualified(mapping, c.table)).select(knex.raw('count(*)::bigint as n')),
    c,
    filter,
  );
}

/**
 * Which accounts a signal query covers: a key range (tests, tools), a list of keys (the re-check,
 * see KeysScope), or a keyset page (see PageScope).
 */
export type SignalScope = { from: string; to: string; orgs?: string[] | null } | KeysScope | PageScope;

/** Named accounts, with their states and exclusions read in the same statement when `state` is given. */
export interface KeysScope {
  keys: string[];
  state?: StateTables | null;
}

/**
 * The next keyset page: the first `limit` accounts in key order after `after` (up to `until`) with
 * the run's filters. The query also says how many accounts the page held and its last key, so one
 * statement per page both advances the walk and reads it.
 */
export interface PageScope {
  /** Exclusive lower bound (the last key of the previous page), null for the first page. */
  after: string | null;
  /** Inclusive upper bound of the key range this walk covers (a worker's range), null for the end. */
  until: string | null;
  /** At most this many accounts; null: every account up to `until` (a page whose end was found first). */
  limit: number | null;
  orgs?: string[] | null;
  /** `--shard I/N`: keep keys whose hash falls in this shard. */
  shard?: { index: number; count: number } | null;
  /**
   * suspend's own tables to read each account's states and exclusion from, in the same statement
   * (null before the first migrate).
   */
  state?: StateTables | null;
  /** Leave out the accounts no rule can touch (see source/candidates.ts): the rules to test. */
  candidates?: Rules | null;
}

/** suspend's own tables as a run found them when it started. */
export interface StateTables {
  schema: string;
  /** account_states has rows: a page's accounts may have states. */
  states: boolean;
  /** exclusions has live rows. */
  exclusions: boolean;
  /**
   * A page reads its accounts' states as one range of account_states_key_number (see KEY_NUMBER):
   * the accounts' keys are whole numbers (an integer key column) and the index is there.
   */
  keyNumbers: boolean;
}

/**
 * account_states' key as a number, or null when it is not a whole number: the expression of the
 * index account_states_key_number (migrations/20261201000100), repeated exactly so the planner
 * uses it. `s` is the table's alias.
 */
const KEY_NUMBER = "(case when s.customer_key ~ '^-{0,1}[0-9]+$' then s.customer_key::numeric end)";

const INTEGER_TYPES = ['smallint', 'integer', 'bigint'];

/**
 * Whether suspend's tables hold anything a page must read, once per run. A run's own writes never
 * concern a later page of it (pages are disjoint), so what was empty at the start stays so for it.
 */
export async function stateTables(knex: Knex, schema: string, mapping: SourceMapping): Promise<StateTables> {
  const result = await knex.raw<{ rows: { states: boolean; exclusions: boolean; key_numbers: boolean }[] }>(
    `select exists (select 1 from ??) as states,
            exists (select 1 from ?? where removed_at is null) as exclusions,
            to_regclass(?) is not null
              and (select format_type(atttypid, null) from pg_attribute
                    where attrelid = to_regclass(?) and attname = ? and attnum > 0 and not attisdropped)
                  = any(?::text[]) as key_numbers`,
    [
      `${schema}.account_states`,
      `${schema}.exclusions`,
      regclassText(`${schema}.account_states_key_number`),
      // A signal view's keys are read from the view: left to probes.
      mapping.view ? null : regclassText(qualified(mapping, mapping.customers.table)),
      mapping.customers.key,
      INTEGER_TYPES,
    ],
  );
  const row = result.rows[0];
  return {
    schema,
    states: row?.states ?? true,
    exclusions: row?.exclusions ?? true,
    keyNumbers: row?.key_numbers ?? false,
  };
}

export interface SignalRow {
  key: string;
  org_id: string | null;
  created_on: string | null;
  last_activity_on: string | null;
  open_balance: string | null;
  overdue_balance: string | null;
  unpaid_count: string | null;
  oldest_overdue_days: number | null;
  oldest_overdue_id: string | null;
  oldest_overdue_unpaid: string | null;
  past_due_since: string | null;
  active_subscriptions: string | null;
  net_terms_days: number | null;
  /** Why the account cannot be judged (see SKIP_REASONS); not columns of a signal view. */
  bad_terms?: boolean;
  huge_balance?: boolean;
  flags: string[] | null;
  name: string | null;
  email: string | null;
}

/**
 * Which groups of signals to compute; a group no rule, message or exclusion uses can be left out
 * (see `signalsUsed`). Left out, its signals read as never active / nothing owed / no subscription.
 */
export interface SignalNeeds {
  activity: boolean;
  invoices: boolean;
  /** The oldest overdue invoice (its id, amount and days), within the invoice signals. */
  oldestInvoice: boolean;
  subscriptions: boolean;
}

export const ALL_SIGNALS: SignalNeeds = {
  activity: true,
  invoices: true,
  oldestInvoice: true,
  subscriptions: true,
};

/**
 * One set-based query per page: customers of the page joined to page-bounded aggregates of
 * activity, invoices and subscriptions (a GROUP BY bounded to the page's key range beat LATERAL
 * joins by 1.4x when measured; per-row queries are out). For a keyset page the first row also
 * carries the page's size and last key (`page_size`, `page_last`), with no signals when no account
 * of the page is a candidate.
 */
export function signalsQuery(
  knex: Knex,
  mapping: SourceMapping,
  asOf: IsoDate,
  scope: SignalScope,
  needs: SignalNeeds = ALL_SIGNALS,
): Knex.Raw {
  if (mapping.view) return viewSignalsQuery(knex, mapping, asOf, scope);
  const c = mapping.customers;
  // Placeholders are positional: every fragment binds its values in the order it appears in the SQL.
  const bindings: Knex.RawBinding[] = [];
  const b = (v: Knex.RawBinding) => {
    bindings.push(v);
    return '?';
  };
  // Identifiers from the mapping are quoted by knex and inlined; values stay positional parameters.
  const id = (name: string) => knex.raw('??', [name]).toQuery();
  const page = 'limit' in scope ? scope : null;
  /** Rows of another table that belong to the page's accounts. */
  const inScope = (column: string) => {
    // The page's keys, which the planner does not count: it probes the indexes instead of scanning
    // whole tables for a long list.
    if ('keys' in scope) return `${id(column)} = any(array(select k from page))`;
    if ('from' in scope) return `${id(column)} >= ${b(scope.from)} and ${id(column)} <= ${b(scope.to)}`;
    return pageRange(id(column), scope.after, b);
  };
  const key = id(`c.${c.key}`);
  const accounts = (): string => {
    if ('keys' in scope) return `${key} = any(${b(scope.keys)})`; // the array's type is inferred from the column's
    const where: string[] = [];
    if ('from' in scope) where.push(`${key} >= ${b(scope.from)}`, `${key} <= ${b(scope.to)}`);
    else {
      if (scope.after !== null) where.push(`${key} > ${b(scope.after)}`);
      if (scope.until !== null) where.push(`${key} <= ${b(scope.until)}`);
      if (scope.shard && scope.shard.count > 1)
        where.push(`${shardOf(key)} % ${b(scope.shard.count)} = ${b(scope.shard.index)}`);
    }
    if (scope.orgs && scope.orgs.length > 0)
      where.push(`${id(`c.${c.org}`)}::text = any(${b(scope.orgs)}::text[])`);
    return where.length > 0 ? where.join(' and ') : 'true';
  };

  const flagNames = Object.keys(c.flags);
  const flagExpr =
    flagNames.length === 0
      ? "'{}'::text[]"
      : `array_remove(array[${flagNames.map((f) => `case when ${id(`c.${c.flags[f]}`)} then ${b(f)}::text end`).join(', ')}], null)`;

  const parts: string[] = [];
  parts.push(`page as (
    select ${key} as k, ${id(`c.${c.org}`)}::text as org_id,
           ${c.createdAt ? `${id(`c.${c.createdAt}`)}::date` : 'null::date'} as created_on,
           ${c.netTermsDays ? `case when abs(coalesce(${id(`c.${c.netTermsDays}`)}, 0)) <= ${MAX_NET_TERMS_DAYS} then coalesce(${id(`c.${c.netTermsDays}`)}, 0)::int end` : '0'} as net_terms_days,
           ${flagExpr} as flags,
           ${c.name ? `${id(`c.${c.name}`)}::text` : 'null::text'} as name,
           ${c.email ? `${id(`c.${c.email}`)}::text` : 'null::text'} as email
      from ${id(qualified(mapping, c.table))} as c
     where ${accounts()}${page ? `\n     order by ${key}${page.limit === null ? '' : ` limit ${b(page.limit)}`}` : ''})`);
  if (page) parts.push(PAGE_BOUNDS);

  const asOfDate = () => `${b(asOf)}::date`;
  const activity = needs.activity ? mapping.activity : null;
  const invoices = needs.invoices ? mapping.invoices : null;
  const subscriptions = needs.subscriptions ? mapping.subscriptions : null;
  if (activity) {
    const a = activity;
    parts.push(`activity as (
      select ${id(`r.${a.customer}`)} as k, max(${id(`r.${a.at}`)})::date as last_on
        from ${id(qualified(mapping, a.table))} as r
       where ${inScope(`r.${a.customer}`)} and ${id(`r.${a.at}`)} < ${asOfDate()} + 1
       group by 1)`);
  }
  if (invoices) {
    const i = invoices;
    const paidOn = `${id(`i.${i.paidOn}`)}`;
    // Each invoice: what is unpaid on as-of (never paid in full, or paid in full only after as-of),
    // and the days it was overdue, [due_eff + 1, paid_on - 1] clipped to as-of (iv: it has some, and
    // it owed something: a credit note, a zero invoice or one paid in full but not marked paid_on
    // starts no streak).
    // Gaps and islands in one window pass: an island starts where an interval begins after every
    // earlier one has ended (+1 day); the streak is the island that reaches as-of.
    parts.push(`inv as (
      select k, invoice_id, due_eff, unpaid, iv, s, e,
             max(e) filter (where iv) over (partition by k order by s, e rows between unbounded preceding and 1 preceding) as prev_end
        from (select ${id(`i.${i.key}`)}::text as invoice_id, ${id(`i.${i.customer}`)} as k,
                     ${id(`i.${i.dueOn}`)} + p.net_terms_days as due_eff,
                     case when ${paidOn} is null then ${id(`i.${i.amount}`)} - coalesce(${id(`i.${i.paid}`)}, 0)
                          when ${paidOn} > ${asOfDate()} then ${id(`i.${i.amount}`)}
                          else 0 end as unpaid,
                     ${id(`i.${i.dueOn}`)} + p.net_terms_days + 1 <= ${asOfDate()}
                       and coalesce(case when ${paidOn} is null then ${id(`i.${i.amount}`)} - coalesce(${id(`i.${i.paid}`)}, 0) > 0
                                         else ${paidOn} > ${id(`i.${i.dueOn}`)} + p.net_terms_days + 1 and ${id(`i.${i.amount}`)} > 0 end,
                                    false) as iv,
                     ${id(`i.${i.dueOn}`)} + p.net_terms_days + 1 as s,
                     least(coalesce(${paidOn} - 1, ${asOfDate()}), ${asOfDate()}) as e
                from ${id(qualified(mapping, i.table))} as i
                join page p on p.k = ${id(`i.${i.customer}`)}
               where ${inScope(`i.${i.customer}`)}
                 ${i.issuedOn ? `and (${id(`i.${i.issuedOn}`)} is null or ${id(`i.${i.issuedOn}`)} <= ${asOfDate()})` : ''}) x)`);
    // The oldest overdue unpaid invoice: the least (due day, id) as text, which sorts the same.
    parts.push(`invoice_signals as (
      select k, open_balance, overdue_balance, unpaid_count, since,
             ${asOfDate()} - oldest[1]::date as oldest_days, oldest[2] as oldest_id, oldest[3] as oldest_unpaid
        from (select k,
                     sum(unpaid) filter (where unpaid > 0) as open_balance,
                     sum(unpaid) filter (where unpaid > 0 and due_eff < ${asOfDate()}) as overdue_balance,
                     count(*) filter (where unpaid > 0) as unpaid_count,
                     ${
                       needs.oldestInvoice
                         ? `min(array[to_char(due_eff, 'YYYY-MM-DD'), invoice_id, unpaid::text])
                       filter (where unpaid > 0 and due_eff < ${asOfDate()})`
                         : 'null::text[]'
                     } as oldest,
                     case when max(e) filter (where iv) = ${asOfDate()}
                          then max(s) filter (where iv and (prev_end is null or s > prev_end + 1)) - 1 end as since
                from inv group by k) g)`);
  }
  if (subscriptions) {
    const s = subscriptions;
    parts.push(`subs as (
      select ${id(`s.${s.customer}`)} as k, count(*) as n
        from ${id(qualified(mapping, s.table))} as s
       where ${inScope(`s.${s.customer}`)} and ${id(`s.${s.status}`)}::text = any(${b(s.activeValues)}::text[])
       group by 1)`);
  }

  const state = 'from' in scope ? null : (scope.state ?? null);
  // A page of some organizations or of one shard holds only some keys of its range: their states
  // are probed, not read with every other account's of the range.
  const whole = page && !(page.orgs && page.orgs.length > 0) && !(page.shard && page.shard.count > 1);
  const stored = storedParts(
    knex,
    state,
    asOfDate,
    whole ? (expr) => pageRange(expr, page.after, b, '::numeric') : null,
  );
  parts.push(...stored.ctes);
  // Accounts nothing can be computed for come back with the reason, so the run counts them as
  // skipped instead of failing the page (net terms beyond a date's range null their due days).
  const badTerms = 'p.net_terms_days is null';
  const hugeBalance = invoices ? `coalesce(iv.open_balance > ${Number.MAX_SAFE_INTEGER}, false)` : 'false';
  const rules = page?.candidates ?? null;
  let where = '';
  if (rules) {
    const predicate = candidatePredicate(
      rules,
      asOf,
      {
        key: 'p.k',
        createdOn: 'p.created_on',
        lastActivityOn: activity ? 'a.last_on' : 'null::date',
        openBalance: invoices ? 'iv.open_balance' : 'null::bigint',
        overdueBalance: invoices ? 'iv.overdue_balance' : 'null::bigint',
        unpaidCount: invoices ? 'iv.unpaid_count' : 'null::bigint',
        oldestOverdueDays: invoices ? 'iv.oldest_days' : 'null::int',
        pastDueSince: invoices ? 'iv.since' : 'null::date',
        activeSubscriptions: subscriptions ? 'sb.n' : 'null::bigint',
        flags: 'p.flags',
      },
      (v) => b(v),
    );
    where = `where ${[
      predicate,
      state?.states ? 'st.staged' : '',
      state?.exclusions ? 'ex.customer_key is not null' : '',
      `${badTerms} or ${hugeBalance}`,
    ]
      .filter(Boolean)
      .join('\n       or ')}`;
  }

  // No flags come back as null, not as an empty array for the driver to parse (most accounts have none).
  const signals = `select p.k as sort_key, p.k::text as key, p.org_id, to_char(p.created_on, 'YYYY-MM-DD') as created_on,
      ${activity ? "to_char(a.last_on, 'YYYY-MM-DD')" : 'null'} as last_activity_on,
      ${invoices ? `iv.open_balance, iv.overdue_balance, iv.unpaid_count, iv.oldest_days as oldest_overdue_days, iv.oldest_id as oldest_overdue_id, iv.oldest_unpaid as oldest_overdue_unpaid, to_char(iv.since, 'YYYY-MM-DD') as past_due_since` : 'null as open_balance, null as overdue_balance, null as unpaid_count, null as oldest_overdue_days, null as oldest_overdue_id, null as oldest_overdue_unpaid, null as past_due_since'},
      ${subscriptions ? 'sb.n' : '0'} as active_subscriptions,
      p.net_terms_days, nullif(p.flags, '{}') as flags, p.name, p.email, ${badTerms} as bad_terms, ${hugeBalance} as huge_balance,
      ${stored.columns}
    from page p
    ${activity ? 'left join activity a on a.k = p.k' : ''}
    ${invoices ? 'left join invoice_signals iv on iv.k = p.k' : ''}
    ${subscriptions ? 'left join subs sb on sb.k = p.k' : ''}
    ${stored.joins}
    ${where}`;
  const select = page ? pageSelect(signals) : `${signals}\n    order by p.k`;
  return knex.raw(`with ${parts.join(',\n')}\n${select}`, bindings);
}

/**
 * The accounts' states and live exclusions, probed by key once for every account of the `page` CTE:
 * they make an account a candidate (a stage to keep or clear, an exclusion to count) and come back
 * with it as `state_rows` and `exclusion`. A state row is a json array in the order of StateJson
 * (json writes dates as YYYY-MM-DD whatever the DateStyle; an infinite day, which only a hand edit
 * makes, reads as none, as it did from to_char): 2.7 instead of 3.4 ms per 2,000 keys
 * with an object per row, and less to parse. `asOf` binds as-of where the CTEs are placed (bindings
 * are positional).
 */
function storedParts(
  knex: Knex,
  state: StateTables | null,
  asOf: () => string,
  /** A keyset page's key range over an expression (where a page can read states as a range). */
  range: ((expr: string) => string) | null = null,
): { ctes: string[]; columns: string; joins: string } {
  const id = (name: string) => knex.raw('??', [name]).toQuery();
  const pageKeys = 'array(select k::text from page)';
  const ctes: string[] = [];
  if (state?.states) {
    // By number, one index range in the page's key order (this CTE 1.8 instead of 4.3 ms for a page
    // of 2,000 keys after a 1M backfill); else a probe per key.
    const inPage = range && state.keyNumbers ? range(KEY_NUMBER) : `s.customer_key = any(${pageKeys})`;
    ctes.push(`page_states as (
      select customer_key,
             json_agg(json_build_array(policy, stage, stage_index, version, host_before,
                                       case when isfinite(entered_on) then entered_on end,
                                       case when isfinite(reinstated_on) then reinstated_on end)) as rows,
             bool_or(stage is not null) as staged
        from ${id(`${state.schema}.account_states`)} s
       where ${inPage}
       group by customer_key)`);
  }
  if (state?.exclusions) {
    ctes.push(`page_exclusions as (
      select customer_key, reason, to_char(until, 'YYYY-MM-DD') as until, until is null or until >= ${asOf()} as active
        from ${id(`${state.schema}.exclusions`)}
       where customer_key = any(${pageKeys}) and removed_at is null)`);
  }
  const columns = `${state?.states ? 'st.rows' : 'null::jsonb'} as state_rows,
      ${state?.exclusions ? "case when ex.active then jsonb_build_object('reason', ex.reason, 'until', ex.until) end" : 'null::jsonb'} as exclusion`;
  const joins = [
    state?.states ? 'left join page_states st on st.customer_key = p.k::text' : '',
    state?.exclusions ? 'left join page_exclusions ex on ex.customer_key = p.k::text' : '',
  ].join('\n    ');
  return { ctes, columns, joins };
}

/**
 * `expr` within a keyset page: after its lower bound (none for the first page) and up to its last
 * key, which the page query computes (`bounds`). `cast` turns both bounds into expr's type.
 */
function pageRange(expr: string, after: string | null, b: (v: Knex.RawBinding) => string, cast = ''): string {
  const lower = after === null ? '' : `${expr} > ${b(after)}${cast} and `;
  return `${lower}${expr} <= (select last from bounds)${cast}`;
}

/**
 * A keyset page's size and last key, computed once: the page query bounds its other tables' scans by
 * the last key and returns both. Not max(k): Postgres has no max(uuid).
 */
const PAGE_BOUNDS =
  'bounds as (select count(*)::int as n, (array_agg(k order by k desc))[1] as last from page)';

/** A page's size and last key on every row, and one row with them alone when it has no candidate. */
function pageSelect(signals: string): string {
  return `select s.page_size, s.page_last, x.*
    from (select n as page_size, last::text as page_last from bounds) s
    left join (${signals}) x on true
   order by x.sort_key`;
}

/** The columns a signal view must yield (`source.view`), named as in SignalRow. */
export const VIEW_COLUMNS = [
  'key',
  'org_id',
  'created_on',
  'last_activity_on',
  'open_balance',
  'overdue_balance',
  'unpaid_count',
  'oldest_overdue_days',
  'oldest_overdue_id',
  'oldest_overdue_unpaid',
  'past_due_since',
  'active_subscriptions',
  'net_terms_days',
  'flags',
  'name',
  'email',
] as const;

/**
 * A user-supplied view computes the signals itself (for schemas the mapping cannot describe); suspend
 * only pages through it by key, reading the accounts' states and exclusions beside it as for tables.
 * Dates are read back as text so no timezone shifts a day.
 */
function viewSignalsQuery(knex: Knex, mapping: SourceMapping, asOf: IsoDate, scope: SignalScope): Knex.Raw {
  const view = knex.raw('??', [qualified(mapping, mapping.view as string)]).toQuery();
  const dates = new Set(['created_on', 'last_activity_on', 'past_due_since']);
  const columns = VIEW_COLUMNS.map((c) =>
    dates.has(c)
      ? `to_char(v.${c}::date, 'YYYY-MM-DD') as ${c}`
      : c === 'key'
        ? 'v.key::text as key'
        : `v.${c}`,
  ).join(', ');
  const bindings: Knex.RawBinding[] = [];
  const b = (v: Knex.RawBinding) => {
    bindings.push(v);
    return '?';
  };
  const where: string[] = [];
  if ('keys' in scope) where.push(`v.key = any(${b(scope.keys)})`);
  else if ('from' in scope) where.push(`v.key >= ${b(scope.from)}`, `v.key <= ${b(scope.to)}`);
  else {
    if (scope.after !== null) where.push(`v.key > ${b(scope.after)}`);
    if (scope.until !== null) where.push(`v.key <= ${b(scope.until)}`);
    if (scope.shard && scope.shard.count > 1)
      where.push(`${shardOf('v.key')} % ${b(scope.shard.count)} = ${b(scope.shard.index)}`);
  }
  if (!('keys' in scope) && scope.orgs && scope.orgs.length > 0)
    where.push(`v.org_id::text = any(${b(scope.orgs)}::text[])`);
  const filter = where.length > 0 ? where.join(' and ') : 'true';
  const limit =
    'limit' in scope ? ` order by v.key${scope.limit === null ? '' : ` limit ${b(scope.limit)}`}` : '';
  const stored = storedParts(knex, 'from' in scope ? null : (scope.state ?? null), () => `${b(asOf)}::date`);
  // Every account of a page is a candidate (the view's signals are opaque here).
  const accounts = `select p.k as sort_key, p.*, ${stored.columns}
    from page p
    ${stored.joins}`;
  return knex.raw(
    `with ${[`page as (select v.key as k, ${columns} from ${view} v where ${filter}${limit})`, ...('limit' in scope ? [PAGE_BOUNDS] : []), ...stored.ctes].join(',\n')}
     ${'limit' in scope ? pageSelect(accounts) : `${accounts}\n    order by p.k`}`,
    bindings,
  );
}

function cents(value: string | null, key: string, field: string): number {
  if (value === null) return 0;
  const n = Number(value);
  if (!Number.isSafeInteger(n))
    throw new Error(`account ${key}: ${field} ${value} is not a whole number of cents`);
  return n;
}

/** Why amounts cannot be counted as whole cents a JavaScript number holds exactly, or null. */
function centsProblem(...amounts: (string | null)[]): string | null {
  for (const v of amounts) {
    if (v === null) continue;
    const n = Number(v);
    if (Number.isSafeInteger(n)) continue;
    return Number.isFinite(n) && Math.abs(n) <= Number.MAX_SAFE_INTEGER && !Number.isInteger(n)
      ? SKIP_REASONS.fraction
      : SKIP_REASONS.balance;
  }
  return null;
}

export interface PageRead {
  /** Accounts in the page, candidates or not; 0 when the walk is over. */
  total: number;
  /** The page's last key, where the next page starts. */
  last: string | null;
  /** Signals of the page's candidates (every account without a candidate filter), in key order. */
  signals: Signals[];
  /** Accounts of the page that cannot be judged, with why: counted, never evaluated. */
  skipped: SkippedAccount[];
  /** Their states and live exclusions (see StoredState). */
  state: PageState;
}

export interface SkippedAccount {
  key: string;
  reason: string;
}

/**
 * One account_states row as the page query sends it: policy, stage, stage_index, version,
 * host_before, entered_on, reinstated_on.
 */
type StateJson = [
  policy: string,
  stage: string | null,
  stageIndex: number,
  version: number,
  hostBefore: Record<string, unknown> | null,
  enteredOn: IsoDate | null,
  reinstatedOn: IsoDate | null,
];

type PageRow = SignalRow & {
  page_size: number;
  page_last: string | null;
  state_rows: StateJson[] | null;
  exclusion: { reason: string; until: IsoDate | null } | null;
};

/**
 * A page query's result with each row as an array of its values, in the order of `fields`: the
 * driver then builds no object per row (100 page reads: 325-348 -> 298-335 ms of suspend's CPU).
 */
interface ArrayResult {
  rows: unknown[][];
  fields: { name: string }[];
}

const AS_ARRAYS = { rowMode: 'array' } as const;

/** The values of one column of every row, by name (null for a column the query does not return). */
type Column<K extends keyof PageRow> = (row: unknown[]) => PageRow[K] | null;

function columnsOf(fields: { name: string }[]) {
  const at = new Map(fields.map((f, i) => [f.name, i]));
  const column = <K extends keyof PageRow>(name: K): Column<K> => {
    const i = at.get(name);
    return i === undefined ? () => null : (row) => row[i] as PageRow[K] | null;
  };
  return column;
}

/** Reads one keyset page (see PageScope) with one statement. */
export async function readPage(
  knex: Knex,
  mapping: SourceMapping,
  asOf: IsoDate,
  scope: PageScope,
  needs: SignalNeeds = ALL_SIGNALS,
): Promise<PageRead> {
  const result = await runPrepared<ArrayResult>(knex, () =>
    signalsQuery(knex, mapping, asOf, scope, needs).options(AS_ARRAYS),
  );
  const column = columnsOf(result.fields);
  const first = result.rows[0];
  return {
    total: first ? (column('page_size')(first) ?? 0) : 0,
    last: first ? column('page_last')(first) : null,
    ...accountsOf(result),
  };
}

/**
 * Reads a key range or named accounts with one statement: their signals, and their states and live
 * exclusions when the scope names suspend's tables.
 */
export async function readAccounts(
  knex: Knex | Knex.Transaction,
  mapping: SourceMapping,
  asOf: IsoDate,
  scope: Exclude<SignalScope, PageScope>,
  needs: SignalNeeds = ALL_SIGNALS,
): Promise<Pick<PageRead, 'signals' | 'skipped' | 'state'>> {
  const result = await signalsQuery(knex as Knex, mapping, asOf, scope, needs).options(AS_ARRAYS);
  return accountsOf(result as unknown as ArrayResult);
}

/** A page query's rows as signals to judge, accounts to skip (bad data), states and exclusions. */
function accountsOf({ rows, fields }: ArrayResult): Pick<PageRead, 'signals' | 'skipped' | 'state'> {
  const state: PageState = { states: new Map(), exclusions: new Map() };
  const signals: Signals[] = [];
  const skipped: SkippedAccount[] = [];
  const column = columnsOf(fields);
  const c = {
    key: column('key'),
    orgId: column('org_id'),
    createdOn: column('created_on'),
    lastActivityOn: column('last_activity_on'),
    openBalance: column('open_balance'),
    overdueBalance: column('overdue_balance'),
    unpaidCount: column('unpaid_count'),
    oldestDays: column('oldest_overdue_days'),
    oldestId: column('oldest_overdue_id'),
    oldestUnpaid: column('oldest_overdue_unpaid'),
    pastDueSince: column('past_due_since'),
    subscriptions: column('active_subscriptions'),
    netTermsDays: column('net_terms_days'),
    flags: column('flags'),
    name: column('name'),
    email: column('email'),
    badTerms: column('bad_terms'),
    hugeBalance: column('huge_balance'),
    stateRows: column('state_rows'),
    exclusion: column('exclusion'),
  };
  for (const row of rows) {
    const key = c.key(row);
    if (key === null) continue;
    const open = c.openBalance(row);
    const overdue = c.overdueBalance(row);
    const oldestUnpaid = c.oldestUnpaid(row);
    const reason = c.badTerms(row)
      ? SKIP_REASONS.netTerms
      : c.hugeBalance(row)
        ? SKIP_REASONS.balance
        : centsProblem(open, overdue, oldestUnpaid);
    if (reason !== null) {
      skipped.push({ key, reason });
      continue;
    }
    const oldestId = c.oldestId(row);
    const oldestDays = c.oldestDays(row);
    signals.push({
      key,
      orgId: c.orgId(row),
      accountCreatedOn: c.createdOn(row),
      lastActivityOn: c.lastActivityOn(row),
      openBalance: cents(open, key, 'open balance'),
      overdueBalance: cents(overdue, key, 'overdue balance'),
      pastDueSince: c.pastDueSince(row),
      oldestOverdueDays: oldestDays,
      oldestOverdueInvoice:
        oldestId === null
          ? null
          : {
              id: oldestId,
              unpaid: cents(oldestUnpaid, key, 'invoice amount'),
              daysOverdue: oldestDays ?? 0,
            },
      unpaidInvoiceCount: Number(c.unpaidCount(row) ?? 0),
      activeSubscriptions: Number(c.subscriptions(row) ?? 0),
      netTermsDays: c.netTermsDays(row) ?? 0,
      flags: c.flags(row) ?? [],
      name: c.name(row),
      email: c.email(row),
    });
    const stateRows = c.stateRows(row);
    if (stateRows) {
      const byPolicy = new Map<string, StoredState>();
      for (const [policy, stage, stageIndex, version, hostBefore, enteredOn, reinstatedOn] of stateRows)
        byPolicy.set(policy, { stage, stageIndex, version, hostBefore, enteredOn, reinstatedOn });
      state.states.set(key, byPolicy);
    }
    const exclusion = c.exclusion(row);
    if (exclusion) state.exclusions.set(key, exclusion);
  }
  return { signals, skipped, state };
}
