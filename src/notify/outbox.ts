import type { Knex } from 'knex';
import type { OutboxPayload } from '../types';
import { RESTORE_TIMEOUTS, noTimeouts } from '../db/connection';

/**
 * The outbox as `suspend notify` reads and settles it (`<schema>.outbox`). Events are claimed a
 * group (run and organization) at a time, in a short transaction that holds the group's lock, with
 * FOR UPDATE SKIP LOCKED, and stamped with the claimer and a lease; delivery
 * happens outside any transaction; each channel that went out is recorded at once, and the event is
 * settled (sent, retry later, failed) in its own statement afterwards. A process killed in between
 * loses nothing: its session, and so its claim, ends with it, and the next process resends only the
 * channels that were not recorded.
 *
 * Every statement takes "now" as a parameter (null: the database clock), so tests can step over
 * the backoff instead of waiting.
 */

/** Where an event goes: the organization's email digest, the customer's own mail, the webhook. */
export type Channel = 'digest' | 'customer' | 'webhook';

export interface OutboxEvent {
  id: string;
  runId: string | null;
  orgId: string | null;
  customerKey: string;
  event: string;
  payload: OutboxPayload;
  attempts: number;
  /** Channels already delivered, with when. */
  delivered: Partial<Record<Channel, string>>;
  createdAt: Date;
}

/** Advisory lock class held by a delivering session (run lock 0x5355, migrate 0x5356). */
export const NOTIFY_LOCK_CLASS = 0x5357;

/**
 * A group being claimed holds a transaction lock: two claims of one group never overlap, so each
 * (run, organization) digest goes out whole from one process. A claim that finds the group's lock
 * taken skips the group instead of waiting (the caller tries it again after its other groups).
 * The lock is one bigint, `hashtextextended(claimGroupKey(...), CLAIM_GROUP_LOCK_SEED)`: per schema
 * (run ids restart in each), and apart from the two-int locks of runs and claimers.
 */
export const CLAIM_GROUP_LOCK_SEED = 0x5358;

/** The text that keys a group's claim lock. */
export function claimGroupKey(schema: string, group: { runId: string | null; orgId: string | null }): string {
  return `${schema}/${group.runId ?? ''}/${group.orgId ?? ''}`;
}

const NOW = 'coalesce(:now::timestamptz, now())';

/** Claimers that are alive: sessions holding (NOTIFY_LOCK_CLASS, pid) in this database. */
const LIVE_CLAIMER_PIDS = `select l.objid::bigint as pid from pg_locks l
   where l.locktype = 'advisory' and l.granted and l.objsubid = 2 and l.classid = ${NOTIFY_LOCK_CLASS}
     and l.database = (select oid from pg_database where datname = current_database())`;

const LIVE_CLAIMERS = `
live as (
  ${LIVE_CLAIMER_PIDS}
)`;

/**
 * SQL that holds for an outbox row (alias `alias`) that no live process holds: not claimed, its lease
 * ran out, or its claimer's session is gone (a killed process keeps its claim's lease, not its lock).
 */
export function notHeldByLiveClaimer(alias: string): string {
  return `(${alias}.claimed_by is null or ${alias}.claimed_until < now()
    or ${alias}.claimed_by not in (${LIVE_CLAIMER_PIDS}))`;
}

/** A pending event is claimable when due and not held by a live claimer within its lease. */
const CLAIMABLE = `o.status = 'pending' and o.next_attempt_at <= ${NOW}
  and (o.claimed_by is null or o.claimed_until < ${NOW} or o.claimed_by not in (select pid from live))`;

type Db = Knex | Knex.Transaction;

function table(schema: string): string {
  return `${schema}.outbox`;
}

type PgConnection = { query(sql: string, params?: unknown[]): Promise<{ rows: Record<string, unknown>[] }> };

/** The session a delivering process claims through; its advisory lock says it is alive. */
export interface ClaimSession {
  /** Backend pid of the held session: the value of `claimed_by`. */
  owner: number;
  close(): Promise<void>;
}

