import type { Knex } from 'knex';

/**
 * The reference schema: a small booking and billing app that the demo, the tests and the benchmark
 * share. Its names are those of DEFAULT_MAPPING (src/rules/defaults.ts), so the default rules read
 * it without a `source:` section. Every identifier is quoted by knex (`??`); nothing here runs SQL.
 */

/** In load order: organizations first (customers reference them). */
export const REFERENCE_TABLES = [
  'organizations',
  'customers',
  'reservations',
  'invoices',
  'subscriptions',
] as const;
export type ReferenceTable = (typeof REFERENCE_TABLES)[number];

export interface Statement {
  sql: string;
  bindings: readonly string[];
}

/** Columns of each table, in insert order; also used to check a pre-existing table fits. */
export const REFERENCE_COLUMNS: Record<ReferenceTable, readonly string[]> = {
  organizations: ['id', 'name', 'timezone', 'notification_emails'],
  customers: [
    'id',
    'org_id',
    'email',
    'name',
    'created_at',
    'net_terms_days',
    'marketing_opt_out',
    'status',
    'vip',
  ],
  reservations: ['id', 'customer_id', 'created_at'],
  invoices: ['id', 'customer_id', 'issued_on', 'due_on', 'amount_cents', 'paid_cents', 'paid_on'],
  subscriptions: ['id', 'customer_id', 'status', 'started_on', 'ended_on'],
};

const TABLE_BODIES: Record<ReferenceTable, string> = {
  organizations: `(
    id bigint constraint organizations_pkey primary key,
    name text not null,
    timezone text not null default 'UTC',
    notification_emails text[] not null default '{}'
  )`,
  customers: `(
    id bigint constraint customers_pkey primary key,
    org_id bigint constraint customers_org_id_fkey references ?? (id),
    email text,
    name text,
    created_at timestamptz not null default now(),
    net_terms_days int not null default 0,
    marketing_opt_out boolean not null default false,
    status text not null default 'active',
    vip boolean not null default false
  )`,
  reservations: `(
    id bigint constraint reservations_pkey primary key,
    customer_id bigint not null,
    created_at timestamptz not null
  )`,
  invoices: `(
    id bigint constraint invoices_pkey primary key,
    customer_id bigint not null,
    issued_on date,
    due_on date not null,
    amount_cents bigint not null,
    paid_cents bigint not null default 0,
    paid_on date
  )`,
  subscriptions: `(
    id bigint constraint subscriptions_pkey primary key,
    customer_id bigint not null,
    status text not null check (status in ('active', 'canceled', 'paused')),
    started_on date not null,
    ended_on date
  )`,
};

/** `schema.table` for `??` bindings. */
export function qualifiedName(schema: string, table: ReferenceTable): string {
  return `${schema}.${table}`;
}

/** `create schema if not exists` plus `create table if not exists` for every reference table. */
export function createTableStatements(schema: string): Statement[] {
  const out: Statement[] = [{ sql: 'create schema if not exists ??', bindings: [schema] }];
  for (const table of REFERENCE_TABLES) {
    const bindings = [qualifiedName(schema, table)];
    if (table === 'customers') bindings.push(qualifiedName(schema, 'organizations'));
    out.push({ sql: `create table if not exists ?? ${TABLE_BODIES[table]}`, bindings });
  }
  return out;
}

/**
 * The secondary indexes the engine's per-page signal queries need (see `suspend doctor`). Named, so
 * a reload can drop them first and build them once after the rows are in.
 */
export interface ReferenceIndex {
  name: string;
  table: ReferenceTable;
  /** What follows `on <table>`: fixed column names and clauses, never from config. */
  definition: string;
  why: string;
}

