import type { ReferenceTable } from './reference-schema';
import { REFERENCE_COLUMNS } from './reference-schema';

/**
 * Set-based generators for the reference data, built from `generate_series` and
 * `hashint8extended(key, seed)`. Every value is a function of (seed, as-of, row key) only, so the
 * result is the same whatever the plan, the parallelism or the machine.
 *
 * First one row of traits per customer goes into a temporary table (age, activity class, billing
 * scenario, subscriptions, how many child rows and the first child id of each kind); then one
 * `insert ... select` per reference table reads it. Child ids are dense: a running sum of the
 * per-customer counts, in customer order.
 *
 * Shape (percentages of customers unless said otherwise):
 *   activity       25% inactive (no reservation in the last 380 days; a third of them never
 *                  booked), 75% with one reservation in the last 330 days; ~5 reservations each.
 *   billing        ~2 invoices each, $1 to $500. Of generic invoices 6% are unpaid, overdue from 0
 *                  to 400 days, a quarter of those partially paid; 15% of paid ones were paid late.
 *                  Among accounts older than 420 days, 3% have a broken streak (paid late, then a
 *                  new invoice overdue after that payment) and 3% a continuous one (a second invoice
 *                  overdue before the first was paid). About 8% of all invoices are unpaid.
 *   accounts       created 7 days to 5 years before as-of; 10% net terms (15/30/45 days), 1% vip,
 *                  5% marketing opt-out; org uniform over 1..K.
 *   subscriptions  60% active, 5% paused, 25% (of accounts older than 60 days) a canceled one.
 */

export interface GenerateParams {
  customers: number;
  orgs: number;
  seed: number;
  asOf: string;
}

export interface GeneratedStatement {
  /** The reference table filled, or null for the temporary traits table. */
  table: ReferenceTable | null;
  sql: string;
  /** Positional values for the `p` CTE; an insert also binds its target table (`??`) last. */
  bindings: (string | number)[];
}

/** Dropped at commit; only the session that seeds sees it. */
export const TRAITS_TABLE = 'pg_temp.seed_customer_traits';

/** A non-negative 31-bit pseudo-random integer from (seed, key, salt); salts are constants below. */
function h(key: string, salt: number): string {
  return `(hashint8extended(${key}, p.seed * 1000 + ${salt}) & 2147483647)`;
}

/** `(h % modulus)::int`, for day offsets (date + int). */
function hd(key: string, salt: number, modulus: string | number): string {
  return `(${h(key, salt)} % ${modulus})::int`;
}

/** The parameters as a one-row CTE, so every value is bound once. */
const PARAMS = `p as (
  select ?::bigint as seed, ?::date as as_of, ?::bigint as customers, ?::bigint as orgs,
         extract(epoch from ?::date::timestamp)::bigint as asof_epoch
)`;

function paramBindings(g: GenerateParams): (string | number)[] {
  return [g.seed, g.asOf, g.customers, g.orgs, g.asOf];
}

const DAY = 86400;
/** Created between 7 days and 5 years before as-of. */
const MIN_AGE_DAYS = 7;
const MAX_AGE_DAYS = 5 * 365;

/**
 * One row per customer with the traits every table derives from. The raw draws are materialized
 * once (`c0`) so the traits that use a draw several times do not recompute its hash.
 */
