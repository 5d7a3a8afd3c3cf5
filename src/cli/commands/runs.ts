import type { Command } from 'commander';
import type { Knex } from 'knex';
import { Option } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import {
  formatOption,
  notBlank,
  parsePositiveInteger,
  RUN_ID,
  withCommonOptions,
  type Format,
} from '../options';
import {
  committedCounts,
  runningCounts,
  getRun,
  listRuns,
  runCheckpoints,
  type RunRecord,
  processGone,
} from '../../engine/ledger';
import { runLockHolders } from '../../engine/lock';
import { requireMigrated } from '../../db/migrate';
import { UsageError } from '../../errors';
import { renderCsv, renderMarkdown, renderTable, type Row } from '../../report/tables';

const COLUMNS = ['id', 'kind', 'status', 'as_of', 'rules', 'started', 'finished', 'by', 'scanned', 'changes'];

/**
 * A run as `runs` shows it: `processGone` when it says running but no process holds the run lock;
 * `revertedBy`, the newest revert of it (a revert undoes its changes, the run's row stays as it was).
 */
type ShownRun = RunRecord & { processGone?: true; revertedBy?: { id: string; status: string } };

/**
 * The ledger rows with what is known beyond them: a running (or killed) run's counts with its
 * checkpoints' (see runningCounts),
 * and that a run saying running has no process left: the session it recorded holds no run lock.
 */
async function shown(knex: Knex, schema: string, records: RunRecord[]): Promise<ShownRun[]> {
  const unfinished = records.filter((r) => r.status === 'running').map((r) => r.id);
  const committed = await committedCounts(knex, schema, unfinished);
  const holders = unfinished.length > 0 ? await runLockHolders(knex, schema) : new Set<number>();
  const reverts = (await knex
    .withSchema(schema)
    .from('runs')
    .whereIn(
      'reverts_run_id',
      records.map((r) => r.id),
    )
    .orderBy('id')
    .select(knex.raw('reverts_run_id::text as target'), knex.raw('id::text as id'), 'status')) as {
    target: string;
    id: string;
    status: string;
  }[];
  const revertedBy = new Map(reverts.map((r) => [r.target, { id: r.id, status: r.status }]));
  return records.map((r) => ({
    ...r,
    counts: r.status === 'running' ? runningCounts(r.counts, committed.get(r.id)) : r.counts,
    ...(processGone(r, holders) ? { processGone: true as const } : {}),
    ...(revertedBy.has(r.id) ? { revertedBy: revertedBy.get(r.id)! } : {}),
  }));
}

function row(r: ShownRun): Row {
  const counts = r.counts as { scanned?: number; changes?: number };
  return {
    id: r.id,
    kind: r.revertsRunId ? `${r.kind} of ${r.revertsRunId}` : r.kind,
    status: `${r.processGone ? 'running (process gone)' : r.status}${revertNote(r.revertedBy)}`,
    as_of: r.asOf,
    rules: r.rulesHash.slice(0, 12),
    started: r.startedAt.toISOString().replace('T', ' ').slice(0, 19),
    finished: r.finishedAt ? r.finishedAt.toISOString().replace('T', ' ').slice(0, 19) : '',
    by: r.startedBy,
    scanned: counts.scanned ?? null,
    changes: counts.changes ?? null,
  };
}

/** "(reverted by run 13)" beside a run's status; a revert that did not finish says so. */
function revertNote(by: ShownRun['revertedBy']): string {
  if (!by) return '';
  return by.status === 'succeeded' ? ` (reverted by run ${by.id})` : ` (revert run ${by.id} ${by.status})`;
}

function render(records: ShownRun[], format: Format): string {
  if (format === 'json') return JSON.stringify(records, null, 2);
  const rows = records.map(row);
  if (format === 'csv') return renderCsv(COLUMNS, rows);
  if (format === 'markdown') return renderMarkdown(COLUMNS, rows);
  return rows.length > 0 ? renderTable(COLUMNS, rows) : 'No runs yet.';
}

