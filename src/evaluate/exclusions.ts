import type { AccountEvaluation, ExclusionRule, IsoDate, Signals } from '../types';

/**
 * Exclusions spare an account from every policy. One applies while as-of ≤ its `until` (inclusive;
 * no `until`: forever); an expired one is ignored. A rules exclusion matches by key or by flag (when
 * it names both, both must match); the exclusions table names the account directly.
 */

export type Excluded = NonNullable<AccountEvaluation['excluded']>;

export function isLive(until: IsoDate | null | undefined, asOf: IsoDate): boolean {
  return until === null || until === undefined || asOf <= until;
}

export function ruleMatches(rule: ExclusionRule, signals: Signals): boolean {
  if (rule.key === undefined && rule.flag === undefined) return false;
  if (rule.key !== undefined && rule.key !== signals.key) return false;
  if (rule.flag !== undefined && !signals.flags.includes(rule.flag)) return false;
  return true;
}

/** The exclusion that applies on as-of: the first live matching rule, else a live table exclusion. */
export function findExclusion(
  signals: Signals,
  rules: ExclusionRule[],
  table: { reason: string; until: IsoDate | null } | null,
  asOf: IsoDate,
): Excluded | null {
  const rule = rules.find((r) => ruleMatches(r, signals) && isLive(r.until, asOf));
  if (rule) return { reason: rule.reason, until: rule.until ?? null, by: 'rules' };
  if (table && isLive(table.until, asOf))
    return { reason: table.reason, until: table.until, by: 'exclusion' };
  return null;
}
