'use strict';
// The booking guard's HINT (the next step a customer sees) was the stage message after its first
// ". ", so a customer named "Dr. J. Smith" read "J. Smith, your account is on hold..." as the next
// step. A sentence now ends only after a word in lower case, a digit or a closing bracket or quote,
// and the next begins with no lower-case letter: names ("Dr.", "J.", "St. Louis") and amounts
// ("$42.00") never end one. DETAIL says "in stage X of policy Y".
// The schema name comes from the rules (`settings.schema`) through knex's userParams.

/**
 * The guard with `hint` and `detail` as given; the rest repeats 20261123000200 on purpose (a migration
 * is a record of what it did, never shared with a later one).
 */
function guard(schema, hint, detail) {
  return [
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
           detail = ${detail},
           hint = coalesce(nullif(btrim(${hint}), ''),
                           'Contact support to book again.');
       end if;
       return new;
     end
     $body$`,
    [schema, schema],
  ];
}

// No "?" anywhere: knex would read it as a binding. `\\x3f` is "?" to the regular expression.
/** The rest of the message after its first sentence (the second group: the first is the word before). */
const NEXT_SENTENCE =
  "(regexp_match(v.message, '([^[:alpha:]][[:lower:]]{2,}|[[:digit:])\\]\"''])[.!\\x3f][[:space:]]+([^[:space:][:lower:]].*)$'))[2]";
/** As 20261123000200 had it. */
const FIRST_SENTENCE = "substring(v.message from '[.!\\x3f][[:space:]]+([^[:space:]].*)$')";

/** DETAIL: `suspend: customer KEY <state words> since DAY; bookings are blocked.` */
const detail = (words) =>
  `format('suspend: customer %s ${words} since %s; bookings are blocked.', v_key, v.state, v.policy, v.since)`;

/** @param {import('knex').Knex} knex */
exports.up = (knex) =>
  knex.raw(...guard(knex.userParams.schema, NEXT_SENTENCE, detail('is in stage %s of policy %s')));

/** @param {import('knex').Knex} knex */
exports.down = (knex) =>
  knex.raw(...guard(knex.userParams.schema, FIRST_SENTENCE, detail('is %s under policy %s')));