export function registerRuns(program: Command): void {
  const runs = withCommonOptions(
    program
      .command('runs')
      .description('the ledger: every run with its kind, as-of, rules hash, status, counts and who ran it')
      .addOption(
        new Option('--limit <n>', 'how many runs, newest first').argParser(parsePositiveInteger).default(20),
      )
      .addOption(formatOption()),
  ).action(async (opts: CommonOptions & { limit: number; format: Format }) =>
    runCommand(opts, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      await requireMigrated(knex, rules.settings.schema);
      const schema = rules.settings.schema;
      writeArtifact(
        render(await shown(knex, schema, await listRuns(knex, schema, { limit: opts.limit })), opts.format),
      );
    }),
  );
  withCommonOptions(
    runs
      .command('show')
      .argument('<id>', 'the run (`suspend runs` lists them)', notBlank(RUN_ID))
      .description('one run in full: options, counts per transition, error')
      .addOption(formatOption()),
  ).action(async (id: string, own: CommonOptions & { format: Format }, show: Command) => {
    // `runs` takes the same options, and commander gives it those written after `show` too: a
    // value `show` only has by default must not hide the one given.
    const merged: Record<string, unknown> = { ...runs.opts(), ...own };
    for (const [key, value] of Object.entries(runs.opts()))
      if (show.getOptionValueSource(key) === 'default') merged[key] = value;
    const opts = merged as unknown as typeof own;
    return runCommand(opts, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      await requireMigrated(knex, rules.settings.schema);
      const found = await getRun(knex, rules.settings.schema, id);
      if (!found) throw new UsageError(`There is no run ${id}; \`suspend runs\` lists them.`);
      const [run] = (await shown(knex, rules.settings.schema, [found])) as [ShownRun];
      const checkpoints = await runCheckpoints(knex, rules.settings.schema, run.id);
      if (opts.format === 'json') return writeArtifact(JSON.stringify({ ...run, checkpoints }, null, 2));
      const lines = [
        render([run], opts.format),
        '',
        `rules file: ${run.rulesFile ?? '(none)'}   rules hash: ${run.rulesHash}`,
        ...rulesChanges(run.options).map(
          (c) =>
            `${c.joined ? 'joined' : 'resumed'} ${c.at}${c.shard ? ` by shard ${c.shard}` : ''} with other rules: file ${c.rulesFile ?? '(none)'}   rules hash: ${c.rulesHash}`,
        ),
        `host: ${run.host ?? ''} pid ${run.pid ?? ''}   org filter: ${run.orgFilter ?? 'all'}`,
        `options: ${JSON.stringify(run.options)}`,
        `counts: ${JSON.stringify(run.counts, null, 2)}`,
      ];
      // Each shard and worker: how far it got (a shared --shard run lists every shard's part).
      for (const c of checkpoints) {
        lines.push(
          `checkpoint ${c.shard}: ${c.done ? 'done' : `at key ${c.lastKey ?? '(start)'}`}, ${c.pages} pages, ${c.scanned} scanned, updated ${c.updatedAt.toISOString()}`,
        );
      }
      if (run.revertsRunId) lines.push(`reverts run ${run.revertsRunId}`);
      if (run.revertedBy)
        lines.push(
          `reverted by run ${run.revertedBy.id}${run.revertedBy.status === 'succeeded' ? '' : ` (${run.revertedBy.status})`}`,
        );
      if (run.error) lines.push(`error: ${run.error}`);
      writeArtifact(lines.join('\n'));
    });
  });
}

/** The rules a run went on with when a resume or a joining shard brought others (recordRulesChange). */
function rulesChanges(
  options: Record<string, unknown>,
): { rulesHash: string; rulesFile: string | null; at: string; joined?: boolean; shard?: string }[] {
  const changes = options.rulesChanged;
  return Array.isArray(changes)
    ? (changes as {
        rulesHash: string;
        rulesFile: string | null;
        at: string;
        joined?: boolean;
        shard?: string;
      }[])
    : [];
}
