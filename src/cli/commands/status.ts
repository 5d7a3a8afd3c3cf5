import type { Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';
import { requireMigrated } from '../../db/migrate';
import { accountReport, renderAccountReport, rulesExclusion } from '../../customer/account-report';
import { todayUtc } from '../../rules/dates';

export function registerStatus(program: Command): void {
  withCommonOptions(
    program
      .command('status <key>')
      .description(
        "one customer as the operator sees it: state, booking and sign-in, message, each policy's stage with reasons and evidence, history, exclusion",
      )
      .option('--json', 'print the account as JSON'),
  ).action(async (key: string, opts: CommonOptions & { json?: boolean }) =>
    runCommand(opts, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      const schema = rules.settings.schema;
      await requireMigrated(knex, schema);
      const found = await accountReport(knex, schema, rules.source, key);
      const report = {
        ...found,
        rulesExclusion: found.inHostTable ? await rulesExclusion(knex, rules, found.key, todayUtc()) : null,
      };
      writeArtifact(opts.json ? JSON.stringify(report, null, 2) : renderAccountReport(report));
    }),
  );
}
