import type { Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { asOfOption, byOption, withCommonOptions } from '../options';
import { defaultActor } from '../../engine/ledger';
import { todayUtc } from '../../rules/dates';
import { reinstateAccount, type ReinstateResult } from '../../customer/reinstate';

interface ReinstateFlags extends CommonOptions {
  reason: string;
  by?: string;
  policy?: string[];
  asOf?: string;
  wait?: boolean;
  json?: boolean;
}

function render(r: ReinstateResult): string {
  if (!r.run) return `Nothing to reinstate: customer ${r.key} is in no stage of the policies asked for.`;
  const lines = [
    `Reinstated customer ${r.key} (run ${r.run.id}, as of ${r.run.asOf}): ${r.reinstated
      .map((p) => `${p.policy} (was ${p.from})`)
      .join(', ')}.`,
  ];
  const host = Object.entries(r.hostRestored);
  if (host.length > 0)
    lines.push(`Host columns put back: ${host.map(([c, v]) => `${c} = ${v ?? 'NULL'}`).join(', ')}.`);
  if (r.exclusion) lines.push(`Note: the account is excluded from runs (${r.exclusion.reason}).`);
  return lines.join('\n');
}

export function registerReinstate(program: Command): void {
  withCommonOptions(
    program
      .command('reinstate <key>')
      .description(
        "clear an account's stage(s) by hand: restarts the policy's clocks, puts back host columns, writes history and an event",
      )
      .requiredOption('--reason <text>', 'why (kept in history and the event)')
      .addOption(byOption('who reinstates'))
      .option('--policy <name...>', 'only these policies (default: every policy the account is in)')
      .addOption(asOfOption())
      .option('--wait', 'wait for a running sweep instead of exiting with code 3')
      .option('--json', 'print the result as JSON'),
  ).action(async (key: string, flags: ReinstateFlags) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      const result = await reinstateAccount(knex, rules, {
        key,
        reason: flags.reason,
        actor: flags.by ?? defaultActor(),
        policies: flags.policy ?? null,
        asOf: flags.asOf ?? todayUtc(),
        asOfGiven: flags.asOf !== undefined,
        wait: Boolean(flags.wait),
        onLog: (m) => ctx.log(m),
      });
      writeArtifact(flags.json ? JSON.stringify(result, null, 2) : render(result));
    }),
  );
}
