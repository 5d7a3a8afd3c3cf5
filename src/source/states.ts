import type { Knex } from 'knex';
import { activeExclusions } from '../customer/exclusions';
import type { AccountPolicyState, IsoDate } from '../types';

/** suspend's own view of a page: each account's current state per policy, and operator exclusions. */

export interface StoredState extends AccountPolicyState {
  version: number;
  /** Host column values as they were before suspend first changed them (see write/host-columns). */
  hostBefore: Record<string, unknown> | null;
}

export interface PageState {
  /** key → policy → state */
  states: Map<string, Map<string, StoredState>>;
  /** key → active exclusion from the exclusions table */
  exclusions: Map<string, { reason: string; until: IsoDate | null }>;
}

interface StateRow {
  customer_key: string;
  policy: string;
  stage: string | null;
  stage_index: number;
  entered_on: string | null;
  reinstated_on: string | null;
  version: number;
  host_before: Record<string, unknown> | null;
}

export async function readPageState(
  knex: Knex | Knex.Transaction,
  schema: string,
  keys: string[],
  asOf: IsoDate,
): Promise<PageState> {
  const stateQuery = () =>
    knex
      .withSchema(schema)
      .from('account_states')
      .select(
        'customer_key',
        'policy',
        'stage',
        'stage_index',
        'version',
        'host_before',
        knex.raw("to_char(entered_on, 'YYYY-MM-DD') as entered_on"),
        knex.raw("to_char(reinstated_on, 'YYYY-MM-DD') as reinstated_on"),
      )
      .whereRaw('customer_key = any(?::text[])', [keys]) as Promise<StateRow[]>;
  // A transaction is one connection: its queries run one after the other; outside one, in parallel.
  const inTransaction = 'isTransaction' in knex && knex.isTransaction === true;
  const [stateRows, exclusions] = inTransaction
    ? [await stateQuery(), await activeExclusions(knex, schema, keys, asOf)]
    : await Promise.all([stateQuery(), activeExclusions(knex, schema, keys, asOf)]);
  const states = new Map<string, Map<string, StoredState>>();
  for (const r of stateRows) {
    let byPolicy = states.get(r.customer_key);
    if (!byPolicy) states.set(r.customer_key, (byPolicy = new Map()));
    byPolicy.set(r.policy, storedState(r));
  }
  return { states, exclusions };
}

/** One account_states row (columns as stored) as the evaluator reads it. */
export function storedState(r: Omit<StateRow, 'customer_key'>): StoredState {
  return {
    stage: r.stage,
    stageIndex: r.stage_index,
    enteredOn: r.entered_on,
    reinstatedOn: r.reinstated_on,
    version: r.version,
    hostBefore: r.host_before,
  };
}