export async function openClaimSession(knex: Knex): Promise<ClaimSession> {
  const conn = (await knex.client.acquireConnection()) as PgConnection;
  try {
    // The session idles while events are delivered; ended for that, it would give up its claims.
    const r = await conn.query(
      `select pid, pg_try_advisory_lock($1, pid) as ok, ${noTimeouts(false)}
         from (select pg_backend_pid() as pid) s`,
      [NOTIFY_LOCK_CLASS],
    );
    const row = r.rows[0] as { pid: number; ok: boolean } | undefined;
    if (!row?.ok) throw new Error('could not take the notify session lock');
    return {
      owner: row.pid,
      async close() {
        try {
          await conn.query('select pg_advisory_unlock($1, $2)', [NOTIFY_LOCK_CLASS, row.pid]);
          await conn.query(RESTORE_TIMEOUTS);
        } finally {
          await knex.client.releaseConnection(conn);
        }
      },
    };
  } catch (err) {
    await knex.client.releaseConnection(conn);
    throw err;
  }
}

export interface EventGroup {
  runId: string | null;
  orgId: string | null;
}

/** The (run, organization) pairs that have events due: one digest each. */
export async function dueGroups(knex: Db, schema: string, now: Date | null): Promise<EventGroup[]> {
  const r = await knex.raw<{ rows: { run_id: string | null; org_id: string | null }[] }>(
    `with ${LIVE_CLAIMERS}
     select g.run_id::text as run_id, g.org_id from (
       select distinct o.run_id, o.org_id from :outbox: o where ${CLAIMABLE}) g
      order by g.run_id nulls first, g.org_id nulls first`,
    { outbox: table(schema), now },
  );
  return r.rows.map((row) => ({ runId: row.run_id, orgId: row.org_id }));
}

interface EventRow {
  id: string;
  run_id: string | null;
  org_id: string | null;
  customer_key: string;
  event: string;
  payload: OutboxPayload;
  attempts: number;
  delivered: Partial<Record<Channel, string>>;
  created_at: Date;
}

/**
 * Claims up to `limit` due events of one group with ids above `afterId`, in id order; null when
 * another process is claiming the group at this moment (it takes them).
 */
export async function claimEvents(
  knex: Knex,
  schema: string,
  options: {
    group: EventGroup;
    owner: number;
    leaseMs: number;
    limit: number;
    afterId: string;
    now: Date | null;
  },
): Promise<OutboxEvent[] | null> {
  const r = await knex.transaction(async (trx) => {
    const locked = await trx.raw<{ rows: { ok: boolean }[] }>(
      'select pg_try_advisory_xact_lock(hashtextextended(?, ?)) as ok',
      [claimGroupKey(schema, options.group), CLAIM_GROUP_LOCK_SEED],
    );
    if (locked.rows[0]?.ok !== true) return null;
    return claimStatement(trx, schema, options);
  });
  return r === null ? null : toEvents(r.rows);
}

/** An outbox row `o` of the group `:runId`, `:orgId`, after `:afterId` in id order. */
const IN_GROUP_AFTER = `o.run_id is not distinct from :runId::bigint and o.org_id is not distinct from :orgId::text
          and o.id > :afterId::bigint`;

/** Whether any of a group's events after `afterId` can be claimed now. */
export async function moreDue(
  knex: Db,
  schema: string,
  options: { group: EventGroup; afterId: string; now: Date | null },
): Promise<boolean> {
  const r = await knex.raw<{ rows: { more: boolean }[] }>(
    `with ${LIVE_CLAIMERS}
     select exists (select 1 from :outbox: o where ${CLAIMABLE} and ${IN_GROUP_AFTER}) as more`,
    {
      outbox: table(schema),
      now: options.now,
      runId: options.group.runId,
      orgId: options.group.orgId,
      afterId: options.afterId,
    },
  );
  return r.rows[0]?.more === true;
}

