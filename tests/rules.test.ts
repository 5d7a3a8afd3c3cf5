import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { runCli } from './helpers/cli';
import { ROOT } from './helpers/server';
import { accountSignals, writeRules } from './helpers/fixtures';
import { loadRules, validateRulesText } from '../src/rules/load';
import { createAjv, rulesSchemaHash, VALIDATOR_FILE } from '../src/rules/validate';
import RULES_SCHEMA from '../src/rules/rules.schema.json';
import { rulesJsonSchema } from '../src/rules/schema';
import { ValidationErrors } from '../src/errors';
import { renderMessageFor } from '../src/evaluate/message';

/** The rules file as a user meets it: found, validated with file:line errors, merged, shown, published. */

const EXAMPLE = path.join(ROOT, 'rules.example.yaml');

const BAD = `version: 1
policies:
  delinquency:
    stages:
      - name: suspended
        when: { past_due_for: 30 dayz, overdue_balance_over: 5.123 }
        actions: [notify, suspnd]
        message: "Pay {balanse}"
      - name: suspended
        when: { flag: vipp }
        after: 3
organizations:
  acme:
    policies:
      delinquncy: { enabled: false }
`;

function tempDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'suspend-rules-test-'));
}

/** The smallest valid rules: one policy of one stage (six lines), for tests to add to. */
const ONE_POLICY = `version: 1
policies:
  p:
    stages:
      - name: s
        when: { past_due_for: 30 days }
`;

