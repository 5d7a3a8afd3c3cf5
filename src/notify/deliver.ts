import type { Knex } from 'knex';
import { requireMigrated } from '../db/migrate';
import { getRun, processGone } from '../engine/ledger';
import { runLockHolders } from '../engine/lock';
import { rulesForOrg } from '../engine/plan';
import { errorMessage } from '../errors';
import type { EffectiveRules, Rules } from '../types';
import { buildCustomerMail, buildDigest, type DigestPart, type DigestRun } from './digest';
import { createMailer, MailError, resolveSmtpUrl, type Mailer } from './mail';
import {
  claimEvents,
  dueGroups,
  openClaimSession,
  outboxCounts,
  moreDue,
  recordDelivered,
  renewLease,
  resetFailed,
  settleEvents,
  type BackoffPolicy,
  type Channel,
  type EventGroup,
  type OutboxCounts,
  type OutboxEvent,
  type Settlement,
} from './outbox';
import { OrganizationContacts, tellsCustomer, tellsOrganization } from './recipients';
import { describeWebhookUrl, postWebhook, webhookRequest, type WebhookEvent } from './webhook';

/**
 * `suspend notify`, callable: deliver the due outbox events of every organization and run. Per
 * organization and run, one email digest to its contacts, the customers' own notices
 * (`notify_customer`), and the events to its webhook (one request per event or per batch). Each
 * channel is recorded as soon as it went out; an event is sent when every channel it needs went
 * out, retried with exponential backoff when one failed, and failed after `maxAttempts`.
 * Delivery never touches account states. Without SMTP, events that need mail stay pending.
 */

export interface DeliveryOptions {
  /** The clock for due times, leases and backoff; default the database's. */
  now?: Date;
  /** Attempts before an event is marked failed (default 5). */
  maxAttempts?: number;
  log?: (message: string) => void;
  /** Put failed events back first (`--retry-failed`). */
  retryFailed?: boolean;
  /** Instead of SMTP_URL / settings.smtp.url. */
  smtpUrl?: string | null;
  /** Per webhook request (default 10 s). */
  webhookTimeoutMs?: number;
  /** How long a claim holds while its process lives (default 10 minutes). */
  leaseMs?: number;
  /**
   * Events claimed at once per organization and run (default 20,000), which bounds memory: a group
   * with more goes out as several digests, each saying which part it is.
   */
  claimLimit?: number;
  /** Changes listed in a digest before it attaches a CSV instead (default 20). */
  tableLimit?: number;
}

export interface DeliveryResult {
  /** Failed events put back by `retryFailed`. */
  reset: number;
  claimed: number;
  /** Events now delivered on every channel they need. */
  sent: number;
  /** Events with a channel that failed, to be tried again after the backoff. */
  retrying: number;
  /** Events that failed for the last time (`suspend notify --failed`). */
  failed: number;
  /** Events that need mail while SMTP is not configured: still pending. */
  waitingForMail: number;
  /** Events with no one to tell (no contacts, no webhook, no customer notice): settled as sent. */
  unaddressed: number;
  /** Runs still writing their pages: their events are left for when they end (one digest each). */
  runsUnderWay: string[];
  digests: number;
  customerMails: number;
  webhookRequests: number;
  /** Events the webhook requests of this call carried. */
  webhookEvents: number;
  /** Of the events waiting for mail, those whose webhook has gone out (in this call or before). */
  waitingWebhookSent: number;
  smtpConfigured: boolean;
  /** One sentence per distinct delivery failure. */
  errors: string[];
  /** The outbox afterwards. */
  outbox: OutboxCounts;
}

export const DEFAULT_MAX_ATTEMPTS = 5;
const BACKOFF_BASE_SECONDS = 60;
const BACKOFF_MAX_SECONDS = 6 * 3600;
const WEBHOOK_BATCH_SIZE = 100;

/** Per call: what is known about a channel that failed for reasons not tied to one message. */
class Breakers {
  private readonly broken = new Map<string, string>();
  check(target: string): string | undefined {
    return this.broken.get(target);
  }
  trip(target: string, error: string): void {
    this.broken.set(target, error);
  }
}

/** Mail errors about one message (a refused address); anything else means the server is unusable. */
const PER_MESSAGE_MAIL_ERRORS = new Set(['EENVELOPE', 'EMESSAGE']);

