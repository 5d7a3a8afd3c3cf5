import type { Knex } from 'knex';
import { SuspendError, UsageError, errorMessage } from '../errors';
import { noTimeouts } from '../db/connection';
import { generateStatements } from './generate';
import {
  LOAD_CONSTRAINTS,
  REFERENCE_COLUMNS,
  addConstraintStatement,
  dropConstraintStatements,
  REFERENCE_TABLES,
  createIndexStatements,
  createTableStatements,
  dropIndexStatements,
  qualifiedName,
  runStatements,
  type ReferenceTable,
} from './reference-schema';

export interface SeedOptions {
  /** Schema of the reference tables (default `public`). */
  schema?: string;
  customers: number;
  /** Organizations (default 10); none are made when customers is 0. */
  orgs?: number;
  /** Same seed and as-of: the same rows, byte for byte. */
  seed?: number;
  /** Every date is relative to this day, `YYYY-MM-DD`. */
  asOf: string;
  /** Truncate the reference tables (only those) when they already hold rows. */
  reset?: boolean;
  onLog?: (message: string) => void;
}

export interface SeedResult {
  schema: string;
  seed: number;
  asOf: string;
  /** Rows inserted per table. */
  counts: Record<ReferenceTable, number>;
  /** Tables that did not exist and were created. */
  created: ReferenceTable[];
  /** Whether existing rows were truncated first. */
  reset: boolean;
  seconds: number;
}

/**
 * Which tables each loading session fills. Reservations (about half the rows) get a session of
 * their own; the other tables share the second one. Sessions touch disjoint tables, so they never
 * wait on each other.
 */
const SESSIONS: readonly (readonly ReferenceTable[])[] = [
  ['reservations'],
  ['organizations', 'customers', 'invoices', 'subscriptions'],
];

/** Class of the advisory lock that serializes seeds of one schema (the other key is the schema). */
const SEED_LOCK_CLASS = 0x5eed;

/**
 * Creates the reference tables when missing and fills them with deterministic data, all set-based.
 *
 * 1. Under an advisory lock per schema (a second seed waits, then sees the rows and refuses):
 *    create the missing tables, refuse if they hold rows unless `reset`, then truncate them.
 * 2. Two sessions load disjoint tables side by side, each in its own transaction: drop the
 *    table's indexes and constraints, one `insert ... select` per table, build them back. Both
 *    commit only when both succeeded; otherwise both roll back and the tables stay empty.
 * 3. `vacuum analyze`, so index-only scans work and the planner knows the sizes at once.
 *
 * Uses up to three connections at once (the lock holder and two loaders): the pool must allow it.
 */
