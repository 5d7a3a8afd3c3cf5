'use strict';
// History rows and outbox events name their run by id without a foreign key. The key's check took a
// row lock on the run for every row a page wrote (about 4 ms of each 850-change page, a tenth of the
// page's write) and, with --workers or --shard writing at once, shared locks on that one run row.
// Runs are written before any of their pages and never deleted, so the check guarded nothing.
// The schema name comes from the rules (`settings.schema`) through knex's userParams.

/** @param {import('knex').Knex} knex */
exports.up = async function up(knex) {
  const schema = knex.userParams.schema;
  for (const table of ['history', 'outbox']) {
    await knex.schema.withSchema(schema).alterTable(table, (t) => {
      t.dropForeign('run_id');
    });
  }
};

/** @param {import('knex').Knex} knex */
exports.down = async function down(knex) {
  const schema = knex.userParams.schema;
  for (const table of ['history', 'outbox']) {
    await knex.schema.withSchema(schema).alterTable(table, (t) => {
      t.foreign('run_id').references('id').inTable(`${schema}.runs`);
    });
  }
};
