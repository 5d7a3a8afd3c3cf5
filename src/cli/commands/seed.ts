import { Option, type Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { asOfOption, parseNonNegativeInteger, parsePositiveInteger, withCommonOptions } from '../options';
import { todayUtc } from '../../rules/dates';

interface SeedFlags extends CommonOptions {
  customers: number;
  orgs: number;
  seed: number;
  asOf?: string;
  reset?: boolean;
  schema: string;
}

export function registerSeed(program: Command): void {
  withCommonOptions(
    program
      .command('seed')
      .description(
        'create the reference booking/billing tables (organizations, customers, reservations, invoices, subscriptions) and fill them with deterministic sample data',
      )
      .addOption(
        new Option('--customers <n>', 'customers to create (0: only create the empty tables)')
          .argParser(parseNonNegativeInteger)
          .makeOptionMandatory(),
      )
      .addOption(new Option('--orgs <k>', 'organizations').argParser(parsePositiveInteger).default(10))
      .addOption(
        new Option('--seed <s>', 'pseudo-random seed: the same seed and as-of give the same rows')
          .argParser(parseNonNegativeInteger)
          .default(1),
      )
      .addOption(asOfOption())
      .option('--reset', 'truncate the reference tables (only those) if they already hold rows')
      .option('--schema <name>', 'schema of the reference tables', 'public'),
  ).action(async (opts: SeedFlags) =>
    runCommand(opts, async (ctx) => {
      const { seedReferenceData } = await import('../../seed/seed');
      const { knex } = await ctx.db({ pool: 4 });
      const r = await seedReferenceData(knex, {
        schema: opts.schema,
        customers: opts.customers,
        orgs: opts.orgs,
        seed: opts.seed,
        asOf: opts.asOf ?? todayUtc(),
        reset: Boolean(opts.reset),
        onLog: (m) => ctx.debug(m),
      });
      const c = r.counts;
      ctx.log(
        `seeded ${r.schema}: ${c.customers} customers, ${c.organizations} organizations, ${c.reservations} reservations, ${c.invoices} invoices, ${c.subscriptions} subscriptions in ${r.seconds.toFixed(1)} s`,
      );
      const lines = [
        `schema ${r.schema}, seed ${r.seed}, as of ${r.asOf}${r.reset ? ', after truncating the old rows' : ''}`,
        ...Object.entries(c).map(([table, n]) => `  ${table.padEnd(14)} ${String(n).padStart(10)} rows`),
        `created tables: ${r.created.length > 0 ? r.created.join(', ') : 'none (all existed)'}`,
        `seconds: ${r.seconds.toFixed(1)}`,
      ];
      writeArtifact(lines.join('\n'));
    }),
  );
}
