import type { Command } from 'commander';
import { runCommand, withInterruptibleWait, writeArtifact, type CommonOptions } from '../context';
import { asOfOption, byOption, withCommonOptions } from '../options';
import { defaultActor } from '../../engine/ledger';
import { todayUtc } from '../../rules/dates';
import {
  reinstateAccount,
  stagesAgain,
  type ReinstateResult,
  type StageAgain,
} from '../../customer/reinstate';

interface ReinstateFlags extends CommonOptions {
  reason: string;
  by?: string;
  policy?: string[];
  asOf?: string;
  wait?: boolean;
  json?: boolean;
}

function render(r: ReinstateResult, again: StageAgain[]): string {
  if (!r.run) return `Nothing to reinstate: customer ${r.key} is in no stage of the policies asked for.`;
  const lines = [
    `Reinstated customer ${r.key} (run ${r.run.id}, as of ${r.run.asOf}): ${r.reinstated
      .map((p) => `${p.policy} (was ${p.from})`)
      .join(', ')}.`,
  ];
  const host = Object.entries(r.hostRestored);
  if (host.length > 0)
    lines.push(`Host columns put back: ${host.map(([c, v]) => `${c} = ${v ?? 'NULL'}`).join(', ')}.`);
  for (const k of r.hostKept)
    lines.push(
      `Host column ${k.column} left as it is: it holds ${k.holds === null ? 'NULL' : JSON.stringify(k.holds)}, not the ${k.sets === null ? 'NULL' : JSON.stringify(k.sets)} the rules' stage sets, so suspend cannot tell whether it wrote that value (the host may have since, or the stage's set value changed); if it did, put back ${k.before === null ? 'NULL' : JSON.stringify(k.before)} by hand.`,
    );
  if (r.stillHeld) {
    const { heldBy, blocksBooking, allowsLogin } = r.stillHeld;
    const still = [blocksBooking && 'booking stays blocked', !allowsLogin && 'sign-in stays off'].filter(
      Boolean,
    );
    lines.push(`Still held under other policies: ${heldBy.join(', ')}; ${still.join(' and ')}.`);
  }
  if (r.exclusion) lines.push(`Note: the account is excluded from runs (${r.exclusion.reason}).`);
  for (const a of again)
    lines.push(
      `Note: the next run puts customer ${r.key} back in stage ${a.stage} of policy ${a.policy}: ${a.reasons.join('; ')}. A reinstatement restarts the policy's clocks, not its balances or counts; to spare the account meanwhile, \`suspend exclude ${r.key} --reason TEXT --until YYYY-MM-DD\`.`,
    );
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
      const result = await withInterruptibleWait((interrupt) =>
        reinstateAccount(knex, rules, {
          ...interrupt,
          key,
          reason: flags.reason,
          actor: flags.by ?? defaultActor(),
          policies: flags.policy ?? null,
          asOf: flags.asOf ?? todayUtc(),
          asOfGiven: flags.asOf !== undefined,
          wait: Boolean(flags.wait),
          onLog: (m) => ctx.log(m),
        }),
      );
      // Advice only: the reinstatement is committed whatever this finds (or fails to read).
      const again = result.run
        ? await stagesAgain(
            knex,
            rules,
            result.key,
            result.run.asOf,
            result.reinstated.map((p) => p.policy),
          ).catch(() => [])
        : [];
      writeArtifact(
        flags.json ? JSON.stringify({ ...result, stagesAgain: again }, null, 2) : render(result, again),
      );
    }),
  );
}
