'use strict';
// account_states had an index on customer_key for rows that block booking. Nothing reads through it:
// account_status() and the booking guard look an account up by customer_key alone, which the primary
// key (customer_key, policy) serves. Every state a run wrote that blocks booking still paid for an
// entry in it (about 1 ms of a backfill page of 671 new states, 20 ms in all).
// The schema name comes from the rules (`settings.schema`) through knex's userParams.

/** @param {import('knex').Knex} knex */
exports.up = async function up(knex) {
  await knex.raw('drop index if exists ??.account_states_customer_key_idx', [knex.userParams.schema]);
};

/** @param {import('knex').Knex} knex */
exports.down = async function down(knex) {
  const schema = knex.userParams.schema;
  await knex.raw(
    'create index if not exists account_states_customer_key_idx on ??.account_states (customer_key) where blocks_booking',
    [schema],
  );
};
