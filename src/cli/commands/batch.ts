import { Command, Option, InvalidArgumentError } from 'commander';
import {
  runCommand,
  streamArtifact,
  writeArtifact,
  type CommandContext,
  type CommonOptions,
} from '../context';
import {
  asOfOption,
  byOption,
  formatOption,
  notBlank,
  parseOutputFile,
  parsePositiveInteger,
  RUN_ID,
  withCommonOptions,
  type Format,
} from '../options';
import type { BatchKind } from '../../engine/run';
import { defaultActor } from '../../engine/ledger';
import { PIPELINE_CONNECTIONS } from '../../engine/pipeline';
import { ReportCollector, writeBatchReport } from '../../report/batch-report';
import { createProgress } from '../../report/progress';
import { todayUtc } from '../../rules/dates';
import { resolveSmtpUrl } from '../../notify/mail';
import { ExitCode, errorMessage } from '../../errors';
import type { Rules, Settings } from '../../types';
import type { Knex } from 'knex';

interface BatchFlags extends CommonOptions {
  asOf?: string;
  org?: string[];
  batchSize?: number;
  format: Format;
  output?: string;
  accounts?: boolean;
  dryRun?: boolean;
  resume?: boolean;
  /** true, or the run to give up. */
  abandon?: boolean | string;
  wait?: boolean;
  notify?: boolean;
  shard?: { index: number; count: number };
  workers?: number;
  by?: string;
  maxChanges?: Settings['maxChanges'] | 'none';
}

/** `500`, `5%` or `none`: the run's safety limit instead of settings.max_changes. */
function parseMaxChangesFlag(value: string): Settings['maxChanges'] | 'none' {
  if (value === 'none') return 'none';
  if (/^\d+$/.test(value)) {
    if (!Number.isSafeInteger(Number(value)))
      throw new InvalidArgumentError(
        `"${value}" is more than a count can be here (at most ${Number.MAX_SAFE_INTEGER}); write none for no limit.`,
      );
    return { count: Number(value) };
  }
  const m = /^(\d+(?:\.\d+)?)%$/.exec(value);
  if (m && Number(m[1]) > 0 && Number(m[1]) <= 100) return { fraction: Number(m[1]) / 100 };
  throw new InvalidArgumentError(
    `"${value}" is not a limit; write a count (500), a percentage (5%) or none.`,
  );
}

/** More processes than any deployment runs, and far inside the key hash's range. */
const MAX_SHARDS = 100_000;

function parseShard(value: string): { index: number; count: number } {
  const m = /^(\d+)\/(\d+)$/.exec(value);
  const index = Number(m?.[1]);
  const count = Number(m?.[2]);
  if (!m || count < 1 || index >= count) {
    throw new InvalidArgumentError(`"${value}" is not a shard; write I/N with 0 <= I < N, e.g. 0/4.`);
  }
  if (count > MAX_SHARDS) {
    throw new InvalidArgumentError(
      `"${value}": at most ${MAX_SHARDS.toLocaleString('en-US')} shards; write I/N with N up to that.`,
    );
  }
  return { index, count };
}

function batchOptions(cmd: Command, kind: BatchKind | 'report'): Command {
  withCommonOptions(cmd)
    .addOption(asOfOption())
    .option('--org <id...>', 'only these organizations')
    .addOption(
      new Option('--batch-size <n>', 'accounts per page (default: settings.batch_size, 2000)').argParser(
        parsePositiveInteger,
      ),
    )
    .addOption(formatOption())
    .addOption(
      new Option('--output <file>', 'write the report to FILE instead of stdout').argParser(parseOutputFile),
    )
    .option('--accounts', 'list every affected account (key, org, from, to, policy, reasons)')
    .addOption(
      new Option(
        '--shard <i/n>',
        'process only shard I of N (hash of the key; N processes can run side by side)',
      ).argParser(parseShard),
    )
    .addOption(
      new Option(
        '--workers <n>',
        `N page pipelines over disjoint key ranges in this process (default 1; ${PIPELINE_CONNECTIONS} connections each, plus 4 for the run: refused when Postgres has no room for them)`,
      ).argParser(parsePositiveInteger),
    );
  if (kind !== 'report') {
    cmd
      .option('--dry-run', 'read and evaluate everything, write nothing at all')
      .option('--wait', 'wait for another run to finish instead of exiting with code 3')
      .option('--no-notify', 'do not deliver notifications at the end')
      .addOption(
        new Option(
          '--max-changes <limit>',
          'safety limit for this run: a count (500), a percentage (5%) or none (default: settings.max_changes)',
        ).argParser(parseMaxChangesFlag),
      )
      .addOption(byOption('who runs it, for the ledger'));
  } else {
    cmd.option('--dry-run', 'accepted for clarity: a report never writes');
  }
  return cmd;
}

