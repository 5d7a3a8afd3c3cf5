import type { Knex } from 'knex';
import { SuspendError, ExitCode, UsageError } from '../errors';
import type { IsoDate } from '../types';

/**
 * Operator exclusions (`<schema>.exclusions`): no run pauses, suspends or escalates an excluded
 * account (a stage it is in still clears when its reason does, see evaluate.ts). One
 * live exclusion per account (a partial unique index); removing one sets removed_at and removed_by,
 * nothing is deleted, so the table is also the record of who spared whom and why.
 */

export interface Exclusion {
  id: string;
  key: string;
  reason: string;
  /** Last day it applies (inclusive); null: no expiry. */
  until: IsoDate | null;
  createdBy: string;
  createdAt: Date;
  removedAt: Date | null;
  removedBy: string | null;
}

interface ExclusionRow {
  id: string;
  customer_key: string;
  reason: string;
  until: string | null;
  created_by: string;
  created_at: Date;
  removed_at: Date | null;
  removed_by: string | null;
}

function toExclusion(r: ExclusionRow): Exclusion {
  return {
    id: String(r.id),
    key: r.customer_key,
    reason: r.reason,
    until: r.until,
    createdBy: r.created_by,
    createdAt: r.created_at,
    removedAt: r.removed_at,
    removedBy: r.removed_by,
  };
}

function exclusionQuery(knex: Knex | Knex.Transaction, schema: string) {
  return knex
    .withSchema(schema)
    .from('exclusions')
    .select('id', 'customer_key', 'reason', 'created_by', 'created_at', 'removed_at', 'removed_by')
    .select(knex.raw("to_char(until, 'YYYY-MM-DD') as until"));
}

/**
 * The exclusions that apply on `asOf` to a page of keys (not removed, `until` not passed). The engine
 * calls this once per page; one query with an array parameter.
 */
export async function activeExclusions(
  knex: Knex | Knex.Transaction,
  schema: string,
  keys: string[],
  asOf: IsoDate,
): Promise<Map<string, { reason: string; until: IsoDate | null }>> {
  if (keys.length === 0) return new Map();
  const rows = (await exclusionQuery(knex, schema)
    .whereRaw('customer_key = any(?::text[])', [keys])
    .whereNull('removed_at')
    .where((q) => q.whereNull('until').orWhere('until', '>=', asOf))) as ExclusionRow[];
  return new Map(rows.map((r) => [r.customer_key, { reason: r.reason, until: r.until }]));
}

/**
 * The exclusion of one account not removed, or null; with `today`, only while it applies (an
 * exclusion whose `until` has passed spares nobody, though its row is not removed).
 */
export async function currentExclusion(
  knex: Knex | Knex.Transaction,
  schema: string,
  key: string,
  today?: IsoDate,
): Promise<Exclusion | null> {
  const row = (await exclusionQuery(knex, schema)
    .where({ customer_key: key })
    .whereNull('removed_at')
    .first()) as ExclusionRow | undefined;
  if (!row || (today !== undefined && row.until !== null && row.until < today)) return null;
  return toExclusion(row);
}

export async function addExclusion(
  knex: Knex,
  schema: string,
  input: { key: string; reason: string; until: IsoDate | null; by: string; today: IsoDate },
): Promise<Exclusion & { replaced?: Exclusion }> {
  if (input.reason.trim() === '') throw new UsageError('--reason: say why the account is excluded.');
  if (input.until !== null && input.until < input.today) {
    throw new UsageError(
      `--until ${input.until} is in the past (today is ${input.today}); give a later day or none.`,
    );
  }
  return knex.transaction(async (trx) => {
    const existing = await currentExclusion(trx, schema, input.key);
    // One whose last day has passed is over: it ends now, and the new one takes its place.
    let replaced: Exclusion | undefined;
    if (existing?.until && existing.until < input.today) {
      await trx
        .withSchema(schema)
        .table('exclusions')
        .where({ id: existing.id })
        .update({ removed_at: trx.fn.now(), removed_by: input.by });
      replaced = existing;
    } else if (existing) {
      throw new SuspendError(
        `Account ${input.key} is already excluded (${existing.reason}, by ${existing.createdBy}${existing.until ? `, until ${existing.until}` : ''}); remove it first with \`suspend exclusions remove ${input.key}\`.`,
        { exitCode: ExitCode.usage },
      );
    }
    const [row] = (await trx
      .withSchema(schema)
      .insert({ customer_key: input.key, reason: input.reason, until: input.until, created_by: input.by })
      .into('exclusions')
      .returning('id')) as { id: string }[];
    const created = await exclusionQuery(trx, schema).where({ id: row?.id }).first();
    return { ...toExclusion(created as ExclusionRow), ...(replaced ? { replaced } : {}) };
  });
}

export async function listExclusions(
  knex: Knex,
  schema: string,
  /** `all`: every exclusion ever made; else those that apply on `today`. */
  options: { all?: boolean; today: IsoDate },
): Promise<Exclusion[]> {
  const q = exclusionQuery(knex, schema).orderBy([{ column: 'customer_key' }, { column: 'id' }]);
  if (!options.all)
    q.whereNull('removed_at').where((w) => w.whereNull('until').orWhere('until', '>=', options.today));
  return ((await q) as ExclusionRow[]).map(toExclusion);
}

/** Ends the live exclusion of an account (removed_at, removed_by); the row stays. */
export async function removeExclusion(
  knex: Knex,
  schema: string,
  /** `keys`: the key as stored, then as the user wrote it (an exclusion recorded under "088" before
   * keys were stored as the customer table writes them). */
  input: { key: string; by: string; keys?: string[] },
): Promise<Exclusion> {
  const rows = (await knex
    .withSchema(schema)
    .table('exclusions')
    .whereIn('customer_key', input.keys ?? [input.key])
    .whereNull('removed_at')
    .update({ removed_at: knex.fn.now(), removed_by: input.by })
    .returning('id')) as { id: string }[];
  const id = rows[0]?.id;
  if (id === undefined) {
    throw new UsageError(
      `Account ${input.key} has no live exclusion; \`suspend exclusions\` lists the excluded accounts.`,
    );
  }
  return toExclusion((await exclusionQuery(knex, schema).where({ id }).first()) as ExclusionRow);
}
