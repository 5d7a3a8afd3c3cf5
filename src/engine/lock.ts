import type { Knex } from 'knex';
import { SuspendError, ExitCode } from '../errors';
import { RESTORE_TIMEOUTS, noTimeouts } from '../db/connection';
import { SqlState, sqlState } from '../db/sqlstate';

/**
 * One session advisory lock per database (and suspend schema) for every writing run. It lives on a
 * connection held for the whole run, so it dies with the session: a crash leaves nothing to unlock.
 * The two-int form shows up in pg_locks as (classid, objid), which lets us name the holder.
 */
export const LOCK_CLASS = 0x5355; // "SU"

/** A timestamp as whole microseconds since 1970, as text: exact, whatever the session's DateStyle. */
const MICROSECONDS = (column: string) => `(extract(epoch from ${column}) * 1000000)::bigint::text`;
/**
 * `--shard I/N` runs hold the database's lock shared (so shards run side by side, and a run over
 * every account waits for them all) and their own shard's lock exclusively.
 */
const SHARD_LOCK_CLASS = 0x5353; // "SS"
/**
 * The split a shard run belongs to (`--shard I/N` holds `N` shared): shards of one split share no
 * account, but `0/2` and `0/3` share a sixth of theirs, and two such runs writing at once can each
 * wait for a row the other locked while Node waits on a page of its own, which Postgres cannot see
 * as a deadlock. So a split is taken only while no other split of the schema is held, checked under
 * a gate. The lock is one bigint: the schema's hash above, N below (0 for the gate), so pg_locks
 * shows the schema as classid and N as objid (objsubid 1), and splits never collide.
 */
const SPLIT_KEY = '((hashtext($1)::bigint << 32) | $2::bigint)';

/** How often a `--wait` run looks again for another split to end. */
const SPLIT_POLL_MS = 500;

export interface HeldLock {
  release(): Promise<void>;
  /** What a page's transaction checks before it commits (see confirmLockHeld). */
  proof: LockProof;
}

/** The session that holds a run's locks, and the locks. */
export interface LockProof {
  pid: number;
  /** The session's backend_start in microseconds since 1970 (as text): a pid can be reused. */
  started: string;
  /** Every lock the run holds: the schema's, or for a shard run the schema's shared and its shard's. */
  locks: { cls: number; key: string; shared: boolean }[];
}

interface Holder {
  application_name: string;
  backend_start: Date;
  client_addr: string | null;
  pid: number;
}

const SESSION_SETUP = `
  select set_config('application_name', $1, false),
         ${noTimeouts(false)},
         a.pid, ${MICROSECONDS('a.backend_start')} as started
    from pg_stat_activity a
   where a.pid = pg_backend_pid()`;

type PgConnection = { query(sql: string, params?: unknown[]): Promise<{ rows: Record<string, unknown>[] }> };

