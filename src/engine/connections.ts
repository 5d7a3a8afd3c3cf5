import type { Knex } from 'knex';
import { UsageError } from '../errors';

/**
 * Whether Postgres can take the connections a run with `--workers N` (N > 1) is about to open:
 * every worker's pipeline (see PIPELINE_CONNECTIONS in pipeline.ts) plus the run's own pool (the
 * lock, the ledger). A run of one worker is not checked: it counts as up to eight but opens fewer,
 * and runs that always worked under a small connection limit must go on working. Checked before the run is
 * opened or a page is read, so `--workers 64` on a server with room for 93 is one sentence (exit 2)
 * instead of a run waiting for connections or failing on "too many clients" halfway.
 */

/** A cap on this role's connections: the server's, the role's own or the database's. */
interface ConnectionCap {
  /** Who sets it, as the sentence names it: the server, role "x", database "y". */
  who: string;
  /** What to raise: max_connections, its connection limit. */
  setting: string;
  limit: number;
  /** Slots this role may not take (the server's superuser reserve). */
  reserved: number;
  /** Connections open now, other than this process's. */
  inUse: number;
}

interface CapsRow {
  max_connections: number;
  reserved: number;
  superuser: boolean;
  in_use: number;
  role: string;
  role_limit: number;
  role_in_use: number;
  database: string;
  database_limit: number;
  database_in_use: number;
}

/**
 * A superuser is held only by max_connections; any other role also by the slots reserved for
 * superusers (and, from Postgres 16, reserved_connections unless it may use them) and by its own
 * and the database's connection limits. Sessions of other roles show a null backend_type to an
 * unprivileged role; background processes have no user.
 */
const CAPS = `
  with client as (
    select usesysid, datid from pg_stat_activity
     where backend_type = 'client backend' or (backend_type is null and usesysid is not null)
  )
  select current_setting('max_connections')::int as max_connections,
         current_setting('superuser_reserved_connections')::int
           + case when exists (select 1 from pg_roles r
                                where r.rolname = 'pg_use_reserved_connections' and pg_has_role(r.oid, 'member'))
                  then 0
                  else coalesce(nullif(current_setting('reserved_connections', true), '')::int, 0) end as reserved,
         r.rolsuper as superuser,
         (select count(*)::int from client) as in_use,
         r.rolname as role, r.rolconnlimit as role_limit,
         (select count(*)::int from client where usesysid = r.oid) as role_in_use,
         d.datname as database, d.datconnlimit as database_limit,
         (select count(*)::int from client where datid = d.oid) as database_in_use
    from pg_roles r, pg_database d
   where r.rolname = current_user and d.datname = current_database()`;

/** The connections this process has open through `knex` (they count as in use and as needed). */
function openConnections(knex: Knex): number {
  const pool = (knex.client as { pool?: { numUsed(): number; numFree(): number } }).pool;
  return pool ? pool.numUsed() + pool.numFree() : 1;
}

async function connectionCaps(knex: Knex): Promise<ConnectionCap[]> {
  const row = ((await knex.raw<{ rows: CapsRow[] }>(CAPS)).rows[0] as CapsRow | undefined) ?? null;
  if (!row) return [];
  const ours = openConnections(knex);
  const others = (n: number) => Math.max(0, n - ours);
  const caps: ConnectionCap[] = [
    {
      who: 'the server',
      setting: 'max_connections',
      limit: row.max_connections,
      reserved: row.superuser ? 0 : row.reserved,
      inUse: others(row.in_use),
    },
  ];
  // Superusers are exempt from role and database connection limits; -1 is no limit.
  if (row.superuser) return caps;
  const own = { setting: 'its connection limit', reserved: 0 };
  if (row.role_limit >= 0)
    caps.push({ ...own, who: `role "${row.role}"`, limit: row.role_limit, inUse: others(row.role_in_use) });
  if (row.database_limit >= 0)
    caps.push({
      ...own,
      who: `database "${row.database}"`,
      limit: row.database_limit,
      inUse: others(row.database_in_use),
    });
  return caps;
}

const roomOf = (cap: ConnectionCap) => cap.limit - cap.reserved - cap.inUse;

export interface ConnectionDemand {
  workers: number;
  /** Connections each worker's pipeline opens. */
  perWorker: number;
  /** A resumed run, which keeps the split it started with whatever --workers says. */
  resumedRun?: string;
}

/**
 * Throws a UsageError (exit 2) when the run would need more connections than the tightest cap
 * leaves: what it needs, the room and why, and what to do.
 */
export async function checkConnectionRoom(knex: Knex, demand: ConnectionDemand): Promise<void> {
  // The run's own pool may open up to its max (knex's default is 10).
  const own = (knex.client.config as Knex.Config).pool?.max ?? 10;
  const needed = demand.workers * demand.perWorker + own;
  const caps = await connectionCaps(knex);
  const tightest = caps.reduce<ConnectionCap | null>((t, c) => (t && roomOf(t) <= roomOf(c) ? t : c), null);
  if (!tightest || needed <= roomOf(tightest)) return;
  const room = roomOf(tightest);
  const reserved = tightest.reserved > 0 ? `, ${tightest.reserved} reserved` : '';
  const why = `${tightest.who} has room for ${room} (${tightest.setting} ${tightest.limit}${reserved}, ${tightest.inUse} in use)`;
  const fits = Math.floor((room - own) / demand.perWorker);
  const raise = `raise ${tightest.setting}`;
  if (demand.resumedRun !== undefined) {
    throw new UsageError(
      `Run ${demand.resumedRun} continues with the ${demand.workers} workers it started with, which need ${needed} connections, but ${why}; ${raise}, or give the run up with \`suspend backfill --abandon ${demand.resumedRun}\`.`,
    );
  }
  const instead =
    fits >= 1 ? `use --workers ${fits} or fewer, or ${raise}` : `close some of them or ${raise}`;
  throw new UsageError(`--workers ${demand.workers} needs ${needed} connections but ${why}; ${instead}.`);
}
