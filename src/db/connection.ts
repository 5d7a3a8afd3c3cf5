import knexFactory, { type Knex } from 'knex';
import pg from 'pg';
import { parse as parseConnectionString } from 'pg-connection-string';
import { SuspendError, UsageError, ExitCode, errorMessage } from '../errors';
import { SqlState, isConnectionLost, lostConnectionReason, sqlState } from './sqlstate';
import { namesStatements, withoutPreparedStatements } from './prepared';
import { postgresUrlProblem } from './url';

export { redact } from './url';

/**
 * Where the database URL came from, in precedence order: flag > environment > config file > embedded;
 * the rules file's as `database.url in FILE`, which is how messages name it.
 */
export type UrlSource = '--database-url' | 'DATABASE_URL' | `database.url in ${string}` | 'embedded';

export interface ResolvedUrl {
  url: string | null;
  source: UrlSource;
}

export function resolveDatabaseUrl(input: {
  flag?: string | undefined;
  env?: string | undefined;
  config?: string | null | undefined;
  /** The rules file that gives `config`, as messages name it. */
  configFile?: string | null | undefined;
}): ResolvedUrl {
  if (input.flag) return { url: input.flag, source: '--database-url' };
  if (input.env) return { url: input.env, source: 'DATABASE_URL' };
  if (input.config)
    return { url: input.config, source: `database.url in ${input.configFile ?? 'the rules file'}` };
  return { url: null, source: 'embedded' };
}

/**
 * The same URL naming another database on the same server (`--database`, the demo's and the bench's
 * own databases). The name travels in the URL's path, which URL parsing normalizes (".", "..", tabs)
 * and the driver decodes with decodeURI (%3F stays %3F): a name the driver would not read back as
 * given is refused, never sent to some other database.
 */
export function withDatabase(url: string, database: string): string {
  if (database === '') {
    throw new UsageError('--database: the name is empty; give a database name, e.g. suspend_demo.');
  }
  // A socket URL may have no host (postgres://user@/db?host=/run/postgresql), which URL() refuses;
  // the driver parses those with a stand-in host, and so does this.
  const noHost = !URL.canParse(url) && url.includes('@/');
  const u = new URL(noHost ? url.replace('@/', `@${STAND_IN_HOST}/`) : url);
  u.pathname = `/${database}`;
  const out = noHost ? u.toString().replace(`@${STAND_IN_HOST}/`, '@/') : u.toString();
  if (parseConnectionString(out).database !== database) {
    throw new UsageError(
      `--database: ${JSON.stringify(database)} cannot be named in a Postgres URL as written ` +
        '(".", "..", "/." or "/.." parts, tabs, line breaks, ?, # and some % sequences do not survive it); name another database.',
    );
  }
  return out;
}

const STAND_IN_HOST = 'suspend-stand-in-host';

/** Refuses a --database name withDatabase would refuse, before a server is started for it. */
export function checkDatabaseName(database: string): void {
  withDatabase('postgres://localhost', database);
}

/** host:port/database of a URL, without the password, for messages. */
export function describeUrl(url: string): string {
  const c = parseConnectionString(url);
  // A socket's folder and the database joined by a slash would read as one path.
  if (c.host?.startsWith('/')) return `socket ${c.host}, database ${c.database ?? ''}`;
  // The parser gives '' for a port (or host) the URL leaves out; the driver then uses 5432 (localhost).
  return `${c.host || 'localhost'}:${c.port || 5432}/${c.database ?? ''}`;
}

export function validateUrl(url: string, source: UrlSource): void {
  const problem = postgresUrlProblem(url);
  if (problem !== null) throw new UsageError(`${source}: ${problem}.`);
}

function quiet(): void {}

export interface KnexOptions {
  pool?: number;
  applicationName?: string;
  /** false: every query unnamed, for PgBouncer in transaction mode (see db/prepared.ts). */
  preparedStatements?: boolean;
}

/** How long the pool keeps a session nobody uses (tarn's default, said here because IDLE_FLOOR_MS depends on it). */
const POOL_IDLE_MS = 30_000;