describe('suspend rules check', () => {
  test('the example file is valid and lists its four ladders and two organizations', async () => {
    const r = await runCli(['rules', 'check', '--rules', EXAMPLE]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('rules.example.yaml: valid.');
    expect(r.stdout).toContain(
      'policies: inactivity (suspended), delinquency (suspended), overdue_pause (paused), escalation (day_14 → day_30)',
    );
    expect(r.stdout).toContain('organizations with overrides: 2, 3');
    expect(r.stdout).not.toContain('note:');
  });

  test('a ladder written upside down is valid, with a note naming the stage no account is ever in, by line', async () => {
    const file = writeRules(`version: 1
policies:
  escalation:
    stages:
      - name: day_30
        when: { past_due_for: 30 days, has_active_subscription: true }
      - name: day_14
        when: { all: [{ past_due_for: 14 days }, { has_active_subscription: true }] }
  # Not shadowed: the later stage asks for something the earlier does not, or a month may be 28 days.
  mixed:
    stages:
      - name: first
        when: { past_due_for: 30 days }
      - name: second
        when: { past_due_for: 14 days, overdue_balance_over: 5 }
      - name: third
        when: { inactive_for: 1 month }
      - name: fourth
        when: { inactive_for: 30 days }
organizations:
  7:
    policies:
      mixed:
        stages:
          - name: second
            when: { overdue_balance_over: 0 }
          - name: first
            when: { overdue_balance_over: 10 }
      # Its own escalation asks more of day_14, so its accounts do enter day_30.
      escalation:
        stages:
          - { name: day_14, when: { past_due_for: 60 days } }
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    const notes = r.stdout
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l.startsWith('note: '));
    const shown = path.relative(ROOT, file);
    const never = (stage: string, later: string, except = '') =>
      `stage "${stage}" is never entered${except}: an account that meets this also meets the when of the later stage "${later}", and each account is put in the most severe stage it meets; order the ladder from the mildest stage to the most severe, or make "${later}" ask more`;
    expect(notes).toEqual([
      `note: ${shown}:6 policies.escalation.stages[0].when: ${never('day_30', 'day_14', ' (except for organization 7, whose override changes this ladder)')}`,
      // Organization 7's "first" now asks for more than its "second": 30 days and over $10.
      `note: ${shown}:28 organizations.7.policies.mixed.stages[1].when: for organization 7, ${never('first', 'second')}`,
    ]);
  });

  test('an exclusion until a day that no calendar has (month 13, day 32) is one line, exit 2', async () => {
    const file = writeRules(`${ONE_POLICY}exclusions:
  - { key: "11", reason: VIP, until: 2026-13-45 }
  - { key: "12", reason: VIP, until: "2026-12-32" }
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    const display = path.relative(ROOT, file);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).not.toContain('unexpected failure');
    expect(r.stderr).toContain(
      `${display}:8 exclusions[0].until: "2026-13-45" is not a day written YYYY-MM-DD`,
    );
    expect(r.stderr).toContain(
      `${display}:9 exclusions[1].until: "2026-12-32" is not a day written YYYY-MM-DD`,
    );
  });

  test('settings.max_changes: none is no limit, as --max-changes none is; anything else that is not a limit says what is, exit 2', async () => {
    const none = writeRules(`${ONE_POLICY}settings:\n  max_changes: none\n`);
    expect((await loadRules({ file: none, cwd: ROOT })).settings.maxChanges).toBeNull();
    expect((await runCli(['rules', 'check', '--rules', none])).code).toBe(0);
    for (const given of ['nope', '-3']) {
      const file = writeRules(`${ONE_POLICY}settings:\n  max_changes: ${given}\n`);
      const r = await runCli(['rules', 'check', '--rules', file]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({
        code: 2,
        stderr: `error: ${path.relative(ROOT, file)}:8 settings.max_changes: ${given === 'nope' ? '"nope"' : given} is not a whole number (0 or more), a percentage (e.g. 500 or "5%"), or none (null) for no limit\n`,
      });
    }
  });

  test('an empty schema name, an exclusion key that is empty or a fraction, and a status value that is not text say what is allowed, exit 2', async () => {
    const file = writeRules(`${ONE_POLICY}source:
  schema: ""
  subscriptions: { table: subscriptions, active_values: [1] }
exclusions:
  - { key: "", reason: VIP }
  - { key: 1.5, reason: VIP }
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    const display = path.relative(ROOT, file);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr.split('\n').filter(Boolean).sort()).toEqual(
      [
        `error: ${display}:8 source.schema: "" is not a schema name, or null for the search path`,
        `error: ${display}:9 source.subscriptions.active_values[0]: 1 is not a status value written as text (e.g. active, or "1" for a number)`,
        `error: ${display}:11 exclusions[0].key: "" is not an account key (text or a whole number)`,
        `error: ${display}:12 exclusions[1].key: 1.5 is not an account key (text or a whole number)`,
      ].sort(),
    );
  });

  test('URLs: a scheme their use cannot take, and placeholders pay_url and support_url do not fill, are one line each, exit 2', async () => {
    const file = writeRules(`version: 1
settings:
  pay_url: https://pay.example.com/{customer}
  support_url: https://help.example.com/{key}
  smtp: { url: http://mail.example.com }
notifications:
  webhook: { url: 'ftp://x/hook', secret: s }
policies:
  p:
    stages:
      - name: s
        when: { past_due_for: 30 days }
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    const display = path.relative(ROOT, file);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr.trim().split('\n')).toEqual([
      `error: ${display}:3 settings.pay_url: {customer} is not filled in here; the only placeholder it takes is {key} (the customer's key)`,
      `error: ${display}:4 settings.support_url: {key} is not filled in here; it takes no placeholder`,
      `error: ${display}:5 settings.smtp.url: "http://mail.example.com" is not an SMTP URL: smtp:// or smtps:// (e.g. smtp://localhost:2525)`,
      `error: ${display}:7 notifications.webhook.url: "ftp://x/hook" is not an http(s) URL (e.g. https://hooks.example.com/suspend)`,
    ]);
  });

  test('database.url that is not a Postgres URL is one line with its place, exit 2, in rules check and in a run; a socket URL is valid', async () => {
    const file = writeRules(`database:\n  url: mysql://x/y\n${ONE_POLICY.replace('version: 1\n', '')}`);
    const display = path.relative(ROOT, file);
    const line = `error: ${display}:2 database.url: "mysql://x/y" is not a Postgres URL: postgres:// or postgresql:// (e.g. postgres://user@host:5432/database)\n`;
    const check = await runCli(['rules', 'check', '--rules', file]);
    expect(check).toEqual({ code: 2, stdout: '', stderr: line });
    const run = await runCli(['report', '--dry-run', '--rules', file]);
    expect(run).toEqual({ code: 2, stdout: '', stderr: line });

    const socket = writeRules(
      `database:\n  url: postgres://postgres@/postgres?host=/run/postgresql\n${ONE_POLICY.replace('version: 1\n', '')}`,
    );
    const valid = await runCli(['rules', 'check', '--rules', socket]);
    expect({ code: valid.code, stderr: valid.stderr }).toEqual({ code: 0, stderr: '' });
  });

  test('a currency that is not an ISO 4217 code is one line with a guess for a typo, in the settings and an organization, exit 2', async () => {
    const file = writeRules(`${ONE_POLICY}settings:
  currency: UDS
organizations:
  '2':
    settings: { currency: XYZ }
  '3':
    settings: { currency: EUR }
`);
    const display = path.relative(ROOT, file);
    const lines = [
      `error: ${display}:8 settings.currency: "UDS" is not an ISO 4217 currency code (did you mean USD?); write a code such as USD, EUR, GBP or JPY`,
      `error: ${display}:11 organizations.2.settings.currency: "XYZ" is not an ISO 4217 currency code; write a code such as USD, EUR, GBP or JPY`,
    ];
    const check = await runCli(['rules', 'check', '--rules', file]);
    expect(check).toEqual({ code: 2, stdout: '', stderr: `${lines.join('\n')}\n` });
    // A run refuses it the same way, before it connects.
    const run = await runCli(['report', '--dry-run', '--rules', file]);
    expect(run).toEqual({ code: 2, stdout: '', stderr: `${lines.join('\n')}\n` });
  });

  test('an organization written twice, as 2 and as "2", is one line, exit 2 (the second no longer replaces the first)', async () => {
    const file = writeRules(`${ONE_POLICY}organizations:
  2:
    settings: { support_url: https://a.example }
  '2':
    settings: { support_url: https://b.example }
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toBe(
      `error: ${path.relative(ROOT, file)}:10 YAML syntax error: the key '2' is written twice in one map (as the same text); keep one, since the second would replace the first\n`,
    );
  });

  test('exclusions: one whose day has passed is valid with a note; a key excluded twice in one list is one line, exit 2', async () => {
    const expired = writeRules(`${ONE_POLICY}exclusions:
  - { key: "11", reason: VIP, until: 2020-12-31 }
  - { key: "12", reason: VIP }
`);
    const ok = await runCli(['rules', 'check', '--rules', expired]);
    expect({ code: ok.code, stderr: ok.stderr }).toEqual({ code: 0, stderr: '' });
    expect(ok.stdout).toMatch(
      new RegExp(
        `note: ${path.relative(ROOT, expired).replace(/[.]/g, '\\.')}:8 exclusions\\[0\\]\\.until: 2020-12-31 has passed, so this exclusion spares nobody; remove it, or give a day from \\d{4}-\\d{2}-\\d{2} on\n`,
      ),
    );
    const twice = writeRules(`${ONE_POLICY}exclusions:
  - { key: "12", reason: VIP }
  - { key: 12, reason: promise to pay, until: 2030-01-01 }
`);
    const r = await runCli(['rules', 'check', '--rules', twice]);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toBe(
      `error: ${path.relative(ROOT, twice)}:9 exclusions[1].key: key "12" is excluded already by exclusions[0]; keep one entry (which of two reasons and expiries applies would be a guess)\n`,
    );
  });

  test('a file with no policy is valid, with a note that the runs refuse it', async () => {
    const r = await runCli(['rules', 'check', '--rules', writeRules('version: 1\n')]);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(r.stdout).toContain(
      '  note: no policy is written (or all are turned off), so backfill, sweep and report refuse to run; write them (see rules.example.yaml)\n',
    );
  });

  test('a set action on a column the runs read as a signal (org, a flag) is one line each, exit 2', async () => {
    const file = writeRules(`version: 1
source:
  customers: { flags: { vip: vip } }
policies:
  p:
    stages:
      - name: s
        when: { past_due_for: 30 days }
        actions: [{ set: { org_id: '0', vip: true, status: suspended } }]
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    const display = path.relative(ROOT, file);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr.trim().split('\n')).toEqual([
      `error: ${display}:9 policies.p.stages[0].actions[0].set.org_id: org_id is read by every run as source.customers.org: setting it would change what the next run judges; set another column`,
      `error: ${display}:9 policies.p.stages[0].actions[0].set.vip: vip is read by every run as source.customers.flags.vip: setting it would change what the next run judges; set another column`,
    ]);
  });

  test('a webhook without a secret is valid, with a note giving its line and what to set', async () => {
    const file = writeRules(`${ONE_POLICY}notifications:
  webhook: { url: "https://hooks.example.com/suspend" }
organizations:
  "7":
    notifications:
      webhook:
        url: https://hooks.example.com/seven
        secret: s3cret
  "8":
    notifications:
      webhook:
        url: https://hooks.example.com/eight
`);
    const r = await runCli(['rules', 'check', '--rules', file]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const display = path.relative(ROOT, file);
    expect(r.stdout.split('\n').filter((line) => line.includes('note:'))).toEqual([
      `  note: ${display}:8 notifications.webhook: has no secret, so its requests go unsigned and the receiver cannot tell them from forged ones; set notifications.webhook.secret`,
      `  note: ${display}:18 organizations.8.notifications.webhook: has no secret, so its requests go unsigned and the receiver cannot tell them from forged ones; set organizations.8.notifications.webhook.secret`,
    ]);
  });

  test('a webhook URL with a user or password is refused with its place, exit 2, before notify connects; the password is not echoed', async () => {
    const file = writeRules(`${ONE_POLICY}notifications:
  webhook: { url: "https://hooks:hunter2@hooks.example.com/suspend", secret: s3cret }
organizations:
  "7":
    notifications:
      webhook:
        url: https://token@hooks.example.com/seven
        secret: s3cret
`);
    const display = path.relative(ROOT, file);
    const lines = [
      `error: ${display}:8 notifications.webhook.url: has a user or password before the host, which webhook requests cannot carry; remove it and let the receiver check the signature (secret), or put a token in the path or query`,
      `error: ${display}:13 organizations.7.notifications.webhook.url: has a user or password before the host, which webhook requests cannot carry; remove it and let the receiver check the signature (secret), or put a token in the path or query`,
    ];
    const check = await runCli(['rules', 'check', '--rules', file]);
    expect(check).toEqual({ code: 2, stdout: '', stderr: `${lines.join('\n')}\n` });
    // Refused before a connection is tried (nothing listens on port 1), so nothing is claimed or sent.
    const notify = await runCli([
      'notify',
      '--rules',
      file,
      '--database-url',
      'postgres://postgres@127.0.0.1:1/none',
    ]);
    expect(notify).toEqual({ code: 2, stdout: '', stderr: `${lines.join('\n')}\n` });
    expect(notify.stderr).not.toContain('hunter2');
  });

  test("the example's customer messages read as sentences for a customer never active, with no balance and no name", async () => {
    const rules = await loadRules({ file: EXAMPLE, cwd: ROOT });
    const unknown = accountSignals({
      key: '42',
      orgId: null,
      accountCreatedOn: '2024-01-28',
      lastActivityOn: null,
      name: null,
      email: null,
    });
    const messages = rules.defaults.policies.flatMap((policy) =>
      policy.stages.map((stage) =>
        renderMessageFor(stage.message, {
          signals: unknown,
          settings: rules.settings,
          asOf: '2026-11-30',
          policy: policy.name,
          stage: stage.name,
        }),
      ),
    );
    expect(messages.length).toBeGreaterThan(3);
    for (const m of messages) expect(m).not.toMatch(/since never|undefined|null|NaN|\{|\}/);
    expect(messages[0]).toBe(
      'Hello customer, your account is on hold because it has had no booking for a year (last booking: never). Contact us at https://help.example.com and we will reopen it right away.',
    );
  });

  test('every error at once, each with file, line, YAML path, what was given and what is allowed; exit 2', async () => {
    const file = writeRules(BAD, 'bad.yaml');
    const r = await runCli(['rules', 'check', '--rules', file], { cwd: path.dirname(file) });
    expect(r.code).toBe(2);
    expect(r.stdout).toBe('');
    const lines = r.stderr.trim().split('\n');
    expect(lines).toEqual([
      'error: bad.yaml:6 policies.delinquency.stages[0].when.past_due_for: "30 dayz" is not a duration (e.g. "30 days", "12 months")',
      'error: bad.yaml:6 policies.delinquency.stages[0].when.overdue_balance_over: 5.123 has more decimals than USD has (2), the currency of amounts of the defaults (settings.currency); write at most 2',
      'error: bad.yaml:7 policies.delinquency.stages[0].actions[1]: "suspnd" is not an action: notify, notify_customer, pause, suspend, { tag: NAME } or { set: { COLUMN: VALUE } }',
      expect.stringMatching(
        /^error: bad\.yaml:8 policies\.delinquency\.stages\[0\]\.message: \{balanse\} is not a placeholder \(did you mean \{balance\}\?\)/,
      ),
      'error: bad.yaml:9 policies.delinquency.stages[1].name: "suspended" is already the name of stages[0]; stage names must be unique within a policy',
      'error: bad.yaml:10 policies.delinquency.stages[1].when.flag: "vipp" is not a flag declared in source.customers.flags (no flags are declared); declare it there, e.g. flags: { vipp: vipp }',
      'error: bad.yaml:11 policies.delinquency.stages[1].after: unknown key "after"; allowed here: name, when, actions, blocks_booking, allows_login, message, description',
      'error: bad.yaml:15 organizations.acme.policies.delinquncy: there is no policy "delinquncy" to override (did you mean delinquency?); the policies are: delinquency',
    ]);
  });

  test('bad rules stop a run before it connects: exit 2 with the rules error, not a connection error', async () => {
    const file = writeRules(BAD, 'bad.yaml');
    const r = await runCli([
      'backfill',
      '--rules',
      file,
      '--database-url',
      'postgres://nobody@127.0.0.1:1/none',
    ]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('bad.yaml:6 policies.delinquency.stages[0].when.past_due_for');
    expect(r.stderr).not.toMatch(/127\.0\.0\.1|connect|\n\s+at /);
  });

  test('an override of a stage of a policy that has none says none', async () => {
    const file = writeRules(
      `version: 1\npolicies:\n  p:\n    stages: []\norganizations:\n  '2':\n    policies:\n      p:\n        stages:\n          - name: s\n`,
    );
    const r = await runCli(['rules', 'check', '--rules', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      'policy p has no stage "s"; its stages are: none (an override changes existing stages, it cannot add one)',
    );
  });

  test('a tab used to indent is one line saying so, not the errors that follow from it', async () => {
    const file = writeRules(
      `${ONE_POLICY}organizations:\n  '2':\n\t  settings: { support_url: https://a.example }\n`,
    );
    const r = await runCli(['rules', 'check', '--rules', file]);
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toBe(
      `error: ${path.relative(ROOT, file)}:9 YAML syntax error: a tab indents this line; YAML indents with spaces only\n`,
    );
  });

  test('broken YAML, an empty file and a list are one sentence each with a line', async () => {
    const broken = writeRules('policies:\n  a: [1, 2\n', 'broken.yaml');
    const r1 = await runCli(['rules', 'check', '--rules', broken], { cwd: path.dirname(broken) });
    expect(r1.code).toBe(2);
    expect(r1.stderr).toMatch(/^error: broken\.yaml:\d+ YAML syntax error: .+\n$/);

    const list = writeRules('- a\n- b\n', 'list.yaml');
    const r2 = await runCli(['rules', 'check', '--rules', list], { cwd: path.dirname(list) });
    expect(r2.code).toBe(2);
    expect(r2.stderr).toBe(
      'error: list.yaml:1 (top level): the rules file must be a map (settings, source, policies, ...), not a list\n',
    );

    const missing = await runCli(['rules', 'check', '--rules', '/nonexistent/rules.yaml']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toBe(
      'error: --rules /nonexistent/rules.yaml: no such file (looked for /nonexistent/rules.yaml).\n',
    );
  });
});

describe('finding the rules file (cosmiconfig)', () => {
  test('suspend.config.yaml in the working directory or above is used without --rules', async () => {
    const dir = tempDir();
    fs.copyFileSync(EXAMPLE, path.join(dir, 'suspend.config.yaml'));
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    fs.writeFileSync(path.join(dir, 'package.json'), '{"name":"app"}');
    const r = await runCli(['rules', 'check'], { cwd: sub });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('../suspend.config.yaml: valid.');
  });

  test('a "suspend" key in package.json, with errors pointing at package.json lines', async () => {
    const dir = tempDir();
    const pkg = {
      name: 'app',
      suspend: { policies: { idle: { stages: [{ name: 'off', when: { inactive_for: '12 monthz' } }] } } },
    };
    fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(pkg, null, 2));
    const r = await runCli(['rules', 'check'], { cwd: dir });
    expect(r.code).toBe(2);
    const line =
      JSON.stringify(pkg, null, 2)
        .split('\n')
        .findIndex((l) => l.includes('12 monthz')) + 1;
    expect(r.stderr).toBe(
      `error: package.json:${line} policies.idle.stages[0].when.inactive_for: "12 monthz" is not a duration (e.g. "30 days", "12 months")\n`,
    );
  });

  test('no rules file anywhere: rules check says where it looked, exit 2', async () => {
    const dir = tempDir();
    fs.writeFileSync(path.join(dir, 'package.json'), '{"name":"app"}');
    const r = await runCli(['rules', 'check'], { cwd: dir });
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(
      /^error: no rules file found from .+ \(looked for package\.json, suspend\.config\.yaml/,
    );
  });
});

describe('effective rules per organization', () => {
  test('rules show --org merges the override deeply: a disabled policy, one changed threshold, the rest kept', async () => {
    const r = await runCli(['rules', 'show', '--rules', EXAMPLE, '--org', '2', '--json']);
    expect(r.code).toBe(0);
    const shown = JSON.parse(r.stdout) as {
      organization: string;
      rules: {
        policies: Record<
          string,
          { enabled?: boolean; stages: { name: string; when: Record<string, unknown> }[] }
        >;
        settings: Record<string, unknown>;
        notifications: { emails: string[] };
      };
    };
    expect(shown.organization).toBe('2');
    expect(shown.rules.policies.inactivity?.enabled).toBe(false);
    expect(shown.rules.policies.delinquency?.stages[0]?.when).toEqual({
      overdue_balance_over: '50.00',
      past_due_for: '31 days',
    });
    expect(shown.rules.policies.overdue_pause?.stages[0]?.when).toEqual({ invoice_overdue_for: '10 days' });
    expect(shown.rules.settings.support_url).toBe('https://support.org-two.example');
    expect(shown.rules.settings.pay_url).toBe('https://pay.example.com/{key}');
    expect(shown.rules.notifications.emails).toEqual(['finance@org-two.example']);

    const yaml = await runCli(['rules', 'show', '--rules', EXAMPLE, '--org', '2']);
    expect(yaml.stdout).toContain(
      '#   suspended: when (overdue balance over $50.00 and past due for 31 days)',
    );
    expect(yaml.stdout).not.toContain('# inactivity:');
  });

  test('rules show --org without an id says it needs one, before an option or at the end; exit 2', async () => {
    const line =
      'error: --org needs an organization id (e.g. --org 7); leave --org out for the defaults alone.\n';
    for (const args of [
      ['--org', '--rules', EXAMPLE],
      ['--rules', EXAMPLE, '--org'],
      ['--rules', EXAMPLE, '--org', '--json'],
      ['--rules', EXAMPLE, '--org='],
    ]) {
      expect(await runCli(['rules', 'show', ...args])).toEqual({ code: 2, stdout: '', stderr: line });
    }
  });

  test('loaded rules: organization policies, exclusions added to the defaults, money in integer cents', async () => {
    const rules = await loadRules({ file: EXAMPLE, cwd: ROOT });
    expect(rules.defaults.policies.map((p) => p.name)).toEqual([
      'inactivity',
      'delinquency',
      'overdue_pause',
      'escalation',
    ]);
    const two = rules.organizations['2'];
    expect(two?.policies.map((p) => p.name)).toEqual(['delinquency', 'overdue_pause', 'escalation']);
    expect(two?.policies[0]?.stages[0]?.when).toEqual({
      all: [{ overdue_balance_over: 5000 }, { past_due_for: { amount: 31, unit: 'day', text: '31 days' } }],
    });
    expect(rules.organizations['3']?.exclusions.map((e) => e.reason)).toEqual([
      'VIP accounts are handled by their account manager',
      'promise to pay by the end of June',
      'pilot customer',
    ]);
    // A YAML number is read from its digits: 19.99 is 1999 cents, never 1998.9999.
    const money = writeRules(
      'policies:\n  p:\n    stages:\n      - { name: s, when: { open_balance_over: 19.99 } }\n',
    );
    const loaded = await loadRules({ file: money, cwd: ROOT });
    expect(loaded.defaults.policies[0]?.stages[0]?.when).toEqual({ open_balance_over: 1999 });
  });

  test('amounts are read in the minor units of the currency they are judged in; decimals or a $ it does not have are one line each', async () => {
    const file = (settings: string, org: string, amount: string) =>
      writeRules(
        `settings: { currency: ${settings} }
policies:
  p:
    stages:
      - { name: s, when: { overdue_balance_over: ${amount} } }
organizations:
  "7":
    settings: { currency: ${org} }
`,
        'money.yaml',
      );
    const threshold = async (settings: string, org: string, amount: string) => {
      const rules = await loadRules({ file: file(settings, org, amount), cwd: ROOT });
      return [rules.defaults, rules.organizations['7']].map((r) => r?.policies[0]?.stages[0]?.when);
    };
    // ¥100 is 100 yen, 5 dinars 5,000 fils, $5.50 550 cents: each in its own minor unit.
    expect(await threshold('JPY', 'KWD', '"100"')).toEqual([
      { overdue_balance_over: 100 },
      { overdue_balance_over: 100_000 },
    ]);
    expect(await threshold('USD', 'KWD', '"5.5"')).toEqual([
      { overdue_balance_over: 550 },
      { overdue_balance_over: 5_500 },
    ]);
    expect(await threshold('KWD', 'JPY', '"5.000"')).toEqual([
      { overdue_balance_over: 5_000 },
      { overdue_balance_over: 5 },
    ]);
    const check = async (settings: string, org: string, amount: string) => {
      const f = file(settings, org, amount);
      const r = await runCli(['rules', 'check', '--rules', f], { cwd: path.dirname(f) });
      return { code: r.code, stderr: r.stderr };
    };
    const at = 'error: money.yaml:5 policies.p.stages[0].when.overdue_balance_over: ';
    expect(await check('USD', 'JPY', '"5.50"')).toEqual({
      code: 2,
      stderr: `${at}5.50 has decimals, but JPY (the currency of amounts of organization 7, which this stage applies to) has no minor unit; write a whole amount\n`,
    });
    expect(await check('EUR', 'EUR', '"$5"')).toEqual({
      code: 2,
      stderr: `${at}"$5" is written in dollars, but amounts of the defaults (settings.currency) are in EUR; write the amount alone (e.g. "5")\n`,
    });
    expect(await check('KWD', 'KWD', '5.0001')).toEqual({
      code: 2,
      stderr: `${at}5.0001 has more decimals than KWD has (3), the currency of amounts of the defaults (settings.currency); write at most 3\n`,
    });
    expect(await check('KWD', 'USD', '"5.001"')).toMatchObject({ code: 2 });
    expect(await check('KWD', 'KWD', '"5.001"')).toEqual({ code: 0, stderr: '' });
  });

  test('the hash follows the effective rules, not comments or key order', async () => {
    const a = writeRules(
      'settings: { batch_size: 100, currency: EUR }\npolicies: { p: { stages: [{ name: s, when: { inactive_for: 90 days } }] } }\n',
    );
    const b = writeRules(
      '# reordered\npolicies: { p: { stages: [{ when: { inactive_for: 90 days }, name: s }] } }\nsettings: { currency: EUR, batch_size: 100 }\n',
    );
    const c = writeRules(
      'settings: { batch_size: 100, currency: EUR }\npolicies: { p: { stages: [{ name: s, when: { inactive_for: 91 days } }] } }\n',
    );
    const [ha, hb, hc] = await Promise.all(
      [a, b, c].map(async (file) => (await loadRules({ file, cwd: ROOT })).hash),
    );
    expect(ha).toBe(hb);
    expect(ha).not.toBe(hc);
  });

  test('validateRulesText throws every problem as file:line lines', () => {
    expect(() => validateRulesText(BAD, 'x.yaml')).toThrow(ValidationErrors);
    try {
      validateRulesText(BAD, 'x.yaml');
    } catch (err) {
      const problems = (err as ValidationErrors).problems;
      expect(problems).toHaveLength(8);
      for (const p of problems) expect(p).toMatch(/^x\.yaml:\d+ \S+: /);
    }
  });
});

describe('suspend rules schema', () => {
  test('prints a JSON Schema that accepts the example file and rejects a typo', async () => {
    const r = await runCli(['rules', 'schema']);
    expect(r.code).toBe(0);
    const schema = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(schema.$schema).toBe('http://json-schema.org/draft-07/schema#');
    const validate = createAjv().compile(schema);
    expect(validate(parse(fs.readFileSync(EXAMPLE, 'utf8')))).toBe(true);
    expect(
      validate({ policies: { p: { stages: [{ name: 's', when: { inactive_for: '3 weekz' } }] } } }),
    ).toBe(false);
  });

  test('is the schema src/rules/schema.ts defines (runs load the JSON written from it by npm run schema)', async () => {
    const r = await runCli(['rules', 'schema']);
    const written = JSON.parse(
      fs.readFileSync(path.join(ROOT, 'src/rules/rules.schema.json'), 'utf8'),
    ) as unknown;
    // If this fails, the TypeBox definitions changed: `npm run schema` writes the JSON again.
    expect(written).toEqual(rulesJsonSchema());
    expect(JSON.parse(r.stdout)).toEqual(rulesJsonSchema());
  });
});

describe('the validator compiled at build time', () => {
  test('the CLI validates with it: checking a rules file neither compiles the schema nor loads Ajv', () => {
    // A module hook that reports every Ajv module the CLI loads.
    const hook = path.join(tempDir(), 'trace.js');
    fs.writeFileSync(
      hook,
      `const Module = require('module'); const load = Module._load;
       Module._load = function (request, ...rest) {
         if (/^ajv(\\/|$)/.test(request)) process.stderr.write('loads ' + request + '\\n');
         return load.call(this, request, ...rest);
       };`,
    );
    const r = spawnSync(
      process.execPath,
      ['-r', hook, path.join(ROOT, 'bin/suspend'), 'rules', 'check', '--rules', EXAMPLE],
      {
        encoding: 'utf8',
      },
    );
    expect(r.status).toBe(0);
    // Only the small runtime helpers the compiled code calls, never Ajv's compiler.
    const loaded = r.stderr.split('\n').filter((l) => l.startsWith('loads '));
    expect(loaded.filter((l) => !l.startsWith('loads ajv/dist/runtime/'))).toEqual([]);
  });

  test('reports exactly what compiling the schema reports, and the CLI says its sentences', async () => {
    // The built CLI validates with dist/rules/rules.validator.js (written by npm run build).
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const built = require(path.join(ROOT, 'dist/rules', VALIDATOR_FILE)) as ReturnType<
      ReturnType<typeof createAjv>['compile']
    >;
    // It says which schema it was compiled from: the CLI uses it only for that one.
    expect((built as unknown as { schemaHash: string }).schemaHash).toBe(rulesSchemaHash());
    const compiled = createAjv().compile(RULES_SCHEMA);
    const documents: unknown[] = [
      parse(fs.readFileSync(EXAMPLE, 'utf8')),
      parse(fs.readFileSync(path.join(ROOT, 'bench/rules.yaml'), 'utf8')),
      parse(BAD),
      { version: 1, policies: { p: { stages: [{ name: 's', when: { inactive_for: '3 weekz' } }] } } },
      {
        version: 2,
        settings: { batch_size: -1, currency: 7 },
        notifications: { from: 'not a mailbox', pay_url: 'nope' },
        policies: { 'a b': { reinstate: 'sometimes', stages: [] } },
        exclusions: [{ flag: 3 }],
      },
      { policies: { p: { stages: [{ name: 's', when: { open_balance_over: 5.123, any: [] } }] } } },
      'not a map',
      null,
    ];
    let failures = 0;
    for (const doc of documents) {
      const ok = compiled(doc);
      expect({ doc, ok: built(doc), errors: built.errors ?? null }).toEqual({
        doc,
        ok,
        errors: compiled.errors ?? null,
      });
      if (!ok) failures += 1;
    }
    expect(failures).toBeGreaterThanOrEqual(5);
    // And the CLI's sentence for a bad value comes through it.
    const dir = tempDir();
    const file = path.join(dir, 'rules.yaml');
    fs.writeFileSync(file, BAD);
    const r = await runCli(['rules', 'check', '--rules', file]);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('"30 dayz" is not a duration');
  });
});