export async function seedReferenceData(knex: Knex, options: SeedOptions): Promise<SeedResult> {
  const started = process.hrtime.bigint();
  const schema = options.schema ?? 'public';
  const params = {
    customers: options.customers,
    orgs: options.orgs ?? 10,
    seed: options.seed ?? 1,
    asOf: options.asOf,
  };
  const log = options.onLog ?? (() => undefined);
  const counts = Object.fromEntries(REFERENCE_TABLES.map((t) => [t, 0])) as Record<ReferenceTable, number>;
  const elapsed = () => Number(process.hrtime.bigint() - started) / 1e9;
  const all = (tables: readonly ReferenceTable[]) => tables.map((t) => qualifiedName(schema, t));
  const list = (tables: readonly ReferenceTable[]) => tables.map(() => '??').join(', ');

  /** One session's share of the load, in its own transaction (see allOrNothing). */
  const loadSession = async (trx: Knex.Transaction, tables: readonly ReferenceTable[]): Promise<void> => {
    try {
      // Big sorts for the running sums and the index builds, local to this transaction. JIT
      // compiling each big insert costs seconds and saves less than that here.
      await trx.raw("set local work_mem = '256MB'");
      await trx.raw("set local maintenance_work_mem = '512MB'");
      await trx.raw('set local jit = off');
      await trx.raw(`lock table ${list(tables)} in access exclusive mode`, all(tables));
      await runStatements(trx, [
        ...dropIndexStatements(schema, tables),
        ...dropConstraintStatements(schema, tables, await ownPrimaryKeys(trx, schema, tables)),
      ]);
      for (const statement of generateStatements(params, tables)) {
        const t0 = elapsed();
        const table = statement.table;
        const bindings = table ? [...statement.bindings, qualifiedName(schema, table)] : statement.bindings;
        const r = await trx.raw<{ rowCount: number }>(statement.sql, bindings);
        if (table) counts[table] = r.rowCount;
        log(`${table ?? 'customer traits'}: ${r.rowCount} rows in ${(elapsed() - t0).toFixed(1)} s`);
      }
      const t0 = elapsed();
      await addMissingConstraints(trx, schema, tables);
      await runStatements(trx, createIndexStatements(schema, tables));
      log(`${tables.join(', ')}: keys and indexes built in ${(elapsed() - t0).toFixed(1)} s`);
    } catch (err) {
      if (err instanceof SuspendError) throw err;
      throw new SuspendError(
        `Loading ${tables.join(', ')} into schema "${schema}" failed: ${serverMessage(err)}; nothing was loaded.`,
        { cause: err },
      );
    }
  };

  let created: ReferenceTable[] = [];
  let reset = false;
  await knex.transaction(async (guard) => {
    // Held by this otherwise idle transaction until the load is over.
    await guard.raw(`select ${noTimeouts(true)}`);
    await guard.raw('select pg_advisory_xact_lock(?::int, hashtext(?))', [SEED_LOCK_CLASS, schema]);

    await knex.transaction(async (trx) => {
      const existing = await existingTables(trx, schema);
      await checkColumns(trx, schema, existing);
      created = REFERENCE_TABLES.filter((t) => !existing.includes(t));
      await runStatements(trx, createTableStatements(schema));
      const filled = await tablesWithRows(trx, schema);
      if (filled.length === 0) return;
      if (!options.reset) {
        throw new UsageError(
          `The reference tables in schema "${schema}" already hold rows (${filled.join(', ')}); pass --reset to truncate and refill them, or pick another --schema.`,
        );
      }
      await trx.raw(`truncate ${list(REFERENCE_TABLES)}`, all(REFERENCE_TABLES));
      reset = true;
      log(`truncated ${REFERENCE_TABLES.join(', ')} in schema ${schema}`);
    });

    if (params.customers === 0) {
      await runStatements(knex, createIndexStatements(schema));
    } else {
      await allOrNothing(
        knex,
        SESSIONS.map((tables) => (trx: Knex.Transaction) => loadSession(trx, tables)),
      );
    }

    if (params.customers > 0 || reset) {
      const t0 = elapsed();
      // Not in a transaction (vacuum cannot run in one); one session per group, side by side.
      await Promise.all(SESSIONS.map((tables) => knex.raw(`vacuum (analyze) ${list(tables)}`, all(tables))));
      log(`vacuum analyze in ${(elapsed() - t0).toFixed(1)} s`);
    }
  });
  return { schema, seed: params.seed, asOf: params.asOf, counts, created, reset, seconds: elapsed() };
}

/**
 * Runs each job in its own transaction, side by side, and commits them only when all succeeded;
 * when one fails, every other rolls back too and the first real error is thrown.
 */
async function allOrNothing(knex: Knex, jobs: ((trx: Knex.Transaction) => Promise<void>)[]): Promise<void> {
  let failed = false;
  let pending = jobs.length;
  let allSettled: () => void = () => undefined;
  const settled = new Promise<void>((resolve) => (allSettled = resolve));
  const settle = () => {
    pending -= 1;
    if (pending === 0) allSettled();
  };
  const results = await Promise.allSettled(
    jobs.map((job) =>
      knex.transaction(async (trx) => {
        try {
          // A job done first idles in its transaction until the others are done too.
          await trx.raw(`select ${noTimeouts(true)}`);
          await job(trx);
        } catch (err) {
          failed = true;
          settle();
          throw err;
        }
        settle();
        await settled;
        if (failed) throw new SiblingFailed();
      }),
    ),
  );
  const errors = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
  const first = errors.find((e) => !(e instanceof SiblingFailed));
  if (first !== undefined) throw first;
}

/** knex puts the query before the server's message ("<sql> - <message>"): keep the message. */
function serverMessage(err: unknown): string {
  const message = errorMessage(err);
  const at = message.lastIndexOf(' - ');
  return at >= 0 ? message.slice(at + 3) : message;
}

