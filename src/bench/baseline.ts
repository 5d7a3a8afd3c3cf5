/**
 * What a DBA would write instead of suspend: one set-based statement that computes the same signals
 * for every customer (same definitions: effective due day with net terms, continuous past-due streak
 * by gaps and islands), updates customers.status and inserts history rows, for bench/rules.yaml.
 */

const SIGNALS = `
  act as (select customer_id, max(created_at)::date as last_on from reservations
           where created_at < :asOf::date + 1 group by customer_id),
  inv as (select i.customer_id as k, i.due_on + c.net_terms_days as due_eff, i.paid_on, i.amount_cents, i.paid_cents,
                 case when i.paid_on is null then i.amount_cents - i.paid_cents
                      when i.paid_on > :asOf::date then i.amount_cents else 0 end as unpaid
            from invoices i join customers c on c.id = i.customer_id
           where i.issued_on is null or i.issued_on <= :asOf::date),
  bal as (select k, sum(unpaid) filter (where unpaid > 0 and due_eff < :asOf::date) as overdue from inv group by k),
  iv as (select k, due_eff + 1 as s, least(coalesce(paid_on - 1, :asOf::date), :asOf::date) as e from inv
          where due_eff + 1 <= :asOf::date
            and (paid_on is null and amount_cents - paid_cents > 0 or paid_on > due_eff + 1 and amount_cents > 0)),
  streak as (select k, max(s) filter (where prev_end is null or s > prev_end + 1) - 1 as since
               from (select k, s, e, max(e) over (partition by k order by s, e rows between unbounded preceding and 1 preceding) as prev_end
                       from iv where k in (select k from iv where e = :asOf::date)) x
              group by k),
  decisions as (
    select c.id,
           coalesce(a.last_on, c.created_at::date) + interval '12 months' <= :asOf::date
             and c.created_at::date + interval '3 months' <= :asOf::date as inactive,
           coalesce(b.overdue, 0) > 500 and s.since is not null and s.since + 31 <= :asOf::date as delinquent
      from customers c
      left join act a on a.customer_id = c.id
      left join bal b on b.k = c.id
      left join streak s on s.k = c.id)`;

export const BASELINE_SETUP = `create table if not exists baseline_history (
  id bigserial primary key, customer_id bigint not null, policy text not null, to_stage text not null,
  as_of date not null, at timestamptz not null default now())`;

/** The whole job: decide, update the status column, append history. */
export const BASELINE_WRITE = `with ${SIGNALS},
  updated as (update customers c set status = 'suspended' from decisions d
               where d.id = c.id and (d.inactive or d.delinquent) and c.status <> 'suspended' returning c.id),
  history as (insert into baseline_history (customer_id, policy, to_stage, as_of)
              select id, 'inactivity', 'suspended', :asOf::date from decisions where inactive
              union all
              select id, 'delinquency', 'suspended', :asOf::date from decisions where delinquent
              returning 1)
  select (select count(*) from updated) as updated, (select count(*) from history) as history`;

/** Only the read part: the decisions, counted. */
export const BASELINE_READ = `with ${SIGNALS}
  select count(*) filter (where inactive) as inactive, count(*) filter (where delinquent) as delinquent from decisions`;
