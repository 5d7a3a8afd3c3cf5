/** SQLSTATE codes suspend branches on; never match on message text. */
export const SqlState = {
  invalidCatalogName: '3D000', // database does not exist
  invalidPassword: '28P01',
  invalidAuthorization: '28000',
  undefinedTable: '42P01',
  undefinedColumn: '42703',
  undefinedFunction: '42883',
  invalidSchemaName: '3F000',
  insufficientPrivilege: '42501',
  /** A write on a read-only server (a standby) or session (default_transaction_read_only). */
  readOnlySqlTransaction: '25006',
  adminShutdown: '57P01',
  crashShutdown: '57P02',
  cannotConnectNow: '57P03',
  queryCanceled: '57014',
  lockNotAvailable: '55P03',
  serializationFailure: '40001',
  deadlockDetected: '40P01',
  uniqueViolation: '23505',
  duplicateDatabase: '42P04',
  /** A named prepared statement the server does not know (e.g. behind a transaction pooler). */
  invalidSqlStatementName: '26000',
  duplicatePreparedStatement: '42P05',
  /** Raised by the booking guard: "suspend: booking blocked". */
  bookingBlocked: 'SP001',
} as const;

/** Class 08: connection exception (the connection failed or was cut). */
const CONNECTION_EXCEPTION_CLASS = '08';

export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/** Node socket errors of a connection to a server that is gone or going. */
const LOST_SOCKET_CODES = new Set(['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH']);

/**
 * node-postgres raises these itself, without a SQLSTATE or a socket code, when the session ended
 * under it (knex may prefix the statement: "ROLLBACK - Connection terminated unexpectedly"). They
 * are the one place suspend has to recognize an error by its text.
 */
const PG_CLIENT_LOST = [
  'Connection terminated unexpectedly',
  'Connection terminated',
  'Client has encountered a connection error and is not queryable',
  'Client was closed and is not queryable',
] as const;

/**
 * Whether an error means the database connection was lost mid-command: the session was terminated
 * (pg_terminate_backend, a server shutdown or crash: 57P01-57P03, class 08), the socket broke, or the
 * server no longer accepts connections. Follows `cause` chains.
 */
export function isConnectionLost(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = sqlState(e);
    if (code === SqlState.adminShutdown || code === SqlState.crashShutdown) return true;
    if (code === SqlState.cannotConnectNow) return true;
    if (code?.length === 5 && code.startsWith(CONNECTION_EXCEPTION_CLASS)) return true;
    if (code && LOST_SOCKET_CODES.has(code)) return true;
    // A unix socket that vanished with its server.
    if (code === 'ENOENT' && (e as { syscall?: unknown }).syscall === 'connect') return true;
    const message = e instanceof Error ? e.message : '';
    if (PG_CLIENT_LOST.some((m) => message === m || message.endsWith(` - ${m}`))) return true;
  }
  return false;
}

/** What happened to the connection, in a few words, for the one-sentence message. */
export function lostConnectionReason(err: unknown): string {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    const code = sqlState(e);
    if (code === SqlState.adminShutdown)
      return 'the server ended the session (terminated by an administrator, or shutting down)';
    if (code === SqlState.crashShutdown) return 'the server crashed';
    if (code === SqlState.cannotConnectNow) return 'the server is starting up or shutting down';
    if (code === 'ECONNREFUSED' || code === 'ENOENT') return 'the server is not running';
    if (code === 'ECONNRESET' || code === 'EPIPE') return 'the connection was reset';
    if (code === 'ETIMEDOUT' || code === 'EHOSTUNREACH') return 'the server stopped answering';
  }
  return 'the session ended unexpectedly';
}
