'use strict';
// account_states is keyed by text, so a page of accounts with whole-number keys (in numeric order)
// had to probe its 2,000 keys one by one (about 4 ms a page after a 1M backfill). This index keeps
// each key's number, so a page reads its accounts' states as one range in the customers' key order.
// The expression yields null for keys that are not whole numbers, so it never fails; queries must
// repeat it exactly (src/source/signals.ts, KEY_NUMBER) for the planner to use the index. No `?` in
// the pattern: knex would read it as a parameter.
// The schema name comes from the rules (`settings.schema`) through knex's userParams.

const KEY_NUMBER = "(case when customer_key ~ '^-{0,1}[0-9]+$' then customer_key::numeric end)";

/** @param {import('knex').Knex} knex */
exports.up = async function up(knex) {
  const schema = knex.userParams.schema;
  await knex.raw(`create index account_states_key_number on ??.account_states (${KEY_NUMBER})`, [schema]);
};

/** @param {import('knex').Knex} knex */
exports.down = async function down(knex) {
  await knex.raw('drop index if exists ??.account_states_key_number', [knex.userParams.schema]);
};