export function traitsStatement(g: GenerateParams): GeneratedStatement {
  const sql = `create temp table seed_customer_traits on commit drop as
with ${PARAMS}, c0 as materialized (
  select g.id,
         (${MIN_AGE_DAYS} + ${h('g.id', 1)} % ${MAX_AGE_DAYS - MIN_AGE_DAYS + 1})::int as age_days,
         ${h('g.id', 2)} % ${DAY} as created_second,
         ${h('g.id', 3)} % 1000 < 250 as inactive,
         ${h('g.id', 4)} % 1000 as u_never,
         ${h('g.id', 5)} as u_res_count,
         ${h('g.id', 6)} % 1000 as u_scenario,
         (${h('g.id', 7)} % 5)::int as generic_invoices,
         ${h('g.id', 8)} % 1000 as u_sub,
         ${h('g.id', 9)} % 1000 as u_canceled,
         ${h('g.id', 10)} as u_x_due,
         ${h('g.id', 11)} as u_x_late,
         ${h('g.id', 12)} as u_y_gap
    from p cross join generate_series(1, p.customers) as g(id)
), c as (
  select c0.id, c0.age_days,
         p.as_of - c0.age_days as created_day,
         p.asof_epoch - c0.age_days * ${DAY} + c0.created_second as created_epoch,
         c0.inactive,
         -- Inactive accounts younger than 400 days cannot have booked more than 380 days ago.
         c0.inactive and (c0.age_days < 400 or c0.u_never < 330) as never_booked,
         case when c0.age_days >= 420 and c0.u_scenario < 30 then 'broken'
              when c0.age_days >= 420 and c0.u_scenario < 60 then 'continuous' end as scenario,
         case when c0.u_sub < 600 then 'active' when c0.u_sub < 650 then 'paused' end as current_sub,
         c0.age_days >= 60 and c0.u_canceled < 250 as has_canceled,
         c0.u_res_count, c0.generic_invoices, c0.u_x_due, c0.u_x_late, c0.u_y_gap
    from p cross join c0
), t as (
  select c.id, c.age_days, c.created_day, c.created_epoch, c.inactive, c.scenario, c.current_sub,
         c.has_canceled,
         (case when c.never_booked then 0
               when c.inactive then 1 + c.u_res_count % 5
               else 1 + c.u_res_count % 11 end)::int as reservation_count,
         case when c.scenario is not null then 2 else c.generic_invoices end as invoice_count,
         (c.current_sub is not null)::int + c.has_canceled::int as subscription_count,
         -- The scenario invoices X (paid late) and Y (unpaid); see invoicesInsert.
         p.as_of - case c.scenario when 'broken' then 150 + (c.u_x_due % 150)::int
                                   when 'continuous' then 120 + (c.u_x_due % 180)::int end as x_due,
         case c.scenario when 'broken' then 10 + (c.u_x_late % 31)::int
                         when 'continuous' then 60 + (c.u_x_late % 41)::int end as x_late,
         case c.scenario when 'broken' then 10 + (c.u_y_gap % 51)::int
                         when 'continuous' then 5 + (c.u_y_gap % 6)::int end as y_gap
    from p cross join c
)
select t.id, t.age_days, t.created_day, t.created_epoch, t.inactive, t.scenario, t.current_sub,
       t.has_canceled, t.reservation_count, t.invoice_count, t.subscription_count,
       t.x_due, t.x_due + t.x_late as x_paid,
       case t.scenario when 'broken' then t.x_due + t.x_late + t.y_gap else t.x_due + t.y_gap end as y_due,
       sum(t.reservation_count) over w - t.reservation_count as reservations_before,
       sum(t.invoice_count) over w - t.invoice_count as invoices_before,
       sum(t.subscription_count) over w - t.subscription_count as subscriptions_before
  from t
window w as (order by t.id)`;
  return { table: null, sql, bindings: paramBindings(g) };
}

/** An insert that reads the traits table as `o`, with the parameters as `p`. */
function fromTraits(table: ReferenceTable, select: string, g: GenerateParams): GeneratedStatement {
  return { table, sql: `with ${PARAMS}\n${insertInto(table)}\n${select}`, bindings: paramBindings(g) };
}

function insertInto(table: ReferenceTable): string {
  return `insert into ?? (${REFERENCE_COLUMNS[table].join(', ')})`;
}

