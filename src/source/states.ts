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
