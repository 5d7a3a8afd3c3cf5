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
  adminShutdown: '57P01',
  crashShutdown: '57P02',
  cannotConnectNow: '57P03',
  queryCanceled: '57014',
  lockNotAvailable: '55P03',
  serializationFailure: '40001',
  deadlockDetected: '40P01',
  uniqueViolation: '23505',
  duplicateDatabase: '42P04',
  /** Raised by the booking guard: "suspend: booking blocked". */
  bookingBlocked: 'SP001',
} as const;

export function sqlState(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
