import { Option, type Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { parsePositiveInteger, withCommonOptions } from '../options';
import { requireMigrated } from '../../db/migrate';
import { ExitCode } from '../../errors';
import { DEFAULT_MAX_ATTEMPTS, deliverPending, describeDelivery } from '../../notify/deliver';
import { listFailed, type FailedEvent } from '../../notify/outbox';
import { renderTable } from '../../report/tables';

interface NotifyFlags extends CommonOptions {
  failed?: boolean;
  retryFailed?: boolean;
  maxAttempts?: number;
  json?: boolean;
}

const FAILED_COLUMNS = [
  'id',
  'created',
  'org',
  'run',
  'customer',
  'event',
  'policy',
  'stage',
  'attempts',
  'error',
];

function renderFailed(events: FailedEvent[]): string {
  if (events.length === 0) return 'No failed notifications.';
  const rows = events.map((e) => ({
    id: e.id,
    created: e.createdAt.toISOString().replace('T', ' ').slice(0, 19),
    org: e.orgId,
    run: e.runId,
    customer: e.customerKey,
    event: e.event,
    policy: e.policy,
    stage: e.stage,
    attempts: e.attempts,
    error: e.lastError,
  }));
  return `${renderTable(FAILED_COLUMNS, rows)}\n\n${events.length} failed; send them again with \`suspend notify --retry-failed\`.`;
}

export function registerNotify(program: Command): void {
  withCommonOptions(
    program
      .command('notify')
      .description(
        'deliver pending notifications: a digest per organization and run by email, customer notices, signed webhooks',
      )
      .addOption(
        // A listing sends nothing: a limit of attempts would be taken for one it applied.
        new Option('--failed', 'list the notifications that failed for good').conflicts([
          'retryFailed',
          'maxAttempts',
        ]),
      )
      .option('--retry-failed', 'put failed notifications back and send them again')
      .addOption(
        new Option('--max-attempts <n>', 'attempts before a notification is marked failed')
          .argParser(parsePositiveInteger)
          .default(DEFAULT_MAX_ATTEMPTS),
      )
      .option('--json', 'print the result (or the failed list) as JSON')
      .addHelpText(
        'after',
        `
Mail goes through SMTP_URL or settings.smtp.url (smtp:// or smtps://); without either, events that
need mail stay pending. A webhook with a secret is signed: Suspend-Signature: t=<unix seconds>,
v1=<hex HMAC-SHA256 of "t.body" with the secret>; one without is sent unsigned (notify says so).
Exit code 1 when a delivery failed (it is retried with backoff by the next call).

Examples:
  suspend notify                    deliver what is due (cron, every few minutes)
  suspend notify --failed           what could not be delivered, and why
  suspend notify --retry-failed     send the failed ones again`,
      ),
  ).action(async (flags: NotifyFlags) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      if (flags.failed) {
        await requireMigrated(knex, rules.settings.schema);
        const events = await listFailed(knex, rules.settings.schema);
        writeArtifact(flags.json ? JSON.stringify(events, null, 2) : renderFailed(events));
        return ExitCode.ok;
      }
      const result = await deliverPending(knex, rules, {
        maxAttempts: flags.maxAttempts,
        retryFailed: flags.retryFailed,
        log: (m) => ctx.log(m),
      });
      writeArtifact(flags.json ? JSON.stringify(result, null, 2) : describeDelivery(result));
      return result.retrying + result.failed > 0 ? ExitCode.failed : ExitCode.ok;
    }),
  );
}
