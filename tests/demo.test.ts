import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runCli } from './helpers/cli';

/**
 * `suspend demo` as README's first command runs it: no DATABASE_URL, so on the embedded server in a
 * fresh folder; seed, dry-run report, backfill, payments, a sweep a month later, one customer's status.
 */

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-demo-'));
fs.chmodSync(root, 0o755);

afterAll(async () => {
  await runCli(['embedded', 'stop'], { cwd: root }).catch(() => undefined);
  fs.rmSync(root, { recursive: true, force: true });
});

const count = (text: string, re: RegExp): number => Number((re.exec(text)?.[1] ?? 'NaN').replace(/,/g, ''));

test('the demo walks through every step on the embedded default and the report predicts the backfill', async () => {
  const r = await runCli(['demo', '--customers', '3000', '--as-of', '2026-11-23'], {
    cwd: root,
    timeoutMs: 170_000,
  });
  expect(r.code).toBe(0);
  for (const step of [
    '$ suspend seed',
    '$ suspend migrate',
    '$ suspend report --dry-run',
    '$ suspend backfill',
    'Meanwhile the app records payments',
    '$ suspend sweep --as-of 2026-12-23',
    '$ suspend status',
  ]) {
    expect(r.stderr).toContain(step);
  }
  const predicted = count(
    r.stdout,
    /nothing written\) as of 2026-11-23: 3,?000 accounts scanned, ([\d,]+) would change/,
  );
  const changed = count(
    r.stdout,
    /suspend backfill run 1 as of 2026-11-23: 3,?000 accounts scanned, ([\d,]+) changed/,
  );
  expect(predicted).toBeGreaterThan(0);
  expect(changed).toBe(predicted);
  // A month later, some accounts that paid are reinstated (delinquency clears automatically).
  expect(r.stdout).toMatch(/suspend sweep run 2 as of 2026-12-23: 3,?000 accounts scanned, [\d,]+ changed/);
  expect(r.stdout).toMatch(/delinquency\s+clear\s+suspended\s+clear\s+\d+/);
  expect(r.stdout).toMatch(
    /customer \d+: suspended \(policy delinquency since 2026-11-23\)\n {2}booking blocked: yes/,
  );
  // The embedded server was stopped at the end: nothing left running in the folder.
  expect(fs.existsSync(path.join(root, '.suspend', 'postgres', 'data', 'postmaster.pid'))).toBe(false);
  // The command the demo's last line gives reads its database again (the embedded server's own
  // database, where a command goes without --database, has no suspend schema).
  const key = /customer (\d+): suspended \(policy delinquency/.exec(r.stdout)?.[1];
  const again = `suspend status ${key} --database suspend_demo`;
  expect(r.stderr).toContain(`The demo database stays: \`${again}\` reads it again.`);
  const status = await runCli(again.split(' ').slice(1), { cwd: root });
  expect(status.code).toBe(0);
  expect(status.stdout).toMatch(
    new RegExp(
      `^customer ${key}: suspended \\(policy delinquency since 2026-11-23\\)\n {2}booking blocked: yes`,
    ),
  );
  const elsewhere = await runCli(['status', key!], { cwd: root });
  expect(elsewhere.code).toBe(2);
  // ...and says where the demo's data is, not only to run migrate there.
  expect(elsewhere.stderr).toBe(
    'error: suspend\'s schema "suspend" is not set up in this database (postgres); to read the one `suspend demo` made, add --database suspend_demo; to use this one, run `suspend migrate` first.\n',
  );
  // The demo recreates its database, so it refuses to run connected to it.
  const inside = await runCli(['demo', '--customers', '100', '--database', 'suspend_demo'], { cwd: root });
  expect(inside.code).toBe(2);
  expect(inside.stderr).toBe(
    'error: `suspend demo` recreates the database suspend_demo, so it cannot run connected to it; connect to another database of that server (e.g. --database postgres).\n',
  );
}, 240_000);
