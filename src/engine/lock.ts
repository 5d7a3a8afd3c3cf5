import type { Knex } from 'knex';
import { SuspendError, ExitCode } from '../errors';

/**
 * One session advisory lock per database (and suspend schema) for every writing run. It lives on a
 * connection held for the whole run, so it dies with the session: a crash leaves nothing to unlock.
 * The two-int form shows up in pg_locks as (classid, objid), which lets us name the holder.
 */
const LOCK_CLASS = 0x5355; // "SU"

export interface HeldLock {
  release(): Promise<void>;
}

interface Holder {
  application_name: string;
  backend_start: Date;
  client_addr: string | null;
  pid: number;
}

type PgConnection = { query(sql: string, params?: unknown[]): Promise<{ rows: Record<string, unknown>[] }> };

export async function acquireRunLock(
  knex: Knex,
  schema: string,
  options: { wait: boolean; description: string; onWait?: (holder: string) => void },
): Promise<HeldLock> {
  const conn = (await knex.client.acquireConnection()) as PgConnection;
  const release = async () => {
    try {
      await conn.query('select pg_advisory_unlock($1, hashtext($2))', [LOCK_CLASS, schema]);
    } catch {
      // The session is gone (connection cut, server stopped): the lock died with it, and the error
      // that ended the run is the one worth reporting, not this one.
    } finally {
      await Promise.resolve(knex.client.releaseConnection(conn)).catch(() => undefined);
    }
  };
  try {
    // Name this session so a second run can say who holds the lock.
    await conn.query('select set_config($1, $2, false)', [
      'application_name',
      options.description.slice(0, 63),
    ]);
    const tried = await conn.query('select pg_try_advisory_lock($1, hashtext($2)) as ok', [
      LOCK_CLASS,
      schema,
    ]);
    if (tried.rows[0]?.ok === true) return { release };
    const holder = await describeHolder(knex, schema);
    if (!options.wait) {
      throw new SuspendError(
        `Another suspend run holds the lock on schema "${schema}": ${holder}; wait for it to finish or pass --wait.`,
        { exitCode: ExitCode.lockHeld },
      );
    }
    options.onWait?.(holder);
    await conn.query('select pg_advisory_lock($1, hashtext($2))', [LOCK_CLASS, schema]);
    return { release };
  } catch (err) {
    await knex.client.releaseConnection(conn);
    throw err;
  }
}

export async function describeHolder(knex: Knex, schema: string): Promise<string> {
  const result = await knex.raw<{ rows: Holder[] }>(
    `select a.application_name, a.backend_start, a.client_addr::text as client_addr, a.pid
       from pg_locks l join pg_stat_activity a on a.pid = l.pid
      where l.locktype = 'advisory' and l.granted
        and l.database = (select oid from pg_database where datname = current_database())
        and l.classid = ? and l.objid = hashtext(?)::oid and l.objsubid = 2`,
    [LOCK_CLASS, schema],
  );
  const h = result.rows[0];
  if (!h) return 'a session that has just finished';
  const since = h.backend_start instanceof Date ? h.backend_start.toISOString() : String(h.backend_start);
  return `"${h.application_name}" (backend pid ${h.pid}${h.client_addr ? ` from ${h.client_addr}` : ''}) since ${since}`;
}
