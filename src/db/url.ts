import { parse as parseConnectionString } from 'pg-connection-string';
import { closest } from '../rules/problems';

/**
 * What is wrong with a database URL, as a phrase (`"mysql://x/y" is not a Postgres URL ...`), or
 * null when the driver can use it. The same check for --database-url, DATABASE_URL and database.url
 * in the rules file (which `suspend rules check` makes too): kept free of the driver and knex, so
 * that checking a rules file loads neither.
 */
export function postgresUrlProblem(url: string): string | null {
  if (!/^postgres(ql)?:\/\//.test(url)) {
    return `"${redact(url)}" is not a Postgres URL: postgres:// or postgresql:// (e.g. postgres://user@host:5432/database)`;
  }
  let config: { sslmode?: unknown; uselibpqcompat?: unknown };
  try {
    config = parseConnectionString(url) as typeof config;
  } catch (err) {
    return `"${redact(url)}" cannot be parsed (${err instanceof Error ? err.message : String(err)})`;
  }
  const { sslmode } = config;
  if (typeof sslmode === 'string') {
    // The values node-postgres knows: any other (a typo, libpq's "allow") it reads as verify-full,
    // and the server's answer would then be about SSL, not about the value. With
    // uselibpqcompat=true it takes libpq's meanings, of which no-verify is none.
    const allowed = [
      'disable',
      'prefer',
      'require',
      'verify-ca',
      'verify-full',
      ...(config.uselibpqcompat === 'true' ? [] : ['no-verify']),
    ];
    if (!allowed.includes(sslmode)) {
      const guess = closest(sslmode, allowed);
      return `sslmode ${JSON.stringify(sslmode)} is not one of the values node-postgres supports${guess ? ` (did you mean ${guess}?)` : ''}: ${allowed.join(', ')}`;
    }
  }
  return null;
}

/** The URL with its password as ***. */
export function redact(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
}
