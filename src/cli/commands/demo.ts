import path from 'node:path';
import { Option, type Command } from 'commander';
import type { Knex } from 'knex';
import chalk from 'chalk';
import { runCommand, type CommonOptions } from '../context';
import { asOfOption, parsePositiveInteger, withCommonOptions } from '../options';
import { addDays, todayUtc } from '../../rules/dates';
import { SuspendError, UsageError } from '../../errors';
import { withDatabase } from '../../db/connection';
import { DEMO_DATABASE } from '../../db/migrate';

interface DemoFlags extends CommonOptions {
  customers: number;
  asOf?: string;
}

/** Shipped at the package root, beside dist/. */
const EXAMPLE_RULES = path.resolve(__dirname, '../../../rules.example.yaml');

/**
 * `suspend demo`: the tour a new user takes, as the real commands they would type, on a database of
 * its own (`suspend_demo`, recreated each time) on the configured server or the embedded default.
 */
export function registerDemo(program: Command): void {
  withCommonOptions(
    program
      .command('demo')
      .description(
        "seed a sample database (suspend_demo) and walk through report, backfill, a sweep a month later and one customer's status",
      )
      .addOption(
        new Option('--customers <n>', 'customers to seed').argParser(parsePositiveInteger).default(100_000),
      )
      .addOption(asOfOption()),
  ).action(async (opts: DemoFlags) =>
    runCommand(opts, async (ctx) => {
      const rules = opts.rules ?? EXAMPLE_RULES;
      const { knex, url, source } = await ctx.db();
      const current = await knex.raw<{ rows: { name: string }[] }>('select current_database() as name');
      if (current.rows[0]?.name === DEMO_DATABASE) {
        throw new UsageError(
          `\`suspend demo\` recreates the database ${DEMO_DATABASE}, so it cannot run connected to it; connect to another database of that server (e.g. --database postgres).`,
        );
      }
      // A fresh database each time, so the demo always tells the same story.
      await knex.raw(
        'select pg_terminate_backend(pid) from pg_stat_activity where datname = ? and pid <> pg_backend_pid()',
        [DEMO_DATABASE],
      );
      await knex.raw('drop database if exists ??', [DEMO_DATABASE]);
      await knex.raw('create database ??', [DEMO_DATABASE]);
      const demoUrl = withDatabase(url, DEMO_DATABASE);
      const asOf = opts.asOf ?? todayUtc();
      const monthLater = addDays(asOf, 30);
      const common = ['--rules', rules, '--database-url', demoUrl, ...(opts.debug ? ['--debug'] : [])];
      const shown = (args: string[]) => `suspend ${args.join(' ')}`;
      const steps: { title: string; args: string[] }[] = [
        {
          title: `Seed a booking and billing app with ${opts.customers.toLocaleString('en-US')} customers`,
          args: [
            'seed',
            '--customers',
            String(opts.customers),
            // seed refuses more organizations than customers.
            '--orgs',
            String(Math.min(10, opts.customers)),
            '--as-of',
            asOf,
          ],
        },
        { title: "Create suspend's own tables", args: ['migrate'] },
        {
          title: 'Preview what the rules would change (read-only: nothing is written)',
          args: ['report', '--dry-run', '--as-of', asOf],
        },
        {
          title: 'Clean up the whole backlog once (the safety limit is lifted for this one-time run)',
          args: ['backfill', '--as-of', asOf, '--max-changes', 'none', '--no-notify'],
        },
        {
          title: 'The same rules a month later: stages advance, accounts that paid are reinstated',
          args: ['sweep', '--as-of', monthLater, '--max-changes', 'none', '--no-notify'],
        },
        { title: 'The ledger of runs', args: ['runs'] },
      ];
      const { buildProgram } = await import('../main');
      const run = async (title: string, args: string[]) => {
        process.stderr.write(`\n${chalk.bold.cyan(`▸ ${title}`)}\n${chalk.dim(`$ ${shown(args)}`)}\n`);
        await buildProgram().parseAsync(['node', 'suspend', ...args, ...common]);
        if (process.exitCode !== 0 && process.exitCode !== undefined) {
          throw new SuspendError(
            `the demo stopped: \`${shown(args)}\` exited with code ${process.exitCode}.`,
          );
        }
      };
      const demo = (await import('knex')).default({
        client: 'pg',
        connection: demoUrl,
        pool: { min: 0, max: 1 },
      });
      let key: string | undefined;
      try {
        for (const step of steps) {
          // Between the backfill and the sweep, the booking app records some payments.
          if (step.args[0] === 'sweep') await recordPayments(demo, addDays(asOf, 10));
          await run(step.title, step.args);
        }
        const row = (await demo('suspend.account_states')
          .select('customer_key')
          .where({ policy: 'delinquency' })
          .whereNotNull('stage')
          .orderByRaw('customer_key::bigint')
          .first()) as { customer_key: string } | undefined;
        key = row?.customer_key;
      } finally {
        await demo.destroy();
      }
      if (key) await run(`What an operator (and the customer) sees for customer ${key}`, ['status', key]);
      process.stderr.write(
        `\n${chalk.bold('Next:')} copy rules.example.yaml to suspend.config.yaml, map your own tables under source:, ` +
          'check it with `suspend rules check`, and preview with `suspend report --dry-run`.\n' +
          `The demo database stays: \`suspend status ${key ?? 'KEY'} --database ${DEMO_DATABASE}\`${source === '--database-url' ? ' (with the same --database-url)' : ''} reads it again.\n`,
      );
    }),
  );
}

/** Every third unpaid invoice is paid in full, as the app would record it. */
async function recordPayments(knex: Knex, paidOn: string): Promise<void> {
  const r = await knex.raw(
    `update invoices set paid_cents = amount_cents, paid_on = ?::date
      where paid_on is null and id % 3 = 0 and issued_on <= ?::date`,
    [paidOn, paidOn],
  );
  process.stderr.write(
    `\n${chalk.bold.cyan('▸ Meanwhile the app records payments')}\n${chalk.dim(`(${r.rowCount} unpaid invoices paid in full on ${paidOn})`)}\n`,
  );
}
