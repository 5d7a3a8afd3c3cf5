import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { ROOT } from './helpers/server';
import { checksumTables, ENGINE_RULES, writeRules } from './helpers/fixtures';
import { startSmtp, type ReceivedMail } from './helpers/smtp';
import { deliverPending } from '../src/notify/deliver';
import { CLAIM_GROUP_LOCK_SEED, claimGroupKey, NOTIFY_LOCK_CLASS } from '../src/notify/outbox';
import { loadRules } from '../src/rules/load';

/**
 * `suspend notify` against a real SMTP server (smtp-server on loopback) and a real HTTP server: the
 * outbox rows come from a real backfill of 2,000 seeded accounts. Each scenario puts the same rows
 * back to pending and delivers them under its own rules.
 */

const AS_OF = '2026-11-23';

// ---------------------------------------------------------------------------------------------
// A loopback SMTP server that keeps every message, and a small MIME reader for what nodemailer sends.

interface MimePart {
  headers: Record<string, string>;
  body: string;
  parts: MimePart[];
}

function parseMime(raw: string): MimePart {
  const split = raw.indexOf('\r\n\r\n');
  const head = split < 0 ? raw : raw.slice(0, split);
  const rest = split < 0 ? '' : raw.slice(split + 4);
  const headers: Record<string, string> = {};
  for (const line of head.replace(/\r\n[ \t]+/g, ' ').split('\r\n')) {
    const i = line.indexOf(':');
    if (i > 0) headers[line.slice(0, i).toLowerCase()] = line.slice(i + 1).trim();
  }
  const type = headers['content-type'] ?? 'text/plain';
  const boundary = /boundary="?([^";]+)"?/.exec(type)?.[1];
  if (type.startsWith('multipart/') && boundary) {
    const parts = rest
      .split(`--${boundary}`)
      .slice(1)
      .filter((p) => !p.startsWith('--'))
      .map((p) => parseMime(p.replace(/^\r\n/, '')));
    return { headers, body: '', parts };
  }
  const encoding = (headers['content-transfer-encoding'] ?? '7bit').toLowerCase();
  let body = rest;
  if (encoding === 'base64') body = Buffer.from(rest.replace(/\s+/g, ''), 'base64').toString('utf8');
  if (encoding === 'quoted-printable') {
    body = Buffer.from(
      rest
        .replace(/=\r\n/g, '')
        .replace(/=([0-9A-F]{2})/gi, (_, h: string) => String.fromCharCode(parseInt(h, 16))),
      'latin1',
    ).toString('utf8');
  }
  return { headers, body, parts: [] };
}

function leaves(part: MimePart): MimePart[] {
  return part.parts.length === 0 ? [part] : part.parts.flatMap(leaves);
}

interface Mail {
  rcptTo: string[];
  subject: string;
  text: string;
  html: string;
  attachments: { filename: string; content: string }[];
}

function readMail(m: ReceivedMail): Mail {
  const root = parseMime(m.raw);
  const all = leaves(root);
  const isAttachment = (p: MimePart) => (p.headers['content-disposition'] ?? '').startsWith('attachment');
  return {
    rcptTo: m.rcptTo,
    subject: root.headers.subject ?? '',
    text:
      all.find((p) => !isAttachment(p) && p.headers['content-type']?.startsWith('text/plain'))?.body ?? '',
    html: all.find((p) => !isAttachment(p) && p.headers['content-type']?.startsWith('text/html'))?.body ?? '',
    attachments: all.filter(isAttachment).map((p) => ({
      filename: /filename="?([^";]+)"?/.exec(p.headers['content-disposition'] ?? '')?.[1] ?? '',
      content: p.body,
    })),
  };
}

// ---------------------------------------------------------------------------------------------
// A loopback HTTP server; `respond` decides each answer (a status, or 'hold' to never answer).

interface HookRequest {
  headers: http.IncomingHttpHeaders;
  body: string;
}

interface Hook {
  url: string;
  requests: HookRequest[];
  respond: (request: HookRequest, index: number) => number | 'hold';
  held: http.ServerResponse[];
  close(): Promise<void>;
}

