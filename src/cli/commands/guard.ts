import type { Command } from 'commander';
import { accountList, qualified, regclassText } from '../../source/signals';
import { runCommand, writeArtifact, type CommandContext, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';
import { UsageError } from '../../errors';
import {
  installGuard,
  listGuards,
  removeGuards,
  type GuardTarget,
  type InstalledGuard,
} from '../../customer/guard';

interface GuardFlags extends CommonOptions {
  table?: string;
  schema?: string;
  customerColumn?: string;
}

function describe(g: InstalledGuard): string {
  return `"${g.schema}"."${g.table}" (customer column "${g.customerColumn}")${g.enabled ? '' : ', disabled'}`;
}

/** --table/--schema, defaulting to the activity table of the source mapping (reservations). */
async function targetOf(ctx: CommandContext, flags: GuardFlags): Promise<GuardTarget> {
  const rules = await ctx.loadRules();
  const table = flags.table ?? rules.source.activity?.table;
  if (!table)
    throw new UsageError('--table: name the table that holds the bookings, e.g. --table reservations.');
  return { schema: flags.schema ?? rules.source.schema ?? 'public', table };
}

export function registerGuard(program: Command): void {
  const guard = program
    .command('guard')
    .description(
      'the booking guard: a trigger that rejects bookings of customers whose stage blocks booking',
    );
  withCommonOptions(
    guard
      .command('install')
      .description(
        'reject INSERTs of blocked customers (SQLSTATE SP001, the stage message, next step as HINT)',
      )
      .option(
        '--table <name>',
        'the bookings table (default: the activity table of the mapping, reservations)',
      )
      .option('--customer-column <name>', 'its customer key column (default: the mapping, customer_id)')
      .option('--schema <name>', "the table's schema (default: source.schema, else public)"),
  ).action(async (flags: GuardFlags) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const target = await targetOf(ctx, flags);
      const column = flags.customerColumn ?? rules.source.activity?.customer;
      if (!column) throw new UsageError('--customer-column: name the column that holds the customer key.');
      const { knex } = await ctx.db();
      const list = accountList(rules.source);
      const table = qualified(rules.source, list.table);
      const installed = await installGuard(knex, rules.settings.schema, target, column, {
        table: regclassText(table),
        column: list.key,
        name: `"${table}"`,
      });
      writeArtifact(`Booking guard installed on ${describe(installed)}.`);
    }),
  );
  withCommonOptions(
    guard
      .command('remove')
      .description('remove the booking guard from one table, or from every guarded table')
      .option('--table <name>', 'only this table (default: every guarded table)')
      .option('--schema <name>', "the table's schema (default: source.schema, else public)"),
  ).action(async (flags: GuardFlags) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const target = flags.table ? await targetOf(ctx, flags) : null;
      const { knex } = await ctx.db();
      const removed = await removeGuards(knex, rules.settings.schema, target);
      writeArtifact(
        removed.length === 0
          ? 'No booking guard was installed.'
          : removed.map((g) => `Booking guard removed from ${describe(g)}.`).join('\n'),
      );
    }),
  );
  withCommonOptions(guard.command('status').description('list the tables with a booking guard')).action(
    async (flags: GuardFlags) =>
      runCommand(flags, async (ctx) => {
        const rules = await ctx.loadRules();
        const { knex } = await ctx.db();
        const guards = await listGuards(knex, rules.settings.schema);
        // The mapping's activity table is what `guard install` takes without flags.
        const activity = rules.source.activity;
        const install = activity
          ? 'suspend guard install` (the activity table of the mapping, ' +
            `"${rules.source.schema ?? 'public'}"."${activity.table}", customer column "${activity.customer}")`
          : 'suspend guard install --table TABLE --customer-column COLUMN`';
        writeArtifact(
          guards.length === 0
            ? `No booking guard installed; add one with \`${install}.`
            : guards.map((g) => `guarded: ${describe(g)}`).join('\n'),
        );
      }),
  );
}
