import { Option, type Command } from 'commander';
import { runCommand, withInterruptibleWait, writeArtifact, type CommonOptions } from '../context';
import { asOfOption, byOption, notBlank, parsePositiveInteger, RUN_ID, withCommonOptions } from '../options';
import { defaultActor } from '../../engine/ledger';
import { todayUtc } from '../../rules/dates';
import { revertRun, type RevertResult } from '../../customer/revert';

interface RevertFlags extends CommonOptions {
  dryRun?: boolean;
  by?: string;
  asOf?: string;
  wait?: boolean;
  json?: boolean;
  batchSize?: number;
}

/** A dry run's note on an unfinished revert of the same run: stopped part way, or running now. */
function continuing(r: RevertResult): string {
  if (r.continues === null) return '';
  return r.continuesRunning
    ? ` (revert run ${r.continues} is still running in another process; this is what it has yet to do)`
    : ` (continuing revert run ${r.continues}, which stopped part way)`;
}

function render(r: RevertResult): string {
  const t = r.target;
  // Continuing a revert that stopped: what this call restored, and what the run has in all.
  const more = r.continues === null ? '' : ' more';
  const inAll = r.continuedChanges ? ` (${r.restored.length + r.continuedChanges} in all)` : '';
  const head = r.dryRun
    ? `Dry run: reverting run ${t.id} (${t.kind} as of ${t.asOf}) would restore ${r.restored.length}${more} account state(s)${continuing(r)} and leave ${r.leftAlone.length} alone; nothing was written.`
    : `Run ${t.id} (${t.kind} as of ${t.asOf}) reverted by run ${r.run?.id ?? '?'}: ${r.restored.length}${more} account state(s) restored${inAll}, ${r.leftAlone.length} left alone.`;
  const lines = [head];
  if (r.restored.length > 0) {
    lines.push('', r.dryRun ? 'would restore:' : 'restored:');
    for (const x of r.restored)
      lines.push(`  ${x.key}  ${x.policy}: ${x.from ?? 'clear'} -> ${x.to ?? 'clear'}`);
  }
  if (r.leftAlone.length > 0) {
    lines.push('', 'left alone:');
    for (const x of r.leftAlone) lines.push(`  ${x.key}  ${x.policy}: ${x.from ?? 'clear'} (${x.why})`);
  }
  return lines.join('\n');
}

export function registerRevert(program: Command): void {
  withCommonOptions(
    program
      .command('revert')
      .argument('<run-id>', 'the run to revert (`suspend runs` lists them)', notBlank(RUN_ID))
      .description(
        'undo what one run changed: restore each account state it wrote, unless the account changed again since',
      )
      .option('--dry-run', 'list what would be restored and what left alone; write nothing')
      .addOption(byOption('who reverts'))
      .addOption(asOfOption())
      .option('--wait', 'wait for a running sweep instead of exiting with code 3')
      .addOption(
        new Option('--batch-size <n>', 'accounts per transaction (default: settings.batch_size)').argParser(
          parsePositiveInteger,
        ),
      )
      .option('--json', 'print the result as JSON'),
  ).action(async (runId: string, flags: RevertFlags) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      const result = await withInterruptibleWait((interrupt) =>
        revertRun(knex, rules, {
          ...interrupt,
          runId,
          dryRun: Boolean(flags.dryRun),
          actor: flags.by ?? defaultActor(),
          asOf: flags.asOf ?? todayUtc(),
          wait: Boolean(flags.wait),
          batchSize: flags.batchSize ?? rules.settings.batchSize,
          onLog: (m) => ctx.log(m),
        }),
      );
      writeArtifact(flags.json ? JSON.stringify(result, null, 2) : render(result));
    }),
  );
}
