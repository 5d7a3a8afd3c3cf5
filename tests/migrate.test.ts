import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { ROOT, withDatabase } from './helpers/server';
import { parse as parseConnectionString } from 'pg-connection-string';
import knexFactory from 'knex';
import { describeUrl } from '../src/db/connection';

/** `suspend migrate` on an empty database, including several started at once (cron on two hosts). */

let db: TestDatabase;
beforeAll(async () => {
  db = await createTestDatabase({ template: false });
});
afterAll(async () => db.drop());

const migrations = fs.readdirSync(path.join(ROOT, 'migrations')).filter((f) => f.endsWith('.js'));

test('commands that need the schema say so before it exists; exit 2', async () => {
  const r = await runCli(['status', '1', '--database-url', db.url]);
  expect(r.code).toBe(2);
  expect(r.stderr).toBe(
    `error: suspend's schema "suspend" is not set up in this database (${db.name}); run \`suspend migrate\` first.\n`,
  );
});

test('four migrates started together all succeed and apply each migration once', async () => {
  // Under a 1 ms idle_in_transaction_session_timeout for every session (PGOPTIONS, read by
  // node-postgres): the transaction holding the migrate lock idles while the migrations run, and
  // every transaction idles between its statements (with 50 ms, a busy machine failed it now and then).
  const env = { PGOPTIONS: '-c idle_in_transaction_session_timeout=1' };
  const runs = await Promise.all(
    [0, 1, 2, 3].map(() => runCli(['migrate', '--database-url', db.url], { env })),
  );
  for (const r of runs) {
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`schema suspend: ${migrations.length} applied, 0 pending`);
  }
  const applied = await db.knex('suspend.knex_migrations').select('name').orderBy('name');
  expect(applied.map((r: { name: string }) => r.name)).toEqual([...migrations].sort());
  // Each index on account_states costs every state a run writes: only those something reads through.
  const indexes = await db
    .knex('pg_indexes')
    .where({ schemaname: 'suspend', tablename: 'account_states' })
    .pluck('indexname');
  expect(indexes.sort()).toEqual(['account_states_key_number', 'account_states_pkey']);
});

test('--database names another database on the server the URL reaches; a missing or unusable name is one sentence, exit 2', async () => {
  const other = withDatabase(db.url, 'postgres');
  // The URL names the maintenance database; --database sends the command to this file's database.
  const here = await runCli(['migrate', '--status', '--database-url', other, '--database', db.name]);
  expect(here.stderr).toBe('');
  expect(here.code).toBe(0);
  expect(here.stdout).toContain(`schema suspend: ${migrations.length} applied, 0 pending`);
  const missing = await runCli(['runs', '--database-url', other, '--database', `${db.name}_gone`]);
  expect(missing.code).toBe(2);
  expect(missing.stderr).toBe(
    `error: Cannot reach Postgres: database does not exist at ${describeUrl(withDatabase(db.url, `${db.name}_gone`))}; name a database that exists (--database, or the path of the URL) or create it.\n`,
  );
  // The server's default database, as a user's own knex would reach it.
  const defaultDb = knexFactory({ client: 'pg', connection: other, pool: { min: 0, max: 1 } });
  const suspendSchemas = async () =>
    (await defaultDb.raw<{ rows: unknown[] }>("select 1 from pg_namespace where nspname = 'suspend'")).rows
      .length;
  const before = await suspendSchemas();
  // Names a URL's path cannot carry as written: refused, never sent to another database ("..",
  // once, reached the user's default database; "x/../name" reached "name").
  for (const name of ['a?b', '..', `x/../${db.name}`, `${db.name}\t`]) {
    const odd = await runCli(['migrate', '--database-url', other, '--database', name]);
    expect(odd.code).toBe(2);
    expect(odd.stderr).toBe(
      `error: --database: ${JSON.stringify(name)} cannot be named in a Postgres URL as written (".", "..", "/." or "/.." parts, tabs, line breaks, ?, # and some % sequences do not survive it); name another database.\n`,
    );
  }
  const empty = await runCli(['runs', '--database-url', other, '--database', '']);
  expect(empty.code).toBe(2);
  expect(empty.stderr).toBe(
    'error: --database: the name is empty; give a database name, e.g. suspend_demo.\n',
  );
  // The refused names migrated nothing into the server's default database ("..", once, went there).
  expect(await suspendSchemas()).toBe(before);
  await defaultDb.destroy();
});

test('--database with a URL that has no host (the server named by its host parameter, as for a socket)', async () => {
  const c = parseConnectionString(db.url);
  const query = new URLSearchParams({ host: c.host ?? '', ...(c.port ? { port: String(c.port) } : {}) });
  const noHost = `postgres://${c.user ?? 'postgres'}@/postgres?${query.toString()}`;
  const r = await runCli(['migrate', '--status', '--database-url', noHost, '--database', db.name]);
  expect(r.stderr).toBe('');
  expect(r.code).toBe(0);
  expect(r.stdout).toContain(`schema suspend: ${migrations.length} applied, 0 pending`);
});

