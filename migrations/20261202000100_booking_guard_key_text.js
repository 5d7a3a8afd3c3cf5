'use strict';
// The booking guard read the bookings' customer column as JSON text (`to_jsonb(new) ->> column`),
// which keeps a char(n) value's padding: a booking of 'C5' in a char(8) column was looked up as
// 'C5      ', which no account state has (suspend stores keys as `key::text`, unpadded), so the guard
// let every such customer book. The column is now read as its own `::text` cast, as suspend reads
// keys. The rest repeats 20261201000300 on purpose (a migration is a record of what it did).
// The schema name comes from the rules (`settings.schema`) through knex's userParams.

/** The guard with `v_key` read by `read` (a PL/pgSQL statement list that sets it). */
function guard(schema, read) {
  return [
    `create or replace function ??.booking_guard() returns trigger
       language plpgsql security definer set search_path = pg_catalog, pg_temp
     as $body$
     declare
       v_key text;
       v record;
     begin
       ${read}
       if v_key is null then
         return new;
       end if;
       select * into v from ??.account_status(v_key);
       if v.blocks_booking then
         raise exception using
           errcode = 'SP001',
           message = coalesce(v.message, 'Booking is not possible for this account right now.'),
           detail = format('suspend: customer %s is in stage %s of policy %s since %s; bookings are blocked.', v_key, v.state, v.policy, v.since),
           hint = coalesce(nullif(btrim(${NEXT_SENTENCE}), ''),
                           'Contact support to book again.');
       end if;
       return new;
     end
     $body$`,
    [schema, schema],
  ];
}

// No "?" anywhere: knex would read it as a binding. `\\x3f` is "?" to the regular expression.
const NEXT_SENTENCE =
  "(regexp_match(v.message, '([^[:alpha:]][[:lower:]]{2,}|[[:digit:])\\]\"''])[.!\\x3f][[:space:]]+([^[:space:][:lower:]].*)$'))[2]";

/** @param {import('knex').Knex} knex */
exports.up = (knex) =>
  knex.raw(
    ...guard(
      knex.userParams.schema,
      "execute format('select ($1).%I::text', tg_argv[0]) into v_key using new;",
    ),
  );

/** @param {import('knex').Knex} knex */
exports.down = (knex) => knex.raw(...guard(knex.userParams.schema, 'v_key := to_jsonb(new) ->> tg_argv[0];'));