const TIMEZONES = [
  'UTC',
  'Europe/Berlin',
  'Europe/London',
  'America/New_York',
  'America/Chicago',
  'America/Los_Angeles',
  'America/Sao_Paulo',
  'Asia/Tokyo',
  'Asia/Kolkata',
  'Australia/Sydney',
];
const ORG_KINDS = ['Studios', 'Rentals', 'Clinic', 'Fitness', 'Salon', 'Tours', 'Coworking', 'Courts'];
const FIRST_NAMES = [
  'Ada',
  'Ben',
  'Chloe',
  'Dev',
  'Elena',
  'Farid',
  'Grace',
  'Hugo',
  'Ines',
  'Jonas',
  'Kira',
  'Liam',
  'Maya',
  'Noah',
  'Olga',
  'Pablo',
  'Quinn',
  'Rosa',
  'Sami',
  'Tariq',
];
const LAST_NAMES = [
  'Almeida',
  'Brandt',
  'Chen',
  'Dubois',
  'Eriksen',
  'Fischer',
  'Garcia',
  'Haddad',
  'Ivanova',
  'Jensen',
  'Kowalski',
  'Laurent',
  'Moreau',
  'Nakamura',
  'Okafor',
  'Petrov',
  'Rossi',
  'Silva',
  'Tanaka',
  'Weber',
];

/** A text[] literal of code constants (never user input). */
function textArray(values: string[]): string {
  return `array[${values.map((v) => `'${v.replace(/'/g, "''")}'`).join(', ')}]::text[]`;
}

export function organizationsInsert(g: GenerateParams): GeneratedStatement {
  const sql = `with ${PARAMS}
${insertInto('organizations')}
select o.id,
       (${textArray(ORG_KINDS)})[1 + ${h('o.id', 101)} % ${ORG_KINDS.length}] || ' ' || o.id,
       (${textArray(TIMEZONES)})[1 + ${h('o.id', 102)} % ${TIMEZONES.length}],
       array['ops@org-' || o.id || '.example']
         || case when ${h('o.id', 103)} % 2 = 0 then array['billing@org-' || o.id || '.example'] else '{}'::text[] end
  from p cross join generate_series(1, p.orgs) as o(id)`;
  return { table: 'organizations', sql, bindings: paramBindings(g) };
}

export function customersInsert(g: GenerateParams): GeneratedStatement {
  return fromTraits(
    'customers',
    `select o.id,
       1 + ${h('o.id', 201)} % p.orgs,
       'customer-' || o.id || '@example.com',
       (${textArray(FIRST_NAMES)})[1 + ${h('o.id', 202)} % ${FIRST_NAMES.length}] || ' '
         || (${textArray(LAST_NAMES)})[1 + ${h('o.id', 203)} % ${LAST_NAMES.length}],
       to_timestamp(o.created_epoch),
       case when ${h('o.id', 204)} % 1000 < 100 then (array[15, 30, 45])[1 + ${h('o.id', 205)} % 3] else 0 end,
       ${h('o.id', 206)} % 1000 < 50,
       'active',
       ${h('o.id', 207)} % 1000 < 10
  from p cross join ${TRAITS_TABLE} as o`,
    g,
  );
}

/**
 * Active accounts: reservation 1 in the last 330 days, the others anywhere since creation.
 * Inactive accounts with a history: all between creation and 380 days before as-of.
 */
export function reservationsInsert(g: GenerateParams): GeneratedStatement {
  const k = 'o.id * 16 + j';
  return fromTraits(
    'reservations',
    `select o.reservations_before + j, o.id,
       to_timestamp(case
         when o.inactive then o.created_epoch + ${h(k, 301)} % (p.asof_epoch - 380 * ${DAY} - o.created_epoch)
         when j = 1 then r.recent_from + ${h(k, 302)} % (p.asof_epoch - r.recent_from)
         else o.created_epoch + ${h(k, 303)} % (p.asof_epoch - o.created_epoch) end)
  from p cross join ${TRAITS_TABLE} as o
  cross join lateral generate_series(1, o.reservation_count) as j
  cross join lateral (select greatest(o.created_epoch, p.asof_epoch - 330 * ${DAY}) as recent_from) as r`,
    g,
  );
}

