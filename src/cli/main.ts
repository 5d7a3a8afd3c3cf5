import { Command, CommanderError } from 'commander';
import { ExitCode } from '../errors';
import { registerMigrate } from './commands/migrate';
import { registerEmbedded } from './commands/embedded';
import { registerBatch } from './commands/batch';
import { registerRuns } from './commands/runs';
import { registerDoctor } from './commands/doctor';
import { registerSeed } from './commands/seed';
import { registerStatus } from './commands/status';
import { registerGuard } from './commands/guard';
import { registerReinstate } from './commands/reinstate';
import { registerExclusions } from './commands/exclusions';
import { registerRevert } from './commands/revert';
import { registerNotify } from './commands/notify';
import { registerRules } from './commands/rules';
import { registerDemo } from './commands/demo';

const HELP_FOOTER = `
Environment:
  DATABASE_URL   Postgres URL, used when --database-url is not given
  SUSPEND_HOME   folder of the embedded server (default .suspend/)
  SMTP_URL       SMTP server for notification mail
  NO_COLOR       turn colour off

Exit codes:
  0 done   1 failed   2 bad usage or config   3 another run holds the lock   4 safety limit hit

Examples:
  suspend demo                                   seed a sample database and walk through a run
  suspend rules check --rules rules.yaml         validate a rules file
  suspend report --dry-run --accounts --format csv --output changes.csv
  suspend backfill --batch-size 2000             clean up the whole backlog once
  suspend sweep                                  the daily run, for cron
  suspend status 1042                            why is this customer paused?
  suspend rules show --org 7                     the rules organization 7 gets after its overrides
  suspend exclude 1042 --reason "promise to pay" --until 2026-12-31
  suspend reinstate 1042 --reason "called back, still in business"
  suspend guard install --table reservations --customer-column customer_id
  suspend revert 12 --dry-run                    what undoing run 12 would restore
  suspend notify --failed                        notifications that could not be delivered
`;

export function buildProgram(): Command {
  const program = new Command('suspend')
    .description('Pause, suspend and reinstate inactive or delinquent customer accounts by YAML rules.')
    // eslint-disable-next-line @typescript-eslint/no-require-imports -- package.json sits outside rootDir
    .version(require('../../package.json').version as string)
    .addHelpText('after', HELP_FOOTER)
    .exitOverride();
  registerDemo(program);
  registerRules(program);
  registerMigrate(program);
  registerEmbedded(program);
  registerBatch(program);
  registerRuns(program);
  registerDoctor(program);
  registerSeed(program);
  registerStatus(program);
  registerGuard(program);
  registerReinstate(program);
  registerExclusions(program);
  registerRevert(program);
  registerNotify(program);
  for (const cmd of program.commands) cmd.exitOverride();
  pointUsageErrorsAtHelp(program);
  return program;
}

/**
 * A usage error is one line that names the help to read: "error: unknown option '--bogus'; see
 * `suspend sweep --help`." (Commander puts its "Did you mean" on a line of its own.)
 */
function pointUsageErrorsAtHelp(cmd: Command, path: string[] = []): void {
  const help = ['suspend', ...path, '--help'].join(' ');
  cmd.configureOutput({
    outputError: (message, write) => {
      const line = message.replace(/\s+/g, ' ').trim();
      write(`${line}${line.endsWith('.') ? ' See' : '; see'} \`${help}\`.\n`);
    },
  });
  for (const sub of cmd.commands) pointUsageErrorsAtHelp(sub, [...path, sub.name()]);
}

/**
 * A reader that stops early (`suspend report --accounts | head`) closes stdout (and stderr with
 * `2>&1`): the rest of the output is dropped and the command ends as it would have (a run still closes its ledger row and
 * delivers its notifications), where Node would end it with a stack trace from the failed write.
 */
function dropOutputOnceStdoutCloses(): void {
  // stderr too: `2>&1 | head` closes it for the messages and errors as well.
  for (const stream of [process.stdout, process.stderr])
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err;
    });
}

/**
 * node-postgres warns in nine lines that it reads sslmode=require as verify-full; README says so,
 * and a certificate it then refuses gets its own sentence (db/connection.ts). Other warnings print
 * as Node prints them.
 */
function quietDriverSslWarning(): void {
  const defaults = process.listeners('warning');
  process.removeAllListeners('warning');
  process.on('warning', (warning) => {
    if (warning.message.startsWith('SECURITY WARNING: The SSL modes')) return;
    for (const listener of defaults) listener(warning);
  });
}

export async function main(argv: string[]): Promise<void> {
  dropOutputOnceStdoutCloses();
  quietDriverSslWarning();
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version exit 0; any parse error is bad usage.
      process.exitCode = err.exitCode === 0 ? ExitCode.ok : ExitCode.usage;
      return;
    }
    throw err;
  }
}
