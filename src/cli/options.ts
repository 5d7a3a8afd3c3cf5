import fs from 'node:fs';
import path from 'node:path';
import { Command, Option, InvalidArgumentError } from 'commander';

/** Flags every command takes. Precedence: flag > environment > config file > default. */
export function withCommonOptions(cmd: Command): Command {
  return cmd
    .option(
      '--rules <file>',
      'rules file (default: found by cosmiconfig: suspend.config.yaml, .suspendrc.yaml, package.json "suspend")',
    )
    .addOption(
      new Option(
        '--database-url <url>',
        'Postgres URL (default: $DATABASE_URL, then database.url in the rules, then the embedded server in .suspend/)',
      ).argParser(notBlank('a Postgres URL (postgres://user@host:5432/db), or leave the flag out')),
    )
    .option(
      '--database <name>',
      'database on that server instead of the one the URL names (the embedded server: instead of postgres), e.g. suspend_demo after `suspend demo`',
    )
    .option(
      '--no-prepared-statements',
      'run every query unnamed and set nothing on the server sessions, for a pooler that does not keep named statements (or database.prepared_statements: false in the rules); runs that write need session pooling, see README',
    )
    .option(
      '--debug',
      'print stack traces and the errors that caused them (seed, the embedded server: each step)',
    )
    .option('--quiet', 'print nothing but the artifact and errors');
}

/** A flag's value that must say something: "" or spaces are refused, never taken for "not given". */
export function notBlank(what: string): (value: string) => string {
  return (value) => {
    if (value.trim() === '') throw new InvalidArgumentError(`It is empty; give ${what}.`);
    return value;
  };
}

/** What an empty run id is told to give instead (see notBlank). */
export const RUN_ID = 'a run id (`suspend runs` lists them)';

/** `--by NAME`: who acts, for the ledger and history (default: $SUSPEND_ACTOR or the OS user). */
export function byOption(who: string): Option {
  return new Option('--by <name>', `${who} (default: $SUSPEND_ACTOR or the OS user)`).argParser(
    notBlank('a name for the ledger, or leave the flag out'),
  );
}

export function asOfOption(): Option {
  return new Option('--as-of <date>', 'evaluate as of this day (YYYY-MM-DD) instead of today').argParser(
    parseIsoDate,
  );
}

export function parseIsoDate(value: string): string {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  const date = m ? new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]))) : null;
  if (!date || date.toISOString().slice(0, 10) !== value) {
    throw new InvalidArgumentError(`"${value}" is not a date; write YYYY-MM-DD, e.g. 2026-11-23.`);
  }
  return value;
}

export function parsePositiveInteger(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError(`"${value}" is not a positive whole number.`);
  }
  return Number(value);
}

export function parseNonNegativeInteger(value: string): number {
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new InvalidArgumentError(`"${value}" is not a whole number (0 or more).`);
  }
  return Number(value);
}

export const FORMATS = ['table', 'json', 'csv', 'markdown'] as const;
export type Format = (typeof FORMATS)[number];

export function formatOption(): Option {
  return new Option('--format <format>', 'report format').choices(FORMATS).default('table');
}

/**
 * A file to write the report to, checked before anything runs: a run that had written its changes
 * must not then fail on its report's path.
 */
export function parseOutputFile(value: string): string {
  // An empty value (`--output "$UNSET"`) would quietly write to stdout instead.
  if (value.trim() === '')
    throw new InvalidArgumentError('an empty name is no file; name one, or leave --output out for stdout.');
  const folder = path.dirname(path.resolve(value));
  const kind = (p: string) => {
    try {
      return fs.statSync(p, { throwIfNoEntry: false })?.isDirectory()
        ? 'folder'
        : fs.existsSync(p)
          ? 'file'
          : null;
    } catch {
      return 'unreachable';
    }
  };
  const self = kind(value);
  if (self === 'folder' || value.endsWith('/') || value.endsWith(path.sep)) {
    // "a-file/": what it names as a folder is a file.
    const named = path.resolve(value);
    if (self !== 'folder' && kind(named) === 'file')
      throw new InvalidArgumentError(`${named} is a file, not a folder; name a file in a folder.`);
    throw new InvalidArgumentError(`"${value}" names a folder; name a file in it.`);
  }
  const parent = kind(folder);
  if (parent === 'file')
    throw new InvalidArgumentError(`${folder} is a file, not a folder; name a file in a folder.`);
  if (parent !== 'folder')
    throw new InvalidArgumentError(
      `the folder ${folder} does not exist; create it or name a file in an existing folder.`,
    );
  try {
    fs.accessSync(self ? value : folder, fs.constants.W_OK);
  } catch {
    throw new InvalidArgumentError(
      `${self ? `"${value}"` : `the folder ${folder}`} is not writable by this user.`,
    );
  }
  return value;
}
