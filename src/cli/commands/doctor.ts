import type { Command } from 'commander';
import { ExitCode } from '../../errors';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';
import { checkIndexes } from '../../source/doctor';
import { checkSource } from '../../engine/run';

export function registerDoctor(program: Command): void {
  withCommonOptions(
    program
      .command('doctor')
      .description(
        'check the indexes the mapped tables need for fast pages and print the DDL for missing ones (exit 1 if any is)',
      ),
  ).action(async (opts: CommonOptions) =>
    runCommand(opts, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      // Index advice for a table that is not there would be wrong: the mapping is refused first.
      await checkSource(knex, rules);
      const checks = await checkIndexes(knex, rules.source);
      const missing = checks.filter((c) => !c.present);
      const lines = checks.map(
        (c) => `${c.present ? 'ok     ' : 'MISSING'}  ${c.table} (${c.columns.join(', ')}): ${c.why}`,
      );
      if (missing.length > 0) lines.push('', '-- create the missing indexes:', ...missing.map((c) => c.ddl));
      else lines.push('', 'All indexes the signal queries need are present.');
      writeArtifact(lines.join('\n'));
      // So a deploy script or CI job can fail on it.
      return missing.length > 0 ? ExitCode.failed : ExitCode.ok;
    }),
  );
}