function mailErrorCode(err: unknown): string | undefined {
  const code = (err as { cause?: { code?: unknown } } | null)?.cause?.code;
  return typeof code === 'string' ? code : undefined;
}

interface Delivery {
  knex: Knex;
  rules: Rules;
  schema: string;
  owner: number;
  now: Date | null;
  leaseMs: number;
  webhookTimeoutMs: number;
  tableLimit: number;
  backoff: BackoffPolicy;
  mailer: Mailer | null;
  contacts: OrganizationContacts;
  breakers: Breakers;
  runs: Map<string, DigestRun | null>;
  /** Webhook URLs already said to be sent unsigned in this call. */
  unsigned: Set<string>;
  result: DeliveryResult;
  log: (message: string) => void;
  lastRenewal: number;
}

/** What happened to each event of a group during this attempt. */
class Attempt {
  readonly tried = new Set<string>();
  /** Events whose webhook went out in this attempt. */
  readonly hooked = new Set<string>();
  readonly waiting = new Set<string>();
  readonly errors = new Map<string, string>();

  fail(events: OutboxEvent[], error: string): void {
    for (const e of events) {
      this.tried.add(e.id);
      if (!this.errors.has(e.id)) this.errors.set(e.id, error);
    }
  }

  settlements(events: OutboxEvent[]): Settlement[] {
    return events.map((e) => {
      const error = this.errors.get(e.id) ?? null;
      return {
        id: e.id,
        outcome: error !== null ? 'retry' : this.waiting.has(e.id) ? 'wait' : 'sent',
        tried: this.tried.has(e.id),
        error,
      };
    });
  }
}

export async function deliverPending(
  knex: Knex,
  rules: Rules,
  options: DeliveryOptions = {},
): Promise<DeliveryResult> {
  const schema = rules.settings.schema;
  await requireMigrated(knex, schema);
  const now = options.now ?? null;
  const smtpUrl = resolveSmtpUrl(rules, options.smtpUrl);
  const result: DeliveryResult = {
    reset: 0,
    claimed: 0,
    sent: 0,
    retrying: 0,
    failed: 0,
    waitingForMail: 0,
    unaddressed: 0,
    runsUnderWay: [],
    digests: 0,
    customerMails: 0,
    webhookRequests: 0,
    webhookEvents: 0,
    waitingWebhookSent: 0,
    smtpConfigured: smtpUrl !== null,
    errors: [],
    outbox: { pending: 0, failed: 0 },
  };
  const log = options.log ?? (() => undefined);
  if (options.retryFailed) result.reset = await resetFailed(knex, schema, now);

  const session = await openClaimSession(knex);
  const mailer = smtpUrl ? createMailer(smtpUrl, rules.settings.smtp.from) : null;
  const d: Delivery = {
    knex,
    rules,
    schema,
    owner: session.owner,
    now,
    leaseMs: options.leaseMs ?? 10 * 60_000,
    webhookTimeoutMs: options.webhookTimeoutMs ?? 10_000,
    tableLimit: options.tableLimit ?? 20,
    backoff: {
      maxAttempts: options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS,
      baseSeconds: BACKOFF_BASE_SECONDS,
      maxSeconds: BACKOFF_MAX_SECONDS,
    },
    mailer,
    contacts: new OrganizationContacts(knex, rules.source, log),
    breakers: new Breakers(),
    runs: new Map(),
    unsigned: new Set(),
    result,
    log,
    lastRenewal: Date.now(),
  };
  const limit = options.claimLimit ?? 20_000;
  try {
    // A group another process was claiming is tried once more after the others: by then that
    // claim has committed and what it left (beyond its limit, or due since) is this call's.
    const busy: EventGroup[] = [];
    const underWay = await runsUnderWay(knex, schema);
    for (const group of await dueGroups(knex, schema, now)) {
      // A run still writing pages has more events to come: sent now, its digest would be split.
      if (group.runId !== null && underWay.has(group.runId)) {
        if (!result.runsUnderWay.includes(group.runId)) result.runsUnderWay.push(group.runId);
        continue;
      }
      if (!(await deliverDue(d, group, limit))) busy.push(group);
    }
    for (const group of busy) await deliverDue(d, group, limit);
  } finally {
    mailer?.close();
    await session.close();
  }
  if (result.waitingForMail > 0) {
    log(
      `SMTP is not configured (settings.smtp.url or SMTP_URL): ${result.waitingForMail} event(s) that need mail stay pending until it is.`,
    );
  }
  result.outbox = await outboxCounts(knex, schema);
  return result;
}

