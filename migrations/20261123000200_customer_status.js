'use strict';
// The customer's side, in the database: `<schema>.account_status(customer_key)` for the host
// application, and `<schema>.booking_guard()`, the trigger function `suspend guard install` attaches
// to the host's bookings table. Both only read suspend's own account_states.
//
// They run as their owner (SECURITY DEFINER, search_path pinned) so the application's role needs no
// grant on suspend's tables, only USAGE on the schema. The schema name comes from the rules
// (`settings.schema`) through knex's userParams and is quoted by knex (`??`). Knex reads `?` as a
// binding, so the regular expression below writes it escaped (`\\?`).

/** @param {import('knex').Knex} knex */
exports.up = async function up(knex) {
  const schema = knex.userParams.schema;

  // Across policies: booking is blocked if any current stage blocks it; sign-in is allowed only if
  // every current stage allows it. State, message, policy, since and reasons are those of the most
  // severe current stage: suspend-like (no sign-in) > pause-like (no booking) > notify-only, then the
  // later stage of its ladder, then the policy name. No current stage: 'active', nothing blocked.
  await knex.raw(
    `create or replace function ??.account_status(customer_key text)
       returns table (state text, blocks_booking boolean, allows_login boolean, message text,
                      policy text, since date, reasons jsonb)
       language sql stable security definer set search_path = pg_catalog, pg_temp
     as $body$
       select coalesce(top.stage, 'active'),
              coalesce(agg.blocks, false),
              coalesce(agg.login, true),
              top.message,
              top.policy,
              top.entered_on,
              coalesce(top.reasons, '[]'::jsonb)
         from (select bool_or(s.blocks_booking) as blocks, bool_and(s.allows_login) as login
                 from ??.account_states s
                where s.customer_key = $1 and s.stage is not null) agg
         left join lateral (
               select s.stage, s.message, s.policy, s.entered_on, s.reasons
                 from ??.account_states s
                where s.customer_key = $1 and s.stage is not null
                order by (not s.allows_login) desc, s.blocks_booking desc, s.stage_index desc, s.policy
                limit 1) top on true
     $body$`,
    [schema, schema, schema],
  );

  // BEFORE INSERT FOR EACH ROW; TG_ARGV[0] names the customer column of the guarded table. A blocked
  // customer's insert fails with SQLSTATE SP001, the stage's customer-facing message as the error
  // message, and as HINT the next step: the message after its first sentence ("Pay at https://...")
  // or, when the message has a single sentence, "Contact support to book again.".
  await knex.raw(
    `create or replace function ??.booking_guard() returns trigger
       language plpgsql security definer set search_path = pg_catalog, pg_temp
     as $body$
     declare
       v_key text := to_jsonb(new) ->> tg_argv[0];
       v record;
     begin
       if v_key is null then
         return new;
       end if;
       select * into v from ??.account_status(v_key);
       if v.blocks_booking then
         raise exception using
           errcode = 'SP001',
           message = coalesce(v.message, 'Booking is not possible for this account right now.'),
           detail = format('suspend: customer %s is %s under policy %s since %s; bookings are blocked.',
                           v_key, v.state, v.policy, v.since),
           hint = coalesce(nullif(btrim(substring(v.message from '[.!\\?][[:space:]]+([^[:space:]].*)$')), ''),
                           'Contact support to book again.');
       end if;
       return new;
     end
     $body$`,
    [schema, schema],
  );
};

/** @param {import('knex').Knex} knex */
exports.down = async function down(knex) {
  const schema = knex.userParams.schema;
  // Fails while a booking guard still uses the trigger function: `suspend guard remove` first.
  await knex.raw('drop function if exists ??.booking_guard()', [schema]);
  await knex.raw('drop function if exists ??.account_status(text)', [schema]);
};
