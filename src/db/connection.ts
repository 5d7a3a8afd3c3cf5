import knexFactory, { type Knex } from 'knex';
import { parse as parseConnectionString } from 'pg-connection-string';
import { SuspendError, UsageError, ExitCode, errorMessage } from '../errors';
import { SqlState, sqlState } from './sqlstate';

/** Where the database URL came from, in precedence order: flag > environment > config file > embedded. */
export type UrlSource = '--database-url' | 'DATABASE_URL' | 'config' | 'embedded';

export interface ResolvedUrl {
  url: string | null;
  source: UrlSource;
}

export function resolveDatabaseUrl(input: {
  flag?: string | undefined;
  env?: string | undefined;
  config?: string | null | undefined;
}): ResolvedUrl {
  if (input.flag) return { url: input.flag, source: '--database-url' };
  if (input.env) return { url: input.env, source: 'DATABASE_URL' };
  if (input.config) return { url: input.config, source: 'config' };
  return { url: null, source: 'embedded' };
}

/** host:port/database of a URL, without the password, for messages. */
export function describeUrl(url: string): string {
  const c = parseConnectionString(url);
  const where = c.host?.startsWith('/') ? `socket ${c.host}` : `${c.host ?? 'localhost'}:${c.port ?? 5432}`;
  return `${where}/${c.database ?? ''}`;
}

export function validateUrl(url: string, source: UrlSource): void {
  if (!/^postgres(ql)?:\/\//.test(url)) {
    throw new UsageError(
      `${source}: "${redact(url)}" is not a Postgres URL (expected postgres://user@host:5432/database).`,
    );
  }
  try {
    parseConnectionString(url);
  } catch (err) {
    throw new UsageError(`${source}: "${redact(url)}" cannot be parsed (${errorMessage(err)}).`, {
      cause: err,
    });
  }
}

export function redact(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
}

function quiet(): void {}

export function createKnex(url: string, options: { pool?: number; applicationName?: string } = {}): Knex {
  return knexFactory({
    client: 'pg',
    connection: { connectionString: url, application_name: options.applicationName ?? 'suspend' },
    pool: { min: 0, max: options.pool ?? 4 },
    // Large pages are read with explicit keyset queries; no ORM-style result wrapping.
    asyncStackTraces: false,
    // knex logs to the console (stdout); suspend's errors are reported by the CLI instead.
    log: { warn: quiet, error: quiet, deprecate: quiet, debug: quiet },
  });
}

/**
 * Opens a pool and proves the server answers, turning the usual failures into one sentence with
 * what to try. Unreachable or refused: exit code 2 (a configuration problem the user fixes).
 */
export async function connect(
  url: string,
  source: UrlSource,
  options: { pool?: number } = {},
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

export function connectionError(err: unknown, url: string, source: UrlSource): SuspendError {
  const where = describeUrl(url);
  const code = sqlState(err);
  const sysCode = (err as { code?: string }).code;
  const hint =
    source === 'embedded'
      ? 'the embedded server in .suspend/ may have stopped; run the command again'
      : `check ${source} or start the server (on Debian: pg_ctlcluster 15 main start)`;
  let what: string;
  if (code === SqlState.invalidCatalogName) what = `database does not exist at ${where}`;
  else if (code === SqlState.invalidPassword || code === SqlState.invalidAuthorization)
    what = `authentication failed at ${where}`;
  else if (sysCode === 'ECONNREFUSED') what = `connection refused at ${where}`;
  else if (sysCode === 'ENOTFOUND' || sysCode === 'EAI_AGAIN') what = `host not found for ${where}`;
  else if (sysCode === 'ETIMEDOUT') what = `connection timed out at ${where}`;
  else if (sysCode === 'ENOENT') what = `no Postgres socket at ${where}`;
  else what = `cannot connect to ${where} (${errorMessage(err)})`;
  return new SuspendError(`Cannot reach Postgres: ${what}; ${hint}.`, {
    exitCode: ExitCode.usage,
    cause: err,
  });
}
