'use strict';
// suspend's own schema. The schema name comes from the rules (`settings.schema`, default
// "suspend") through knex's userParams; every identifier is quoted by knex.
// Nothing here touches the host's tables.

/** @param {import('knex').Knex} knex */
exports.up = async function up(knex) {
  const schema = knex.userParams.schema;
  await knex.schema.createSchemaIfNotExists(schema);
  // A schema builder accumulates statements, so take a fresh one per table.
  const s = () => knex.schema.withSchema(schema);

  // The ledger: one row per run (backfill, sweep, revert, reinstate...).
  await s().createTable('runs', (t) => {
    t.bigIncrements('id');
    t.text('kind').notNullable();
    t.text('status').notNullable(); // running | succeeded | failed | interrupted | stopped | abandoned
    t.date('as_of').notNullable();
    t.text('rules_hash').notNullable();
    t.text('rules_file');
    t.text('org_filter');
    t.jsonb('options').notNullable().defaultTo('{}');
    t.jsonb('counts').notNullable().defaultTo('{}');
    t.text('error');
    t.text('started_by').notNullable();
    t.text('host');
    t.integer('pid');
    t.timestamp('started_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('heartbeat_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('finished_at', { useTz: true });
    t.bigInteger('reverts_run_id');
  });
  await knex.raw('create index on ??.runs (kind, status)', [schema]);

  // Resume points: one row per run and shard, advanced in the same transaction as each page's writes.
  await s().createTable('checkpoints', (t) => {
    t.bigInteger('run_id').notNullable().references('id').inTable(`${schema}.runs`);
    t.text('shard').notNullable().defaultTo('0/1');
    t.text('last_key');
    t.integer('pages').notNullable().defaultTo(0);
    t.bigInteger('scanned').notNullable().defaultTo(0);
    t.jsonb('counts').notNullable().defaultTo('{}');
    t.boolean('done').notNullable().defaultTo(false);
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.primary(['run_id', 'shard']);
  });

  // Current state of each account under each policy. Keys are text so any key type fits.
  await s().createTable('account_states', (t) => {
    t.text('customer_key').notNullable();
    t.text('policy').notNullable();
    t.text('org_id');
    t.text('stage'); // null: clear
    t.integer('stage_index').notNullable().defaultTo(-1);
    t.boolean('blocks_booking').notNullable().defaultTo(false);
    t.boolean('allows_login').notNullable().defaultTo(true);
    t.text('message');
    t.jsonb('reasons').notNullable().defaultTo('[]');
    t.date('entered_on');
    t.date('episode_started_on');
    t.date('reinstated_on');
    t.specificType('tags', 'text[]').notNullable().defaultTo('{}');
    // Values of mapped host columns (e.g. customers.status) before suspend first set them, to restore on clear.
    t.jsonb('host_before');
    t.bigInteger('run_id');
    t.integer('version').notNullable().defaultTo(1);
    t.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.primary(['customer_key', 'policy']);
  });
  // The booking guard and account_status() look up blocked accounts by key.
  await knex.raw('create index on ??.account_states (customer_key) where blocks_booking', [schema]);

  // Append-only history of every change, with its evidence.
  await s().createTable('history', (t) => {
    t.bigIncrements('id');
    t.bigInteger('run_id').references('id').inTable(`${schema}.runs`);
    t.text('customer_key').notNullable();
    t.text('org_id');
    t.text('policy').notNullable();
    t.text('kind').notNullable(); // enter | escalate | deescalate | clear | reinstate | revert
    t.text('from_stage');
    t.text('to_stage');
    t.integer('from_index').notNullable().defaultTo(-1);
    t.integer('to_index').notNullable().defaultTo(-1);
    t.jsonb('reasons').notNullable().defaultTo('[]');
    t.jsonb('previous_state'); // the full prior account_states row, so revert can restore it
    t.text('rules_hash');
    t.date('as_of').notNullable();
    t.text('actor').notNullable();
    t.timestamp('at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
  });
  await knex.raw('create index on ??.history (customer_key, policy, id)', [schema]);
  await knex.raw('create index on ??.history (run_id)', [schema]);

  // Events to deliver, written in the same transaction as the change they report.
  await s().createTable('outbox', (t) => {
    t.bigIncrements('id');
    t.bigInteger('run_id').references('id').inTable(`${schema}.runs`);
    t.bigInteger('history_id');
    t.text('org_id');
    t.text('customer_key').notNullable();
    t.text('event').notNullable(); // enter | escalate | clear | reinstate | revert ...
    t.jsonb('payload').notNullable();
    t.text('status').notNullable().defaultTo('pending'); // pending | sent | failed
    t.integer('attempts').notNullable().defaultTo(0);
    t.timestamp('next_attempt_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.text('last_error');
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('sent_at', { useTz: true });
  });
  await knex.raw("create index on ??.outbox (next_attempt_at) where status = 'pending'", [schema]);

  // Exclusions made by operators (`suspend exclude`); the rules file may add more.
  await s().createTable('exclusions', (t) => {
    t.bigIncrements('id');
    t.text('customer_key').notNullable();
    t.text('reason').notNullable();
    t.date('until');
    t.text('created_by').notNullable();
    t.timestamp('created_at', { useTz: true }).notNullable().defaultTo(knex.fn.now());
    t.timestamp('removed_at', { useTz: true });
    t.text('removed_by');
  });
  await knex.raw('create unique index on ??.exclusions (customer_key) where removed_at is null', [schema]);
};

/** @param {import('knex').Knex} knex */
exports.down = async function down(knex) {
  const schema = knex.userParams.schema;
  for (const table of ['exclusions', 'outbox', 'history', 'account_states', 'checkpoints', 'runs']) {
    await knex.schema.withSchema(schema).dropTableIfExists(table);
  }
};