test('a rules file that is a folder, and an unreachable database.url of the rules file, are one sentence each naming what to fix', async () => {
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-rules-'));
  try {
    const dir = await runCli(['runs', '--rules', folder, '--database-url', db.url]);
    expect(dir.code).toBe(2);
    expect(dir.stderr).toBe(
      `error: --rules ${folder}: ${folder} is a folder; name the rules file (YAML) in it.\n`,
    );
    const file = path.join(folder, 'suspend.config.yaml');
    fs.writeFileSync(file, 'database:\n  url: postgres://postgres@127.0.0.1:1/nowhere\n');
    const unreachable = await runCli(['runs', '--rules', file]);
    expect(unreachable.code).toBe(2);
    expect(unreachable.stderr).toBe(
      `error: Cannot reach Postgres: connection refused at 127.0.0.1:1/nowhere; check database.url in ${path.relative(ROOT, file)} or start the server (on Debian: pg_ctlcluster 15 main start).\n`,
    );
    // A host name nobody knows is not a server to start.
    const unknownHost = await runCli([
      'runs',
      '--database-url',
      'postgres://postgres@nosuchhost.invalid:5432/x',
    ]);
    expect({ code: unknownHost.code, stderr: unknownHost.stderr }).toEqual({
      code: 2,
      stderr:
        'error: Cannot reach Postgres: host not found for nosuchhost.invalid:5432/x; check the host name in --database-url (no address is known for it here).\n',
    });
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
});

test('a URL without a port names the port the driver uses (5432) where it says which server it could not reach', async () => {
  const r = await runCli(['runs', '--database-url', 'postgres://postgres@nosuchhost.invalid/x']);
  expect({ code: r.code, stderr: r.stderr }).toEqual({
    code: 2,
    stderr:
      'error: Cannot reach Postgres: host not found for nosuchhost.invalid:5432/x; check the host name in --database-url (no address is known for it here).\n',
  });
});

test('doctor on a database without the mapped tables refuses the mapping instead of advising indexes for them; exit 2', async () => {
  const r = await runCli([
    'doctor',
    '--rules',
    path.join(ROOT, 'rules.example.yaml'),
    '--database-url',
    db.url,
  ]);
  expect(r.code).toBe(2);
  expect(r.stdout).toBe('');
  expect(r.stderr).toBe(
    `error: rules.example.yaml:${fs.readFileSync(path.join(ROOT, 'rules.example.yaml'), 'utf8').split('\n').indexOf('    table: customers') + 1} source.customers.table: table "customers" does not exist in this database; fix source in the rules file or run \`suspend seed\` for the reference data.\n`,
  );
});

test('sslmode=require that cannot be met: one sentence on what to change, no driver warning; exit 2', async () => {
  const url = `${db.url}?sslmode=require`;
  const r = await runCli(['runs', '--database-url', url]);
  expect(r.code).toBe(2);
  const ssl = (await db.knex.raw<{ rows: { ssl: string }[] }>('show ssl')).rows[0]?.ssl;
  // This machine's server runs without SSL; Debian's default turns it on with a self-signed certificate.
  expect(r.stderr).toMatch(
    ssl === 'on'
      ? new RegExp(
          `^error: Cannot reach Postgres: the server's certificate was refused at ${describeUrl(url).replace(/[.?]/g, '\\$&')} \\(.+\\); node-postgres verifies it for sslmode=require as for verify-full: give its CA with sslrootcert=FILE in --database-url, or add uselibpqcompat=true to it for libpq's sslmode=require \\(encrypted, not verified\\)\\.\n$`,
        )
      : new RegExp(
          `^error: Cannot reach Postgres: the server at ${describeUrl(url).replace(/[.?]/g, '\\$&')} does not accept SSL connections; take sslmode out of --database-url \\(or set sslmode=disable\\), or turn ssl on in the server\\.\n$`,
        ),
  );
});

test('an sslmode node-postgres does not know is refused as a value, not taken for SSL the server lacks; exit 2', async () => {
  const r = await runCli(['runs', '--database-url', `${db.url}?sslmode=bogus`]);
  expect(r).toEqual({
    code: 2,
    stdout: '',
    stderr:
      'error: --database-url: sslmode "bogus" is not one of the values node-postgres supports: disable, prefer, require, verify-ca, verify-full, no-verify.\n',
  });
  const typo = await runCli(['runs'], { env: { DATABASE_URL: `${db.url}?sslmode=requre` } });
  expect(typo).toEqual({
    code: 2,
    stdout: '',
    stderr:
      'error: DATABASE_URL: sslmode "requre" is not one of the values node-postgres supports (did you mean require?): disable, prefer, require, verify-ca, verify-full, no-verify.\n',
  });
  // In the rules file, rules check says it with the line.
  const folder = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-rules-'));
  try {
    const file = path.join(folder, 'rules.yaml');
    fs.writeFileSync(file, `database:\n  url: ${db.url}?sslmode=bogus\n`);
    const check = await runCli(['rules', 'check', '--rules', file]);
    expect(check).toEqual({
      code: 2,
      stdout: '',
      stderr: `error: ${path.relative(ROOT, file)}:2 database.url: sslmode "bogus" is not one of the values node-postgres supports: disable, prefer, require, verify-ca, verify-full, no-verify\n`,
    });
  } finally {
    fs.rmSync(folder, { recursive: true, force: true });
  }
});

test('a role that does not exist is told to check the user and password, not to start the server; exit 2', async () => {
  const u = new URL(db.url);
  u.username = 'suspend_no_such_role';
  const r = await runCli(['runs', '--database-url', u.toString()]);
  expect(r.code).toBe(2);
  expect(r.stderr).toBe(
    `error: Cannot reach Postgres: authentication failed at ${describeUrl(u.toString())} (role "suspend_no_such_role" does not exist); check the user and password in --database-url.\n`,
  );
});
