import type { Knex } from 'knex';
import { UsageError } from '../errors';
import { accountStatus, type AccountStatus } from './status';
import { currentExclusion, type Exclusion } from './exclusions';
import { todayUtc } from '../rules/dates';
import { accountKey, customerTable } from './host';
import type { IsoDate, Reason, Rules, SourceMapping } from '../types';
import { readAccounts } from '../source/signals';
import { findExclusion } from '../evaluate/exclusions';
import { rulesForOrg } from '../engine/plan';

/**
 * `suspend status KEY`: everything an operator needs to answer "why is this customer paused?":
 * what the customer sees, each policy's stage with its reasons and evidence, the history (newest
 * first, manual reinstatements and reverts included) and any live exclusion.
 */

export interface PolicyState {
  policy: string;
  stage: string | null;
  stageIndex: number;
  blocksBooking: boolean;
  allowsLogin: boolean;
  message: string | null;
  since: IsoDate | null;
  episodeStartedOn: IsoDate | null;
  reinstatedOn: IsoDate | null;
  /** Added by the `tag` actions of the stages entered this episode. */
  tags: string[];
  reasons: Reason[];
  version: number;
  runId: string | null;
}

export interface HistoryEntry {
  id: string;
  runId: string | null;
  runKind: string | null;
  kind: string;
  policy: string;
  from: string | null;
  to: string | null;
  asOf: IsoDate;
  actor: string;
  at: Date;
  reasons: Reason[];
}

export interface AccountReport {
  key: string;
  /** False when the key has no row in the host's customer table (its state may still be recorded). */
  inHostTable: boolean;
  status: AccountStatus;
  policies: PolicyState[];
  history: HistoryEntry[];
  exclusion: Exclusion | null;
  /** An exclusion of the rules file (by key or flag) that spares the account today, if any. */
  rulesExclusion?: { reason: string; until: IsoDate | null } | null;
}

/**
 * The rules file's exclusion that spares `key` on `asOf` (a VIP flag, a key listed under its
 * organization), read as a run reads the account: support sees why a run leaves it alone.
 */
export async function rulesExclusion(
  knex: Knex,
  rules: Rules,
  key: string,
  asOf: IsoDate,
): Promise<{ reason: string; until: IsoDate | null } | null> {
  const { signals } = await readAccounts(knex, rules.source, asOf, { keys: [key] });
  const account = signals[0];
  if (!account) return null;
  const found = findExclusion(account, rulesForOrg(rules, account.orgId).exclusions, null, asOf);
  return found ? { reason: found.reason, until: found.until } : null;
}

export async function accountReport(
  knex: Knex,
  schema: string,
  mapping: SourceMapping,
  given: string,
): Promise<AccountReport> {
  const { key, found: inHostTable } = await accountKey(knex, mapping, given);
  const states = (await knex
    .withSchema(schema)
    .from('account_states')
    .select(
      'policy',
      'stage',
      'stage_index',
      'blocks_booking',
      'allows_login',
      'message',
      'reasons',
      'tags',
      'version',
    )
    .select(
      knex.raw("to_char(entered_on, 'YYYY-MM-DD') as entered_on"),
      knex.raw("to_char(episode_started_on, 'YYYY-MM-DD') as episode_started_on"),
      knex.raw("to_char(reinstated_on, 'YYYY-MM-DD') as reinstated_on"),
      knex.raw('run_id::text as run_id'),
    )
    .where({ customer_key: key })
    .orderBy('policy')) as {
    policy: string;
    stage: string | null;
    stage_index: number;
    blocks_booking: boolean;
    allows_login: boolean;
    message: string | null;
    reasons: Reason[];
    tags: string[];
    version: number;
    entered_on: string | null;
    episode_started_on: string | null;
    reinstated_on: string | null;
    run_id: string | null;
  }[];
  const history = (await knex
    .withSchema(schema)
    .from('history as h')
    .leftJoin('runs as r', 'r.id', 'h.run_id')
    .select(
      'h.kind',
      'h.policy',
      'h.from_stage',
      'h.to_stage',
      'h.actor',
      'h.at',
      'h.reasons',
      'r.kind as run_kind',
    )
    .select(
      knex.raw('h.id::text as id'),
      knex.raw('h.run_id::text as run_id'),
      knex.raw("to_char(h.as_of, 'YYYY-MM-DD') as as_of"),
    )
    .where('h.customer_key', key)
    .orderBy('h.id', 'desc')) as {
    id: string;
    run_id: string | null;
    run_kind: string | null;
    kind: string;
    policy: string;
    from_stage: string | null;
    to_stage: string | null;
    as_of: string;
    actor: string;
    at: Date;
    reasons: Reason[];
  }[];
  const exclusion = await currentExclusion(knex, schema, key, todayUtc());
  if (!inHostTable && states.length === 0 && history.length === 0 && !exclusion) {
    throw new UsageError(`There is no customer ${given} in table ${customerTable(mapping)}.`);
  }
  return {
    key,
    inHostTable,
    status: await accountStatus(knex, key, { schema }),
    policies: states.map((s) => ({
      policy: s.policy,
      stage: s.stage,
      stageIndex: s.stage_index,
      blocksBooking: s.blocks_booking,
      allowsLogin: s.allows_login,
      message: s.message,
      since: s.entered_on,
      episodeStartedOn: s.episode_started_on,
      reinstatedOn: s.reinstated_on,
      tags: s.tags,
      reasons: s.reasons,
      version: s.version,
      runId: s.run_id,
    })),
    history: history.map((h) => ({
      id: h.id,
      runId: h.run_id,
      runKind: h.run_kind,
      kind: h.kind,
      policy: h.policy,
      from: h.from_stage,
      to: h.to_stage,
      asOf: h.as_of,
      actor: h.actor,
      at: h.at,
      reasons: h.reasons,
    })),
    exclusion,
  };
}

