'use strict';
// Delivery bookkeeping on the outbox for `suspend notify`. The schema name comes from the rules
// (`settings.schema`) through knex's userParams and is quoted by knex (`??`).
//
// A delivering process claims events with FOR UPDATE SKIP LOCKED and marks them as its own:
// `claimed_by` is the backend pid of a session that holds the advisory lock (0x5357, pid) for as
// long as it delivers, and `claimed_until` a lease. Another process takes an event over when the
// lease ran out or the claiming session is gone (a killed process loses its session, and its lock,
// at once). `delivered` records each channel (digest, customer, webhook) as soon as it went out, so
// a retry resends only what did not.

/** @param {import('knex').Knex} knex */
exports.up = async function up(knex) {
  const schema = knex.userParams.schema;
  await knex.schema.withSchema(schema).alterTable('outbox', (t) => {
    t.integer('claimed_by');
    t.timestamp('claimed_until', { useTz: true });
    t.jsonb('delivered').notNullable().defaultTo('{}');
  });
  // `suspend notify --failed` lists these.
  await knex.raw("create index outbox_failed_idx on ??.outbox (id) where status = 'failed'", [schema]);
};

/** @param {import('knex').Knex} knex */
exports.down = async function down(knex) {
  const schema = knex.userParams.schema;
  await knex.raw('drop index if exists ??.outbox_failed_idx', [schema]);
  await knex.schema.withSchema(schema).alterTable('outbox', (t) => {
    t.dropColumn('delivered');
    t.dropColumn('claimed_until');
    t.dropColumn('claimed_by');
  });
};