export async function acquireRunLock(
  knex: Knex,
  schema: string,
  options: {
    wait: boolean;
    description: string;
    /** Told once, with what the run waits behind (e.g. `waiting behind "suspend sweep by …"`). */
    onWait?: (note: string) => void;
    /** `I/N` for a `--shard` run. */
    shard?: string | null;
    /** Ctrl-C: a `--wait` stops waiting, and the run does not start. */
    signal?: AbortSignal;
    /** Told once the locks are held: from then on the signal above no longer stops the run. */
    onLocked?: () => void;
  },
): Promise<HeldLock> {
  const conn = (await knex.client.acquireConnection()) as PgConnection;
  const shard = options.shard ?? null;
  const locks: { cls: number; key: string; shared: boolean; what: string }[] = shard
    ? [
        { cls: LOCK_CLASS, key: schema, shared: true, what: `the lock on schema "${schema}"` },
        { cls: SHARD_LOCK_CLASS, key: `${schema}/${shard}`, shared: false, what: `shard ${shard}` },
      ]
    : [{ cls: LOCK_CLASS, key: schema, shared: false, what: `the lock on schema "${schema}"` }];
  const held: typeof locks = [];
  /** The split (N) this shard run holds, released last. */
  let splitHeld: number | null = null;
  const release = async () => {
    try {
      for (const l of held.reverse()) {
        await conn.query(`select pg_advisory_unlock${l.shared ? '_shared' : ''}($1, hashtext($2))`, [
          l.cls,
          l.key,
        ]);
      }
      if (splitHeld !== null)
        await conn.query(`select pg_advisory_unlock_shared(${SPLIT_KEY})`, [`${schema}/split`, splitHeld]);
      await conn.query(RESTORE_TIMEOUTS);
    } catch (err) {
      // The session is gone (connection cut, server stopped): the lock died with it, and the error
      // that ended the run is the one worth reporting, not this one. Were it still there, it would
      // hold what it failed to give back: the pool closes it instead of handing it out again.
      disposeOf(conn, err);
    } finally {
      await Promise.resolve(knex.client.releaseConnection(conn)).catch(() => undefined);
    }
  };
  try {
    // Name this session so a second run can say who holds the lock, and keep it from being ended
    // for idling or its --wait cut short by a timeout set for the role (see noTimeouts).
    const named = await conn.query(SESSION_SETUP, [options.description.slice(0, 63)]);
    const session = named.rows[0] as { pid: number; started: string };
    if (shard) {
      await takeSplit(conn, `${schema}/split`, Number(shard.split('/')[1]), shard, options);
      splitHeld = Number(shard.split('/')[1]);
    }
    for (const l of locks) {
      const kind = l.shared ? '_shared' : '';
      const tried = await conn.query(`select pg_try_advisory_lock${kind}($1, hashtext($2)) as ok`, [
        l.cls,
        l.key,
      ]);
      if (tried.rows[0]?.ok !== true) {
        // A shared lock is also refused while a run waits for the exclusive one: that run is ahead.
        const queued = l.shared && !(await heldExclusively(knex, l.key, l.cls));
        const holder = await describeHolder(knex, l.key, l.cls, queued ? 'waiting' : 'holding');
        if (!options.wait) {
          throw new SuspendError(
            queued
              ? `Another suspend run waits for ${l.what} (${holder}) and goes first, so this run cannot start beside the ones that hold it; pass --wait to run after it.`
              : `Another suspend run holds ${l.what}: ${holder}; wait for it to finish or pass --wait.`,
            { exitCode: ExitCode.lockHeld },
          );
        }
        options.onWait?.(`waiting behind ${holder}`);
        // Counted as held before the wait: released whether it ends with the lock or is cut short.
        held.push(l);
        await untilAborted({ knex, pid: session.pid }, options.signal, holder, () =>
          conn.query(`select pg_advisory_lock${kind}($1, hashtext($2))`, [l.cls, l.key]),
        );
      } else held.push(l);
    }
    // Interrupted as the last lock was granted: the run does not start (the catch gives them back).
    if (options.signal?.aborted) throw interrupted(null);
    options.onLocked?.();
    return {
      release,
      proof: { ...session, locks: locks.map(({ cls, key, shared }) => ({ cls, key, shared })) },
    };
  } catch (err) {
    await release();
    throw err;
  }
}

/**
 * A split's turn: the runs of split N that wait for another split to end hold N + TURN (shared).
 * While one does, a run of a split that is not waiting (even one whose siblings run now) does not
 * start: otherwise shards of one count, started one after another, could keep the waiting split out
 * for good.
 */
const TURN = 0x40000000;

/**
 * Takes split `count` of `splits` (shared) once no session holds another split of it, nor waits for
 * its turn (see TURN): under the gate (split 0, exclusive), so two runs of different splits starting
 * together cannot both find the other absent. A run that waits for a split held by others takes its
 * own split's turn meanwhile; those waiting with a turn go by held splits alone, and the first of
 * them to find none held goes.
 */
