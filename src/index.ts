/**
 * suspend's public API for host applications: ask what a customer may do right now.
 *
 *   import { accountStatus, isBookingBlocked } from 'suspend';
 *   const status = await accountStatus(knex, String(customer.id));
 *   if (!status.allowsLogin) return res.status(403).send(status.message);
 *
 * The same answer is available in SQL as `<schema>.account_status(customer_key)`, and the booking
 * guard (`suspend guard install`) rejects a blocked customer's insert with SQLSTATE SP001.
 */
import { SqlState, sqlState } from './db/sqlstate';

export { accountStatus } from './customer/status';
export type { AccountStatus, AccountStatusOptions } from './customer/status';
export type * from './types';

/** The SQLSTATE the booking guard raises; its message is the customer-facing text, its hint the next step. */
export const BOOKING_BLOCKED_SQLSTATE = SqlState.bookingBlocked;

/** True when a database error is the booking guard rejecting a blocked customer's booking. */
export function isBookingBlocked(err: unknown): boolean {
  return sqlState(err) === SqlState.bookingBlocked;
}
