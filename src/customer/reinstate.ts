import type { Knex } from 'knex';
import { requireMigrated } from '../db/migrate';
import { UsageError, errorMessage } from '../errors';
import { acquireRunLock, confirmLockHeld } from '../engine/lock';
import { finishRun, startRun, type RunRecord } from '../engine/ledger';
import { markHolds, rulesForOrg } from '../engine/plan';
import { closest } from '../rules/problems';
import { readAccounts } from '../source/signals';
import { evaluatePolicy } from '../evaluate/evaluate';
import { findExclusion } from '../evaluate/exclusions';
import { accountKey, customerContacts, customerTable, hostColumnValues, restoreHostColumns } from './host';
import { reinstateHostValues } from './host-plan';
import { currentExclusion, type Exclusion } from './exclusions';
import { readStoredRows, rewriteStates, valuesOf, type StateRewrite, type StoredRow } from './write';
import type { AccountHold, IsoDate, Reason, Rules } from '../types';
import { addDays, todayUtc } from '../rules/dates';

/**
 * `suspend reinstate KEY`: a person clears an account's stage(s) by hand. The stage is cleared,
 * `reinstated_on` set to the as-of day (the policy's clocks restart there, so the next sweep does not
 * suspend again at once), the mapped host columns the stage had set are put back, and a history row
 * (kind 'reinstate', with the prior row) and an outbox event are written, all in one transaction.
 * It is a run in the ledger (kind 'reinstate') and takes the run lock, so it never interleaves with
 * a sweep's page.
 */

export interface ReinstateOptions {
  key: string;
  reason: string;
  actor: string;
  /** Only these policies; null: every policy the account is in. */
  policies: string[] | null;
  asOf: IsoDate;
  /** --as-of was given: the day is the user's, refused when it cannot be (else it may move later). */
  asOfGiven?: boolean;
  /** Wait for a running sweep instead of failing with exit code 3. */
  wait: boolean;
  onLog?: (message: string) => void; /** Ctrl-C while waiting for the lock (see acquireRunLock). */
  signal?: AbortSignal;
  onLocked?: () => void;
}

export interface ReinstatedPolicy {
  policy: string;
  from: string;
  historyId: string;
}

export interface ReinstateResult {
  key: string;
  /** Null when there was nothing to reinstate (no run is recorded then). */
  run: RunRecord | null;
  reinstated: ReinstatedPolicy[];
  /** Host columns put back: column → value written. */
  hostRestored: Record<string, string | null>;
  /**
   * Host columns not put back: they no longer hold the value the rules' stage sets (the host wrote
   * another since, or the rules' set value changed after suspend wrote it), so they were left.
   */
  hostKept: { column: string; holds: string | null; sets: string | null; before: string | null }[];
  /** The account's live exclusion, if any: reinstating by hand is allowed, but worth saying. */
  exclusion: Exclusion | null;
  /** Other policies' stages that still block booking or sign-in after it (null: none do). */
  stillHeld: AccountHold | null;
}

function reinstateReason(options: ReinstateOptions): Reason {
  return {
    condition: 'reinstate',
    text: `reinstated by hand by ${options.actor} on ${options.asOf}: ${options.reason}`,
    evidence: { actor: options.actor, reason: options.reason, as_of: options.asOf },
  };
}

/** The account's current stages to clear, or a sentence saying why there are none. */
function chooseRows(rows: StoredRow[], options: ReinstateOptions, rules: Rules): StoredRow[] {
  const current = rows.filter((r) => r.stage !== null);
  if (!options.policies) return current;
  for (const policy of options.policies) {
    if (!current.some((r) => r.policy === policy)) {
      const inStages = current.map((r) => `${r.policy} (${r.stage})`).join(', ') || 'none';
      // A policy the rules no longer have may still hold stored states, so only one neither has is a typo.
      const known = [
        ...new Set(
          [rules.defaults, ...Object.values(rules.organizations)].flatMap((r) =>
            r.policies.map((p) => p.name),
          ),
        ),
      ];
      const guess = known.includes(policy) ? null : closest(policy, known);
      const unknown = known.includes(policy)
        ? ''
        : ` (the rules have no policy ${policy}${guess ? `; did you mean ${guess}?` : ''})`;
      throw new UsageError(
        `--policy ${policy}: account ${options.key} is not in a stage of policy ${policy}${unknown}; its current stages: ${inStages}.`,
      );
    }
  }
  return current.filter((r) => options.policies?.includes(r.policy));
}

