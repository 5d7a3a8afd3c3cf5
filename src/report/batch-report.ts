import type { BatchKind, BatchResult, PageReport } from '../engine/run';
import { parseTransitionKey } from '../engine/counts';
import type { StateChange } from '../write/apply';
import type { Format } from '../cli/options';
import { AccountList } from './account-list';
import {
  csvFormat,
  formatCount,
  markdownFormat,
  renderCsv,
  renderMarkdown,
  renderTable,
  tableFormat,
  type LineFormat,
  type Row,
} from './tables';

/** What `report`, `backfill` and `sweep` print: the same report for a dry and a real run. */

const SAMPLE_SIZE = 10;

export interface ReportMeta {
  kind: BatchKind | 'report';
  dryRun: boolean;
  asOf: string;
  rulesHash: string;
  rulesFile: string | null;
}

export function accountRow(c: StateChange): Row {
  return {
    key: c.key,
    org: c.orgId,
    policy: c.policy,
    change: c.kind,
    from: c.from ?? 'clear',
    to: c.to ?? 'clear',
    reasons: c
      .explain()
      .reasons.map((r) => r.text)
      .join('; '),
  };
}

const ACCOUNT_COLUMNS = ['key', 'org', 'policy', 'change', 'from', 'to', 'reasons'];
const TRANSITION_COLUMNS = ['org', 'policy', 'change', 'from', 'to', 'accounts'];

/**
 * Collects what the report needs page by page: a sample always, every account only with --accounts
 * (on disk, see AccountList). `dispose()` when the report is written.
 */
export class ReportCollector {
  readonly sample: StateChange[] = [];
  readonly accounts = new AccountList(ACCOUNT_COLUMNS);
  constructor(private readonly listAccounts: boolean) {}

  /** How many more changes the report shows (a dry run builds no others): see changesWanted. */
  wanted = (): number => (this.listAccounts ? Infinity : SAMPLE_SIZE - this.sample.length);

  onPage = (page: PageReport): void => {
    for (const c of page.changes) {
      if (this.sample.length >= SAMPLE_SIZE) break;
      this.sample.push(c);
    }
    if (this.listAccounts) this.accounts.add(page.changes.map(accountRow));
  };

  dispose(): void {
    this.accounts.dispose();
  }
}

/** Receives the report a piece at a time (stdout with back-pressure, or a file). */
export type ReportWriter = (chunk: string) => Promise<void>;

/** Streams the account list through `format`, a megabyte or so per write. */
async function writeAccounts(
  out: ReportWriter,
  accounts: AccountList,
  format: LineFormat,
  separator = '\n',
): Promise<void> {
  let first = true;
  for (const rows of accounts.batches()) {
    if (rows.length === 0) continue;
    await out((first ? '' : separator) + rows.map(format.row).join(separator));
    first = false;
  }
}

function transitionRows(result: BatchResult): Row[] {
  return Object.entries(result.counts.transitions)
    .map(([key, n]) => {
      const t = parseTransitionKey(key);
      return {
        org: t.org,
        policy: t.policy,
        change: t.kind,
        from: t.from ?? 'clear',
        to: t.to ?? 'clear',
        accounts: n,
      };
    })
    .sort(
      (a, b) =>
        String(a.org).localeCompare(String(b.org), 'en', { numeric: true }) ||
        a.policy.localeCompare(b.policy) ||
        a.to.localeCompare(b.to),
    );
}

function headline(meta: ReportMeta, result: BatchResult): string {
  const what = meta.dryRun
    ? `${meta.kind} (dry run: nothing written)`
    : `${meta.kind} run ${result.run?.id ?? ''}`.trim();
  const c = result.counts;
  const verb = meta.dryRun ? 'would change' : 'changed';
  return `suspend ${what} as of ${meta.asOf}: ${formatCount(c.scanned)} accounts scanned, ${formatCount(c.accountsChanged)} ${verb} (${formatCount(c.changes)} state changes), ${formatCount(c.excluded)} excluded, status ${result.status}${shardStatus(result)}`;
}