function claimStatement(
  trx: Knex.Transaction,
  schema: string,
  options: Parameters<typeof claimEvents>[2],
): Promise<{ rows: EventRow[] }> {
  return trx.raw<{ rows: EventRow[] }>(
    `with ${LIVE_CLAIMERS},
     due as (
       select o.id, o.history_id from :outbox: o
        where ${CLAIMABLE} and ${IN_GROUP_AFTER}
        order by o.id
        limit :limit
        -- No other claim of this group runs (the group's lock): what is locked is being settled.
        for update of o skip locked
     )
     update :outbox: o
        set claimed_by = :owner, claimed_until = ${NOW} + :leaseMs * interval '1 millisecond'
       from due left join :history: h on h.id = due.history_id
      where o.id = due.id
     returning o.id::text as id, o.run_id::text as run_id, o.org_id, o.customer_key, o.event,
               -- A run's events keep their reasons once, in the history row they report.
               case when o.payload->'reasons' is null
                    then o.payload || jsonb_build_object('reasons', coalesce(h.reasons, '[]'::jsonb))
                    else o.payload end as payload,
               o.attempts, o.delivered, o.created_at`,
    {
      outbox: table(schema),
      history: `${schema}.history`,
      now: options.now,
      runId: options.group.runId,
      orgId: options.group.orgId,
      afterId: options.afterId,
      limit: options.limit,
      owner: options.owner,
      leaseMs: options.leaseMs,
    },
  );
}

function toEvents(rows: EventRow[]): OutboxEvent[] {
  return rows
    .map((row) => ({
      id: row.id,
      runId: row.run_id,
      orgId: row.org_id,
      customerKey: row.customer_key,
      event: row.event,
      payload: row.payload,
      attempts: row.attempts,
      delivered: row.delivered,
      createdAt: row.created_at,
    }))
    .sort((a, b) => Number(BigInt(a.id) - BigInt(b.id)));
}

/** Records that a channel went out for these events, and extends the claimer's lease on them. */
export async function recordDelivered(
  knex: Db,
  schema: string,
  options: { ids: string[]; channel: Channel; owner: number; leaseMs: number; now: Date | null },
): Promise<void> {
  if (options.ids.length === 0) return;
  await knex.raw(
    `update :outbox: set delivered = delivered || jsonb_build_object(:channel::text, ${NOW}),
            claimed_until = case when claimed_by = :owner then ${NOW} + :leaseMs * interval '1 millisecond'
                                 else claimed_until end
      where id = any(:ids::bigint[])`,
    { outbox: table(schema), ...options },
  );
}

/** Extends the lease of everything this claimer holds (called between slow deliveries). */
export async function renewLease(
  knex: Db,
  schema: string,
  options: { owner: number; leaseMs: number; now: Date | null },
): Promise<void> {
  await knex.raw(
    `update :outbox: set claimed_until = ${NOW} + :leaseMs * interval '1 millisecond'
      where claimed_by = :owner and status = 'pending'`,
    { outbox: table(schema), ...options },
  );
}

/**
 * What became of one claimed event: `sent` (every channel delivered), `retry` (a channel failed:
 * try again after the backoff, or give up after maxAttempts), `wait` (mail is not configured: stay
 * due, no attempt counted unless another channel was tried).
 */
export interface Settlement {
  id: string;
  outcome: 'sent' | 'retry' | 'wait';
  /** Whether any channel was tried this time (counts as an attempt). */
  tried: boolean;
  error: string | null;
}

export interface BackoffPolicy {
  maxAttempts: number;
  /** Delay after the first failed attempt; doubled after each further one. */
  baseSeconds: number;
  maxSeconds: number;
}