export const REFERENCE_INDEXES: readonly ReferenceIndex[] = [
  {
    name: 'customers_org_id_idx',
    table: 'customers',
    definition: '(org_id)',
    why: 'rules per organization and --org filters',
  },
  {
    name: 'reservations_customer_id_created_at_idx',
    table: 'reservations',
    definition: '(customer_id, created_at)',
    why: 'last activity per customer, index-only',
  },
  {
    name: 'invoices_unpaid_idx',
    table: 'invoices',
    definition: '(customer_id) include (due_on, amount_cents, paid_cents, id) where paid_on is null',
    why: 'unpaid invoices by customer, partial and covering (page reads use the next one: the past-due streak needs paid invoices too)',
  },
  {
    name: 'invoices_customer_id_due_on_idx',
    table: 'invoices',
    definition: '(customer_id, due_on)',
    why: 'every invoice of a page in one range scan: balances, oldest overdue, the past-due streak',
  },
  {
    name: 'subscriptions_active_idx',
    table: 'subscriptions',
    definition: "(customer_id) where status = 'active'",
    why: 'active subscriptions of a page',
  },
];

const onTables = <T extends { table: ReferenceTable }>(
  items: readonly T[],
  tables: readonly ReferenceTable[],
) => items.filter((x) => tables.includes(x.table));

export function createIndexStatements(
  schema: string,
  tables: readonly ReferenceTable[] = REFERENCE_TABLES,
): Statement[] {
  return onTables(REFERENCE_INDEXES, tables).map((ix) => ({
    sql: `create index if not exists ?? on ?? ${ix.definition}`,
    bindings: [ix.name, qualifiedName(schema, ix.table)],
  }));
}

/** Dropped before a load so each index is built once, from sorted data, instead of row by row. */
export function dropIndexStatements(
  schema: string,
  tables: readonly ReferenceTable[] = REFERENCE_TABLES,
): Statement[] {
  return onTables(REFERENCE_INDEXES, tables).map((ix) => ({
    sql: 'drop index if exists ??',
    bindings: [`${schema}.${ix.name}`],
  }));
}

/**
 * Constraints dropped for a load and added back after it: building a primary key once from the
 * loaded rows is about twice as fast as maintaining it row by row, and one anti-join checks the
 * foreign key instead of a trigger call per customer.
 */
export interface ReferenceConstraint {
  name: string;
  table: ReferenceTable;
  kind: 'primary key' | 'foreign key';
  definition: string;
  bindings: (schema: string) => string[];
}

export const LOAD_CONSTRAINTS: readonly ReferenceConstraint[] = [
  {
    name: 'customers_org_id_fkey',
    table: 'customers',
    kind: 'foreign key',
    definition: 'foreign key (org_id) references ?? (id)',
    bindings: (schema) => [qualifiedName(schema, 'organizations')],
  },
  ...(['customers', 'reservations', 'invoices', 'subscriptions'] as const).map((table) => ({
    name: `${table}_pkey`,
    table,
    kind: 'primary key' as const,
    definition: 'primary key (id)',
    bindings: () => [],
  })),
];

export function dropConstraintStatements(
  schema: string,
  tables: readonly ReferenceTable[] = REFERENCE_TABLES,
  /** Tables whose primary key stays in place (see `ownPrimaryKeys` in seed.ts). */
  keepPrimaryKeys: readonly ReferenceTable[] = [],
): Statement[] {
  const kept = (c: ReferenceConstraint) => c.kind === 'primary key' && keepPrimaryKeys.includes(c.table);
  return onTables(LOAD_CONSTRAINTS, tables)
    .filter((c) => !kept(c))
    .map((c) => ({
      sql: 'alter table ?? drop constraint if exists ??',
      bindings: [qualifiedName(schema, c.table), c.name],
    }));
}

export function addConstraintStatement(schema: string, c: ReferenceConstraint): Statement {
  return {
    sql: `alter table ?? add constraint ?? ${c.definition}`,
    bindings: [qualifiedName(schema, c.table), c.name, ...c.bindings(schema)],
  };
}

/** Runs statements in order on a connection or transaction. */
export async function runStatements(knex: Knex | Knex.Transaction, statements: Statement[]): Promise<void> {
  for (const s of statements) await knex.raw(s.sql, [...s.bindings]);
}

/** The DDL as one script, for documentation and `--help`-style output. */
export function referenceSchemaSql(knex: Knex, schema = 'public'): string {
  return [...createTableStatements(schema), ...createIndexStatements(schema)]
    .map((s) => `${knex.raw(s.sql, [...s.bindings]).toQuery()};`)
    .join('\n');
}
