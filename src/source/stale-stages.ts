import type { Knex } from 'knex';
import type { Rules } from '../types';
import { regclassText } from './signals';

/**
 * Stored states the rules no longer describe: a policy removed from the file, or a stage renamed,
 * removed or moved in its ladder. Runs match a stored state to its ladder by position, so such an
 * account keeps the stored stage (its name, message and flags: maybe booking blocked) while the
 * stage now at that position applies, and no run says why. Each group is one note for the run's log.
 */
export async function staleStageNotes(knex: Knex, rules: Rules): Promise<string[]> {
  const table = `${rules.settings.schema}.account_states`;
  const exists = await knex.raw<{ rows: { t: string | null }[] }>('select to_regclass(?) as t', [
    regclassText(table),
  ]);
  if (!exists.rows[0]?.t) return [];
  const { rows } = await knex.raw<{
    rows: { policy: string; stage: string; stage_index: number; n: number; blocking: number }[];
  }>(
    `select policy, stage, stage_index, count(*)::int as n, count(*) filter (where blocks_booking)::int as blocking
       from ?? where stage is not null group by 1, 2, 3 order by 1, 3, 2`,
    [table],
  );
  // Organization overrides change a stage's conditions and actions, never its name or place.
  const ladders = new Map(rules.defaults.policies.map((p) => [p.name, p.stages]));
  for (const org of Object.values(rules.organizations))
    for (const p of org.policies) if (!ladders.has(p.name)) ladders.set(p.name, p.stages);
  const notes: string[] = [];
  for (const r of rows) {
    const ladder = ladders.get(r.policy);
    const blocking = r.blocking > 0 ? ` (${r.blocking} with booking blocked)` : '';
    if (!ladder) {
      notes.push(
        `note: ${r.n} account(s) are in stage ${r.stage} of policy ${r.policy}${blocking}, a policy the rules no longer have: no run moves them; reinstate them (\`suspend reinstate KEY --policy ${r.policy}\`) or put the policy back.`,
      );
      continue;
    }
    const there = ladder.find((s) => s.index === r.stage_index);
    if (there?.name === r.stage) continue;
    notes.push(
      `note: ${r.n} account(s) of policy ${r.policy} are in stage ${r.stage}${blocking}, which the rules no longer have at its place in the ladder (there now: ${there ? there.name : 'none'}); runs judge them by that place and keep the stored stage while it applies. Name the stage ${r.stage} again, or reinstate them.`,
    );
  }
  return notes;
}
