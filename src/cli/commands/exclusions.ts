import type { Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { byOption, parseIsoDate, withCommonOptions } from '../options';
import { requireMigrated } from '../../db/migrate';
import { UsageError } from '../../errors';
import { defaultActor } from '../../engine/ledger';
import { todayUtc } from '../../rules/dates';
import { rulesForOrg } from '../../engine/plan';
import { renderTable } from '../../report/tables';
import { addExclusion, listExclusions, removeExclusion, type Exclusion } from '../../customer/exclusions';
import { accountKey, customerTable, hostTableExists } from '../../customer/host';

const day = (d: Date | null) => (d ? d.toISOString().slice(0, 10) : '');

function renderList(list: Exclusion[], all: boolean): string {
  if (list.length === 0) return all ? 'No exclusions were ever made.' : 'No account is excluded.';
  const columns = ['key', 'reason', 'until', 'by', 'since', ...(all ? ['removed', 'removed_by'] : [])];
  return renderTable(
    columns,
    list.map((x) => ({
      key: x.key,
      reason: x.reason,
      until: x.until ?? 'no expiry',
      by: x.createdBy,
      since: day(x.createdAt),
      removed: day(x.removedAt),
      removed_by: x.removedBy ?? '',
    })),
  );
}

/** `suspend exclude KEY` and `suspend exclusions [list|remove]`. */
export function registerExclusions(program: Command): void {
  withCommonOptions(
    program
      .command('exclude <key>')
      .description(
        'spare an account from every run (no pause, suspension or escalation), with a reason and an optional last day',
      )
      .requiredOption('--reason <text>', 'why the account is spared')
      .option(
        '--until <date>',
        'last day the exclusion applies (YYYY-MM-DD; default: no expiry)',
        parseIsoDate,
      )
      .addOption(byOption('who excludes it')),
  ).action(async (key: string, flags: CommonOptions & { reason: string; until?: string; by?: string }) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      const schema = rules.settings.schema;
      await requireMigrated(knex, schema);
      const hostTable = await hostTableExists(knex, rules.source);
      const account = await accountKey(knex, rules.source, key);
      if (hostTable && !account.found) {
        throw new UsageError(`There is no customer ${key} in table ${customerTable(rules.source)}.`);
      }
      const x = await addExclusion(knex, schema, {
        key: account.key,
        reason: flags.reason,
        until: flags.until ?? null,
        by: flags.by ?? defaultActor(),
        today: todayUtc(),
      });
      // Spared from now on; what it is in already stays until its reason clears or a person lifts it.
      const staged = (await knex
        .withSchema(schema)
        .from('account_states')
        .where({ customer_key: x.key })
        .whereNotNull('stage')
        .orderBy('policy')
        .select('policy', 'stage', 'org_id')) as { policy: string; stage: string; org_id: string | null }[];
      // A policy cleared by hand only (reinstate: manual) holds its stage: no run gives access back.
      const manual = (s: (typeof staged)[number]) =>
        rulesForOrg(rules, s.org_id).policies.find((p) => p.name === s.policy)?.reinstate === 'manual';
      const byRun = staged.filter((s) => !manual(s));
      const byHand = staged.filter(manual);
      const named = (list: typeof staged) => list.map((s) => `${s.stage} under ${s.policy}`).join(', ');
      writeArtifact(
        [
          `Customer ${x.key} is excluded from every run${x.until ? ` until ${x.until}` : ''}: ${x.reason} (by ${x.createdBy}). No run pauses, suspends or escalates it meanwhile.`,
          ...(x.replaced
            ? [`(Its exclusion that ended on ${x.replaced.until} (${x.replaced.reason}) is closed.)`]
            : []),
          ...(byRun.length > 0
            ? [
                `It stays ${named(byRun)} until ${byRun.length > 1 ? 'their reasons clear' : 'the reason clears'} (a run then gives access back) or \`suspend reinstate ${x.key}\` lifts ${byRun.length > 1 ? 'them' : 'it'}.`,
              ]
            : []),
          ...(byHand.length > 0
            ? [
                `It stays ${named(byHand)} until \`suspend reinstate ${x.key}\` lifts ${byHand.length > 1 ? 'them' : 'it'}: ${byHand.length > 1 ? 'these policies are' : 'that policy is'} cleared by hand only (reinstate: manual), so no run gives access back.`,
              ]
            : []),
        ].join('\n'),
      );
    }),
  );

  const exclusions = program.command('exclusions').description('the accounts operators excluded from runs');
  withCommonOptions(
    exclusions
      .command('list', { isDefault: true })
      .description('list live exclusions')
      .option('--all', 'also the removed ones')
      .option('--json', 'print as JSON'),
  ).action(async (flags: CommonOptions & { all?: boolean; json?: boolean }) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      await requireMigrated(knex, rules.settings.schema);
      const list = await listExclusions(knex, rules.settings.schema, {
        all: Boolean(flags.all),
        today: todayUtc(),
      });
      writeArtifact(flags.json ? JSON.stringify(list, null, 2) : renderList(list, Boolean(flags.all)));
    }),
  );
  withCommonOptions(
    exclusions
      .command('remove <key>')
      .description('end the exclusion of an account (the record stays, with who removed it)')
      .addOption(byOption('who removes it')),
  ).action(async (key: string, flags: CommonOptions & { by?: string }) =>
    runCommand(flags, async (ctx) => {
      const rules = await ctx.loadRules();
      const { knex } = await ctx.db();
      await requireMigrated(knex, rules.settings.schema);
      const { key: stored } = await accountKey(knex, rules.source, key);
      const x = await removeExclusion(knex, rules.settings.schema, {
        key: stored,
        keys: [...new Set([stored, key])],
        by: flags.by ?? defaultActor(),
      }).catch(async (err: unknown) => {
        // Not excluded by hand: the rules file may be what spares it, which only an edit there ends.
        const { rulesExclusion } = await import('../../customer/account-report');
        const byRules = await rulesExclusion(knex, rules, stored, todayUtc()).catch(() => null);
        if (!byRules) throw err;
        throw new UsageError(
          `Account ${key} has no exclusion made by \`suspend exclude\`; the rules file${rules.file ? ` (${rules.file})` : ''} excludes it (${byRules.reason}${byRules.until ? `, until ${byRules.until}` : ''}): remove it there.`,
        );
      });
      writeArtifact(`Customer ${x.key} is no longer excluded (removed by ${x.removedBy ?? ''}).`);
    }),
  );
}
