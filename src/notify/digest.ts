import { csvCell, renderTable } from '../report/tables';
import type { OutboxPayload, Reason } from '../types';
import { escapeHtml, htmlDocument, htmlTable, htmlText } from './html';

/**
 * Pure: the digest one organization gets for one run. What happened (counts per stage), the
 * accounts (a table for a few, a CSV attachment for many), why (the reasons) and what the
 * organization can do next. Text and HTML say the same; the HTML escapes every value.
 */

export interface DigestEvent {
  id: string;
  payload: OutboxPayload;
}

export interface DigestRun {
  id: string;
  kind: string;
  asOf: string;
}

export interface DigestInput {
  orgId: string | null;
  run: DigestRun | null;
  events: DigestEvent[];
  /** The mapped net-terms column, named in the next steps. */
  netTermsColumn: string | null;
  /** Up to this many changes are listed in the mail; more go to the CSV attachment. */
  tableLimit: number;
  /**
   * Which part of the group's digest this is, when the group had more events than one claim takes
   * (see DeliverOptions.claimLimit); absent for a digest that carries the whole group.
   */
  part?: DigestPart;
}

export interface DigestPart {
  /** 1 for the first part. */
  index: number;
  /** At most this many events make one part. */
  limit: number;
  /** Whether more of the group's events were due when this part was claimed. */
  more: boolean;
}

export interface Attachment {
  filename: string;
  content: string;
  contentType: string;
}

export interface MailContent {
  subject: string;
  text: string;
  html: string;
  attachments: Attachment[];
}

/** What a change did, in a few words ("entered", "escalated from day_14", ...). */
export function changeLabel(p: OutboxPayload): string {
  switch (p.event) {
    case 'enter':
      return 'entered';
    case 'escalate':
      return `escalated from ${p.from ?? 'clear'}`;
    case 'deescalate':
      return `eased from ${p.from ?? 'clear'}`;
    case 'clear':
      return `cleared from ${p.from ?? 'clear'}`;
    case 'reinstate':
      return `reinstated by hand from ${p.from ?? 'clear'}`;
    case 'revert':
      return `reverted from ${p.from ?? 'clear'}`;
    default:
      return p.event;
  }
}

/**
 * The state a change leads to: the stage; when it clears the policy, "active", or what still holds
 * the account under other policies ("still suspended under inactivity").
 */
function outcome(p: OutboxPayload): string {
  return p.to ?? (p.account ? `still ${p.account.heldBy.join(', ')}` : 'active');
}

function organizationName(orgId: string | null): string {
  return orgId === null ? 'accounts without an organization' : `organization ${orgId}`;
}

function runName(run: DigestRun | null): string {
  return run ? `${run.kind} of ${run.asOf} (run ${run.id})` : 'changes without a run';
}

function countBy<T>(items: T[], key: (item: T) => string): [string, number][] {
  const counts = new Map<string, number>();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return [...counts.entries()].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
}

export interface StageCount {
  stage: string;
  policy: string;
  change: string;
  count: number;
}

/** Counts per resulting stage, policy and change, largest first. */
export function stageCounts(events: DigestEvent[]): StageCount[] {
  const SEP = '\u0000';
  return countBy(events, (e) => [outcome(e.payload), e.payload.policy, changeLabel(e.payload)].join(SEP)).map(
    ([k, count]) => {
      const [stage = '', policy = '', change = ''] = k.split(SEP);
      return { stage, policy, change, count };
    },
  );
}

/** "120 suspended, 45 paused, 3 cleared": changes per resulting stage, or how access came back. */
export function stageSummary(events: DigestEvent[]): string {
  const term = (p: OutboxPayload) => p.to ?? (p.event === 'reinstate' ? 'reinstated' : 'cleared');
  return countBy(events, (e) => term(e.payload))
    .map(([stage, n]) => `${n} ${stage}`)
    .join(', ');
}

export function digestSubject(input: Pick<DigestInput, 'orgId' | 'run' | 'events' | 'part'>): string {
  const org = input.orgId === null ? 'No organization' : `Organization ${input.orgId}`;
  const run = input.run ? ` (${input.run.kind} ${input.run.asOf})` : '';
  const part = input.part ? `, part ${input.part.index}` : '';
  return `[suspend] ${org}: ${stageSummary(input.events)}${run}${part}`;
}

