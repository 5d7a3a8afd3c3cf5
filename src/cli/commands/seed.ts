import { Option, type Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { asOfOption, parseNonNegativeInteger, parsePositiveInteger, withCommonOptions } from '../options';
import { todayUtc } from '../../rules/dates';
import { UsageError } from '../../errors';

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
  ).action(async (opts: SeedFlags, cmd: Command) =>
    runCommand(opts, async (ctx) => {
      checkFlags(opts, cmd.getOptionValueSource('orgs') !== 'default');
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

/** Refuses, before connecting, a --schema the tables cannot go in and more --orgs than --customers. */
function checkFlags(opts: SeedFlags, orgsGiven: boolean): void {
  const schema = opts.schema;
  // Postgres reserves pg_ for its own schemas; information_schema is the catalog's views.
  const why =
    schema.trim() === ''
      ? 'the name is empty'
      : schema.startsWith('pg_')
        ? 'names that begin with pg_ are reserved for the system schemas of Postgres'
        : schema === 'information_schema'
          ? 'it is the system schema of Postgres that describes the database'
          : // eslint-disable-next-line no-control-regex -- control characters are what this looks for
            /[\u0000-\u001f\u007f]/.test(schema)
            ? 'it contains a control character'
            : schema.includes('.')
              ? 'a dot would be read as a database prefix'
              : /\sas\s/i.test(schema)
                ? 'suspend would read " as " in it as an alias'
                : null;
  if (why) {
    throw new UsageError(
      `--schema ${JSON.stringify(schema)}: ${why}; name a schema of your own for the reference tables (default public).`,
    );
  }
  // Organizations are drawn for the customers: more than there are customers leaves some empty
  // (and an unbounded count is only a long insert). The default 10 applies to any count.
  if (orgsGiven && opts.customers > 0 && opts.orgs > opts.customers) {
    throw new UsageError(
      `--orgs ${opts.orgs}: more organizations than --customers ${opts.customers}; give at most ${opts.customers}.`,
    );
  }
}
