import type { Knex } from 'knex';
import { rulesForOrg, stageOf } from '../engine/plan';
import { winningHostValues } from '../evaluate/host-values';
import { hostValueText } from '../customer/host';
import type { Rules, Stage } from '../types';
import { qualified, regclassText } from './signals';

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
  if (!(await rulesChanged(knex, rules, options))) return [];
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

/**
 * Whether what the rules say of the stored states is worth reading them all for: always in a dry
 * run; in a real run only when the rules differ from those of the last run that succeeded (which
 * said it already).
 */
async function rulesChanged(knex: Knex, rules: Rules, options: { dryRun: boolean }): Promise<boolean> {
  if (options.dryRun) return true;
  const schema = rules.settings.schema;
  const exists = await knex.raw<{ rows: { t: string | null }[] }>('select to_regclass(?) as t', [
    regclassText(`${schema}.runs`),
  ]);
  if (!exists.rows[0]?.t) return true;
  const last = await knex.raw<{ rows: { rules_hash: string }[] }>(
    `select rules_hash from ?? where kind in ('backfill', 'sweep') and status = 'succeeded' order by id desc limit 1`,
    [`${schema}.runs`],
  );
  return last.rows[0]?.rules_hash !== rules.hash;
}

/**
 * Accounts whose host column (e.g. customers.status) holds another value than the one their current
 * stages set by the rules: the host wrote it since, or a stage's `set` value changed after suspend
 * wrote the old one. A clear gives a column back only over the value the rules set, so these keep
 * theirs when they clear, and a reinstatement says so for its one account: this says it for all,
 * grouped by column, value held and value set. Asked when staleStageNotes is (a dry run, or a run
 * whose rules changed); one query per column some stage sets, over the accounts in a stage.
 */
export async function hostValueNotes(
  knex: Knex,
  rules: Rules,
  options: { dryRun: boolean },
): Promise<string[]> {
  const m = rules.source;
  const schema = rules.settings.schema;
  if (m.view || !(await rulesChanged(knex, rules, options))) return [];
  const exists = await knex.raw<{ rows: { t: string | null }[] }>('select to_regclass(?) as t', [
    regclassText(`${schema}.account_states`),
  ]);
  if (!exists.rows[0]?.t) return [];
  const sets = (stage: Stage | null, column: string) =>
    stage?.actions.some((a) => a.type === 'set' && Object.hasOwn(a.columns, column)) ?? false;
  const columns = [
    ...new Set(
      [rules.defaults, ...Object.values(rules.organizations)].flatMap((r) =>
        r.policies.flatMap((p) =>
          p.stages.flatMap((s) => s.actions.flatMap((a) => (a.type === 'set' ? Object.keys(a.columns) : []))),
        ),
      ),
    ),
  ];
  const c = m.customers;
  const notes: string[] = [];
  for (const column of columns) {
    const { rows } = await knex.raw<{
      rows: { org_id: string | null; stages: string; holds: string | null; n: number }[];
    }>(
      `select org_id, stages::text as stages, holds, count(*)::int as n
         from (select min(s.org_id) as org_id, json_agg(json_build_array(s.policy, s.stage) order by s.policy) as stages,
                      min(c.??::text) as holds
                 from ?? s join ?? c on c.??::text = s.customer_key
                where s.stage is not null
                group by s.customer_key) x
        group by org_id, stages::text, holds`,
      [column, `${schema}.account_states`, qualified(m, c.table), c.key],
    );
    const cases = new Map<string, { holds: string | null; sets: string | null; n: number }>();
    for (const r of rows) {
      const policies = rulesForOrg(rules, r.org_id).policies;
      const stages = (JSON.parse(r.stages) as [string, string][]).map(([policy, stage]) =>
        stageOf(policies, policy, stage),
      );
      // Only accounts whose stages the rules describe and one of which sets this column.
      if (stages.some((s) => s === null) || !stages.some((s) => sets(s, column))) continue;
      const won = winningHostValues(stages, policies).get(column);
      const value = won ? hostValueText(won.value) : null;
      if (!won || value === r.holds) continue;
      const id = `${r.holds}\u0000${value}`;
      const seen = cases.get(id) ?? { holds: r.holds, sets: value, n: 0 };
      seen.n += r.n;
      cases.set(id, seen);
    }
    const text = (v: string | null) => (v === null ? 'NULL' : JSON.stringify(v));
    for (const k of cases.values()) {
      notes.push(
        `note: ${k.n} account(s) in a stage hold ${column} = ${text(k.holds)}, not the ${text(k.sets)} their stages now set (the host wrote it since, or a stage's set value changed after suspend wrote ${text(k.holds)}): a column is given back only over the value the rules set, so when they clear, ${column} stays ${text(k.holds)}. If suspend wrote it, set ${text(k.holds)} in the rules again until they clear, or put ${column} to ${text(k.sets)} for them.`,
      );
    }
  }
  return notes;
}