/** What a part of a split digest says of the whole, after its intro. */
function partSentence(part: DigestPart): string {
  const carries = `one digest carries at most ${part.limit.toLocaleString('en-US')} changes`;
  return part.more
    ? `This is part ${part.index} of this run's digest: ${carries}, and the next part follows.`
    : `This is part ${part.index}, the last, of this run's digest: ${carries}.`;
}

function reasonTexts(reasons: Reason[]): string {
  return reasons.map((r) => r.text).join('; ');
}

interface ReasonCount {
  condition: string;
  count: number;
  example: string;
}

/** The reasons behind the changes, most common first, each with one example. */
function reasonCounts(events: DigestEvent[]): ReasonCount[] {
  const all = events.flatMap((e) => e.payload.reasons);
  return countBy(all, (r) => r.condition).map(([condition, count]) => ({
    condition,
    count,
    example: all.find((r) => r.condition === condition)?.text ?? '',
  }));
}

/** A spreadsheet opening the CSV must not run customer text as a formula. */
function safeText(value: string | null): string | null {
  return value !== null && /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
}

const CSV_COLUMNS = [
  'event_id',
  'customer_key',
  'name',
  'email',
  'policy',
  'change',
  'from_stage',
  'to_stage',
  'blocks_booking',
  'allows_login',
  'reasons',
  'as_of',
  'actor',
] as const;

export function digestCsv(events: DigestEvent[]): string {
  const lines = events.map(({ id, payload: p }) =>
    [
      id,
      p.customer.key,
      safeText(p.customer.name),
      safeText(p.customer.email),
      p.policy,
      p.event,
      p.from,
      p.to,
      // The account's, when other policies still hold it (see OutboxPayload.account).
      String(p.account?.blocksBooking ?? p.blocksBooking),
      String(p.account?.allowsLogin ?? p.allowsLogin),
      safeText(reasonTexts(p.reasons)),
      p.asOf,
      p.actor,
    ]
      .map((v) => csvCell(v))
      .join(','),
  );
  return `${[CSV_COLUMNS.join(','), ...lines].join('\r\n')}\r\n`;
}

function csvFilename(input: DigestInput): string {
  const part = (v: string | null) => (v ?? 'none').replace(/[^A-Za-z0-9_-]/g, '_');
  return `suspend-org-${part(input.orgId)}-run-${part(input.run?.id ?? null)}.csv`;
}

const MONEY_CONDITIONS = new Set([
  'past_due_for',
  'overdue_balance_over',
  'open_balance_over',
  'invoice_overdue_for',
  'unpaid_invoices_at_least',
]);

/** The next steps that help, as sentences with `commands`; none when every change gave access back. */
export function nextSteps(events: DigestEvent[], netTermsColumn: string | null): string[] {
  const restricting = events.filter((e) => e.payload.to !== null && e.payload.event !== 'deescalate');
  if (restricting.length === 0) return [];
  const money = restricting.some((e) => e.payload.reasons.some((r) => MONEY_CONDITIONS.has(r.condition)));
  const key = restricting[0]?.payload.customer.key ?? 'KEY';
  const steps = [
    `Call the customer: a word from a person settles most of these. \`suspend status ${key}\` shows what they see and why.`,
  ];
  if (money) {
    steps.push(
      `A customer who pays late by agreement: add net terms${netTermsColumn ? ` (customers.${netTermsColumn})` : ''}, so their invoices count as overdue only after them.`,
      `A good customer in a rough patch: offer a discount or a payment plan, and spare the account meanwhile: \`suspend exclude ${key} --reason "payment plan" --until YYYY-MM-DD\`.`,
    );
  }
  steps.push(
    `Reinstate an account by hand once it is settled: \`suspend reinstate ${key} --reason "called back, paying this week"\`.`,
  );
  return steps;
}

const ACCOUNT_COLUMNS = ['Key', 'Name', 'Policy', 'Change', 'Now', 'Reasons'];

