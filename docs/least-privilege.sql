-- The least a Postgres role needs to run suspend: backfill, sweep, report, status, reinstate,
-- exclusions, revert and notify. It creates nothing: run `suspend migrate` (and `suspend guard
-- install`) once as the owner of the database, then give this role to cron and to operators.
--
-- Written for the reference schema (`suspend seed`) and the default `settings.schema: suspend`.
-- For your own tables, grant the same on the tables and columns your `source:` mapping names.
-- Run it as the owner, connected to the application's database:
--
--   psql "$OWNER_URL" -v ON_ERROR_STOP=1 -f docs/least-privilege.sql
--
-- then point suspend at postgres://suspend_runner:...@host/app. The test suite runs a sweep as
-- exactly this role (tests/reliability/least-privilege.test.ts).

CREATE ROLE suspend_runner LOGIN PASSWORD 'change-me';

DO $$ BEGIN
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO suspend_runner', current_database());
END $$;

-- The host's data: read only, ...
GRANT USAGE ON SCHEMA public TO suspend_runner;
GRANT SELECT ON public.organizations, public.customers, public.reservations, public.invoices,
  public.subscriptions TO suspend_runner;

-- ... except the mapped host columns the rules `set` (here customers.status, set by the stages
-- and put back on reinstatement). Consent columns (marketing_opt_out) are never writable.
GRANT UPDATE (status) ON public.customers TO suspend_runner;

-- Before writing a page, suspend re-reads the accounts it changes with their invoices locked
-- (SELECT ... FOR SHARE), so a payment cannot commit between the re-check and the write.
-- Postgres allows row locks only to a role with UPDATE on at least one column of the table;
-- suspend never writes this column.
GRANT UPDATE (customer_id) ON public.invoices TO suspend_runner;

-- suspend's own schema: read the migrations table, write runs and state, append history and
-- events. History is append-only: no UPDATE or DELETE on it, no DELETE anywhere.
GRANT USAGE ON SCHEMA suspend TO suspend_runner;
GRANT SELECT ON suspend.knex_migrations TO suspend_runner;
GRANT SELECT, INSERT, UPDATE ON suspend.runs, suspend.checkpoints, suspend.account_states
  TO suspend_runner;
GRANT SELECT, INSERT ON suspend.history TO suspend_runner;
-- notify marks events sent, failed or claimed.
GRANT SELECT, INSERT, UPDATE ON suspend.outbox TO suspend_runner;
-- `suspend exclusions add|remove` (a removal is an update: nothing is deleted).
GRANT SELECT, INSERT, UPDATE ON suspend.exclusions TO suspend_runner;
GRANT USAGE ON SEQUENCE suspend.runs_id_seq, suspend.history_id_seq, suspend.outbox_id_seq,
  suspend.exclusions_id_seq TO suspend_runner;
-- The host application's role reads a customer's state through suspend.account_status(key)
-- (SECURITY DEFINER); this role may call it too, for `suspend status`.
GRANT EXECUTE ON FUNCTION suspend.account_status(text) TO suspend_runner;
