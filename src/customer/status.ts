import type { Knex } from 'knex';
import type { IsoDate, Reason } from '../types';

/**
 * What the customer sees, across every policy: read through the SQL function
 * `<schema>.account_status(customer_key)` (migration 20261123000200), so the host application, the
 * booking guard and this module agree by construction.
 */

export interface AccountStatus {
  key: string;
  /** 'active', or the name of the most severe current stage. */
  state: string;
  /** True when any current stage blocks booking. */
  blocksBooking: boolean;
  /** True unless some current stage forbids sign-in (a paused customer can still sign in). */
  allowsLogin: boolean;
  /** The customer-facing message of the most severe stage, rendered; null when active. */
  message: string | null;
  /** The policy of the most severe stage; null when active. */
  policy: string | null;
  /** The day the most severe stage was entered; null when active. */
  since: IsoDate | null;
  reasons: Reason[];
}

export interface AccountStatusOptions {
  /** suspend's schema (`settings.schema`); default `suspend`. */
  schema?: string;
}

interface StatusRow {
  state: string;
  blocks_booking: boolean;
  allows_login: boolean;
  message: string | null;
  policy: string | null;
  since: string | null;
  reasons: Reason[];
}

/** The account's status for the customer-facing side (sign-in, booking, banner message). */
export async function accountStatus(
  knex: Knex | Knex.Transaction,
  key: string,
  options: AccountStatusOptions = {},
): Promise<AccountStatus> {
  const schema = options.schema ?? 'suspend';
  const result = await knex.raw<{ rows: StatusRow[] }>(
    `select state, blocks_booking, allows_login, message, policy,
            to_char(since, 'YYYY-MM-DD') as since, reasons
       from ??.account_status(?::text)`,
    [schema, key],
  );
  const row = result.rows[0];
  if (!row) throw new Error('account_status() returned no row');
  return {
    key,
    state: row.state,
    blocksBooking: row.blocks_booking,
    allowsLogin: row.allows_login,
    message: row.message,
    policy: row.policy,
    since: row.since,
    reasons: row.reasons,
  };
}