/** Writes the report of a run in the chosen format; the account list is streamed, never held whole. */
export async function writeBatchReport(
  meta: ReportMeta,
  result: BatchResult,
  collector: ReportCollector,
  format: Format,
  listAccounts: boolean,
  out: ReportWriter,
): Promise<void> {
  const c = result.counts;
  const transitions = transitionRows(result);
  const accounts = collector.accounts;
  if (format === 'json') {
    const summary = JSON.stringify(
      {
        kind: meta.kind,
        dryRun: meta.dryRun,
        runId: result.run?.id ?? null,
        status: result.status,
        ...(result.shard ? { shard: result.shard } : {}),
        asOf: meta.asOf,
        rulesHash: meta.rulesHash,
        rulesFile: meta.rulesFile,
        totalAccounts: result.total,
        counts: {
          scanned: c.scanned,
          changes: c.changes,
          accountsChanged: c.accountsChanged,
          excluded: c.excluded,
          excludedByReason: c.excludedByReason,
          held: c.held,
          changedSinceRead: c.changedSinceRead,
          beingPaid: c.beingPaid,
          skipped: c.skipped,
          skippedByReason: c.skippedByReason,
          skippedKeys: c.skippedKeys,
        },
        limit: result.limit,
        ...(meta.dryRun ? { wouldStopAtLimit: result.wouldStopAtLimit ?? null } : {}),
        notes: result.notes ?? [],
        transitions,
        sample: collector.sample.map((s) => ({ ...accountRow(s), ...s.explain() })),
      },
      null,
      2,
    );
    if (!listAccounts) return out(`${summary}\n`);
    // The summary object, then "accounts": one compact object per line.
    await out(`${summary.slice(0, -2)},\n  "accounts": [`);
    const json: LineFormat = { head: [], row: (r) => `\n    ${JSON.stringify(r)}` };
    await writeAccounts(out, accounts, json, ',');
    return out(accounts.count > 0 ? '\n  ]\n}\n' : ']\n}\n');
  }
  if (format === 'csv') {
    // CSV is for spreadsheets: one table, the accounts when listed, else the transition counts.
    if (!listAccounts) return out(`${renderCsv(TRANSITION_COLUMNS, transitions)}\n`);
    const csv = csvFormat(ACCOUNT_COLUMNS);
    await out(`${csv.head.join('\n')}\n`);
    await writeAccounts(out, accounts, csv);
    return out(accounts.count > 0 ? '\n' : '');
  }
  const table = format === 'markdown' ? renderMarkdown : renderTable;
  const heading = (t: string) => (format === 'markdown' ? `\n## ${t}\n` : `\n${t}\n`);
  const lines = [format === 'markdown' ? `# ${headline(meta, result)}` : headline(meta, result)];
  if (result.limit) {
    lines.push(
      `\nStopped by the safety limit: this page would bring the run to ${formatCount(result.limit.wouldReach)} changes, over max_changes ${formatCount(result.limit.max)}. Nothing of that page was written.`,
    );
  }
  if (result.wouldStopAtLimit) {
    const { changes, max } = result.wouldStopAtLimit;
    lines.push(
      `\nA real run would stop at the safety limit: ${formatCount(changes)} state changes is over max_changes ${formatCount(max)}, so it would write the pages before the one that crosses it and exit 4. For a run meant to change this much, raise settings.max_changes or pass --max-changes.`,
    );
  }
  lines.push(heading('Changes by organization, policy and stage'));
  lines.push(transitions.length > 0 ? table(TRANSITION_COLUMNS, transitions) : '(none)');
  // What the rules say of the data first: the run logged it as it started, and the report (kept,
  // read later, maybe --quiet) says it again.
  const notes: string[] = [...(result.notes ?? [])];
  if (c.excluded > 0) {
    notes.push(
      // Accounts under a live exclusion, whether or not a rule would have moved them today.
      `excluded (no run pauses, suspends or escalates them): ${Object.entries(c.excludedByReason)
        .map(([reason, n]) => `${formatCount(n)} (${reason})`)
        .join(', ')}`,
    );
  }
  if (c.held > 0)
    notes.push(
      `held for manual reinstatement (condition cleared, policy reinstates by hand): ${formatCount(c.held)}`,
    );
  if (c.changedSinceRead > 0)
    notes.push(`changed since read, left for the next run: ${formatCount(c.changedSinceRead)}`);
  if (c.beingPaid > 0)
    notes.push(
      `being paid (invoices being updated by another transaction), left for the next run: ${formatCount(c.beingPaid)}`,
    );
  if (c.skipped > 0) {
    notes.push(
      `skipped for bad data: ${Object.entries(c.skippedByReason)
        .map(([reason, n]) => `${formatCount(n)} (${reason}${skippedKeysNote(n, c.skippedKeys[reason])})`)
        .join(', ')}`,
    );
  }
  if (notes.length > 0) lines.push(heading('Notes'), notes.map((n) => `- ${n}`).join('\n'));
  if (listAccounts) {
    lines.push(heading(`Accounts (${formatCount(accounts.count)})`));
    if (accounts.count === 0) lines.push('(none)');
    else {
      const lineFormat =
        format === 'markdown'
          ? markdownFormat(ACCOUNT_COLUMNS)
          : tableFormat(ACCOUNT_COLUMNS, accounts.widths);
      await out(`${[...lines, ...lineFormat.head].join('\n')}\n`);
      await writeAccounts(out, accounts, lineFormat);
      return out('\n');
    }
  } else if (collector.sample.length > 0) {
    lines.push(
      heading(
        `Sample of accounts (${collector.sample.length} of ${formatCount(c.changes)}; --accounts lists all)`,
      ),
    );
    lines.push(table(ACCOUNT_COLUMNS, collector.sample.map(accountRow)));
  }
  return out(`${lines.join('\n')}\n`);
}

/**
 * ": accounts 17, 42", or ": accounts 17, 42, ... (10 of 25)": where to look for the bad rows. A key
 * that is not a plain word is shown as a JSON string, so a comma, quote or newline in it stays visible.
 */
function skippedKeysNote(count: number, keys: string[] | undefined): string {
  if (!keys || keys.length === 0) return '';
  const shown = keys.map((k) => (/^[\w.@:+-]+$/.test(k) ? k : JSON.stringify(k)));
  const more = count > keys.length ? ` (${keys.length} of ${formatCount(count)})` : '';
  return `: account${keys.length === 1 ? '' : 's'} ${shown.join(', ')}${more}`;
}

/** A shard's part can succeed while the run it shares goes on, or stays stopped: said beside it. */
function shardStatus(result: BatchResult): string {
  const shard = result.shard;
  if (!shard || shard.runStatus === result.status) return '';
  const waiting =
    shard.waitingFor.length > 0
      ? ` (waiting for shard${shard.waitingFor.length > 1 ? 's' : ''} ${shard.waitingFor.join(', ')})`
      : '';
  return ` for shard ${shard.name}; the run is ${shard.runStatus}${waiting}`;
}