/**
 * Runs marked running whose process is alive: the session that holds their lock is there (for a
 * `--shard` run, which no one process carries: while any shard holds the run lock). A run whose
 * process is gone, or that stopped, has written what it will until resumed: its events go out.
 */
async function runsUnderWay(knex: Knex, schema: string): Promise<Set<string>> {
  const running = await knex.withSchema(schema).from('runs').where({ status: 'running' }).select('id');
  const out = new Set<string>();
  if (running.length === 0) return out;
  const holders = await runLockHolders(knex, schema);
  for (const { id } of running as { id: string | number }[]) {
    const run = await getRun(knex, schema, String(id));
    if (!run || run.status !== 'running') continue;
    const alive = typeof run.options.shards === 'number' ? holders.size > 0 : !processGone(run, holders);
    if (alive) out.add(run.id);
  }
  return out;
}

/** Claims and delivers a group's due events, page by page; false when another process was claiming it. */
async function deliverDue(d: Delivery, group: EventGroup, limit: number): Promise<boolean> {
  let afterId = '0';
  for (let index = 1; ; index++) {
    const events = await claimEvents(d.knex, d.schema, {
      group,
      owner: d.owner,
      leaseMs: d.leaseMs,
      limit,
      afterId,
      now: d.now,
    });
    if (events === null) return afterId !== '0';
    if (events.length === 0) return true;
    afterId = events[events.length - 1]?.id ?? afterId;
    d.result.claimed += events.length;
    // A full claim may leave more of the group due: its digest then says which part it is.
    const more = events.length >= limit && (await moreDue(d.knex, d.schema, { group, afterId, now: d.now }));
    await deliverGroup(d, group, events, more || index > 1 ? { index, limit, more } : undefined);
    if (events.length < limit) return true;
  }
}

async function deliverGroup(
  d: Delivery,
  group: EventGroup,
  events: OutboxEvent[],
  part: DigestPart | undefined,
): Promise<void> {
  const rules = rulesForOrg(d.rules, group.orgId);
  const attempt = new Attempt();
  await sendDigest(d, group, rules, events, attempt, part);
  await sendCustomerMails(d, events, attempt);
  await sendWebhooks(d, rules, events, attempt);

  const settlements = attempt.settlements(events);
  const statuses = await settleEvents(d.knex, d.schema, {
    settlements,
    owner: d.owner,
    backoff: d.backoff,
    now: d.now,
  });
  const deliveredBefore = new Map(events.map((e) => [e.id, Object.keys(e.delivered).length]));
  const hookedBefore = new Set(events.filter((e) => e.delivered.webhook).map((e) => e.id));
  let retrying = 0;
  let failed = 0;
  for (const s of settlements) {
    const status = statuses.get(s.id);
    if (status === 'sent') {
      d.result.sent += 1;
      if (!s.tried && deliveredBefore.get(s.id) === 0) d.result.unaddressed += 1;
    } else if (status === 'failed') failed += 1;
    else if (status === 'pending' && s.outcome === 'retry') retrying += 1;
    else if (status === 'pending' && s.outcome === 'wait') {
      d.result.waitingForMail += 1;
      if (hookedBefore.has(s.id) || attempt.hooked.has(s.id)) d.result.waitingWebhookSent += 1;
    }
  }
  d.result.retrying += retrying;
  d.result.failed += failed;
  const where = `${group.orgId === null ? 'no organization' : `organization ${group.orgId}`}, run ${group.runId ?? 'none'}`;
  const errors = [...new Set(attempt.errors.values())];
  if (retrying > 0) d.log(`${where}: ${retrying} event(s) will be tried again later (${errors.join('; ')}).`);
  if (failed > 0) {
    d.log(
      `${where}: ${failed} event(s) failed for good, at the limit of ${d.backoff.maxAttempts} attempt(s) (${errors.join('; ')}); see \`suspend notify --failed\` for each one's attempts.`,
    );
  }
}

