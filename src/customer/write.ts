import type { Knex } from 'knex';
import type { IsoDate, OutboxPayload, Reason } from '../types';

/**
 * The one statement reinstate and revert write with: for a set of account+policy rows, replace the
 * state (guarded by the version read under the run lock), append a history row carrying the full
 * previous row (plus `host`: the host column values this change overwrote) and an outbox event.
 * The rows travel as one jsonb parameter; nothing is deleted.
 */

/** The state a row is set to: the columns of `<schema>.account_states` suspend owns. */
export interface StateValues {
  orgId: string | null;
  stage: string | null;
  stageIndex: number;
  blocksBooking: boolean;
  allowsLogin: boolean;
  message: string | null;
  reasons: Reason[];
  enteredOn: IsoDate | null;
  episodeStartedOn: IsoDate | null;
  reinstatedOn: IsoDate | null;
  tags: string[];
  hostBefore: Record<string, unknown> | null;
}

export interface StateRewrite {
  key: string;
  policy: string;
  kind: 'reinstate' | 'revert';
  state: StateValues;
  /** The version read under the lock; the update applies only if it is still current. */
  expectedVersion: number;
  /** Why, for the history row. */
  reasons: Reason[];
  /** Host column values this change overwrote (null: none). */
  hostOld: Record<string, string | null> | null;
  payload: OutboxPayload;
}

export interface RewriteContext {
  schema: string;
  runId: string;
  asOf: IsoDate;
  rulesHash: string;
  actor: string;
}

/** A stored account_states row as `to_jsonb` gives it (and as history.previous_state keeps it). */
export interface StoredRow {
  customer_key: string;
  policy: string;
  org_id: string | null;
  stage: string | null;
  stage_index: number;
  blocks_booking: boolean;
  allows_login: boolean;
  message: string | null;
  reasons: Reason[];
  entered_on: IsoDate | null;
  episode_started_on: IsoDate | null;
  reinstated_on: IsoDate | null;
  tags: string[];
  host_before: Record<string, unknown> | null;
  run_id: string | number | null;
  version: number;
}

export function valuesOf(row: StoredRow): StateValues {
  return {
    orgId: row.org_id,
    stage: row.stage,
    stageIndex: row.stage_index,
    blocksBooking: row.blocks_booking,
    allowsLogin: row.allows_login,
    message: row.message,
    reasons: row.reasons ?? [],
    enteredOn: row.entered_on,
    episodeStartedOn: row.episode_started_on,
    reinstatedOn: row.reinstated_on,
    tags: row.tags ?? [],
    hostBefore: row.host_before,
  };
}

const REWRITE_SQL = `
with input as (
  select * from jsonb_to_recordset(:rows::jsonb) as x(
    customer_key text, policy text, kind text, org_id text, stage text, stage_index int,
    blocks_booking boolean, allows_login boolean, message text, reasons jsonb, entered_on date,
    episode_started_on date, reinstated_on date, tags text[], host_before jsonb, expected_version int,
    history_reasons jsonb, host_old jsonb, payload jsonb)
),
previous as (
  select s.* from :states: s join input i on s.customer_key = i.customer_key and s.policy = i.policy
),
updated as (
  update :states: s set
         org_id = i.org_id, stage = i.stage, stage_index = i.stage_index,
         blocks_booking = i.blocks_booking, allows_login = i.allows_login, message = i.message,
         reasons = i.reasons, entered_on = i.entered_on, episode_started_on = i.episode_started_on,
         reinstated_on = i.reinstated_on, tags = i.tags, host_before = i.host_before,
         run_id = :runId, version = s.version + 1, updated_at = now()
    from input i
   where s.customer_key = i.customer_key and s.policy = i.policy and s.version = i.expected_version
  returning s.customer_key, s.policy
),
history_rows as (
  insert into :history: (run_id, customer_key, org_id, policy, kind, from_stage, to_stage, from_index,
                         to_index, reasons, previous_state, rules_hash, as_of, actor)
  select :runId, i.customer_key, i.org_id, i.policy, i.kind, p.stage, i.stage, p.stage_index, i.stage_index,
         i.history_reasons, to_jsonb(p) || jsonb_build_object('host', i.host_old), :rulesHash, :asOf::date, :actor
    from input i
    join updated u on u.customer_key = i.customer_key and u.policy = i.policy
    join previous p on p.customer_key = i.customer_key and p.policy = i.policy
  returning id, customer_key, policy
),
outbox_rows as (
  insert into :outbox: (run_id, history_id, org_id, customer_key, event, payload)
  select :runId, h.id, i.org_id, i.customer_key, i.kind, i.payload
    from history_rows h join input i on i.customer_key = h.customer_key and i.policy = h.policy
  returning 1
)
select customer_key as key, policy, id::text as history_id from history_rows`;

/**
 * Applies the rewrites in one statement. Throws (so the caller's transaction rolls back) when a row
 * changed since it was read: callers hold the run lock and read with FOR UPDATE, so this means a
 * writer that ignores the lock.
 */
export async function rewriteStates(
  trx: Knex.Transaction,
  ctx: RewriteContext,
  rewrites: StateRewrite[],
): Promise<{ key: string; policy: string; historyId: string }[]> {
  if (rewrites.length === 0) return [];
  const rows = rewrites.map((r) => ({
    customer_key: r.key,
    policy: r.policy,
    kind: r.kind,
    org_id: r.state.orgId,
    stage: r.state.stage,
    stage_index: r.state.stageIndex,
    blocks_booking: r.state.blocksBooking,
    allows_login: r.state.allowsLogin,
    message: r.state.message,
    reasons: r.state.reasons,
    entered_on: r.state.enteredOn,
    episode_started_on: r.state.episodeStartedOn,
    reinstated_on: r.state.reinstatedOn,
    tags: r.state.tags,
    host_before: r.state.hostBefore,
    expected_version: r.expectedVersion,
    history_reasons: r.reasons,
    host_old: r.hostOld,
    payload: r.payload,
  }));
  const result = (await trx.raw(REWRITE_SQL, {
    rows: JSON.stringify(rows),
    states: `${ctx.schema}.account_states`,
    history: `${ctx.schema}.history`,
    outbox: `${ctx.schema}.outbox`,
    runId: ctx.runId,
    asOf: ctx.asOf,
    rulesHash: ctx.rulesHash,
    actor: ctx.actor,
  })) as { rows: { key: string; policy: string; history_id: string }[] };
  if (result.rows.length !== rewrites.length) {
    throw new Error(
      `${rewrites.length - result.rows.length} account state(s) changed while being rewritten; nothing was written`,
    );
  }
  return result.rows.map((r) => ({ key: r.key, policy: r.policy, historyId: r.history_id }));
}

/** Reads the current rows of some keys (optionally locked), dates as text. */
export async function readStoredRows(
  knex: Knex | Knex.Transaction,
  schema: string,
  keys: string[],
  options: { lock?: boolean } = {},
): Promise<StoredRow[]> {
  const result = await knex.raw<{ rows: { row: StoredRow }[] }>(
    `select to_jsonb(s) as row from ?? s where s.customer_key = any(?::text[])
      order by s.customer_key, s.policy${options.lock ? ' for update' : ''}`,
    [`${schema}.account_states`, keys],
  );
  return result.rows.map((r) => r.row);
}
