import { createHash } from 'node:crypto';
import type { Knex } from 'knex';
import { SqlState, sqlState } from './sqlstate';

/**
 * Runs a query as a named prepared statement: a connection parses and analyzes each distinct SQL
 * text once, not once per page (about 0.5 ms of a 10 ms page read). The name is derived from the
 * text, so every connection of a pool prepares the same statement under the same name. The plan is
 * still made for each execution's values (the pipeline sessions set plan_cache_mode to
 * force_custom_plan: a cached generic page plan measured five times slower).
 *
 * Behind a pooler that hands each transaction another server session (PgBouncer in transaction
 * mode, before it tracked prepared statements), the server may not know the name, or know it
 * already: that query runs again unnamed, and so does every later one through this knex. Such a
 * pooler may also run a named statement on another session without an error, so users behind one
 * turn named statements off up front (`--no-prepared-statements`, `database.prepared_statements`).
 */

/** The knex clients whose queries run unnamed. */
const unnamed = new WeakSet<object>();

/** Queries through this knex run unnamed from now on; returns it. */
export function withoutPreparedStatements(knex: Knex): Knex {
  unnamed.add(knex.client);
  return knex;
}

/** Whether runPrepared names statements on this knex (a pool made for it should do the same). */
export function namesStatements(knex: Knex): boolean {
  return !unnamed.has(knex.client);
}

export async function runPrepared<T>(knex: Knex, build: () => Knex.Raw): Promise<T> {
  if (!namesStatements(knex)) return (await build()) as T;
  const query = build();
  const name = `suspend_${createHash('sha1').update(query.toSQL().sql).digest('hex').slice(0, 24)}`;
  try {
    return (await query.options({ name })) as T;
  } catch (err) {
    const code = sqlState(err);
    if (code !== SqlState.invalidSqlStatementName && code !== SqlState.duplicatePreparedStatement) throw err;
    withoutPreparedStatements(knex);
    return (await build()) as T;
  }
}
