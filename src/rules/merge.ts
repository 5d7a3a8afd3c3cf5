import type {
  RawOrganization,
  RawPolicy,
  RawPolicyOverride,
  RawSettings,
  RawStage,
  RawStageOverride,
} from './schema';

/**
 * Organization overrides merged onto the defaults, still in the file's own shape (so stage effects
 * and default messages are derived once, from the merged stage):
 *
 * - a policy override changes the fields it gives; `enabled: false` turns the policy off;
 * - stages are matched by name and merged field by field; a `when` map merges key by key (the
 *   override changes or adds conditions); lists (actions, `all`, `any`, emails) replace;
 * - exclusions are added to the defaults' exclusions; settings and notifications fields replace.
 *
 * Names have been checked (`semantics.ts`): an override of an unknown policy or stage never gets here.
 */

export function mergeStage(stage: RawStage, override: RawStageOverride | undefined): RawStage {
  if (!override) return stage;
  const { name: _name, when, ...fields } = override;
  return { ...stage, ...fields, when: when ? { ...stage.when, ...when } : stage.when };
}

export function mergePolicy(policy: RawPolicy, override: RawPolicyOverride | undefined): RawPolicy {
  if (!override) return policy;
  const { stages: stageOverrides, ...fields } = override;
  const byName = new Map((stageOverrides ?? []).map((s) => [s.name, s]));
  return { ...policy, ...fields, stages: policy.stages.map((s) => mergeStage(s, byName.get(s.name))) };
}

export function mergePolicies(
  policies: Record<string, RawPolicy>,
  org: RawOrganization,
): Record<string, RawPolicy> {
  return Object.fromEntries(
    Object.entries(policies).map(([name, policy]) => [name, mergePolicy(policy, org.policies?.[name])]),
  );
}

export function mergeSettings(settings: RawSettings | undefined, org: RawOrganization): RawSettings {
  return { ...settings, ...org.settings };
}
