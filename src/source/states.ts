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
