import fs from 'node:fs';
import path from 'node:path';
import knexFactory from 'knex';
import { runCli } from './cli';
import { ROOT, STATE_FILE, templateName, withDatabase, type TestServerState } from './server';

/** The real commands that build the template every test database is cloned from. */
const TEMPLATE_STEPS: string[][] = [['seed', '--customers', '0'], ['migrate']];

/**
 * Finds the server (DATABASE_URL, or the embedded default when it is unset), checks it answers,
 * and builds the template database every test file clones.
 */
export default async function globalSetup(): Promise<void> {
  let adminUrl = process.env.DATABASE_URL;
  let embedded = false;
  if (!adminUrl) {
    // No server configured: the suite runs on suspend's own embedded Postgres, as a new user would.
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- the built launcher, as users run it
    const { startEmbeddedPostgres } = require(
      path.join(ROOT, 'dist/db/embedded'),
    ) as typeof import('../../src/db/embedded');
    const server = await startEmbeddedPostgres({ dataDir: path.join(ROOT, '.suspend', 'test-embedded') });
    (globalThis as { __suspendEmbedded?: { stop(): Promise<void> } }).__suspendEmbedded = server;
    adminUrl = withDatabase(server.url, 'postgres');
    embedded = true;
  }
  const admin = knexFactory({ client: 'pg', connection: adminUrl, pool: { min: 0, max: 1 } });
  try {
    await admin.raw('select 1');
  } catch (err) {
    await admin.destroy();
    throw new Error(
      `The tests need Postgres at ${adminUrl} and it does not answer (${(err as Error).message}). ` +
        'Start it (pg_ctlcluster --skip-systemctl-redirect 15 main start) or unset DATABASE_URL to use the embedded server.',
    );
  }
  const template = templateName();
  try {
    const exists = await admin.raw<{ rows: unknown[] }>('select 1 from pg_database where datname = ?', [
      template,
    ]);
    if (exists.rows.length === 0) {
      const building = `${template}_building`;
      await admin.raw('drop database if exists ?? with (force)', [building]);
      await admin.raw('create database ??', [building]);
      const url = withDatabase(adminUrl, building);
      for (const args of TEMPLATE_STEPS) {
        const r = await runCli([...args, '--database-url', url, '--quiet'], {
          cwd: path.join(ROOT, 'tests'),
        });
        if (r.code !== 0)
          throw new Error(
            `building the test template: suspend ${args.join(' ')} exited ${r.code}: ${r.stderr}`,
          );
      }
      await admin.raw('alter database ?? rename to ??', [building, template]);
    }
  } finally {
    await admin.destroy();
  }
  fs.mkdirSync(path.dirname(STATE_FILE), { recursive: true });
  const state: TestServerState = { adminUrl, template, embedded };
  fs.writeFileSync(STATE_FILE, JSON.stringify(state));
}
