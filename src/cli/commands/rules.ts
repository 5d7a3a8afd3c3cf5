import path from 'node:path';
import type { Command } from 'commander';
import { stringify } from 'yaml';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';
import { UsageError } from '../../errors';
import { buildRules, effectiveRawRules, readValidatedRules } from '../../rules/load';
import { SEARCH_PLACES } from '../../rules/find';
import RULES_SCHEMA from '../../rules/rules.schema.json';
import { describeCondition } from '../../evaluate/evaluate';

/** `suspend rules check|show|schema`: nothing here connects to a database. */
export function registerRules(program: Command): void {
  const rules = program
    .command('rules')
    .description('validate the rules file, print the effective rules of an organization, or its JSON Schema');

  withCommonOptions(
    rules
      .command('check')
      .description(
        'validate the rules file: every error with file, line and YAML path; exit code 2 when invalid',
      ),
  ).action(async (opts: CommonOptions) =>
    runCommand(opts, async (ctx) => {
      const validated = await readValidatedRules({ file: opts.rules, cwd: ctx.cwd });
      if (validated.file === null) throw noRulesFile(ctx.cwd);
      const loaded = buildRules(validated);
      const policies = loaded.defaults.policies;
      const orgs = Object.keys(loaded.organizations);
      writeArtifact(
        [
          `${path.relative(ctx.cwd, validated.file) || validated.file}: valid.`,
          `  policies: ${policies.map((p) => `${p.name} (${p.stages.map((s) => s.name).join(' → ')})`).join(', ') || 'none'}`,
          `  organizations with overrides: ${orgs.join(', ') || 'none'}`,
          `  exclusions: ${loaded.defaults.exclusions.length}`,
          `  hash: ${loaded.hash.slice(0, 12)}`,
          ...(validated.notes ?? []).map((note) => `  note: ${note}`),
          // As the runs judge it: no policy anywhere is nothing to apply, and they refuse it.
          ...(policies.length === 0 &&
          Object.values(loaded.organizations).every((o) => o.policies.length === 0)
            ? [
                '  note: no policy is written (or all are turned off), so backfill, sweep and report refuse to run; write them (see rules.example.yaml)',
              ]
            : []),
        ].join('\n'),
      );
    }),
  );

  withCommonOptions(
    rules
      .command('show')
      .description("print the effective rules (defaults merged with one organization's overrides) as YAML")
      // Its value is optional to commander, so that `--org --rules FILE` is not read as organization
      // "--rules" (and FILE as an argument too many): a missing id is said here.
      .option('--org [id]', 'the organization whose overrides to merge (default: the defaults alone)')
      .option('--json', 'print JSON instead of YAML'),
  ).action(async (opts: CommonOptions & { org?: string | true; json?: boolean }) =>
    runCommand(opts, async (ctx) => {
      if (opts.org === true || opts.org?.trim() === '') {
        throw new UsageError(
          '--org needs an organization id (e.g. --org 7); leave --org out for the defaults alone.',
        );
      }
      const validated = await readValidatedRules({ file: opts.rules, cwd: ctx.cwd });
      const loaded = buildRules(validated);
      const orgId = opts.org ?? null;
      const effective =
        orgId === null ? loaded.defaults : (loaded.organizations[orgId] ?? { ...loaded.defaults, orgId });
      const raw = effectiveRawRules(validated.raw, orgId);
      if (opts.json) {
        writeArtifact(JSON.stringify({ organization: orgId, hash: loaded.hash, rules: raw }, null, 2));
        return;
      }
      const header = [
        `# Effective rules ${orgId === null ? '(defaults)' : `of organization ${orgId}${loaded.organizations[orgId] ? '' : ' (no overrides: the defaults)'}`}`,
        `# from ${validated.file ?? 'built-in defaults (no rules file found)'}; hash ${loaded.hash.slice(0, 12)}`,
        ...effective.policies.flatMap((p) => [
          `# ${p.name}: ${p.reinstate === 'auto' ? 'reinstates automatically' : 'reinstated by hand'}`,
          ...p.stages.map(
            (s) => `#   ${s.name}: when ${describeCondition(s.when, effective.settings.currency)}`,
          ),
        ]),
      ];
      writeArtifact(`${header.join('\n')}\n${stringify(raw, { lineWidth: 100 })}`);
    }),
  );

  rules
    .command('schema')
    .description('print the JSON Schema of the rules file, for editor completion and checks')
    .action(() => writeArtifact(JSON.stringify(RULES_SCHEMA, null, 2)));
}

function noRulesFile(cwd: string): UsageError {
  return new UsageError(
    `no rules file found from ${cwd} up (looked for ${SEARCH_PLACES.join(', ')}); pass --rules FILE or copy rules.example.yaml to suspend.config.yaml.`,
  );
}