async function execute(ctx: CommandContext, kind: BatchKind | 'report', flags: BatchFlags): Promise<number> {
  // Loaded on use so commands that do not evaluate rules start fast.
  const { abandonBackfill, runBatch } = await import('../../engine/run');
  const loaded = await ctx.loadRules();
  const rules =
    flags.maxChanges === undefined
      ? loaded
      : {
          ...loaded,
          settings: { ...loaded.settings, maxChanges: flags.maxChanges === 'none' ? null : flags.maxChanges },
        };
  if (kind === 'backfill' && flags.abandon) {
    const { knex } = await ctx.db();
    const run = await abandonBackfill(knex, rules, flags.abandon === true ? null : flags.abandon);
    writeArtifact(
      `Backfill run ${run.id} (as of ${run.asOf}) abandoned; a new backfill can start.`,
      flags.output,
    );
    return ExitCode.ok;
  }
  const dryRun = kind === 'report' || Boolean(flags.dryRun);
  // A bad SMTP URL is refused before the run writes, not found out when it notifies.
  if (!dryRun && flags.notify !== false) resolveSmtpUrl(rules);
  const { knex } = await ctx.db({ pool: 4 });
  const controller = new AbortController();
  const onSignal = () => {
    ctx.log(
      'interrupt: stopping (a run under way finishes its current page first; one still waiting to start ends now)',
    );
    controller.abort();
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const collector = new ReportCollector(Boolean(flags.accounts));
  let progress = null as ReturnType<typeof createProgress> | null;
  const asOf = flags.asOf ?? todayUtc();
  try {
    const result = await runBatch(knex, rules, {
      kind: kind === 'report' ? 'sweep' : kind,
      asOf,
      asOfGiven: flags.asOf !== undefined,
      dryRun,
      batchSize: flags.batchSize ?? rules.settings.batchSize,
      orgs: flags.org ?? null,
      shard: flags.shard ?? null,
      workers: flags.workers ?? 1,
      resume: Boolean(flags.resume),
      wait: Boolean(flags.wait),
      actor: flags.by ?? defaultActor(),
      signal: controller.signal,
      onLog: (m) => ctx.log(m),
      onPage: (page) => {
        progress ??= createProgress({ quiet: Boolean(flags.quiet), total: page.total, label: kind });
        progress.update(page.counts.scanned, page.counts.changes);
        collector.onPage(page);
      },
      changesWanted: collector.wanted,
    });
    progress?.stop();
    const meta = {
      kind,
      dryRun,
      asOf: result.run?.asOf ?? asOf,
      rulesHash: rules.hash,
      rulesFile: rules.file,
    };
    await streamArtifact(flags.output, (write) =>
      writeBatchReport(meta, result, collector, flags.format, Boolean(flags.accounts), write),
    );
    if (result.status === 'interrupted') ctx.log(interruptedHint(kind, dryRun, result.run?.id, flags.shard));
    if (flags.org) await noteOrgsWithoutAccounts(ctx, knex, rules, flags.org);
    if (!dryRun && flags.notify !== false && result.status === 'succeeded') await deliverAfterRun(ctx);
    return result.exitCode;
  } finally {
    progress?.stop();
    collector.dispose();
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  }
}

/** What to do after a run was interrupted (Ctrl-C, SIGTERM): only a backfill resumes. */
function interruptedHint(
  kind: BatchKind | 'report',
  dryRun: boolean,
  runId: string | undefined,
  shard: BatchFlags['shard'],
): string {
  const shardFlag = shard ? ` --shard ${shard.index}/${shard.count}` : '';
  if (dryRun) return 'interrupted; a dry run writes nothing, so run it again for the whole report';
  if (kind === 'backfill')
    return `run ${runId ?? ''} interrupted; continue with \`suspend backfill${shardFlag} --resume\``;
  return `run ${runId ?? ''} interrupted; what it committed stays: run \`suspend sweep${shardFlag}\` again (it judges every account again, and those it changed already stay as they are)`;
}

/** A run over --org values none of whose accounts exist says so, instead of a quiet "0 scanned". */
async function noteOrgsWithoutAccounts(ctx: CommandContext, knex: Knex, rules: Rules, orgs: string[]) {
  const { orgsWithoutAccounts, accountList, qualified } = await import('../../source/signals');
  const missing = await orgsWithoutAccounts(knex, rules.source, orgs);
  if (missing.length === 0) return;
  const list = accountList(rules.source);
  ctx.log(
    `note: --org ${missing.join(', ')}: no account in ${qualified(rules.source, list.table)} has ${missing.length > 1 ? 'these organizations' : 'this organization'} (column ${list.org}); check the id${missing.length > 1 ? 's' : ''}.`,
  );
}

/** backfill and sweep deliver pending notifications at the end unless --no-notify. */
async function deliverAfterRun(ctx: CommandContext): Promise<void> {
  const { deliverPending, describeDelivery } = await import('../../notify/deliver');
  const rules = await ctx.loadRules();
  const { knex } = await ctx.db();
  try {
    const delivery = await deliverPending(knex, rules, { log: (m) => ctx.log(m) });
    ctx.log(describeDelivery(delivery));
    // A cron job's --quiet still hears of what did not go out.
    const undelivered = delivery.retrying + delivery.failed;
    if (undelivered > 0 && ctx.options.quiet)
      ctx.warn(
        `notifications: ${undelivered} event(s) not delivered (${delivery.retrying} to be tried again, ${delivery.failed} failed); see \`suspend notify --failed\`.`,
      );
  } catch (err) {
    // The run's changes are committed: a delivery problem never changes its exit code.
    ctx.warn(
      `notifications were not delivered (${errorMessage(err)}); they stay in the outbox for \`suspend notify\`.`,
    );
  }
}

export function registerBatch(program: Command): void {
  const action = (kind: BatchKind | 'report') => async (flags: BatchFlags) =>
    runCommand(flags, (ctx) => execute(ctx, kind, flags));
  batchOptions(
    program
      .command('backfill')
      .description('one-time clean-up of the whole backlog, checkpointed page by page (resumable)')
      .addOption(
        // A dry run previews a new run: it neither continues one nor gives one up.
        new Option('--resume', 'continue the unfinished backfill from its last committed page').conflicts([
          'abandon',
          'dryRun',
        ]),
      )
      .addOption(
        new Option(
          '--abandon [run]',
          'give up the unfinished backfill (or run RUN, when more than one did not finish) so a new one can start',
        )
          // An empty RUN ("$RUN" unset) read as no --abandon at all, and a new backfill started.
          .argParser(notBlank(`${RUN_ID}, or leave the value out`))
          .conflicts(['dryRun', 'org']),
      ),
    'backfill',
  ).action(action('backfill'));
  batchOptions(
    program
      .command('sweep')
      .description('the recurring run for cron: advance stages, reinstate, fire actions once'),
    'sweep',
  ).action(action('sweep'));
  batchOptions(
    program.command('report').description('read-only preview of what a sweep would change (for analysts)'),
    'report',
  ).action(action('report'));
}