/** Before each slow step: keep the claim from lapsing while this process is busy. */
async function keepClaim(d: Delivery): Promise<void> {
  if (Date.now() - d.lastRenewal < d.leaseMs / 3) return;
  await renewLease(d.knex, d.schema, { owner: d.owner, leaseMs: d.leaseMs, now: d.now });
  d.lastRenewal = Date.now();
}

async function delivered(d: Delivery, events: OutboxEvent[], channel: Channel): Promise<void> {
  await recordDelivered(d.knex, d.schema, {
    ids: events.map((e) => e.id),
    channel,
    owner: d.owner,
    leaseMs: d.leaseMs,
    now: d.now,
  });
}

/**
 * Sends one mail through the shared transport, unless it already failed in this call for a reason
 * not tied to one message. Returns the error sentence, or null when the mail went out.
 */
async function sendMail(d: Delivery, mail: Parameters<Mailer['send']>[0]): Promise<string | null> {
  if (!d.mailer) return 'SMTP is not configured';
  const broken = d.breakers.check('smtp');
  // Each mail's error names its own recipients; the server's failure is the one an earlier mail met.
  if (broken)
    return `mail to ${mail.to.join(', ')} not sent: the SMTP server failed earlier in this delivery (${broken})`;
  await keepClaim(d);
  try {
    const refused = await d.mailer.send(mail);
    // Sent to the others (sending it again would repeat it to them): said, not retried.
    if (refused.length > 0)
      d.log(
        `The mail "${mail.subject}" went out, but the SMTP server refused ${refused.join(', ')}: check ${refused.length > 1 ? 'these addresses' : 'this address'} in the contacts.`,
      );
    return null;
  } catch (err) {
    const message = errorMessage(err);
    if (!PER_MESSAGE_MAIL_ERRORS.has(mailErrorCode(err) ?? ''))
      d.breakers.trip('smtp', err instanceof MailError ? err.server : message);
    return message;
  }
}

async function runOf(d: Delivery, runId: string | null): Promise<DigestRun | null> {
  if (runId === null) return null;
  if (!d.runs.has(runId)) {
    const run = await getRun(d.knex, d.schema, runId);
    d.runs.set(runId, run ? { id: run.id, kind: run.kind, asOf: run.asOf } : null);
  }
  return d.runs.get(runId) ?? null;
}

async function sendDigest(
  d: Delivery,
  group: EventGroup,
  rules: EffectiveRules,
  events: OutboxEvent[],
  attempt: Attempt,
  part: DigestPart | undefined,
): Promise<void> {
  const due = events.filter((e) => tellsOrganization(e.payload) && !e.delivered.digest);
  if (due.length === 0) return;
  const recipients = await d.contacts.recipients(group.orgId, rules);
  if (recipients.length === 0) return;
  if (!d.mailer) {
    for (const e of due) attempt.waiting.add(e.id);
    return;
  }
  const content = buildDigest({
    orgId: group.orgId,
    run: await runOf(d, group.runId),
    events: due,
    netTermsColumn: d.rules.source.customers.netTermsDays,
    tableLimit: d.tableLimit,
    ...(part ? { part } : {}),
  });
  for (const e of due) attempt.tried.add(e.id);
  const error = await sendMail(d, { to: recipients, ...content });
  if (error !== null) return noteFailure(d, attempt, due, error);
  d.result.digests += 1;
  await delivered(d, due, 'digest');
}

async function sendCustomerMails(d: Delivery, events: OutboxEvent[], attempt: Attempt): Promise<void> {
  for (const e of events) {
    if (!tellsCustomer(e.payload) || e.delivered.customer) continue;
    if (!d.mailer) {
      attempt.waiting.add(e.id);
      continue;
    }
    attempt.tried.add(e.id);
    const error = await sendMail(d, {
      to: [e.payload.customer.email ?? ''],
      ...buildCustomerMail(e.payload),
    });
    if (error !== null) {
      noteFailure(d, attempt, [e], error);
      continue;
    }
    d.result.customerMails += 1;
    await delivered(d, [e], 'customer');
  }
}

function toWebhookEvent(e: OutboxEvent): WebhookEvent {
  return { id: e.id, createdAt: e.createdAt.toISOString(), ...e.payload };
}

