import type { Knex } from 'knex';
import { rulesForOrg } from '../engine/plan';
import type { Rules } from '../types';
import { regclassText } from './signals';

/**
 * Stored states the rules no longer describe: a policy removed from the file or turned off for the
 * account's organization, or a stage renamed or removed. Runs match a stored stage to its ladder by
 * name (one moved in the ladder is judged where it now is), else by position, and judge only the
 * policies an organization applies, so such an account keeps the stored stage (its name, message
 * and flags: maybe booking blocked) and no run says why. Each kind of case is one note for the
 * run's log.
 *
 * It reads every stored state (about 0.3 s per million): a real run skips it when the rules are those
 * of the last run that succeeded, which said it already; a dry run always says it.
 */
export async function staleStageNotes(
  knex: Knex,
  rules: Rules,
  options: { dryRun: boolean },
): Promise<string[]> {
  const schema = rules.settings.schema;
  const exists = await knex.raw<{ rows: { t: string | null }[] }>('select to_regclass(?) as t', [
    regclassText(`${schema}.account_states`),
  ]);
  if (!exists.rows[0]?.t) return [];
  if (!options.dryRun) {
    const last = await knex.raw<{ rows: { rules_hash: string }[] }>(
      `select rules_hash from ?? where kind in ('backfill', 'sweep') and status = 'succeeded' order by id desc limit 1`,
      [`${schema}.runs`],
    );
    if (last.rows[0]?.rules_hash === rules.hash) return [];
  }
  const { rows } = await knex.raw<{
    rows: {
      org_id: string | null;
      policy: string;
      stage: string;
      stage_index: number;
      n: number;
      blocking: number;
    }[];
  }>(
    `select org_id, policy, stage, stage_index, count(*)::int as n,
            count(*) filter (where blocks_booking)::int as blocking
       from ?? where stage is not null group by 1, 2, 3, 4 order by 2, 4, 3, 1`,
    [`${schema}.account_states`],
  );
  const anywhere = new Set(
    [rules.defaults, ...Object.values(rules.organizations)].flatMap((r) => r.policies.map((p) => p.name)),
  );
  // One note per policy, stage and case, over the organizations it concerns.
  const cases = new Map<
    string,
    { n: number; blocking: number; orgs: Set<string>; text: (n: string) => string }
  >();
  const add = (id: string, r: (typeof rows)[number], text: (n: string) => string) => {
    const c = cases.get(id) ?? { n: 0, blocking: 0, orgs: new Set<string>(), text };
    c.n += r.n;
    c.blocking += r.blocking;
    c.orgs.add(r.org_id ?? '(none)');
    cases.set(id, c);
  };
  for (const r of rows) {
    const policy = rulesForOrg(rules, r.org_id).policies.find((p) => p.name === r.policy);
    if (!policy) {
      const gone = !anywhere.has(r.policy);
      add(`${r.policy}\u0000${r.stage}\u0000${gone}`, r, (accounts) =>
        gone
          ? `note: ${accounts} are in stage ${r.stage} of policy ${r.policy}, a policy the rules no longer have: no run moves them; reinstate them (\`suspend reinstate KEY --policy ${r.policy}\`) or put the policy back.`
          : `note: ${accounts} are in stage ${r.stage} of policy ${r.policy}, which the rules of their organization no longer apply (turned off or removed there): no run moves them; reinstate them (\`suspend reinstate KEY --policy ${r.policy}\`) or apply the policy again.`,
      );
      continue;
    }
    // A stage the ladder still names, wherever it now is, is judged there (see evaluate.ts stateOf).
    if (policy.stages.some((s) => s.name === r.stage)) continue;
    const there = policy.stages.find((s) => s.index === r.stage_index);
    add(
      `${r.policy}\u0000${r.stage}\u0000${there?.name ?? ''}`,
      r,
      (accounts) =>
        `note: ${accounts} are in stage ${r.stage} of policy ${r.policy}, which the rules no longer have at its place in the ladder (there now: ${there ? there.name : 'none'}); runs judge them by that place and keep the stored stage while it applies. Name the stage ${r.stage} again, or reinstate them.`,
    );
  }
  return [...cases.values()].map((c) => {
    const blocking = c.blocking > 0 ? ` (${c.blocking} with booking blocked)` : '';
    const orgs = [...c.orgs];
    const of = orgs.length <= 5 ? `organization(s) ${orgs.join(', ')}` : `${orgs.length} organizations`;
    return c.text(`${c.n} account(s) of ${of}${blocking}`);
  });
}