class SiblingFailed extends Error {
  constructor() {
    super('rolled back because another part of the load failed');
  }
}

/**
 * Adds back the constraints dropped for the load; a table that already has a primary key under
 * another name (a table seed did not create) keeps it.
 */
async function addMissingConstraints(
  trx: Knex.Transaction,
  schema: string,
  tables: readonly ReferenceTable[],
): Promise<void> {
  const r = await trx.raw<{ rows: { table_name: string; name: string; contype: string }[] }>(
    `select c.conrelid::regclass::text as table_name, c.conname as name, c.contype
       from pg_constraint c join pg_namespace n on n.oid = c.connamespace
      where n.nspname = ? and c.contype in ('p', 'f')`,
    [schema],
  );
  const hasPrimaryKey = (table: string) =>
    r.rows.some((row) => row.contype === 'p' && row.table_name.split('.').pop()?.replace(/"/g, '') === table);
  for (const c of LOAD_CONSTRAINTS.filter((x) => tables.includes(x.table))) {
    const present =
      c.kind === 'primary key' ? hasPrimaryKey(c.table) : r.rows.some((row) => row.name === c.name);
    if (!present) await runStatements(trx, [addConstraintStatement(schema, c)]);
  }
}

/**
 * Tables whose primary key is not the reference `(id)`, which the load keeps in place because it
 * could not add it back as it was: a table partitioned by customer keys on `(id, customer_id)`
 * (Postgres wants the partition key in it), and `primary key (id)` is refused there.
 */
async function ownPrimaryKeys(
  trx: Knex.Transaction,
  schema: string,
  tables: readonly ReferenceTable[],
): Promise<ReferenceTable[]> {
  const r = await trx.raw<{ rows: { name: ReferenceTable }[] }>(
    `select t.relname as name
       from pg_constraint c join pg_class t on t.oid = c.conrelid join pg_namespace n on n.oid = t.relnamespace
      where n.nspname = ? and t.relname = any(?::text[]) and c.contype = 'p'
        and c.conkey <> array[(select a.attnum from pg_attribute a where a.attrelid = t.oid and a.attname = 'id')]`,
    [schema, [...tables]],
  );
  return r.rows.map((row) => row.name);
}

async function existingTables(knex: Knex | Knex.Transaction, schema: string): Promise<ReferenceTable[]> {
  const r = await knex.raw<{ rows: { name: ReferenceTable }[] }>(
    `select c.relname as name from pg_class c join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = ? and c.relname = any(?::text[]) and c.relkind in ('r', 'p')`,
    [schema, [...REFERENCE_TABLES]],
  );
  return r.rows.map((row) => row.name);
}

/** A table of the same name that lacks a reference column is the host's own: say so, touch nothing. */
async function checkColumns(
  knex: Knex | Knex.Transaction,
  schema: string,
  tables: ReferenceTable[],
): Promise<void> {
  if (tables.length === 0) return;
  const r = await knex.raw<{ rows: { table_name: ReferenceTable; column_name: string }[] }>(
    `select table_name, column_name from information_schema.columns
      where table_schema = ? and table_name = any(?::text[])`,
    [schema, tables],
  );
  for (const table of tables) {
    const have = new Set(r.rows.filter((row) => row.table_name === table).map((row) => row.column_name));
    const missing = REFERENCE_COLUMNS[table].filter((col) => !have.has(col));
    if (missing.length > 0) {
      throw new UsageError(
        `Table ${schema}.${table} exists but is not the reference table (no column ${missing.join(', ')}); seed into another --schema.`,
      );
    }
  }
}

async function tablesWithRows(knex: Knex.Transaction, schema: string): Promise<ReferenceTable[]> {
  const r = await knex.raw<{ rows: Record<ReferenceTable, boolean>[] }>(
    `select ${REFERENCE_TABLES.map(() => 'exists (select 1 from ??) as ??').join(', ')}`,
    REFERENCE_TABLES.flatMap((t) => [qualifiedName(schema, t), t]),
  );
  const row = r.rows[0];
  return REFERENCE_TABLES.filter((t) => row?.[t] === true);
}
