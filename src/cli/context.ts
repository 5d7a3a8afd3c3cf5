import fs from 'node:fs';
import path from 'node:path';
import type { Knex } from 'knex';
import chalk from 'chalk';
import {
  checkDatabaseName,
  connect,
  describeDatabaseError,
  driverMessage,
  resolveDatabaseUrl,
  validateUrl,
  withDatabase,
  type UrlSource,
} from '../db/connection';
import { SuspendError, ExitCode, errorMessage, UsageError } from '../errors';
import type { Rules } from '../types';
import { sqlState } from '../db/sqlstate';

/** Options every command accepts (see `withCommonOptions`). */
export interface CommonOptions {
  databaseUrl?: string;
  /** Another database on the same server (see withDatabase). */
  database?: string;
  /** false with --no-prepared-statements (commander makes it true otherwise). */
  preparedStatements?: boolean;
  rules?: string;
  debug?: boolean;
  quiet?: boolean;
}

export interface Database {
  knex: Knex;
  url: string;
  source: UrlSource;
}

/** What a command's action gets: lazily opened resources, all closed by `runCommand`. */
export class CommandContext {
  private database: Database | null = null;
  private rules: Rules | null = null;
  private stopEmbedded: (() => Promise<void>) | null = null;

  constructor(
    readonly options: CommonOptions,
    readonly cwd: string = process.cwd(),
  ) {}

  /** Progress and logs go to stderr; stdout carries only the command's artifact. */
  log(message: string): void {
    if (!this.options.quiet) process.stderr.write(`${message}\n`);
  }

  /** What went wrong without failing the command: on stderr even with --quiet (cron mails it). */
  warn(message: string): void {
    process.stderr.write(`${message}\n`);
  }

  async loadRules(): Promise<Rules> {
    if (!this.rules) {
      const { loadRules } = await import('../rules/load');
      this.rules = await loadRules({ file: this.options.rules, cwd: this.cwd });
    }
    return this.rules;
  }

  /** flag > DATABASE_URL > `database.url` in the rules file > the embedded server in .suspend/. */
  async db(options: { pool?: number } = {}): Promise<Database> {
    if (this.database) return this.database;
    const rules = await this.loadRules();
    const resolved = resolveDatabaseUrl({
      flag: this.options.databaseUrl,
      env: process.env.DATABASE_URL,
      config: rules.databaseUrl,
      configFile: rules.file && (path.relative(this.cwd, rules.file) || rules.file),
    });
    const database = this.options.database;
    // A name that cannot be used is refused before a server is started for it.
    if (database !== undefined) checkDatabaseName(database);
    let url = resolved.url;
    if (url !== null && database !== undefined) {
      validateUrl(url, resolved.source);
      url = withDatabase(url, database);
    }
    if (url === null) {
      const { startEmbeddedPostgres } = await import('../db/embedded');
      const dataDir = path.resolve(this.cwd, process.env.SUSPEND_HOME ?? '.suspend');
      const server = await startEmbeddedPostgres({ dataDir, log: (line) => this.debug(line) });
      this.stopEmbedded = () => server.stop();
      url = database === undefined ? server.url : withDatabase(server.url, database);
    }
    const knex = await connect(url, resolved.source, {
      ...options,
      // Either the flag or the rules file turns named statements off.
      preparedStatements: this.options.preparedStatements !== false && rules.preparedStatements,
    });
    this.database = { knex, url, source: resolved.source };
    return this.database;
  }

  /** A lost connection or a refused grant as one sentence about this command's database. */
  async describeError(err: unknown): Promise<unknown> {
    return (await describeDatabaseError(err, this.database?.url ?? null)) ?? err;
  }

  debug(message: string): void {
    if (this.options.debug) process.stderr.write(chalk.dim(`${message}\n`));
  }

  async close(): Promise<void> {
    const db = this.database;
    this.database = null;
    if (db) await db.knex.destroy();
    if (this.stopEmbedded) await this.stopEmbedded();
    this.stopEmbedded = null;
  }
}

/**
 * Runs one command: every error becomes one sentence on stderr and an exit code; the stack only with
 * --debug. Resources are closed in `finally`; process.exitCode is set, never process.exit().
 */