/** Settles claimed events in one statement; returns the resulting status per id. */
export async function settleEvents(
  knex: Db,
  schema: string,
  options: { settlements: Settlement[]; owner: number; backoff: BackoffPolicy; now: Date | null },
): Promise<Map<string, 'sent' | 'pending' | 'failed'>> {
  const out = new Map<string, 'sent' | 'pending' | 'failed'>();
  if (options.settlements.length === 0) return out;
  const r = await knex.raw<{ rows: { id: string; status: 'sent' | 'pending' | 'failed' }[] }>(
    `with input as (
       select * from jsonb_to_recordset(:rows::jsonb) as x(id bigint, outcome text, tried boolean, error text)
     )
     update :outbox: o set
       attempts = o.attempts + case when i.tried then 1 else 0 end,
       status = case when i.outcome = 'sent' then 'sent'
                     when i.outcome = 'retry' and o.attempts + 1 >= :maxAttempts then 'failed'
                     else 'pending' end,
       last_error = case when i.outcome = 'retry' then i.error else o.last_error end,
       next_attempt_at = case when i.outcome = 'retry'
                              then ${NOW} + least(:baseSeconds * power(2, o.attempts), :maxSeconds) * interval '1 second'
                              else o.next_attempt_at end,
       sent_at = case when i.outcome = 'sent' then ${NOW} else o.sent_at end,
       claimed_by = null,
       claimed_until = null
       from input i
      where o.id = i.id and o.claimed_by = :owner and o.status = 'pending'
     returning o.id::text as id, o.status`,
    {
      outbox: table(schema),
      rows: JSON.stringify(options.settlements),
      owner: options.owner,
      now: options.now,
      maxAttempts: options.backoff.maxAttempts,
      baseSeconds: options.backoff.baseSeconds,
      maxSeconds: options.backoff.maxSeconds,
    },
  );
  for (const row of r.rows) out.set(row.id, row.status);
  return out;
}

/** `--retry-failed`: failed events become due again with a fresh count; returns how many. */
export async function resetFailed(knex: Db, schema: string, now: Date | null): Promise<number> {
  const r = await knex.raw<{ rows: unknown[] }>(
    `update :outbox: set status = 'pending', attempts = 0, next_attempt_at = ${NOW},
            claimed_by = null, claimed_until = null
      where status = 'failed' returning id`,
    { outbox: table(schema), now },
  );
  return r.rows.length;
}

export interface FailedEvent {
  id: string;
  createdAt: Date;
  runId: string | null;
  orgId: string | null;
  customerKey: string;
  event: string;
  policy: string | null;
  stage: string | null;
  attempts: number;
  delivered: Channel[];
  lastError: string | null;
}

/** `--failed`: events that gave up, oldest first. */
export async function listFailed(knex: Db, schema: string): Promise<FailedEvent[]> {
  const rows = await knex
    .withSchema(schema)
    .from('outbox')
    .where({ status: 'failed' })
    // The table's id, not the text of it the select names id too (10 before 9).
    .orderBy('outbox.id')
    .select(
      knex.raw('id::text as id'),
      'created_at',
      knex.raw('run_id::text as run_id'),
      'org_id',
      'customer_key',
      'event',
      knex.raw("payload->>'policy' as policy"),
      knex.raw("coalesce(payload->>'to', payload->>'from') as stage"),
      'attempts',
      'delivered',
      'last_error',
    );
  return (rows as Record<string, unknown>[]).map((r) => ({
    id: r.id as string,
    createdAt: r.created_at as Date,
    runId: r.run_id as string | null,
    orgId: r.org_id as string | null,
    customerKey: r.customer_key as string,
    event: r.event as string,
    policy: r.policy as string | null,
    stage: r.stage as string | null,
    attempts: r.attempts as number,
    delivered: Object.keys((r.delivered as object | null) ?? {}) as Channel[],
    lastError: r.last_error as string | null,
  }));
}

export interface OutboxCounts {
  pending: number;
  failed: number;
  /** When the earliest pending event is due (ISO timestamp); null when none is pending. */
  nextAttemptAt?: string | null;
}

export async function outboxCounts(knex: Db, schema: string): Promise<OutboxCounts> {
  const r = await knex.raw<{ rows: { pending: string; failed: string; next: Date | null }[] }>(
    `select count(*) filter (where status = 'pending') as pending,
            count(*) filter (where status = 'failed') as failed,
            min(next_attempt_at) filter (where status = 'pending') as next
       from ??`,
    [table(schema)],
  );
  const row = r.rows[0];
  return {
    pending: Number(row?.pending ?? 0),
    failed: Number(row?.failed ?? 0),
    nextAttemptAt: row?.next ? new Date(row.next).toISOString() : null,
  };
}
