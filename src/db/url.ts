import { parse as parseConnectionString } from 'pg-connection-string';

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
  try {
    parseConnectionString(url);
  } catch (err) {
    return `"${redact(url)}" cannot be parsed (${err instanceof Error ? err.message : String(err)})`;
  }
  return null;
}

/** The URL with its password as ***. */
export function redact(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
}
