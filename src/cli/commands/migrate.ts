import type { Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';
import { migrateLatest, migrationStatus } from '../../db/migrate';

export function registerMigrate(program: Command): void {
  withCommonOptions(
    program
      .command('migrate')
      .description("create or upgrade suspend's own schema (never touches your tables)")
      .option('--status', 'list applied and pending migrations, change nothing'),
  ).action(async (opts: CommonOptions & { status?: boolean }) =>
    runCommand(opts, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      const schema = rules.settings.schema;
      const status = opts.status ? await migrationStatus(knex, schema) : await migrateLatest(knex, schema);
      const lines = [
        `schema ${schema}: ${status.applied.length} applied, ${status.pending.length} pending`,
        ...status.applied.map((name) => `  applied  ${name}`),
        ...status.pending.map((name) => `  pending  ${name}`),
      ];
      writeArtifact(lines.join('\n'));
    }),
  );
}
