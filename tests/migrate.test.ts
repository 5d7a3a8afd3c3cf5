import fs from 'node:fs';
import path from 'node:path';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { ROOT } from './helpers/server';

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
    'error: suspend\'s schema "suspend" is not set up in this database; run `suspend migrate` first.\n',
  );
});

test('four migrates started together all succeed and apply each migration once', async () => {
  // Under a 50 ms idle_in_transaction_session_timeout for every session (PGOPTIONS, read by
  // node-postgres): the transaction holding the migrate lock idles while the migrations run.
  const env = { PGOPTIONS: '-c idle_in_transaction_session_timeout=50' };
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
});