/**
 * The day a reinstatement is dated: the policy's clocks restart there. Not before a stage it clears
 * was entered (the next sweep would suspend again at once), nor after tomorrow (UTC, so any time
 * zone's today passes) unless a stage was entered later still, by a run of an organization whose
 * day is ahead (the account would be shielded until a day that has not come). Without --as-of:
 * today, or that stage's day.
 */
function reinstatementDay(options: ReinstateOptions, rows: StoredRow[]): IsoDate {
  const entered = rows.flatMap((r) => (r.entered_on === null ? [] : [r.entered_on])).sort();
  const latest = entered[entered.length - 1] ?? null;
  if (!options.asOfGiven) return latest !== null && latest > options.asOf ? latest : options.asOf;
  const later = rows
    .filter((r) => r.entered_on !== null && r.entered_on > options.asOf)
    .map((r) => `${r.policy} (${r.stage}) on ${r.entered_on}`);
  if (later.length > 0) {
    throw new UsageError(
      `--as-of ${options.asOf}: account ${options.key} entered ${later.join(', ')}; a reinstatement cannot be dated before that (leave --as-of out for the first day it can be).`,
    );
  }
  const tomorrow = addDays(todayUtc(), 1);
  const last = latest !== null && latest > tomorrow ? latest : tomorrow;
  if (options.asOf > last) {
    throw new UsageError(
      `--as-of ${options.asOf}: a reinstatement cannot be dated after ${last}; its clocks would not start until then (leave --as-of out for today).`,
    );
  }
  return options.asOf;
}

export async function reinstateAccount(
  knex: Knex,
  rules: Rules,
  options: ReinstateOptions,
): Promise<ReinstateResult> {
  const schema = rules.settings.schema;
  if (options.reason.trim() === '') throw new UsageError('--reason: say why the account is reinstated.');
  await requireMigrated(knex, schema);
  const given = options.key;
  const account = await accountKey(knex, rules.source, given);
  options = { ...options, key: account.key };
  const lock = await acquireRunLock(knex, schema, {
    wait: options.wait,
    description: `suspend reinstate ${options.key} by ${options.actor} (pid ${process.pid})`,
    onWait: options.onLog,
    signal: options.signal,
    onLocked: options.onLocked,
  });
  try {
    const rows = await readStoredRows(knex, schema, [options.key]);
    const exclusion = await currentExclusion(knex, schema, options.key, todayUtc());
    if (rows.length === 0 && !account.found) {
      throw new UsageError(`There is no customer ${given} in table ${customerTable(rules.source)}.`);
    }
    const chosen = chooseRows(rows, options, rules);
    if (chosen.length === 0) {
      return {
        key: options.key,
        run: null,
        reinstated: [],
        hostRestored: {},
        hostKept: [],
        exclusion,
        stillHeld: null,
      };
    }
    options = { ...options, asOf: reinstatementDay(options, chosen) };
    const run = await startRun(knex, schema, {
      kind: 'reinstate',
      asOf: options.asOf,
      rulesHash: rules.hash,
      rulesFile: rules.file,
      options: { key: options.key, policies: options.policies, reason: options.reason },
      startedBy: options.actor,
    });
    try {
      const result = await knex.transaction(async (trx) => {
        const written = await writeReinstatement(trx, rules, options, run);
        await confirmLockHeld(trx, lock.proof);
        return written;
      });
      await finishRun(knex, schema, run.id, {
        status: 'succeeded',
        counts: {
          changes: result.reinstated.length,
          transitions: { reinstate: result.reinstated.length },
          hostColumns: Object.keys(result.hostRestored).length,
        },
      });
      return { ...result, key: options.key, run, exclusion };
    } catch (err) {
      await finishRun(knex, schema, run.id, { status: 'failed', error: errorMessage(err) }).catch(
        () => undefined,
      );
      throw err;
    }
  } finally {
    await lock.release();
  }
}

