import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import knexFactory from 'knex';
import pg from 'pg';
import { startEmbeddedPostgres, stopEmbeddedPostgres, type EmbeddedServer } from '../../src/db/embedded';
import type { TestDatabase } from '../helpers/database';
import { runCli } from '../helpers/cli';
import { withDatabase } from '../helpers/server';
import {
  ACTOR,
  AS_OF,
  cli,
  Gate,
  finalState,
  ledger,
  seededDatabase,
  startCli,
  STACK_FRAME,
} from '../helpers/reliability';

/**
 * Database outage, the hard way: the server itself stops in the middle of a backfill. This runs on
 * an embedded Postgres the test starts in its own folder (the shared server is never stopped), then
 * starts again, and the backfill resumes to the state of an uninterrupted run.
 */

const SEED = ['--customers', '2000', '--orgs', '5', '--seed', '4', '--as-of', AS_OF];
const BACKFILL = ['backfill', '--as-of', AS_OF, '--batch-size', '100', '--no-notify', '--by', ACTOR];

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-outage-'));
fs.chmodSync(root, 0o755); // the server runs as nobody when the tests run as root
const home = path.join(root, '.suspend');
let server: EmbeddedServer | null = null;
let reference: TestDatabase;

/** A database on the embedded server, shaped like a TestDatabase so the helpers work on it. */
function onServer(url: string): TestDatabase {
  const knex = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 2 } });
  return { name: 'app', url, knex, drop: () => knex.destroy() };
}

beforeAll(async () => {
  reference = await seededDatabase(2000, 4);
  const r = await cli(reference, [...BACKFILL, '--quiet']);
  expect(r.code).toBe(0);
});

afterAll(async () => {
  await server?.stop().catch(() => undefined);
  await stopEmbeddedPostgres(home, { force: true }).catch(() => undefined);
  fs.rmSync(root, { recursive: true, force: true });
  await reference.drop();
});

describe('the server stops in the middle of a backfill', () => {
  let url: string;
  let db: TestDatabase | null = null;
  afterAll(async () => db?.drop());

  test('one sentence saying the server does not answer, exit 1', async () => {
    server = await startEmbeddedPostgres({ dataDir: home });
    const admin = new pg.Client({ connectionString: server.url });
    await admin.connect();
    await admin.query('create database app');
    await admin.end();
    url = withDatabase(server.url, 'app');
    for (const args of [['seed', ...SEED, '--reset'], ['migrate']]) {
      const r = await runCli([...args, '--database-url', url, '--quiet']);
      expect(r).toMatchObject({ code: 0 });
    }

    const before = onServer(url);
    const gate = await Gate.install(before, 'suspend.checkpoints', 'new.pages = 6');
    const run = startCli(before, [...BACKFILL, '--quiet']);
    await gate.blocked(run);
    // Fast shutdown with the run parked inside page 6's transaction: every session is cut.
    expect(await stopEmbeddedPostgres(home, { force: true })).toMatchObject({ stopped: true });
    const result = await run.done;
    await before.drop();
    await server.stop();

    expect(result.stdout).toBe('');
    expect(result.stderr).not.toMatch(STACK_FRAME);
    expect(result.stderr.trim().split('\n')).toEqual([
      expect.stringMatching(
        /^error: Lost the connection to Postgres at socket \S+, database app \(.+ and the server does not answer now\); what was committed stays, so run the command again once the server answers \(an interrupted backfill continues with `suspend backfill --resume`\)\.$/,
      ),
    ]);
    expect(result.code).toBe(1);

    // Back up: five pages were committed, the sixth rolled back with the server.
    server = await startEmbeddedPostgres({ dataDir: home });
    db = onServer(url);
    await db.knex.raw('drop trigger reliability_gate on suspend.checkpoints');
    expect(await db.knex('suspend.checkpoints').max({ p: 'pages' })).toEqual([{ p: 5 }]);
  });

  test('once the server is back, the ledger shows the run interrupted', async () => {
    const refused = await cli(db!, BACKFILL);
    expect(refused.code).toBe(2);
    expect(refused.stderr).toContain('suspend backfill --resume');
    expect((await ledger(db!.knex)).map((r) => [r.kind, r.status])).toEqual([['backfill', 'interrupted']]);
  });

  test('backfill --resume reaches the state of an uninterrupted run', async () => {
    const resumed = await cli(db!, ['backfill', '--resume', '--no-notify', '--quiet', '--by', ACTOR]);
    expect(resumed.stderr).toBe('');
    expect(resumed.code).toBe(0);
    expect((await ledger(db!.knex)).map((r) => r.status)).toEqual(['succeeded']);
    expect(await finalState(db!.knex)).toEqual(await finalState(reference.knex));
  });
});
