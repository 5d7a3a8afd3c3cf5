import { mergePolicy } from './merge';
import type { Problem, YamlPath } from './problems';
import type { RawCondition, RawRules, RawStage } from './schema';
import { parseDuration, parseMoney } from './values';

/**
 * Stages no account is ever in: an account is put in the most severe stage (the latest of its
 * ladder) whose `when` it meets, so a stage whose `when` asks at least as much as a later stage's
 * (`past_due_for: 30 days` before `past_due_for: 14 days`) is passed over by every account that
 * meets it. Valid rules, almost always a ladder written upside down: a note, never an error.
 *
 * Only what can be told for sure is said: the later stage's `when` is a map (with `all` lists) of
 * thresholds, each of which the earlier stage asks as strictly or more (`any` and `not` are not
 * compared), so a stage is never named that some account could be in.
 */
export function shadowedStages(raw: RawRules): Problem[] {
  const problems: Problem[] = [];
  const defaults = raw.policies ?? {};
  const organizations = Object.entries(raw.organizations ?? {});
  for (const [name, policy] of Object.entries(defaults)) {
    // Each organization's ladder: the defaults', with the `when`s its override changes.
    const ladders = organizations.map(([orgId, org]) => {
      const override = org.policies?.[name];
      const stages = mergePolicy(policy, override).stages;
      return { orgId, override, stages, shadowed: new Map(shadowedPairs(stages)) };
    });
    const shadowed = new Map(shadowedPairs(policy.stages));
    for (const [i, j] of shadowed) {
      // Said of the defaults only for the organizations whose ladder passes it over too.
      const enter = ladders.filter((l) => !l.shadowed.has(i)).map((l) => l.orgId);
      const except =
        enter.length === 0
          ? ''
          : ` (except for organization${enter.length === 1 ? '' : 's'} ${enter.join(', ')}, whose override changes this ladder)`;
      problems.push({
        path: ['policies', name, 'stages', i, 'when'],
        message: shadowMessage(policy.stages, i, j, except),
      });
    }
    for (const { orgId, override, stages, shadowed: own } of ladders)
      for (const [i, j] of own) {
        if (shadowed.has(i) || !override?.stages) continue;
        const at = override.stages.findIndex((s) => s.name === stages[i]!.name && s.when);
        const path: YamlPath =
          at >= 0
            ? ['organizations', orgId, 'policies', name, 'stages', at, 'when']
            : ['organizations', orgId, 'policies', name];
        problems.push({ path, message: `for organization ${orgId}, ${shadowMessage(stages, i, j, '')}` });
      }
  }
  return problems;
}

function shadowMessage(stages: RawStage[], i: number, j: number, except: string): string {
  return `stage "${stages[i]!.name}" is never entered${except}: an account that meets this also meets the when of the later stage "${stages[j]!.name}", and each account is put in the most severe stage it meets; order the ladder from the mildest stage to the most severe, or make "${stages[j]!.name}" ask more`;
}

/** [earlier, later] stage indexes where the earlier is never the stage decided (the first later one). */
function shadowedPairs(stages: RawStage[]): [number, number][] {
  const pairs: [number, number][] = [];
  stages.forEach((stage, i) => {
    const j = stages.findIndex((later, k) => k > i && implies(stage.when, later.when));
    if (j > i) pairs.push([i, j]);
  });
  return pairs;
}

type Threshold = [key: string, value: unknown];

/** The thresholds a condition ANDs together (through `all`); `any` and `not` are left out. */
function conjuncts(condition: RawCondition): { thresholds: Threshold[]; complete: boolean } {
  const thresholds: Threshold[] = [];
  let complete = true;
  for (const [key, value] of Object.entries(condition)) {
    if (key === 'any' || key === 'not') complete = false;
    else if (key === 'all')
      for (const c of value as RawCondition[]) {
        const inner = conjuncts(c);
        thresholds.push(...inner.thresholds);
        complete &&= inner.complete;
      }
    else thresholds.push([key, value]);
  }
  return { thresholds, complete };
}

/** Whether every account that meets `a` meets `b`, as far as can be told from their thresholds. */
function implies(a: RawCondition, b: RawCondition): boolean {
  const later = conjuncts(b);
  if (!later.complete || later.thresholds.length === 0) return false;
  const asked = conjuncts(a).thresholds;
  return later.thresholds.every(([key, value]) =>
    asked.some(([k, v]) => k === key && atLeastAsStrict(key, v, value)),
  );
}

const DURATION_KEYS = new Set([
  'inactive_for',
  'account_age_at_least',
  'past_due_for',
  'invoice_overdue_for',
]);
const MONEY_KEYS = new Set(['open_balance_over', 'overdue_balance_over']);

/** Whether threshold `a` of `key` holds only where `b` does (longer, larger, or the same value). */
function atLeastAsStrict(key: string, a: unknown, b: unknown): boolean {
  if (DURATION_KEYS.has(key)) {
    const [x, y] = [days(String(a)), days(String(b))];
    return x !== null && y !== null && x.min >= y.max;
  }
  if (MONEY_KEYS.has(key)) {
    // Compared as written (4 decimals hold any currency): one ladder has one currency.
    const [x, y] = [parseMoney(String(a), 4), parseMoney(String(b), 4)];
    return x !== null && y !== null && x >= y;
  }
  if (key === 'unpaid_invoices_at_least') return typeof a === 'number' && typeof b === 'number' && a >= b;
  return a === b; // has_active_subscription, flag
}

/** The fewest and most days a duration can span (calendar months and years vary). */
function days(text: string): { min: number; max: number } | null {
  const d = parseDuration(text);
  if (!d) return null;
  const span: Record<typeof d.unit, [number, number]> = {
    day: [1, 1],
    week: [7, 7],
    month: [28, 31],
    year: [365, 366],
  };
  const [min, max] = span[d.unit];
  return { min: d.amount * min, max: d.amount * max };
}
