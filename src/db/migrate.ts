import fs from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import { SuspendError, ExitCode } from '../errors';
import { knexWithPool, noTimeouts } from './connection';
import { namesStatements } from './prepared';

/** Shipped beside dist/ in the package. */
export const MIGRATIONS_DIR = path.resolve(__dirname, '../../migrations');
const MIGRATIONS_TABLE = 'knex_migrations';

function migrationConfig(schema: string): Knex.MigratorConfig {
  return {
    directory: MIGRATIONS_DIR,
    schemaName: schema,
    tableName: MIGRATIONS_TABLE,
    loadExtensions: ['.js'],
  };
}

export interface MigrationStatus {
  schema: string;
  applied: string[];
  pending: string[];
}

function migrationFiles(): string[] {
  return fs
    .readdirSync(MIGRATIONS_DIR)
    .filter((f) => f.endsWith('.js'))
    .sort();
}

/**
 * Reads which migrations are applied without creating anything (knex's own `list` creates its
 * table, and a dry run must write nothing).
 */
export async function migrationStatus(knex: Knex, schema: string): Promise<MigrationStatus> {
  const files = migrationFiles();
  const exists = await knex.raw<{ rows: { t: string | null }[] }>('select to_regclass(?) as t', [
    `"${schema.replace(/"/g, '""')}".${MIGRATIONS_TABLE}`,
  ]);
  let applied: string[] = [];
  if (exists.rows[0]?.t) {
    const rows = await knex.withSchema(schema).select<{ name: string }[]>('name').from(MIGRATIONS_TABLE);
    applied = rows.map((r) => r.name).sort();
  }
  return { schema, applied, pending: files.filter((f) => !applied.includes(f)) };
}

/** Advisory lock class of `suspend migrate` (the run lock is 0x5355). */
const MIGRATE_LOCK_CLASS = 0x5356;

/**
 * Applies every pending migration (`suspend migrate`). Knex locks its own table while it runs, but
 * two processes can still race to create that table: a transaction-scoped advisory lock, held on a
 * second connection, makes concurrent `suspend migrate` take turns.
 */
export async function migrateLatest(knex: Knex, schema: string): Promise<MigrationStatus> {
  const holder = withoutIdleInTransactionTimeout(knex, 1);
  const runner = withoutIdleInTransactionTimeout(knex, 2);
  try {
    await holder.transaction(async (trx) => {
      // This transaction idles while the migrations run on the other connection (a statement of
      // its own: a timeout set in a statement does not reach that statement).
      await trx.raw(`select ${noTimeouts(true)}`);
      await trx.raw('select pg_advisory_xact_lock(?, hashtext(?))', [MIGRATE_LOCK_CLASS, schema]);
      await runner.raw('create schema if not exists ??', [schema]);
      await runner.withUserParams({ schema }).migrate.latest(migrationConfig(schema));
    });
  } finally {
    await Promise.all([holder.destroy(), runner.destroy()]);
  }
  return migrationStatus(knex, schema);
}

type PgSession = { query(sql: string): Promise<unknown> };

/**
 * Sessions of their own for `migrate`, with idle_in_transaction_session_timeout off from the start:
 * each of its transactions (the lock holder's, knex's lock, each migration) idles between statements
 * while Node prepares the next, and on a busy machine for longer than a short timeout, which ended
 * the session part way (even between BEGIN and the statement that would turn it off). Best effort:
 * a session the setting fails on is used as it is.
 */
function withoutIdleInTransactionTimeout(knex: Knex, max: number): Knex {
  // Behind a transaction pooler (no named statements) a session setting would reach other clients.
  const ownSessions = namesStatements(knex);
  return knexWithPool(knex, {
    min: 0,
    max,
    afterCreate: (conn: PgSession, done: (err: Error | null, conn: PgSession) => void) => {
      if (!ownSessions) return done(null, conn);
      void conn
        .query("select set_config('idle_in_transaction_session_timeout', '0', false)")
        .catch(() => undefined)
        .then(() => done(null, conn));
    },
  });
}

/** Commands that need suspend's tables call this first, so a missing schema is one clear sentence. */
/** The database `suspend demo` makes on the server it is pointed at. */
export const DEMO_DATABASE = 'suspend_demo';

export async function requireMigrated(knex: Knex, schema: string): Promise<void> {
  const status = await migrationStatus(knex, schema);
  if (status.pending.length === 0) return;
  if (status.applied.length > 0) {
    throw new SuspendError(
      `${status.pending.length} migration(s) of schema "${schema}" are not applied (${status.pending.join(', ')}); run \`suspend migrate\` first.`,
      { exitCode: ExitCode.usage },
    );
  }
  // After `suspend demo`, a command without --database reads the server's default database, which
  // the demo left alone: the data the user means is most likely in the demo's.
  const { rows } = await knex.raw<{ rows: { here: string; demo: boolean }[] }>(
    'select current_database() as here, exists (select 1 from pg_database where datname = ?) as demo',
    [DEMO_DATABASE],
  );
  const here = rows[0]?.here ?? '';
  const demo = rows[0]?.demo && here !== DEMO_DATABASE;
  throw new SuspendError(
    `suspend's schema "${schema}" is not set up in this database (${here}); ${demo ? `to read the one \`suspend demo\` made, add --database ${DEMO_DATABASE}; to use this one, ` : ''}run \`suspend migrate\` first.`,
    { exitCode: ExitCode.usage },
  );
}