async function writeReinstatement(
  trx: Knex.Transaction,
  rules: Rules,
  options: ReinstateOptions,
  run: RunRecord,
): Promise<Pick<ReinstateResult, 'reinstated' | 'hostRestored' | 'hostKept' | 'stillHeld'>> {
  const schema = rules.settings.schema;
  const rows = await readStoredRows(trx, schema, [options.key], { lock: true });
  const chosen = chooseRows(rows, options, rules);
  const orgId = chosen[0]?.org_id ?? null;
  const policies = rulesForOrg(rules, orgId).policies;
  const host = reinstateHostValues(options.key, policies, rows, new Set(chosen.map((r) => r.policy)));
  const old = await restoreHostColumns(trx, rules.source, host);
  const hostOld = old.get(options.key) ?? null;
  const contact = (await customerContacts(trx, rules.source, [options.key])).get(options.key);
  const reason = reinstateReason(options);
  // Each reinstated policy's event says what still holds the account under the others.
  const holds = chosen.map((row) => ({
    policy: row.policy,
    to: null,
    blocksBooking: false,
    allowsLogin: true,
    account: undefined as AccountHold | undefined,
  }));
  markHolds(policies, new Map(rows.map((r) => [r.policy, { stage: r.stage }])), holds);
  const rewrites: StateRewrite[] = chosen.map((row, i) => ({
    key: options.key,
    policy: row.policy,
    kind: 'reinstate',
    state: {
      ...valuesOf(row),
      stage: null,
      stageIndex: -1,
      blocksBooking: false,
      allowsLogin: true,
      message: null,
      reasons: [reason],
      enteredOn: options.asOf,
      episodeStartedOn: null,
      reinstatedOn: options.asOf,
      // The episode ends here, and with it the tags its stages added.
      tags: [],
    },
    expectedVersion: row.version,
    reasons: [reason],
    hostOld,
    payload: {
      event: 'reinstate',
      runId: run.id,
      asOf: options.asOf,
      orgId: row.org_id,
      customer: { key: options.key, name: contact?.name ?? null, email: contact?.email ?? null },
      policy: row.policy,
      from: row.stage,
      to: null,
      blocksBooking: false,
      allowsLogin: true,
      message: null,
      reasons: [reason],
      actions: [],
      actor: options.actor,
      ...(holds[i]!.account ? { account: holds[i]!.account } : {}),
    },
  }));
  const written = await rewriteStates(
    trx,
    { schema, runId: run.id, asOf: options.asOf, rulesHash: rules.hash, actor: options.actor },
    rewrites,
  );
  const hostRestored: Record<string, string | null> = {};
  for (const h of host) if (hostOld && h.column in hostOld) hostRestored[h.column] = h.value;
  // A give-back is written only over the value a stage sets: one the column no longer holds is left,
  // and said, for suspend cannot tell whether it wrote what is there.
  const left = host.filter((h) => h.expected !== undefined && !(hostOld && h.column in hostOld));
  const heldNow = await hostColumnValues(
    trx,
    rules.source,
    options.key,
    left.map((h) => h.column),
  );
  const hostKept = left.map((h) => ({
    column: h.column,
    holds: heldNow[h.column] ?? null,
    sets: h.expected ?? null,
    before: h.value,
  }));
  return {
    reinstated: written.map((w) => ({
      policy: w.policy,
      from: chosen.find((r) => r.policy === w.policy)?.stage ?? '',
      historyId: w.historyId,
    })),
    hostRestored,
    hostKept,
    stillHeld: holds.find((h) => h.account)?.account ?? null,
  };
}

/** A stage the next run would put a reinstated account back in, and why. */
export interface StageAgain {
  policy: string;
  stage: string;
  reasons: string[];
}

/**
 * The stages the next run would put an account back in under `policies`, just after a reinstatement
 * as of `asOf`: the reinstatement restarts a policy's clocks, not its balances, counts or flags, so a
 * stage that asks only for those (`overdue_balance_over` alone) holds again at once. An exclusion
 * keeps any run from entering a stage, so an excluded account has none.
 */
export async function stagesAgain(
  knex: Knex,
  rules: Rules,
  key: string,
  asOf: IsoDate,
  policies: string[],
): Promise<StageAgain[]> {
  const schema = rules.settings.schema;
  const tables = { schema, states: true, exclusions: true, keyNumbers: false };
  const { signals, state } = await readAccounts(knex, rules.source, asOf, { keys: [key], state: tables });
  const account = signals[0];
  if (!account) return [];
  const effective = rulesForOrg(rules, account.orgId);
  if (findExclusion(account, effective.exclusions, state.exclusions.get(account.key) ?? null, asOf))
    return [];
  const stored = state.states.get(account.key) ?? new Map();
  return effective.policies.flatMap((policy) => {
    if (!policies.includes(policy.name)) return [];
    const decision = evaluatePolicy(account, policy, asOf, stored.get(policy.name), effective.settings);
    return decision.stage
      ? [{ policy: policy.name, stage: decision.stage.name, reasons: decision.reasons.map((r) => r.text) }]
      : [];
  });
}