/**
 * The least idle_session_timeout (Postgres 14+) a pooled session keeps: past the pool's own limit, so
 * that the pool closes an idle session before the server does. A session the server ends while
 * idle in the pool can be handed out in the moment its end is on the way, and the statement given
 * to it fails the command. Sessions still do not idle for long: the pool closes them.
 */
const IDLE_FLOOR_MS = POOL_IDLE_MS + 10_000;

/** A session's idle_session_timeout (`value`, in ms, 0 for none) raised to IDLE_FLOOR_MS if lower. */
const idleFloor = (value: string) =>
  `case when ${value}::bigint between 1 and ${IDLE_FLOOR_MS - 1} then '${IDLE_FLOOR_MS}' else ${value} end`;

const RAISE_IDLE_TIMEOUT = `select set_config(name, ${idleFloor('setting')}, false) from pg_settings
  where name = 'idle_session_timeout'`;

/**
 * Raises a new session's idle_session_timeout to IDLE_FLOOR_MS if lower, for a pool's afterCreate.
 * Best effort, never rejects: a session it fails on (a 1 ms statement_timeout) is used as it is, and
 * a lost one fails its first statement as usual (a failed afterCreate would leave its connection
 * open, and the process waiting on it after it has said why it stops).
 */
export async function raiseIdleTimeout(conn: Pick<pg.Client, 'query'>): Promise<void> {
  await conn.query(RAISE_IDLE_TIMEOUT).catch(() => undefined);
}

/** The oldest Postgres suspend runs on (the booking guard relies on 13's trigger catalog). */
const OLDEST_POSTGRES = '13';

export function createKnex(url: string, options: KnexOptions = {}): Knex {
  const pooled = options.preparedStatements !== false;
  const knex = knexFactory({
    client: 'pg',
    connection: {
      connectionString: url,
      application_name: options.applicationName ?? 'suspend',
      // Days are UTC days (as --as-of is): a timestamp's day must not follow the server's or the
      // role's TimeZone. Given at connection start, so no statement can fail to set it; not behind
      // a transaction pooler (--no-prepared-statements), which refuses startup options.
      ...(pooled && { options: [process.env.PGOPTIONS, '-c TimeZone=UTC'].filter(Boolean).join(' ') }),
    },
    // The oldest server suspend supports, given so that knex does not ask each new session: its
    // `select version()` failing (a 1 ms statement_timeout) left that session open, and the process
    // waiting on it after it had said why it stopped.
    version: OLDEST_POSTGRES,
    pool: {
      min: 0,
      max: options.pool ?? 4,
      idleTimeoutMillis: POOL_IDLE_MS,
      // Behind PgBouncer in transaction mode a session setting would land on a server connection
      // others share, and the server's timeout ends PgBouncer's connections, not ours.
      ...(pooled && {
        afterCreate: (conn: pg.Client, done: (err: Error | null, conn: pg.Client) => void) => {
          void raiseIdleTimeout(conn).then(() => done(null, conn));
        },
      }),
    },
    // Large pages are read with explicit keyset queries; no ORM-style result wrapping.
    asyncStackTraces: false,
    // knex logs to the console (stdout); suspend's errors are reported by the CLI instead.
    log: { warn: quiet, error: quiet, deprecate: quiet, debug: quiet },
  });
  return options.preparedStatements === false ? withoutPreparedStatements(knex) : knex;
}

/**
 * Opens a pool and proves the server answers, turning the usual failures into one sentence with
 * what to try. Unreachable or refused: exit code 2 (a configuration problem the user fixes).
 */
export async function connect(
  url: string,
  source: UrlSource,
  options: Pick<KnexOptions, 'pool' | 'preparedStatements'> = {},
): Promise<Knex> {
  validateUrl(url, source);
  const knex = createKnex(url, options);
  try {
    await knex.raw('select 1');
    return knex;
  } catch (err) {
    await knex.destroy().catch(() => undefined);
    throw connectionError(err, url, source);
  }
}

/** Node's codes for a server certificate that TLS did not accept. */
const TLS_CERTIFICATE_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_HAS_EXPIRED',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

