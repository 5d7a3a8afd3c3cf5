import type { Command } from 'commander';
import { ExitCode } from '../../errors';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';
import { checkIndexes, dataNotes } from '../../source/doctor';
import { checkSource } from '../../engine/run';

export function registerDoctor(program: Command): void {
  withCommonOptions(
    program
      .command('doctor')
      .description(
        'check the indexes the mapped tables need for fast pages and print the DDL for missing ones (exit 1 if any is); note data that looks mistaken',
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
      // Notes on the data do not fail the check: the run judges such rows as they stand.
      const notes = await dataNotes(knex, rules.source);
      if (notes.length > 0) lines.push('', ...notes.map((n) => `note: ${n}`));
      writeArtifact(lines.join('\n'));
      // So a deploy script or CI job can fail on it.
      return missing.length > 0 ? ExitCode.failed : ExitCode.ok;
    }),
  );
}