/**
 * Scenario accounts get two invoices, X (paid late) and Y (unpaid):
 *   broken      X due 150..299 days ago, paid 10..40 days late; Y due 10..60 days after that payment.
 *   continuous  X due 120..299 days ago, paid 60..100 days late; Y due 5..10 days after X: overdue
 *               before X was paid, even with 45 days of net terms.
 * Generic invoices: 6% unpaid (due 0..400 days ago, never before the account's 30th day); the rest
 * issued any day since creation, due 30 days later, 15% of them paid 1..90 days late, the others
 * paid within 30 days of issue; no payment after as-of. A quarter of unpaid invoices are partial.
 * The draws are computed once per row (`offset 0` keeps the planner from copying them into every
 * expression that uses them).
 */
export function invoicesInsert(g: GenerateParams): GeneratedStatement {
  const k = 'o.id * 8 + j';
  return fromTraits(
    'invoices',
    `select o.invoices_before + j, o.id, d.due_on - 30, d.due_on, r.amount,
       case when q.paid_on is not null then r.amount
            when r.u_partial % 4 = 0 then 1 + (r.u_partial / 4) % (r.amount - 1)
            else 0 end,
       q.paid_on
  from p cross join ${TRAITS_TABLE} as o
  cross join lateral generate_series(1, o.invoice_count) as j
  cross join lateral (
    select 100 + ${h(k, 419)} % 49901 as amount,
           ${h(k, 411)} % 1000 < 60 as unpaid,
           (${h(k, 412)} % 401)::int as overdue_days,
           (${h(k, 413)} % o.age_days)::int as issued_after,
           ${h(k, 414)} % 1000 < 150 as late,
           (${h(k, 415)} % 90)::int as late_days,
           (${h(k, 416)} % 31)::int as paid_after,
           ${h(k, 417)} as u_partial
    offset 0
  ) as r
  cross join lateral (
    select case when o.scenario is not null then case when j = 1 then o.x_due else o.y_due end
                when r.unpaid then greatest(p.as_of - r.overdue_days, o.created_day + 30)
                else o.created_day + r.issued_after + 30 end as due_on
  ) as d
  cross join lateral (
    select case when o.scenario is not null then case when j = 1 then o.x_paid end
                when r.unpaid then null
                when r.late then least(p.as_of - 1, d.due_on + 1 + r.late_days)
                else least(p.as_of - 1, d.due_on - 30 + r.paid_after) end as paid_on
  ) as q`,
    g,
  );
}

/**
 * Subscription 1 of an account with a canceled one: started in the first quarter of its life,
 * ended before the middle. The current one (active or paused) started in the second half.
 */
export function subscriptionsInsert(g: GenerateParams): GeneratedStatement {
  return fromTraits(
    'subscriptions',
    `select o.subscriptions_before + j, o.id, s.status,
       case when s.status = 'canceled' then o.created_day + ${hd('o.id', 501, 'greatest(o.age_days / 4, 1)')}
            else o.created_day + o.age_days / 2 + ${hd('o.id', 503, 'greatest(o.age_days / 2, 1)')} end,
       case when s.status = 'canceled'
            then o.created_day + o.age_days / 2 - ${hd('o.id', 502, 'greatest(o.age_days / 4, 1)')} end
  from p cross join ${TRAITS_TABLE} as o
  cross join lateral generate_series(1, o.subscription_count) as j
  cross join lateral (
    select case when o.has_canceled and j = 1 then 'canceled' else o.current_sub end as status
  ) as s`,
    g,
  );
}

const INSERTS: Record<ReferenceTable, (g: GenerateParams) => GeneratedStatement> = {
  organizations: organizationsInsert,
  customers: customersInsert,
  reservations: reservationsInsert,
  invoices: invoicesInsert,
  subscriptions: subscriptionsInsert,
};

/**
 * What one session runs to fill `tables` (in the order given): the traits table, when a table
 * needs it, then their inserts. Sessions filling different tables can run side by side.
 */
export function generateStatements(
  g: GenerateParams,
  tables: readonly ReferenceTable[],
): GeneratedStatement[] {
  const needsTraits = tables.some((t) => t !== 'organizations');
  return [...(needsTraits ? [traitsStatement(g)] : []), ...tables.map((t) => INSERTS[t](g))];
}