async function startHook(): Promise<Hook> {
  const hook: Hook = {
    url: '',
    requests: [],
    respond: () => 200,
    held: [],
    close: async () => undefined,
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const request = { headers: req.headers, body: Buffer.concat(chunks).toString('utf8') };
      hook.requests.push(request);
      const answer = hook.respond(request, hook.requests.length - 1);
      if (answer === 'hold') {
        hook.held.push(res);
        return;
      }
      res.writeHead(answer, { 'content-type': 'text/plain' }).end(answer === 200 ? 'ok' : 'nope');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  hook.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/suspend`;
  hook.close = () =>
    new Promise<void>((resolve) => {
      for (const r of hook.held) r.destroy();
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return hook;
}

interface WebhookEventBody {
  id: string;
  event: string;
  customer: { key: string };
  policy: string;
  to: string | null;
  reasons: { condition: string; text: string }[];
}

function eventsOf(request: HookRequest): WebhookEventBody[] {
  const body = JSON.parse(request.body) as { events?: WebhookEventBody[] } & WebhookEventBody;
  return body.events ?? [body];
}

// ---------------------------------------------------------------------------------------------

const ENGINE_WITH_CUSTOMER_NOTICE = ENGINE_RULES.replace(
  '        actions: [notify]\n',
  '        actions: [notify, notify_customer]\n',
);

function rulesWith(notifications: string): string {
  return writeRules(`${ENGINE_WITH_CUSTOMER_NOTICE}\n${notifications}\n`);
}

/** The organizations hear by webhook only (customers still get their notices by mail). */
function webhookOnlyRules(hook: Hook, batch: boolean): string {
  return rulesWith(`notifications:
  emails: []
  use_organization_column: false
  webhook: { url: "${hook.url}", secret: hook-secret, batch: ${batch} }`);
}

interface OutboxRow {
  id: string;
  org_id: string | null;
  run_id: string;
  history_id: string;
  status: string;
  attempts: number;
  next_attempt_at: Date;
  last_error: string | null;
  delivered: Record<string, string>;
  payload: {
    to: string | null;
    event: string;
    actions: string[];
    customer: { key: string; email: string | null };
  };
}

describe('suspend notify', () => {
  let db: TestDatabase;
  let smtp: Awaited<ReturnType<typeof startSmtp>>;
  let hook: Hook;
  let backfillRows: OutboxRow[];

  /** `suspend notify` with these rules, mail through the loopback SMTP server. */
  function notify(file: string, ...args: string[]) {
    return runCli(['notify', ...args, '--rules', file, '--database-url', db.url], {
      env: { SMTP_URL: smtp.url },
    });
  }

  /** The backfill's events (once known), as stored now. */
  async function outbox(): Promise<OutboxRow[]> {
    const run = backfillRows?.[0]?.run_id ?? null;
    return (
      await db.knex.raw<{ rows: OutboxRow[] }>(
        `select o.*, o.id::text as id, o.run_id::text as run_id from suspend.outbox o
          where ?::bigint is null or o.run_id = ? order by o.id`,
        [run, run],
      )
    ).rows;
  }

  /** Every event of the backfill due again, as if never delivered; later events (reinstate) settled. */
  async function resetOutbox(): Promise<void> {
    await db.knex.raw(
      `update suspend.outbox set status = case when run_id = ? then 'pending' else 'sent' end, attempts = 0,
              next_attempt_at = now(), last_error = null, sent_at = null, delivered = '{}',
              claimed_by = null, claimed_until = null`,
      [backfillRows[0]?.run_id ?? null],
    );
  }

  /** The webhook answers 200 but never request `n` (0-based); resolves once that one is held. */
  function holdRequest(n: number): Promise<void> {
    return new Promise<void>((held) => {
      hook.respond = (_req, i) => {
        if (i !== n) return 200;
        held();
        return 'hold';
      };
    });
  }

  beforeAll(async () => {
    db = await createTestDatabase();
    smtp = await startSmtp();
    hook = await startHook();
    const seed = await runCli([
      'seed',
      '--customers',
      '2000',
      '--orgs',
      '5',
      '--seed',
      '7',
      '--as-of',
      AS_OF,
      '--reset',
      '--database-url',
      db.url,
      '--quiet',
    ]);
    expect(seed).toMatchObject({ code: 0 });
    const backfill = await runCli([
      'backfill',
      '--as-of',
      AS_OF,
      '--max-changes',
      'none',
      '--no-notify',
      '--quiet',
      '--rules',
      rulesWith('notifications: { emails: [] }'),
      '--database-url',
      db.url,
    ]);
    expect(backfill.code).toBe(0);
    backfillRows = await outbox();
  }, 180_000);

  afterAll(async () => {
    await hook?.close();
    await smtp?.close();
    await db?.drop();
  });

  beforeEach(() => {
    smtp.mails.length = 0;
    hook.requests.length = 0;
    hook.held.length = 0;
    hook.respond = () => 200;
  });

  test('the backfill left one pending event per change, in several organizations', () => {
    expect(backfillRows.length).toBeGreaterThan(100);
    expect(new Set(backfillRows.map((r) => r.org_id)).size).toBe(5);
    expect(backfillRows.every((r) => r.status === 'pending' && r.attempts === 0)).toBe(true);
    expect(backfillRows.some((r) => r.payload.actions.includes('notify_customer'))).toBe(true);
  });

  test("an account that enters stages of several policies at once, first seen by the backfill: each event tells the account's hold", () => {
    type Payload = OutboxRow['payload'] & {
      policy: string;
      allowsLogin: boolean;
      account?: { allowsLogin: boolean; heldBy: string[] };
    };
    const byCustomer = new Map<string, Payload[]>();
    for (const row of backfillRows) {
      const p = row.payload as Payload;
      byCustomer.set(p.customer.key, [...(byCustomer.get(p.customer.key) ?? []), p]);
    }
    // Events of a policy that lets the customer sign in, of accounts another policy suspends.
    const signInOnlyHere = [...byCustomer.values()].flatMap((events) =>
      events.some((e) => !e.allowsLogin) ? events.filter((e) => e.allowsLogin) : [],
    );
    expect(signInOnlyHere.length).toBeGreaterThan(0);
    for (const e of signInOnlyHere) {
      expect({ policy: e.policy, allowsLogin: e.account?.allowsLogin }).toEqual({
        policy: e.policy,
        allowsLogin: false,
      });
      expect(e.account?.heldBy.some((h) => h.startsWith('suspended under '))).toBe(true);
    }
  });

  test('a digest per organization to its contacts, customer notices, and signed batches to the webhook', async () => {
    await resetOutbox();
    const rules = rulesWith(`notifications:
  emails: [ops@example.com]
  use_organization_column: true
  webhook: { url: "${hook.url}", secret: hook-secret, batch: true }`);
    const opened = smtp.connections.count;
    const r = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: smtp.url },
    });
    // Mail after mail over a few pooled connections, not a connection each.
    expect(smtp.mails.length).toBeGreaterThan(10);
    expect(smtp.connections.count - opened).toBeLessThanOrEqual(5);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      `Delivered ${backfillRows.length} of ${backfillRows.length} event(s): 5 digest(s)`,
    );

    const mails = smtp.mails.map(readMail);
    const digests = mails.filter((m) => m.subject.startsWith('[suspend]'));
    const notices = mails.filter((m) => !m.subject.startsWith('[suspend]'));
    expect(digests).toHaveLength(5);

    const orgs = await db.knex.raw<{ rows: { id: string; emails: string[] }[] }>(
      'select id::text as id, notification_emails as emails from organizations',
    );
    for (const org of orgs.rows) {
      const rows = backfillRows.filter((row) => row.org_id === org.id);
      const digest = digests.find((m) => m.subject.startsWith(`[suspend] Organization ${org.id}:`));
      expect(digest).toBeDefined();
      if (!digest) continue;
      expect(digest.rcptTo.sort()).toEqual(['ops@example.com', ...org.emails].sort());
      // counts per stage, in the subject and the body
      const perStage = new Map<string, number>();
      for (const row of rows)
        perStage.set(row.payload.to ?? 'cleared', (perStage.get(row.payload.to ?? 'cleared') ?? 0) + 1);
      for (const [stage, n] of perStage) expect(digest.subject).toContain(`${n} ${stage}`);
      expect(digest.subject).toContain(`(backfill ${AS_OF})`);
      expect(digest.text).toContain('What happened');
      expect(digest.text).toContain('suspend reinstate');
      expect(digest.html).toContain('What you can do');
      // many changes: a CSV with one line per event
      expect(digest.attachments).toHaveLength(1);
      const csv = digest.attachments[0]?.content.trim().split('\r\n') ?? [];
      expect(digest.attachments[0]?.filename).toBe(`suspend-org-${org.id}-run-${rows[0]?.run_id}.csv`);
      expect(csv[0]).toBe(
        'event_id,customer_key,name,email,policy,change,from_stage,to_stage,blocks_booking,allows_login,reasons,as_of,actor',
      );
      expect(
        csv
          .slice(1)
          .map((line) => line.split(',')[0])
          .sort(),
      ).toEqual(rows.map((row) => row.id).sort());
    }

    // the customers' own notices (notify_customer), to their addresses
    const noticeRows = backfillRows.filter((row) => row.payload.actions.includes('notify_customer'));
    expect(notices.map((m) => m.rcptTo.join()).sort()).toEqual(
      noticeRows.map((row) => row.payload.customer.email).sort(),
    );

    // the webhook: batches of events, each signed over `${t}.${body}`
    expect(hook.requests.length).toBeGreaterThanOrEqual(5);
    const received: string[] = [];
    for (const req of hook.requests) {
      const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(String(req.headers['suspend-signature']));
      expect(m).not.toBeNull();
      const expected = createHmac('sha256', 'hook-secret').update(`${m?.[1]}.${req.body}`).digest('hex');
      expect(m?.[2]).toBe(expected);
      expect(req.headers['content-type']).toBe('application/json');
      const events = eventsOf(req);
      expect(req.headers['idempotency-key']).toBe(events.map((e) => e.id).join(','));
      received.push(...events.map((e) => e.id));
    }
    expect(received.sort()).toEqual(backfillRows.map((row) => row.id).sort());
    const sample = eventsOf(hook.requests[0] as HookRequest)[0];
    const row = backfillRows.find((x) => x.id === sample?.id);
    expect(sample).toMatchObject({
      event: row?.payload.event,
      to: row?.payload.to,
      customer: { key: row?.payload.customer.key },
    });
    // Each event carries the reasons of the history row it reports (stored there only).
    expect(backfillRows.filter((x) => 'reasons' in x.payload)).toEqual([]);
    const history = new Map(
      (
        (await db.knex('suspend.history').select('id', 'reasons')) as { id: string; reasons: unknown[] }[]
      ).map((h) => [String(h.id), h.reasons]),
    );
    const historyOf = new Map(backfillRows.map((x) => [x.id, String(x.history_id)]));
    for (const e of hook.requests.flatMap((req) => eventsOf(req))) {
      expect(e.reasons.length).toBeGreaterThan(0);
      expect(e.reasons).toEqual(history.get(historyOf.get(e.id) as string));
    }

    const after = await outbox();
    expect(after.every((x) => x.status === 'sent' && x.attempts === 1)).toBe(true);
    expect(after.every((x) => x.delivered.digest && x.delivered.webhook)).toBe(true);

    // nothing is due any more: a second call sends nothing
    smtp.mails.length = 0;
    const again = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: smtp.url },
    });
    expect(again).toMatchObject({ code: 0 });
    expect(again.stdout).toContain('No notifications were due.');
    expect(smtp.mails).toHaveLength(0);
  });

  test('a reinstatement: a digest with a table of accounts, customer text escaped in HTML', async () => {
    const state = await db
      .knex('suspend.account_states')
      .whereNotNull('stage')
      .where({ policy: 'inactivity' })
      .first();
    const key = String(state.customer_key);
    const evil = '<img src=x onerror=alert(1)> & "Bo"';
    await db.knex('customers').where({ id: key }).update({ name: evil });
    const rules = rulesWith('notifications: { emails: [ops@example.com], use_organization_column: false }');
    const reinstate = await runCli([
      'reinstate',
      key,
      '--reason',
      'called back, still in business',
      '--policy',
      'inactivity',
      '--as-of',
      AS_OF,
      '--rules',
      rules,
      '--database-url',
      db.url,
    ]);
    expect(reinstate.code).toBe(0);
    const r = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: smtp.url },
    });
    expect(r).toMatchObject({ code: 0 });
    expect(smtp.mails).toHaveLength(1);
    const digest = readMail(smtp.mails[0] as ReceivedMail);
    expect(digest.rcptTo).toEqual(['ops@example.com']);
    expect(digest.subject).toBe(`[suspend] Organization ${state.org_id}: 1 reinstated (reinstate ${AS_OF})`);
    expect(digest.attachments).toHaveLength(0);
    expect(digest.text).toContain(evil);
    expect(digest.text).toContain('reinstated by hand from suspended');
    expect(digest.html).toContain('&lt;img src=x onerror=alert(1)&gt; &amp; &quot;Bo&quot;');
    expect(digest.html).not.toContain('<img');
  });

  test('an organization with more events than one claim takes gets its digest in parts, each saying which', async () => {
    const rules = await loadRules({
      file: rulesWith('notifications: { emails: [ops@example.com], use_organization_column: false }'),
      cwd: ROOT,
    });
    const perOrg = new Map<string, number>();
    for (const r of backfillRows) perOrg.set(String(r.org_id), (perOrg.get(String(r.org_id)) ?? 0) + 1);
    const [org, n] = [...perOrg].sort((a, b) => b[1] - a[1])[0] as [string, number];
    const digestsOf = () =>
      smtp.mails.map(readMail).filter((m) => m.subject.startsWith(`[suspend] Organization ${org}:`));

    // Exactly one claim's worth: one digest, no parts.
    await resetOutbox();
    expect(await deliverPending(db.knex, rules, { smtpUrl: smtp.url, claimLimit: n })).toMatchObject({
      claimed: backfillRows.length,
    });
    expect(digestsOf()).toHaveLength(1);
    expect(digestsOf()[0]?.subject).not.toContain('part');
    expect(digestsOf()[0]?.text).not.toContain('This is part');

    // Two claims' worth: two digests, each saying which part it is and whether more follows.
    await resetOutbox();
    smtp.mails.length = 0;
    const limit = Math.ceil(n / 2);
    expect(await deliverPending(db.knex, rules, { smtpUrl: smtp.url, claimLimit: limit })).toMatchObject({
      claimed: backfillRows.length,
      sent: backfillRows.length,
    });
    const parts = digestsOf();
    expect(parts).toHaveLength(2);
    expect(parts.map((m) => / part (\d)$/.exec(m.subject)?.[1])).toEqual(['1', '2']);
    const carries = `one digest carries at most ${limit.toLocaleString('en-US')} changes`;
    expect(parts[0]?.text).toContain(
      `This is part 1 of this run's digest: ${carries}, and the next part follows.`,
    );
    expect(parts[1]?.text).toContain(`This is part 2, the last, of this run's digest: ${carries}.`);
  });

  test('a contact the SMTP server refuses: the others get the digest, the events are sent, and one line names the address', async () => {
    await resetOutbox();
    smtp.refuse.add('gone@example.com');
    try {
      const file = rulesWith(
        'notifications: { emails: [ops@example.com, gone@example.com], use_organization_column: false }',
      );
      const r = await notify(file);
      expect(r.code).toBe(0);
      const digests = smtp.mails.map(readMail).filter((m) => m.subject.startsWith('[suspend]'));
      expect(digests.length).toBe(new Set(backfillRows.map((e) => e.org_id)).size);
      expect(digests.every((m) => m.rcptTo.join() === 'ops@example.com')).toBe(true);
      const refusals = r.stderr.split('\n').filter((l) => l.includes('refused gone@example.com'));
      expect(refusals).toHaveLength(digests.length);
      expect(refusals[0]).toMatch(
        /^The mail "\[suspend\] Organization .*" went out, but the SMTP server refused gone@example\.com: check this address in the contacts\.$/,
      );
      expect((await outbox()).every((e) => e.status === 'sent')).toBe(true);
    } finally {
      smtp.refuse.clear();
    }
  });

  test('without SMTP, events that need mail stay pending and one line says why', async () => {
    await resetOutbox();
    const rules = rulesWith('notifications: { emails: [ops@example.com] }');
    const r = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: undefined },
    });
    expect(r.code).toBe(0);
    expect(r.stderr.trim().split('\n')).toEqual([
      `SMTP is not configured (settings.smtp.url or SMTP_URL): ${backfillRows.length} event(s) that need mail stay pending until it is.`,
    ]);
    const after = await outbox();
    expect(
      after
        .filter((x) => x.run_id === backfillRows[0]?.run_id)
        .every((x) => x.status === 'pending' && x.attempts === 0),
    ).toBe(true);
  });

  test('with a webhook but no SMTP: the webhook goes out once, and the summary says only the mail is left', async () => {
    await resetOutbox();
    const rules = rulesWith(`notifications:
  emails: [ops@example.com]
  use_organization_column: false
  webhook: { url: "${hook.url}", secret: hook-secret, batch: true }`);
    const n = backfillRows.length;
    const run = () =>
      runCli(['notify', '--rules', rules, '--database-url', db.url], { env: { SMTP_URL: undefined } });
    const first = await run();
    expect(first.code).toBe(0);
    const requests = hook.requests.length;
    expect(requests).toBeGreaterThan(0);
    expect(first.stdout.split('\n').slice(0, 2)).toEqual([
      `Delivered 0 of ${n} event(s): 0 digest(s), 0 customer mail(s), ${requests} webhook request(s) carrying ${n} event(s).`,
      `${n} event(s) wait for SMTP to be configured: their webhook has gone out, only their mail is left.`,
    ]);
    const after = (await outbox()).filter((x) => x.run_id === backfillRows[0]?.run_id);
    expect(after.every((x) => x.status === 'pending' && x.delivered.webhook && !x.delivered.digest)).toBe(
      true,
    );
    // Called again: nothing is posted twice, and the summary still says what is left.
    const second = await run();
    expect(hook.requests).toHaveLength(requests);
    expect(second.stdout.split('\n').slice(0, 2)).toEqual([
      `Delivered 0 of ${n} event(s): 0 digest(s), 0 customer mail(s), 0 webhook request(s).`,
      `${n} event(s) wait for SMTP to be configured: their webhook has gone out, only their mail is left.`,
    ]);
  });

  test('a webhook that fails twice then succeeds: attempts, backoff, and account states untouched', async () => {
    await resetOutbox();
    const rules = await loadRules({ file: webhookOnlyRules(hook, true), cwd: ROOT });
    hook.respond = (_req, i) => (i < 2 ? 500 : 200);
    const states = await checksumTables(db.knex, ['suspend']).then((c) => c['suspend.account_states']);
    const t0 = new Date('2030-01-01T00:00:00Z');

    const first = await deliverPending(db.knex, rules, { smtpUrl: smtp.url, now: t0 });
    expect(first).toMatchObject({
      claimed: backfillRows.length,
      sent: 0,
      retrying: backfillRows.length,
      failed: 0,
    });
    expect(hook.requests).toHaveLength(1); // the first failure stops this call's other requests to the URL
    let rows = await outbox();
    expect(rows.every((x) => x.status === 'pending' && x.attempts === 1)).toBe(true);
    expect(rows.every((x) => x.next_attempt_at.getTime() === t0.getTime() + 60_000)).toBe(true);
    expect(rows[0]?.last_error).toBe(`webhook ${hook.url}: HTTP 500`);

    // not due yet: nothing is tried
    expect(
      await deliverPending(db.knex, rules, { smtpUrl: smtp.url, now: new Date(t0.getTime() + 30_000) }),
    ).toMatchObject({
      claimed: 0,
    });

    const t1 = new Date(t0.getTime() + 3600_000);
    expect(await deliverPending(db.knex, rules, { smtpUrl: smtp.url, now: t1 })).toMatchObject({
      retrying: backfillRows.length,
    });
    rows = await outbox();
    expect(
      rows.every((x) => x.attempts === 2 && x.next_attempt_at.getTime() === t1.getTime() + 120_000),
    ).toBe(true);

    const third = await deliverPending(db.knex, rules, {
      smtpUrl: smtp.url,
      now: new Date(t1.getTime() + 3600_000),
    });
    expect(third).toMatchObject({ sent: backfillRows.length, retrying: 0, failed: 0 });
    rows = await outbox();
    expect(rows.every((x) => x.status === 'sent' && x.attempts === 3 && x.delivered.webhook)).toBe(true);
    const ids = hook.requests.slice(2).flatMap((req) => eventsOf(req).map((e) => e.id));
    expect(ids.sort()).toEqual(backfillRows.map((x) => x.id).sort());

    expect(await checksumTables(db.knex, ['suspend']).then((c) => c['suspend.account_states'])).toBe(states);
  });

  test('a webhook without a secret: requests go unsigned and notify says so once', async () => {
    await resetOutbox();
    const file = rulesWith(`notifications:
  emails: []
  use_organization_column: false
  webhook: { url: "${hook.url}", batch: true }`);
    const r = await notify(file);
    expect(r.code).toBe(0);
    expect(hook.requests.length).toBeGreaterThan(1);
    expect(hook.requests.filter((req) => req.headers['suspend-signature'] !== undefined)).toEqual([]);
    const said = `webhook ${hook.url}: sent unsigned (its notifications.webhook has no secret, so the receiver cannot verify the requests).`;
    expect(`${r.stdout}${r.stderr}`.split(said)).toHaveLength(2);
  });

  test('after the last attempt: failed, listed by --failed, sent again by --retry-failed', async () => {
    await resetOutbox();
    const file = webhookOnlyRules(hook, true);
    const rules = await loadRules({ file, cwd: ROOT });
    hook.respond = () => 503;
    const t0 = new Date('2030-02-01T00:00:00Z');
    await deliverPending(db.knex, rules, { smtpUrl: smtp.url, now: t0, maxAttempts: 2 });
    const second = await deliverPending(db.knex, rules, {
      smtpUrl: smtp.url,
      now: new Date(t0.getTime() + 3600_000),
      maxAttempts: 2,
    });
    expect(second).toMatchObject({ failed: backfillRows.length, outbox: { failed: backfillRows.length } });

    const listed = await notify(file, '--failed');
    expect(listed.code).toBe(0);
    const lines = listed.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^id +created +org +run +customer +event +policy +stage +attempts +error$/);
    expect(lines).toHaveLength(backfillRows.length + 4);
    expect(lines[2]).toContain(`webhook ${hook.url}: HTTP 503`);
    // Oldest first, by number (as text, 10 came before 9).
    const listedIds = lines.slice(2, 2 + backfillRows.length).map((l) => Number(l.split(/\s+/)[0]));
    expect(listedIds).toEqual(backfillRows.map((x) => Number(x.id)).sort((a, b) => a - b));
    expect(lines[lines.length - 1]).toBe(
      `${backfillRows.length} failed; send them again with \`suspend notify --retry-failed\`.`,
    );

    hook.respond = () => 200;
    hook.requests.length = 0;
    const retried = await notify(file, '--retry-failed');
    expect(retried.code).toBe(0);
    expect(retried.stdout).toContain(`${backfillRows.length} failed event(s) put back to be sent again.`);
    expect((await outbox()).every((x) => x.status === 'sent')).toBe(true);
    const none = await notify(file, '--failed');
    expect(none.stdout.trim()).toBe('No failed notifications.');
  });

  test('with the SMTP server down, each event’s error names its own recipients, not those of the first mail that failed', async () => {
    await resetOutbox();
    const rules = rulesWith(`notifications:
  emails: [ops@example.com]
  use_organization_column: true`);
    const r = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: 'smtp://127.0.0.1:1' },
    });
    expect(r.code).toBe(1);
    const orgs = await db.knex.raw<{ rows: { id: string; emails: string[] }[] }>(
      'select id::text as id, notification_emails as emails from organizations',
    );
    const emailsOf = new Map(orgs.rows.map((o) => [o.id, o.emails]));
    const rows = (await outbox()).filter((x) => x.last_error !== null);
    expect(new Set(rows.map((x) => x.org_id)).size).toBe(5);
    for (const row of rows) {
      const named = row.last_error?.match(/[\w.+-]+@[\w.-]+\w/g) ?? [];
      expect(named.length).toBeGreaterThan(0);
      const own = ['ops@example.com', ...(emailsOf.get(row.org_id ?? '') ?? []), row.payload.customer.email];
      expect(named.filter((address) => !own.includes(address))).toEqual([]);
    }
    // The later mails say the server failed earlier, with the server's own error.
    expect(
      rows.some((x) =>
        x.last_error?.includes('the SMTP server failed earlier in this delivery (smtp://127.0.0.1:1'),
      ),
    ).toBe(true);
  });

  test('a sweep with --quiet still says, on stderr, that notifications were not delivered; its exit code stays 0', async () => {
    await resetOutbox();
    const rules = rulesWith(`notifications:
  emails: [ops@example.com]`);
    const r = await runCli(
      ['sweep', '--quiet', '--as-of', AS_OF, '--rules', rules, '--database-url', db.url],
      { env: { SMTP_URL: 'smtp://127.0.0.1:1' } },
    );
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(
      /^notifications: \d+ event\(s\) not delivered \(\d+ to be tried again, 0 failed\); see `suspend notify --failed`\.\n$/,
    );
    // Right after, nothing is due yet: notify says when the next one is.
    const next = await runCli(['notify', '--rules', rules, '--database-url', db.url], {
      env: { SMTP_URL: 'smtp://127.0.0.1:1' },
    });
    expect(next.stdout).toContain('No notifications were due.');
    expect(next.stdout).toMatch(
      /Outbox: \d+ pending \(the next is due \d{4}-\d\d-\d\dT[\d:.]+Z\), 0 failed\./,
    );
  });

  test('two processes at once deliver every event exactly once', async () => {
    await resetOutbox();
    const file = webhookOnlyRules(hook, false);
    const [a, b] = await Promise.all([notify(file), notify(file)]);
    expect([a?.code, b?.code]).toEqual([0, 0]);
    const ids = hook.requests.flatMap((req) => eventsOf(req).map((e) => e.id));
    expect(ids.sort()).toEqual(backfillRows.map((x) => x.id).sort());
    expect((await outbox()).every((x) => x.status === 'sent')).toBe(true);
  });

  test('a group another process is claiming at that instant is left whole to it: its digest is not split', async () => {
    await resetOutbox();
    const file = rulesWith(`notifications:
  emails: [ops@example.com]
  use_organization_column: false`);
    const org = backfillRows[0]?.org_id ?? '';
    const ofOrg = backfillRows.filter((row) => row.org_id === org);
    const middle = ofOrg[Math.floor(ofOrg.length / 2)]?.id ?? '';
    const digestsOf = (id: string) =>
      smtp.mails.map(readMail).filter((m) => m.subject.startsWith(`[suspend] Organization ${id}:`));
    // This transaction stands for another process in the middle of claiming the organization's
    // events of the run: it holds the group's claim lock and the rows it has locked so far.
    const other = await db.knex.transaction();
    try {
      await other.raw('select pg_advisory_xact_lock(hashtextextended(?, ?))', [
        claimGroupKey('suspend', { runId: backfillRows[0]?.run_id ?? null, orgId: org }),
        CLAIM_GROUP_LOCK_SEED,
      ]);
      await other.raw('select id from suspend.outbox where id = ? for update', [middle]);
      const first = await notify(file);
      expect(first.code).toBe(0);
    } finally {
      await other.commit();
    }
    // Nothing of that group went out, not even the rows nobody held; every other group did.
    expect(digestsOf(org)).toEqual([]);
    const pending = (await outbox()).filter((x) => x.status !== 'sent');
    expect(pending.map((x) => x.id).sort()).toEqual(ofOrg.map((x) => x.id).sort());
    expect(pending.every((x) => Object.keys(x.delivered).length === 0)).toBe(true);

    const second = await notify(file);
    expect(second.code).toBe(0);
    expect((await outbox()).filter((x) => x.status !== 'sent')).toEqual([]);
    const digests = digestsOf(org);
    expect(digests).toHaveLength(1);
    const perStage = new Map<string, number>();
    for (const row of ofOrg)
      perStage.set(row.payload.to ?? 'cleared', (perStage.get(row.payload.to ?? 'cleared') ?? 0) + 1);
    for (const [stage, n] of perStage) expect(digests[0]?.subject).toContain(`${n} ${stage}`);
  });

  test('the claim lock is per schema: the same run and organization being claimed in another schema does not hold these back', async () => {
    await resetOutbox();
    const file = webhookOnlyRules(hook, false);
    const other = await db.knex.transaction();
    try {
      // Run ids restart in each schema: another schema's run 1, organization 1, is another group.
      for (const row of backfillRows) {
        await other.raw('select pg_advisory_xact_lock(hashtextextended(?, ?))', [
          claimGroupKey('suspend_other', { runId: row.run_id, orgId: row.org_id }),
          CLAIM_GROUP_LOCK_SEED,
        ]);
      }
      expect((await notify(file)).code).toBe(0);
    } finally {
      await other.commit();
    }
    expect((await outbox()).filter((x) => x.status !== 'sent')).toEqual([]);
  });

  test('a process killed in the middle of delivering loses nothing and sends each event at most once more', async () => {
    await resetOutbox();
    const file = webhookOnlyRules(hook, false);
    const stall = holdRequest(10);
    const child = spawn(
      process.execPath,
      [path.join(ROOT, 'bin/suspend'), 'notify', '--rules', file, '--database-url', db.url],
      {
        env: { ...process.env, DATABASE_URL: undefined, SMTP_URL: smtp.url },
        stdio: 'ignore',
      },
    );
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    await stall;
    child.kill('SIGKILL');
    await exited;

    // The killed process's session ends with it, and with it its claim.
    for (let i = 0; i < 200; i++) {
      const held = await db.knex.raw<{ rows: { n: string }[] }>(
        `select count(*) as n from pg_locks where locktype = 'advisory' and classid = ?
            and database = (select oid from pg_database where datname = current_database())`,
        [NOTIFY_LOCK_CLASS],
      );
      if (held.rows[0]?.n === '0') break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const mid = await outbox();
    expect(mid.filter((x) => x.delivered.webhook)).toHaveLength(10);
    expect(mid.every((x) => x.status === 'pending')).toBe(true);

    hook.respond = () => 200;
    const again = await notify(file);
    expect(again.code).toBe(0);
    expect((await outbox()).every((x) => x.status === 'sent')).toBe(true);

    const times = new Map<string, number>();
    for (const id of hook.requests.flatMap((req) => eventsOf(req).map((e) => e.id))) {
      times.set(id, (times.get(id) ?? 0) + 1);
    }
    expect([...times.keys()].sort()).toEqual(backfillRows.map((x) => x.id).sort());
    expect(Math.max(...times.values())).toBe(2);
    expect([...times.values()].filter((n) => n === 2)).toHaveLength(1);
  });

  test('the claiming session is not ended for idling (idle_session_timeout) while a delivery waits', async () => {
    await resetOutbox();
    const file = webhookOnlyRules(hook, false);
    const stall = holdRequest(1);
    // Every session of the process would end after 3 s idle (PGOPTIONS, read by node-postgres), but
    // the claiming one turns the timeout off. Not less: the claim must outlive it.
    const delivering = runCli(['notify', '--rules', file, '--database-url', db.url], {
      env: { SMTP_URL: smtp.url, PGOPTIONS: '-c idle_session_timeout=3000' },
    });
    await stall;
    /** Sessions (`where` over pg_stat_activity a), each idle past the 3 s timeout or not. */
    const sessions = (where: string) => async () =>
      (
        await db.knex.raw<{ rows: { idle: boolean }[] }>(
          `select now() - a.state_change > interval '3.5 s' as idle from pg_stat_activity a where ${where}`,
          [NOTIFY_LOCK_CLASS],
        )
      ).rows;
    /** Until every one of them has idled past the timeout, or none is left. */
    const untilIdleOrGone = async (of: () => Promise<{ idle: boolean }[]>) => {
      for (let i = 0; i < 200; i++) {
        const now = await of();
        if (now.length === 0 || now.every((c) => c.idle)) return;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    const holdsClaim = `exists (select 1 from pg_locks l where l.pid = a.pid and l.locktype = 'advisory'
                                   and l.granted and l.classid = ? and l.database = (select oid from pg_database where datname = current_database()))`;
    const claimers = sessions(holdsClaim);
    await untilIdleOrGone(claimers);
    expect(await claimers()).toEqual([{ idle: true }]);
    // The process's other sessions idled past the timeout too, but it keeps them: the server's
    // timeout is raised past the pool's own idle limit for them (ended under the pool, one could be
    // reused in the moment its end is on the way, and fail the delivery).
    const others = sessions(
      `a.datname = current_database() and a.application_name = 'suspend' and not ${holdsClaim}`,
    );
    await untilIdleOrGone(others);
    expect((await others()).length).toBeGreaterThan(0);
    hook.held.shift()?.writeHead(200).end();

    const delivered = await delivering;
    // On failure, say why (the command's own output).
    expect({ code: delivered.code, stderr: delivered.code === 0 ? '' : delivered.stderr }).toEqual({
      code: 0,
      stderr: '',
    });
    const ids = hook.requests.flatMap((req) => eventsOf(req).map((e) => e.id));
    expect(ids.sort()).toEqual(backfillRows.map((x) => x.id).sort());
    expect((await outbox()).every((x) => x.status === 'sent')).toBe(true);
  });

  test('an SMTP_URL that is not an SMTP URL is refused before anything is claimed or run; exit 2', async () => {
    await resetOutbox();
    const file = rulesWith('notifications: { emails: [ops@example.com] }');
    const runs = async () => Number((await db.knex('suspend.runs').count<{ n: string }[]>({ n: '*' }))[0]!.n);
    const before = { outbox: await outbox(), runs: await runs() };
    const bad = { env: { SMTP_URL: 'http://mailer:secret@example.com' } };
    const sentence =
      'error: SMTP_URL "http://mailer:***@example.com" is not an SMTP URL; write smtp://[user:password@]host[:port] (smtps:// for TLS).\n';
    const notified = await runCli(['notify', '--rules', file, '--database-url', db.url], bad);
    expect(notified).toMatchObject({ code: 2, stderr: sentence, stdout: '' });
    const swept = await runCli(['sweep', '--as-of', AS_OF, '--rules', file, '--database-url', db.url], bad);
    expect(swept).toMatchObject({ code: 2, stderr: sentence, stdout: '' });
    expect({ outbox: await outbox(), runs: await runs() }).toEqual(before);
    expect(smtp.mails).toHaveLength(0);
  });

  test('bad flags: --failed with --retry-failed is a usage error', async () => {
    const r = await runCli(['notify', '--failed', '--retry-failed', '--database-url', db.url]);
    expect(r.code).toBe(2);
    // One line, naming the help to read.
    expect(r.stderr).toBe(
      "error: option '--failed' cannot be used with option '--retry-failed'; see `suspend notify --help`.\n",
    );
    // A listing sends nothing: a limit of attempts with it is refused, not ignored.
    const listing = await runCli(['notify', '--failed', '--max-attempts', '3', '--database-url', db.url]);
    expect(listing).toMatchObject({
      code: 2,
      stderr:
        "error: option '--failed' cannot be used with option '--max-attempts <n>'; see `suspend notify --help`.\n",
    });
    // Commander's suggestion joins the same line.
    const typo = await runCli(['notify', '--max-attempt', '3', '--database-url', db.url]);
    expect(typo).toMatchObject({
      code: 2,
      stderr:
        "error: unknown option '--max-attempt' (Did you mean --max-attempts?); see `suspend notify --help`.\n",
    });
  });
});

describe('notify beside other runs', () => {
  let db: TestDatabase;
  let smtp: Awaited<ReturnType<typeof startSmtp>>;
  const rules = rulesWith('notifications: { emails: [ops@example.com], use_organization_column: false }');
  const cli = (...args: string[]) =>
    runCli([...args, '--rules', rules, '--database-url', db.url], { env: { SMTP_URL: smtp.url } });

  beforeAll(async () => {
    db = await createTestDatabase();
    smtp = await startSmtp();
    const seed = await runCli(
      ['seed', '--customers', '300', '--orgs', '2', '--seed', '5', '--as-of', AS_OF, '--reset'].concat([
        '--database-url',
        db.url,
        '--quiet',
      ]),
    );
    expect(seed.code).toBe(0);
    const backfill = await cli(
      'backfill',
      '--as-of',
      AS_OF,
      '--max-changes',
      'none',
      '--no-notify',
      '--quiet',
    );
    expect(backfill.code).toBe(0);
  }, 120_000);

  afterAll(async () => {
    await smtp?.close();
    await db?.drop();
  });

  /** A session of its own holding an advisory lock (two int keys) until `release`. */
  async function holdLock(
    classId: number,
    key: string | null,
  ): Promise<{ pid: number; release(): Promise<void> }> {
    const session = (await db.knex.client.acquireConnection()) as {
      query(sql: string, params: unknown[]): Promise<{ rows: { pid: number }[] }>;
    };
    const objid = key === null ? 'pg_backend_pid()' : 'hashtext($2)';
    const params = key === null ? [classId] : [classId, key];
    const r = await session.query(`select pg_backend_pid() as pid, pg_advisory_lock($1, ${objid})`, params);
    return {
      pid: r.rows[0]!.pid,
      async release() {
        await session.query('select pg_advisory_unlock_all()', []);
        await db.knex.client.releaseConnection(session);
      },
    };
  }

  test('a revert withdraws the events a killed notify had claimed (its lease not yet out), not those a live one holds; its own events only for changes someone heard of', async () => {
    const ids = (
      await db.knex.raw<{ rows: { id: string }[] }>(
        "select id::text as id from suspend.outbox where run_id = 1 and status = 'pending' order by id",
      )
    ).rows.map((r) => r.id);
    expect(ids.length).toBeGreaterThan(10);
    const [dead, live, heard] = [ids.slice(0, 5), ids.slice(5, 10), ids.slice(10, 15)];
    // Part of these went out already (their webhook), the rest waits for SMTP.
    await db.knex.raw(
      `update suspend.outbox set delivered = '{"webhook": "2026-11-23T00:00:00Z"}' where id = any(?::bigint[])`,
      [heard],
    );
    // A live claimer: a session holding the notify lock on its own pid, as `suspend notify` does.
    const claimer = await holdLock(NOTIFY_LOCK_CLASS, null);
    try {
      const claim = (owner: number, which: string[]) =>
        db.knex.raw(
          `update suspend.outbox set claimed_by = ?, claimed_until = now() + interval '10 minutes'
            where id = any(?::bigint[])`,
          [owner, which],
        );
      // A killed process: its claim's lease runs on, but no session holds its lock any more.
      await claim(2_000_000_000, dead);
      await claim(claimer.pid, live);
      const revert = await cli('revert', '1');
      expect(revert.code).toBe(0);
    } finally {
      await claimer.release();
    }
    const status = new Map(
      (
        await db.knex.raw<{ rows: { id: string; status: string }[] }>(
          'select id::text as id, status from suspend.outbox where run_id = 1',
        )
      ).rows.map((r) => [r.id, r.status]),
    );
    expect(dead.map((id) => status.get(id))).toEqual(dead.map(() => 'withdrawn'));
    expect(live.map((id) => status.get(id))).toEqual(live.map(() => 'pending'));
    expect([...status.values()].filter((s) => s === 'pending')).toHaveLength(live.length);
    // The revert's own events: told only where someone may have heard of the change it undoes (an
    // event a live process is delivering, or one part of which went out); the others are withdrawn.
    const rows = (
      await db.knex.raw<{ rows: { id: string; key: string; policy: string; run_id: string }[] }>(
        `select id::text as id, customer_key as key, payload->>'policy' as policy, run_id::text as run_id
           from suspend.outbox where run_id = 1 or run_id = (select max(id) from suspend.runs where kind = 'revert')`,
      )
    ).rows;
    const pair = (r: { key: string; policy: string }) => `${r.key}/${r.policy}`;
    const told = new Set(rows.filter((r) => [...live, ...heard].includes(r.id)).map(pair));
    const revertEvents = (
      await db.knex.raw<{
        rows: { key: string; policy: string; status: string; last_error: string | null }[];
      }>(
        `select customer_key as key, payload->>'policy' as policy, status, last_error from suspend.outbox
          where run_id = (select max(id) from suspend.runs where kind = 'revert')`,
      )
    ).rows;
    expect(revertEvents.length).toBe(ids.length);
    expect(
      revertEvents
        .filter((e) => e.status === 'pending')
        .map(pair)
        .sort(),
    ).toEqual([...told].sort());
    expect(
      revertEvents
        .filter((e) => !told.has(pair(e)))
        .every((e) => e.status === 'withdrawn' && e.last_error === 'the change it reverts was never sent'),
    ).toBe(true);
  });

  test('the events of a run still under way wait for it to end, so its digest is not split; a run whose process is gone sends them', async () => {
    await db.knex.raw("update suspend.outbox set status = 'sent', claimed_by = null, claimed_until = null");
    // A sweep writing its pages: its row says running, and the session it recorded holds the run lock.
    const runner = await holdLock(0x5355, 'suspend');
    let release: (() => Promise<void>) | null = () => runner.release();
    try {
      const [row] = await db
        .knex('suspend.runs')
        .insert({
          kind: 'sweep',
          status: 'running',
          as_of: AS_OF,
          rules_hash: 'test',
          started_by: 'cron',
          options: JSON.stringify({ lockSession: runner.pid }),
        })
        .returning('id');
      const run = String((row as { id: string }).id);
      // Its first pages' events, in one organization.
      await db.knex.raw(
        `insert into suspend.outbox (run_id, history_id, org_id, customer_key, event, payload)
         select ?, history_id, org_id, customer_key, event, payload || jsonb_build_object('reasons', '[]'::jsonb)
           from suspend.outbox where run_id = 1 and org_id = (select min(org_id) from suspend.outbox where run_id = 1)
            and payload->'actions' @> '["notify"]'::jsonb order by id limit 6`,
        [run],
      );
      smtp.mails.length = 0;
      const during = await cli('notify');
      expect(during.code).toBe(0);
      expect(smtp.mails).toHaveLength(0);
      expect(during.stdout).toContain(
        `Run ${run} is still under way: its events go out when it ends, one digest per organization.`,
      );
      const pending = await db
        .knex('suspend.outbox')
        .where({ run_id: run, status: 'pending' })
        .count<{ n: string }[]>({ n: '*' });
      expect(Number(pending[0]!.n)).toBe(6);

      // Its process gone (killed), the run writes nothing more until resumed: its events go out.
      await runner.release();
      release = null;
      const after = await cli('notify');
      expect(after.code).toBe(0);
      expect(smtp.mails).toHaveLength(1);
      expect(after.stdout).not.toContain('still under way');
      const left = await db
        .knex('suspend.outbox')
        .where({ run_id: run })
        .whereNot({ status: 'sent' })
        .count<{ n: string }[]>({ n: '*' });
      expect(Number(left[0]!.n)).toBe(0);
    } finally {
      await release?.();
    }
  });

  test('a customer notice names what the account is now when another policy holds it more: paused, not "a notice"', async () => {
    // The backfill was reverted above: a sweep puts its accounts back in their stages.
    const sweep = await cli('sweep', '--as-of', AS_OF, '--max-changes', 'none', '--no-notify', '--quiet');
    expect(sweep.code).toBe(0);
    const run = String((await db.knex('suspend.runs').max<{ id: string }[]>({ id: 'id' }))[0]!.id);
    await db.knex.raw("update suspend.outbox set status = 'sent', claimed_by = null, claimed_until = null");
    // Its notices (escalation day_14, which neither pauses nor suspends) of accounts that another
    // policy pauses: their events carry the account's hold.
    const held = await db.knex.raw<{ rows: { email: string }[] }>(
      `update suspend.outbox set status = 'pending', delivered = '{}', attempts = 0, next_attempt_at = now()
        where run_id = ? and payload->'actions' @> '["notify_customer"]'::jsonb
          and not (payload->>'blocksBooking')::boolean and (payload->'account'->>'blocksBooking')::boolean
          and (payload->'account'->>'allowsLogin')::boolean
        returning payload->'customer'->>'email' as email`,
      [run],
    );
    expect(held.rows.length).toBeGreaterThan(0);
    smtp.mails.length = 0;
    expect((await cli('notify')).code).toBe(0);
    const notices = smtp.mails.map(readMail).filter((m) => !m.subject.startsWith('[suspend]'));
    expect(notices.map((m) => m.rcptTo.join()).sort()).toEqual(held.rows.map((r) => r.email).sort());
    expect(new Set(notices.map((m) => m.subject))).toEqual(new Set(['Booking is paused on your account']));
  });
});