async function sendWebhooks(
  d: Delivery,
  rules: EffectiveRules,
  events: OutboxEvent[],
  attempt: Attempt,
): Promise<void> {
  const hook = rules.notifications.webhook;
  if (!hook) return;
  const due = events.filter((e) => !e.delivered.webhook);
  if (due.length > 0 && !hook.secret && !d.unsigned.has(hook.url)) {
    d.unsigned.add(hook.url);
    d.log(
      `webhook ${describeWebhookUrl(hook.url)}: sent unsigned (its notifications.webhook has no secret, so the receiver cannot verify the requests).`,
    );
  }
  const size = hook.batch ? WEBHOOK_BATCH_SIZE : 1;
  for (let i = 0; i < due.length; i += size) {
    const chunk = due.slice(i, i + size);
    const broken = d.breakers.check(hook.url);
    if (broken) {
      noteFailure(d, attempt, chunk, broken);
      continue;
    }
    await keepClaim(d);
    for (const e of chunk) attempt.tried.add(e.id);
    const request = webhookRequest(chunk.map(toWebhookEvent), {
      batch: hook.batch,
      secret: hook.secret,
      timestamp: Math.floor(Date.now() / 1000),
      userAgent: 'suspend',
    });
    try {
      await postWebhook(hook.url, request, d.webhookTimeoutMs);
    } catch (err) {
      // The endpoint is down or refusing: the rest of this call's events wait for the next try.
      d.breakers.trip(hook.url, errorMessage(err));
      noteFailure(d, attempt, chunk, errorMessage(err));
      continue;
    }
    d.result.webhookRequests += 1;
    d.result.webhookEvents += chunk.length;
    for (const e of chunk) attempt.hooked.add(e.id);
    await delivered(d, chunk, 'webhook');
  }
}

function noteFailure(d: Delivery, attempt: Attempt, events: OutboxEvent[], error: string): void {
  attempt.fail(events, error);
  if (!d.result.errors.includes(error)) d.result.errors.push(error);
}

/** One paragraph for stderr (or the command's output): what this call delivered and what is left. */
export function describeDelivery(r: DeliveryResult): string {
  const lines: string[] = [];
  if (r.reset > 0) lines.push(`${r.reset} failed event(s) put back to be sent again.`);
  if (r.claimed === 0) {
    lines.push('No notifications were due.');
  } else {
    lines.push(
      `Delivered ${r.sent} of ${r.claimed} event(s): ${r.digests} digest(s), ${r.customerMails} customer mail(s), ${r.webhookRequests} webhook request(s)${r.webhookRequests > 0 ? ` carrying ${r.webhookEvents} event(s)` : ''}` +
        (r.unaddressed > 0 ? `; ${r.unaddressed} had no one to tell.` : '.'),
    );
  }
  if (r.runsUnderWay.length > 0) {
    const many = r.runsUnderWay.length > 1;
    lines.push(
      `Run${many ? 's' : ''} ${r.runsUnderWay.join(', ')} ${many ? 'are' : 'is'} still under way: ${many ? 'their' : 'its'} events go out when ${many ? 'they end' : 'it ends'}, one digest per organization.`,
    );
  }
  if (r.retrying > 0) lines.push(`${r.retrying} event(s) will be tried again later.`);
  if (r.failed > 0) lines.push(`${r.failed} event(s) failed for good; see \`suspend notify --failed\`.`);
  if (r.waitingForMail > 0) {
    // An event counts as delivered once every channel it needs has it: one whose webhook went out
    // still waits for its mail, and is said so, not left to read as nothing sent.
    const hooked =
      r.waitingWebhookSent === 0
        ? ''
        : r.waitingWebhookSent === r.waitingForMail
          ? ': their webhook has gone out, only their mail is left'
          : `: ${r.waitingWebhookSent} of them have gone out by webhook, only their mail is left`;
    lines.push(`${r.waitingForMail} event(s) wait for SMTP to be configured${hooked}.`);
  }
  const next =
    r.outbox.pending > 0 && r.outbox.nextAttemptAt ? ` (the next is due ${r.outbox.nextAttemptAt})` : '';
  lines.push(`Outbox: ${r.outbox.pending} pending${next}, ${r.outbox.failed} failed.`);
  return lines.join('\n');
}