async function takeSplit(
  conn: PgConnection,
  splits: string,
  count: number,
  shard: string,
  options: { wait: boolean; onWait?: (note: string) => void; signal?: AbortSignal },
): Promise<void> {
  let waited = false;
  let turn = false;
  try {
    for (;;) {
      await conn.query(`select pg_advisory_lock(${SPLIT_KEY})`, [splits, 0]);
      let other: { application_name: string; pid: number; waits: boolean } | undefined;
      try {
        const r = await conn.query(
          `select a.application_name, a.pid, l.objid::bigint >= $3 as waits
             from pg_locks l join pg_stat_activity a on a.pid = l.pid
            where l.locktype = 'advisory' and l.granted and l.objsubid = 1
              and l.database = (select oid from pg_database where datname = current_database())
              and l.classid = hashtext($1)::oid and l.objid not in (0, $2::int::oid, ($2::int + $3)::oid)
              and (l.objid::bigint < $3 or not $4::boolean)
            order by l.objid::bigint >= $3
            limit 1`,
          [splits, count, TURN, turn],
        );
        other = r.rows[0] as typeof other;
        if (!other) await conn.query(`select pg_advisory_lock_shared(${SPLIT_KEY})`, [splits, count]);
        else if (!other.waits && options.wait && !turn) {
          await conn.query(`select pg_advisory_lock_shared(${SPLIT_KEY})`, [splits, count + TURN]);
          turn = true;
        }
      } finally {
        await conn.query(`select pg_advisory_unlock(${SPLIT_KEY})`, [splits, 0]);
      }
      if (!other) return;
      const holder = `"${other.application_name}" (backend pid ${other.pid}${other.waits ? ', waiting for its turn' : ''})`;
      if (!options.wait) {
        throw new SuspendError(
          other.waits
            ? `Another suspend run waits to split the accounts another way: ${holder} waits to run a shard of another count than --shard ${shard} and goes first, since shards of different counts share accounts; pass --wait to run after it.`
            : `Another suspend run splits the accounts another way: ${holder} runs a shard of another count than --shard ${shard}, and shards of different counts share accounts; give every shard the same count, or wait for it to finish or pass --wait.`,
          { exitCode: ExitCode.lockHeld },
        );
      }
      if (!waited) options.onWait?.(`waiting behind ${holder}`);
      waited = true;
      await untilAborted(null, options.signal, holder, () => sleep(SPLIT_POLL_MS, options.signal));
    }
  } finally {
    // Given back once the split is taken, or the wait ends: a dead session has given it back already.
    if (turn)
      await conn
        .query(`select pg_advisory_unlock_shared(${SPLIT_KEY})`, [splits, count + TURN])
        .catch((err: unknown) => disposeOf(conn, err));
  }
}

const sleep = (ms: number, signal: AbortSignal | undefined) =>
  new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });

/**
 * Runs one step of a `--wait` (a blocking lock call, or a pause between looks) so that Ctrl-C ends
 * it: a lock call is cancelled from another session, since the waiting one cannot take a statement.
 * The cancel is repeated until the call returns, in case it reached the server before the call did.
 * Then the run stops, as a run refused without --wait does: nothing was written.
 */
async function untilAborted(
  /** The waiting session (its server pid: behind PgBouncer the client's is not the server's). */
  session: { knex: Knex; pid: number } | null,
  signal: AbortSignal | undefined,
  holder: string,
  step: () => Promise<unknown>,
): Promise<void> {
  const stopped = () => interrupted(holder);
  if (signal?.aborted) throw stopped();
  let timer: NodeJS.Timeout | undefined;
  const sent: Promise<unknown>[] = [];
  const cancel = () => {
    if (!session) return;
    const { knex, pid } = session;
    const send = () => sent.push(knex.raw('select pg_cancel_backend(?)', [pid]).catch(() => undefined));
    send();
    timer = setInterval(send, 250);
  };
  signal?.addEventListener('abort', cancel, { once: true });
  try {
    await step();
  } catch (err) {
    if (signal?.aborted && sqlState(err) === SqlState.queryCanceled) throw stopped();
    throw err;
  } finally {
    clearInterval(timer);
    signal?.removeEventListener('abort', cancel);
    // A cancel that reaches the session once it is idle is dropped; one still under way could
    // otherwise cancel the next statement, the release of the lock.
    await Promise.all(sent);
  }
  // Interrupted just as the wait ended: what it took is given back by the caller's release.
  if (signal?.aborted) throw stopped();
}

/** Ctrl-C before the run took its locks: it did not start (exit 3, as when refused without --wait). */
function interrupted(waitedBehind: string | null): SuspendError {
  return new SuspendError(
    waitedBehind
      ? `Stopped waiting behind ${waitedBehind} (interrupted); this run did not start and wrote nothing.`
      : 'Interrupted before the run started; it wrote nothing.',
    { exitCode: ExitCode.lockHeld },
  );
}

/** Marks a pooled session knex must close rather than hand out again (see knex's connectionIsDisposed). */
function disposeOf(conn: PgConnection, err: unknown): void {
  (conn as { __knex__disposed?: unknown }).__knex__disposed = err ?? 'suspend could not give back its locks';
}