export function connectionError(err: unknown, url: string, source: UrlSource): SuspendError {
  const where = describeUrl(url);
  const code = sqlState(err);
  const sysCode = (err as { code?: string }).code;
  const unreachable =
    source === 'embedded'
      ? 'the embedded server in .suspend/ may have stopped; run the command again'
      : `check ${source} or start the server (on Debian: pg_ctlcluster 15 main start)`;
  let what: string;
  let hint = unreachable;
  if (code === SqlState.invalidCatalogName) {
    what = `database does not exist at ${where}`;
    hint = 'name a database that exists (--database, or the path of the URL) or create it';
  } else if (code === SqlState.invalidPassword || code === SqlState.invalidAuthorization) {
    // 28000 says which: a role that does not exist, or no pg_hba.conf entry for this host and user.
    const why = code === SqlState.invalidAuthorization ? ` (${driverMessage(errorMessage(err))})` : '';
    what = `authentication failed at ${where}${why}`;
    hint = `check the user and password in ${source}`;
  } else if (sysCode === 'ECONNREFUSED') what = `connection refused at ${where}`;
  else if (sysCode === 'ENOTFOUND' || sysCode === 'EAI_AGAIN') {
    what = `host not found for ${where}`;
    hint = `check the host name in ${source} (no address is known for it here)`;
  } else if (sysCode === 'ETIMEDOUT') what = `connection timed out at ${where}`;
  else if (sysCode === 'ENOENT') what = `nothing listens at ${where}`;
  else if (/does not support SSL/i.test(errorMessage(err))) {
    what = `the server at ${where} does not accept SSL connections`;
    hint = `take sslmode out of ${source} (or set sslmode=disable), or turn ssl on in the server`;
  } else if (TLS_CERTIFICATE_ERRORS.has(sysCode ?? '')) {
    what = `the server's certificate was refused at ${where} (${errorMessage(err)})`;
    hint = `node-postgres verifies it for sslmode=require as for verify-full: give its CA with sslrootcert=FILE in ${source}, or add uselibpqcompat=true to it for libpq's sslmode=require (encrypted, not verified)`;
  } else what = `cannot connect to ${where} (${errorMessage(err)})`;
  return new SuspendError(`Cannot reach Postgres: ${what}; ${hint}.`, {
    exitCode: ExitCode.usage,
    cause: err,
  });
}

/**
 * The connection was lost mid-command (session terminated, server stopped or crashed): one sentence,
 * exit code 1. What had committed stays; a run's ledger row is marked interrupted when the database
 * still answers, and the next run knows a row left "running" died with its session.
 */
export function lostConnectionError(
  err: unknown,
  url: string | null,
  answersNow: boolean | null = null,
): SuspendError {
  const where = url ? describeUrl(url) : 'the database';
  const now = answersNow === false ? ' and the server does not answer now' : '';
  return new SuspendError(
    `Lost the connection to Postgres at ${where} (${lostConnectionReason(err)}${now}); what was committed stays, so run the command again once the server answers (an interrupted backfill continues with \`suspend backfill --resume\`).`,
    { exitCode: ExitCode.failed, cause: err },
  );
}

/**
 * A database error the user should see as a sentence instead of "unexpected failure", or null: a lost
 * connection (saying whether the server answers now), a mapped name the database does not have
 * (exit 2: the rules file needs fixing), or a missing grant.
 */
