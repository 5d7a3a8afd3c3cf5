import type { Command } from 'commander';
import { Option } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { formatOption, parsePositiveInteger, withCommonOptions, type Format } from '../options';
import { getRun, listRuns, runCheckpoints, type RunRecord } from '../../engine/ledger';
import { requireMigrated } from '../../db/migrate';
import { UsageError } from '../../errors';
import { renderCsv, renderMarkdown, renderTable, type Row } from '../../report/tables';

const COLUMNS = ['id', 'kind', 'status', 'as_of', 'rules', 'started', 'finished', 'by', 'scanned', 'changes'];

function row(r: RunRecord): Row {
  const counts = r.counts as { scanned?: number; changes?: number };
  return {
    id: r.id,
    kind: r.kind,
    status: r.status,
    as_of: r.asOf,
    rules: r.rulesHash.slice(0, 12),
    started: r.startedAt.toISOString().replace('T', ' ').slice(0, 19),
    finished: r.finishedAt ? r.finishedAt.toISOString().replace('T', ' ').slice(0, 19) : '',
    by: r.startedBy,
    scanned: counts.scanned ?? null,
    changes: counts.changes ?? null,
  };
}

function render(records: RunRecord[], format: Format): string {
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
      writeArtifact(render(await listRuns(knex, rules.settings.schema, { limit: opts.limit }), opts.format));
    }),
  );
  withCommonOptions(
    runs
      .command('show <id>')
      .description('one run in full: options, counts per transition, error')
      .addOption(formatOption()),
  ).action(async (id: string, opts: CommonOptions & { format: Format }) =>
    runCommand({ ...runs.opts(), ...opts }, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      await requireMigrated(knex, rules.settings.schema);
      const run = await getRun(knex, rules.settings.schema, id);
      if (!run) throw new UsageError(`There is no run ${id}; \`suspend runs\` lists them.`);
      const checkpoints = await runCheckpoints(knex, rules.settings.schema, run.id);
      if (opts.format === 'json') return writeArtifact(JSON.stringify({ ...run, checkpoints }, null, 2));
      const lines = [
        render([run], opts.format),
        '',
        `rules file: ${run.rulesFile ?? '(none)'}   rules hash: ${run.rulesHash}`,
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
      if (run.error) lines.push(`error: ${run.error}`);
      writeArtifact(lines.join('\n'));
    }),
  );
}
