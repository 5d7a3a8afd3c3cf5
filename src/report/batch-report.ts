import type { BatchKind, BatchResult, PageReport } from '../engine/run';
import { parseTransitionKey } from '../engine/counts';
import type { StateChange } from '../write/apply';
import type { Format } from '../cli/options';
import { formatCount, renderCsv, renderMarkdown, renderTable, type Row } from './tables';

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
    reasons: c.reasons.map((r) => r.text).join('; '),
  };
}

const ACCOUNT_COLUMNS = ['key', 'org', 'policy', 'change', 'from', 'to', 'reasons'];
const TRANSITION_COLUMNS = ['org', 'policy', 'change', 'from', 'to', 'accounts'];

/** Collects what the report needs page by page: a sample always, every account only with --accounts. */
export class ReportCollector {
  readonly sample: StateChange[] = [];
  readonly accounts: Row[] = [];
  constructor(private readonly listAccounts: boolean) {}

  onPage = (page: PageReport): void => {
    for (const c of page.changes) {
      if (this.sample.length < SAMPLE_SIZE) this.sample.push(c);
      if (this.listAccounts) this.accounts.push(accountRow(c));
    }
  };
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
  return `suspend ${what} as of ${meta.asOf}: ${formatCount(c.scanned)} accounts scanned, ${formatCount(c.accountsChanged)} ${verb} (${formatCount(c.changes)} state changes), ${formatCount(c.excluded)} spared by exclusions, status ${result.status}`;
}

export function renderBatchReport(
  meta: ReportMeta,
  result: BatchResult,
  collector: ReportCollector,
  format: Format,
  listAccounts: boolean,
): string {
  const c = result.counts;
  const transitions = transitionRows(result);
  if (format === 'json') {
    return JSON.stringify(
      {
        kind: meta.kind,
        dryRun: meta.dryRun,
        runId: result.run?.id ?? null,
        status: result.status,
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
          skipped: c.skipped,
          skippedByReason: c.skippedByReason,
        },
        limit: result.limit,
        transitions,
        sample: collector.sample.map((s) => ({ ...accountRow(s), reasons: s.reasons, message: s.message })),
        ...(listAccounts ? { accounts: collector.accounts } : {}),
      },
      null,
      2,
    );
  }
  if (format === 'csv') {
    // CSV is for spreadsheets: one table, the accounts when listed, else the transition counts.
    return listAccounts
      ? renderCsv(ACCOUNT_COLUMNS, collector.accounts)
      : renderCsv(TRANSITION_COLUMNS, transitions);
  }
  const table = format === 'markdown' ? renderMarkdown : renderTable;
  const heading = (t: string) => (format === 'markdown' ? `\n## ${t}\n` : `\n${t}\n`);
  const out = [format === 'markdown' ? `# ${headline(meta, result)}` : headline(meta, result)];
  if (result.limit) {
    out.push(
      `\nStopped by the safety limit: this page would bring the run to ${formatCount(result.limit.wouldReach)} changes, over max_changes ${formatCount(result.limit.max)}. Nothing of that page was written.`,
    );
  }
  out.push(heading('Changes by organization, policy and stage'));
  out.push(transitions.length > 0 ? table(TRANSITION_COLUMNS, transitions) : '(none)');
  const notes: string[] = [];
  if (c.excluded > 0) {
    notes.push(
      `spared by exclusions: ${Object.entries(c.excludedByReason)
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
  if (c.skipped > 0) {
    notes.push(
      `skipped for bad data: ${Object.entries(c.skippedByReason)
        .map(([reason, n]) => `${formatCount(n)} (${reason})`)
        .join(', ')}`,
    );
  }
  if (notes.length > 0) out.push(heading('Notes'), notes.map((n) => `- ${n}`).join('\n'));
  if (listAccounts) {
    out.push(heading(`Accounts (${formatCount(collector.accounts.length)})`));
    out.push(collector.accounts.length > 0 ? table(ACCOUNT_COLUMNS, collector.accounts) : '(none)');
  } else if (collector.sample.length > 0) {
    out.push(
      heading(
        `Sample of accounts (${collector.sample.length} of ${formatCount(c.changes)}; --accounts lists all)`,
      ),
    );
    out.push(table(ACCOUNT_COLUMNS, collector.sample.map(accountRow)));
  }
  return out.join('\n');
}