const yesNo = (b: boolean) => (b ? 'yes' : 'no');

function evidence(e: Reason['evidence']): string {
  const parts = Object.entries(e).map(([k, v]) => `${k}=${v === null ? 'null' : String(v)}`);
  return parts.length > 0 ? ` [${parts.join(', ')}]` : '';
}

/** The operator's text view. */
export function renderAccountReport(r: AccountReport): string {
  const s = r.status;
  const lines: string[] = [];
  if (r.policies.length === 0 && r.history.length === 0) {
    lines.push(`customer ${r.key}: no state recorded: active`);
  } else {
    lines.push(
      `customer ${r.key}: ${s.state}${s.policy ? ` (policy ${s.policy} since ${s.since ?? '?'})` : ''}`,
    );
  }
  if (!r.inHostTable) lines.push('  (not in the host customer table any more)');
  lines.push(`  booking blocked: ${yesNo(s.blocksBooking)}`);
  lines.push(`  sign-in allowed: ${yesNo(s.allowsLogin)}`);
  lines.push(`  message: ${s.message ?? '(none)'}`);
  if (r.rulesExclusion) {
    const x = r.rulesExclusion;
    lines.push(`  excluded by the rules: ${x.reason}${x.until ? ` (until ${x.until})` : ' (no expiry)'}`);
  }
  if (r.exclusion) {
    const x = r.exclusion;
    lines.push(
      `  excluded: ${x.reason} (by ${x.createdBy} on ${x.createdAt.toISOString().slice(0, 10)}${x.until ? `, until ${x.until}` : ', no expiry'})`,
    );
  }
  if (r.policies.length > 0) {
    lines.push('', 'policies:');
    for (const p of r.policies) {
      const effects = p.stage
        ? ` (booking ${p.blocksBooking ? 'blocked' : 'allowed'}, sign-in ${p.allowsLogin ? 'allowed' : 'blocked'})`
        : '';
      const since = p.stage ? ` since ${p.since ?? '?'}` : p.since ? ` since ${p.since}` : '';
      const reinstated = p.reinstatedOn ? `, reinstated on ${p.reinstatedOn}` : '';
      const tags = p.tags.length > 0 ? `, tagged ${p.tags.join(', ')}` : '';
      lines.push(`  ${p.policy}: ${p.stage ?? 'clear'}${since}${effects}${reinstated}${tags}`);
      for (const reason of p.reasons) lines.push(`    - ${reason.text}${evidence(reason.evidence)}`);
    }
  }
  if (r.history.length > 0) {
    lines.push('', 'history (newest first):');
    for (const h of r.history) {
      const run = h.runId ? `run ${h.runId}${h.runKind ? ` ${h.runKind}` : ''}` : 'no run';
      lines.push(
        `  ${h.asOf}  ${h.policy}: ${h.kind} ${h.from ?? 'clear'} -> ${h.to ?? 'clear'}  by ${h.actor} (${run})`,
      );
      for (const reason of h.reasons) lines.push(`    - ${reason.text}`);
    }
  }
  return lines.join('\n');
}