export async function runCommand(
  options: CommonOptions,
  action: (ctx: CommandContext) => Promise<number | void>,
): Promise<void> {
  const ctx = new CommandContext(options);
  try {
    const code = await action(ctx);
    process.exitCode = code ?? ExitCode.ok;
  } catch (err) {
    process.exitCode = reportError(await ctx.describeError(err), options.debug ?? false);
  } finally {
    await ctx.close().catch((err: unknown) => {
      if (options.debug) process.stderr.write(`while closing: ${errorMessage(err)}\n`);
    });
  }
}

export function reportError(err: unknown, debug: boolean): number {
  if (err instanceof SuspendError) {
    for (const line of err.message.split('\n')) process.stderr.write(`${chalk.red('error:')} ${line}\n`);
    if (debug && err.cause) process.stderr.write(`${describeCause(err.cause)}\n`);
    if (debug) process.stderr.write(`${err.stack ?? ''}\n`);
    return err.exitCode;
  }
  // A database error's message starts with the statement: its first line said nothing of the cause.
  const message = sqlState(err) ? driverMessage(errorMessage(err)) : errorMessage(err).split('\n')[0];
  process.stderr.write(`${chalk.red('error:')} unexpected failure: ${message}\n`);
  if (debug) process.stderr.write(`${(err as Error)?.stack ?? String(err)}\n`);
  else process.stderr.write('Run again with --debug for details.\n');
  return ExitCode.failed;
}

function describeCause(cause: unknown): string {
  return cause instanceof Error
    ? `caused by: ${cause.stack ?? cause.message}`
    : `caused by: ${String(cause)}`;
}

/** Writes the command's artifact to stdout or to --output FILE. */
export function writeArtifact(text: string, output?: string): void {
  const body = text.endsWith('\n') ? text : `${text}\n`;
  if (output) toFile(output, () => fs.writeFileSync(output, body));
  else process.stdout.write(body);
}

/** A report file that cannot be written (its path was checked before the run: see parseOutputFile). */
function toFile<T>(output: string, write: () => T): T {
  try {
    return write();
  } catch (err) {
    throw new SuspendError(
      `Could not write the report to ${output} (${errorMessage(err)}); a run that writes has its changes committed all the same (see \`suspend runs\`).`,
      { cause: err },
    );
  }
}

/**
 * Like writeArtifact for a report written a piece at a time: to FILE, or to stdout waiting for it
 * to drain (or to be closed by its reader), so a long listing never piles up in memory.
 */
export async function streamArtifact(
  output: string | undefined,
  produce: (write: (chunk: string) => Promise<void>) => Promise<void>,
): Promise<void> {
  if (output) {
    const fd = toFile(output, () => fs.openSync(output, 'w'));
    try {
      await produce(async (chunk) => {
        toFile(output, () => fs.writeSync(fd, chunk));
      });
    } finally {
      fs.closeSync(fd);
    }
    return;
  }
  const stdout = process.stdout;
  await produce(
    (chunk) =>
      new Promise<void>((resolve) => {
        // Closed by its reader (see main): nothing more to wait for, the rest is dropped.
        if (stdout.destroyed || stdout.write(chunk)) return resolve();
        const go = () => {
          stdout.off('drain', go).off('close', go);
          resolve();
        };
        stdout.once('drain', go).once('close', go);
      }),
  );
}

export function parsePositiveInt(flag: string, value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new UsageError(`${flag}: "${value}" is not a positive whole number.`);
  }
  return Number(value);
}

/**
 * Ctrl-C (or SIGTERM) while a command waits for the run lock ends the wait: it exits 3 having
 * started nothing, and leaves no request in the lock's queue (a killed process's would stay there
 * until the lock came free). Once the command holds the lock the signal ends it as usual: its
 * transaction rolls back. For commands that write in one go (reinstate, revert); a run stops at
 * its next page instead (see the batch commands).
 */
export async function withInterruptibleWait<T>(
  fn: (wait: { signal: AbortSignal; onLocked: () => void }) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  let locked = false;
  const onSignal = (signal: NodeJS.Signals) => {
    const end = () => {
      stop();
      process.kill(process.pid, signal);
    };
    if (locked || controller.signal.aborted) return end();
    controller.abort();
    // Not waiting after all (a dry run takes no lock): ended as usual soon, unless the wait's end exits first.
    setTimeout(end, 2000).unref();
  };
  const stop = () => {
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await fn({ signal: controller.signal, onLocked: () => (locked = true) });
  } finally {
    stop();
  }
}