export async function describeDatabaseError(err: unknown, url: string | null): Promise<SuspendError | null> {
  if (err instanceof SuspendError) return null;
  if (isConnectionLost(err)) return lostConnectionError(err, url, url ? await serverAnswers(url) : null);
  const where = url ? ` at ${describeUrl(url)}` : '';
  const code = sqlState(err);
  if (
    code === SqlState.undefinedColumn ||
    code === SqlState.undefinedTable ||
    code === SqlState.invalidSchemaName
  ) {
    return new UsageError(
      `Postgres${where}: ${driverMessage(errorMessage(err))}; a table or column named in the rules file (source mapping or a set action) is not in this database, so check the names against its tables.`,
      { cause: err },
    );
  }
  if (code === SqlState.queryCanceled || code === SqlState.lockNotAvailable) {
    const why =
      code === SqlState.queryCanceled
        ? 'cancelled a statement of this command (its statement_timeout, or pg_cancel_backend)'
        : 'gave up waiting for a lock (its lock_timeout)';
    return new SuspendError(
      `Postgres${where} ${why}; what was committed stays, so run the command again (an interrupted backfill continues with \`suspend backfill --resume\`), and if a timeout is set for this role or database, raise it for suspend's role.`,
      { exitCode: ExitCode.failed, cause: err },
    );
  }
  if (code === SqlState.readOnlySqlTransaction) {
    return new SuspendError(
      `Postgres${where} is read-only for this session (a standby, or default_transaction_read_only): ${driverMessage(errorMessage(err))}; point the database URL at the primary (a report --dry-run reads only and runs anywhere).`,
      { exitCode: ExitCode.usage, cause: err },
    );
  }
  if (code === SqlState.insufficientPrivilege) {
    return new SuspendError(
      `Postgres${where} refused: ${driverMessage(errorMessage(err))}; the role in the database URL needs the grants listed in docs/least-privilege.sql.`,
      { exitCode: ExitCode.failed, cause: err },
    );
  }
  return null;
}

const TIMEOUTS = `'idle_session_timeout', 'idle_in_transaction_session_timeout', 'statement_timeout', 'lock_timeout'`;

/**
 * A select-list item that turns the server's, role's or database's timeouts off for a session held
 * for an advisory lock, which idles while the command goes on (idle_session_timeout, Postgres 14+;
 * idle_in_transaction_session_timeout for a transaction-scoped lock) and may wait for the lock as
 * long as another process holds it (statement_timeout, lock_timeout). `local`: until the end of the
 * transaction. The command's other sessions keep them.
 */
export function noTimeouts(local: boolean): string {
  return `(select count(set_config(name, '0', ${local})) from pg_settings where name in (${TIMEOUTS}))`;
}

/**
 * The statement that gives a session back the timeouts noTimeouts(false) took, before the pool has it
 * again: as createKnex left them (the idle one no lower than IDLE_FLOOR_MS).
 */
export const RESTORE_TIMEOUTS = `select count(set_config(name,
    case when name = 'idle_session_timeout' then ${idleFloor('reset_val')} else reset_val end, false))
  from pg_settings where name in (${TIMEOUTS})`;

/**
 * A knex on the same database as `knex`, with a pool of its own (its own sessions: for a lock held
 * apart, page work, a retry on new connections). It names statements only when `knex` does.
 */
export function knexWithPool(knex: Knex, pool: Knex.PoolConfig): Knex {
  const other = knexFactory({ ...(knex.client.config as Knex.Config), pool });
  return namesStatements(knex) ? other : withoutPreparedStatements(other);
}

/**
 * Runs `fn` on `knex`, and once more on a connection opened for it if that failed on a lost
 * connection. Sessions killed together (an outage, or pg_terminate_backend on every session of a
 * run) leave pooled connections whose end has not reached us yet, and the pool hands them out as
 * live, even one that has just failed. For a single statement or transaction: a try that failed
 * wrote nothing.
 */
export async function onLiveConnection<T>(knex: Knex, fn: (knex: Knex) => Promise<T>): Promise<T> {
  try {
    return await fn(knex);
  } catch (err) {
    if (!isConnectionLost(err)) throw err;
  }
  const fresh = knexWithPool(knex, { min: 0, max: 1 });
  try {
    return await fn(fresh);
  } finally {
    await fresh.destroy().catch(() => undefined);
  }
}

/** Whether a fresh connection gets an answer within a few seconds (to tell a stopped server). */
export async function serverAnswers(url: string): Promise<boolean> {
  const client = new pg.Client({
    connectionString: url,
    connectionTimeoutMillis: 3000,
    application_name: 'suspend (checking the server)',
  });
  client.on('error', () => undefined);
  try {
    await client.connect();
    await client.query('select 1');
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The driver's message without the statement knex puts in front of it ("select ... - permission denied"). */
export function driverMessage(message: string): string {
  const dash = message.lastIndexOf(' - ');
  const own = dash >= 0 ? message.slice(dash + 3) : message;
  return own.split('\n')[0] ?? own;
}