/** Whether the session that took the run lock is still there and holds it (its exclusive lock). */
async function lockHeld(knex: Knex | Knex.Transaction, proof: LockProof): Promise<boolean> {
  const exclusive = proof.locks.find((l) => !l.shared);
  const r = await knex.raw<{ rows: { held: boolean }[] }>(
    `select exists (select 1 from pg_locks l join pg_stat_activity a on a.pid = l.pid
                     where l.locktype = 'advisory' and l.granted and l.mode = 'ExclusiveLock' and l.pid = ?
                       and l.classid = ? and l.objid = hashtext(?)::oid and l.objsubid = 2
                       and ${MICROSECONDS('a.backend_start')} = ?) as held`,
    [proof.pid, exclusive?.cls ?? 0, exclusive?.key ?? '', proof.started],
  );
  return r.rows[0]?.held === true;
}

/**
 * Refuses to go on when the session holding the run lock has ended (terminated, timed out, cut off
 * by a network failure the server saw first): the lock died with it, so another run may hold it now.
 * A page checks this last, inside its transaction, so a page whose lock is gone rolls back instead
 * of acting beside another run.
 */
export async function confirmLockHeld(knex: Knex | Knex.Transaction, proof: LockProof): Promise<void> {
  if (await lockHeld(knex, proof)) return;
  throw new SuspendError(
    `The session holding the run lock (backend pid ${proof.pid}) ended (terminated, or cut off from the server), so another run could take the lock: suspend stopped without committing what it was writing; what was committed stays, so run the command again (an interrupted backfill continues with \`suspend backfill --resume\`).`,
    { exitCode: ExitCode.failed },
  );
}

/**
 * Whether a run may still write its own ledger row in `trx`: its lock's session still holds the
 * lock, or the lock is free and `trx` takes it until it ends, so no run starts meanwhile. False
 * when another session holds it: another run took over, maybe resuming this very run.
 */
export async function lockStillOurs(trx: Knex.Transaction, proof: LockProof): Promise<boolean> {
  if (await lockHeld(trx, proof)) return true;
  for (const l of proof.locks) {
    const r = await trx.raw<{ rows: { ok: boolean }[] }>(
      `select pg_try_advisory_xact_lock${l.shared ? '_shared' : ''}(?, hashtext(?)) as ok`,
      [l.cls, l.key],
    );
    if (r.rows[0]?.ok !== true) return false;
  }
  return true;
}

/** The backend pids of the sessions that hold the schema's run lock (a shard run's share it). */
export async function runLockHolders(knex: Knex, schema: string): Promise<Set<number>> {
  const result = await knex.raw<{ rows: { pid: number }[] }>(
    `select l.pid from pg_locks l
      where l.locktype = 'advisory' and l.granted
        and l.database = (select oid from pg_database where datname = current_database())
        and l.classid = ? and l.objid = hashtext(?)::oid and l.objsubid = 2`,
    [LOCK_CLASS, schema],
  );
  return new Set(result.rows.map((r) => Number(r.pid)));
}

/** Whether a session holds the lock `key` exclusively (not only shared, nor only waiting for it). */
async function heldExclusively(knex: Knex, key: string, cls: number): Promise<boolean> {
  const r = await knex.raw<{ rows: { held: boolean }[] }>(
    `select exists (select 1 from pg_locks l
                     where l.locktype = 'advisory' and l.granted and l.mode = 'ExclusiveLock'
                       and l.database = (select oid from pg_database where datname = current_database())
                       and l.classid = ? and l.objid = hashtext(?)::oid and l.objsubid = 2) as held`,
    [cls, key],
  );
  return r.rows[0]?.held === true;
}

export async function describeHolder(
  knex: Knex,
  schema: string,
  cls = LOCK_CLASS,
  /** The session holding the lock, or one waiting for it (exclusively: the one ahead of shared requests). */
  which: 'holding' | 'waiting' = 'holding',
): Promise<string> {
  const result = await knex.raw<{ rows: Holder[] }>(
    `select a.application_name, a.backend_start, a.client_addr::text as client_addr, a.pid
       from pg_locks l join pg_stat_activity a on a.pid = l.pid
      where l.locktype = 'advisory' and l.granted = ?
        and (l.granted or l.mode = 'ExclusiveLock')
        and l.database = (select oid from pg_database where datname = current_database())
        and l.classid = ? and l.objid = hashtext(?)::oid and l.objsubid = 2`,
    [which === 'holding', cls, schema],
  );
  const h = result.rows[0];
  if (!h) return 'a session that has just finished';
  const since = h.backend_start instanceof Date ? h.backend_start.toISOString() : String(h.backend_start);
  return `"${h.application_name}" (backend pid ${h.pid}${h.client_addr ? ` from ${h.client_addr}` : ''}) since ${since}`;
}