function accountCells(p: OutboxPayload): string[] {
  return [
    p.customer.key,
    p.customer.name ?? '',
    p.policy,
    changeLabel(p),
    outcome(p),
    reasonTexts(p.reasons),
  ];
}

const COUNT_COLUMNS = ['Now', 'Policy', 'Change', 'Changes'];

export function buildDigest(input: DigestInput): MailContent {
  const { events } = input;
  const accounts = new Set(events.map((e) => e.payload.customer.key)).size;
  const intro = `suspend made ${events.length} change${events.length === 1 ? '' : 's'} to ${accounts} account${accounts === 1 ? '' : 's'} of ${organizationName(input.orgId)} in the ${runName(input.run)}.${input.part ? ` ${partSentence(input.part)}` : ''}`;
  const counts = stageCounts(events);
  const listed = events.length <= input.tableLimit;
  const attachments: Attachment[] = listed
    ? []
    : [{ filename: csvFilename(input), content: digestCsv(events), contentType: 'text/csv; charset=utf-8' }];
  const attachedSentence = `All ${events.length} changes are in the attached ${attachments[0]?.filename ?? ''}, one line each with the customer, the change and its reasons.`;
  const reasons = reasonCounts(events);
  const steps = nextSteps(events, input.netTermsColumn);

  const text: string[] = [intro, '', 'What happened', ''];
  text.push(
    renderTable(
      COUNT_COLUMNS,
      counts.map((c) => ({ Now: c.stage, Policy: c.policy, Change: c.change, Changes: c.count })),
    ),
    '',
  );
  if (listed) {
    text.push('Accounts', '');
    text.push(
      renderTable(
        ACCOUNT_COLUMNS,
        events.map((e) =>
          Object.fromEntries(ACCOUNT_COLUMNS.map((c, i) => [c, accountCells(e.payload)[i] ?? ''])),
        ),
      ),
      '',
    );
  } else {
    text.push('Accounts', '', attachedSentence, '', 'Why', '');
    for (const r of reasons) text.push(`  ${r.count} × ${r.condition}: e.g. ${r.example}`);
    text.push('');
  }
  if (steps.length > 0) {
    text.push('What you can do', '');
    for (const s of steps) text.push(`  - ${s.replace(/`/g, '')}`);
    text.push('');
  }

  const html: string[] = [`<p>${escapeHtml(intro)}</p>`, '<h3>What happened</h3>'];
  html.push(
    htmlTable(
      COUNT_COLUMNS,
      counts.map((c) => [c.stage, c.policy, c.change, c.count]),
    ),
  );
  html.push('<h3>Accounts</h3>');
  if (listed) {
    html.push(
      htmlTable(
        ACCOUNT_COLUMNS,
        events.map((e) => accountCells(e.payload)),
      ),
    );
  } else {
    html.push(`<p>${escapeHtml(attachedSentence)}</p>`, '<h3>Why</h3>');
    html.push(
      htmlTable(
        ['Reason', 'Changes', 'Example'],
        reasons.map((r) => [r.condition, r.count, r.example]),
      ),
    );
  }
  if (steps.length > 0) {
    html.push('<h3>What you can do</h3>', '<ul>');
    for (const s of steps) html.push(`<li>${htmlText(s)}</li>`);
    html.push('</ul>');
  }
  const subject = digestSubject(input);
  return {
    subject,
    text: text.join('\n'),
    html: htmlDocument(subject, html.join('\n')),
    attachments,
  };
}

/** The customer's own notice: the stage message, as they also see it in the app (it greets them itself). */
export function buildCustomerMail(p: OutboxPayload): Omit<MailContent, 'attachments'> {
  // What the account is now: another policy may hold it more (paused here, suspended there).
  const effect = p.account ?? p;
  const subject = !effect.allowsLogin
    ? 'Your account is suspended'
    : effect.blocksBooking
      ? 'Booking is paused on your account'
      : 'A notice about your account';
  const message = p.message ?? '';
  return { subject, text: `${message}\n`, html: htmlDocument(subject, `<p>${escapeHtml(message)}</p>`) };
}
