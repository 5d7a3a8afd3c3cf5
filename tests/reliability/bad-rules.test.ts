import fs from 'node:fs';
import path from 'node:path';
import fc from 'fast-check';
import { parse, stringify } from 'yaml';
import { buildRules, validateRulesText } from '../../src/rules/load';
import { UsageError } from '../../src/errors';
import type { TestDatabase } from '../helpers/database';
import { checksumTables, ENGINE_RULES, writeRules } from '../helpers/fixtures';
import { ROOT } from '../helpers/server';
import { AS_OF, cli, seededDatabase, STACK_FRAME } from '../helpers/reliability';

/**
 * Bad rules: 1,000 mutated variants of rules.example.yaml (wrong types, unknown keys, bad durations,
 * negative amounts, broken YAML, empty and huge files). The loader either accepts a variant (and it
 * converts without error) or rejects it with UsageError/ValidationErrors whose every line starts
 * with file:line; never another exception. A few go through the CLI: exit 2, no stack, nothing written.
 */

const EXAMPLE_TEXT = fs.readFileSync(path.join(ROOT, 'rules.example.yaml'), 'utf8');
const EXAMPLE = parse(EXAMPLE_TEXT) as Record<string, unknown>;
const FILE = 'rules.yaml';
const LOCATED = /^\S+:\d+ /;

type Outcome = 'valid' | 'rejected';

/** The loader's contract on any text: valid and convertible, or rejected with located lines. */
function check(text: string): Outcome {
  let raw;
  try {
    raw = validateRulesText(text, FILE);
  } catch (err) {
    if (!(err instanceof UsageError)) {
      throw new Error(
        `not a UsageError: ${(err as Error)?.stack ?? String(err)}\n--- text ---\n${text.slice(0, 2000)}`,
      );
    }
    for (const line of err.message.split('\n')) {
      if (!LOCATED.test(line)) throw new Error(`line without file:line: ${JSON.stringify(line)}`);
    }
    return 'rejected';
  }
  try {
    buildRules({ file: FILE, raw });
  } catch (err) {
    throw new Error(
      `accepted but does not convert: ${(err as Error)?.stack}\n--- text ---\n${text.slice(0, 2000)}`,
    );
  }
  return 'valid';
}

// ---------------------------------------------------------------------------------------------
// Mutations

type Path = (string | number)[];

/** Every path into the example (maps and lists), so a mutation can hit any node. */
function paths(node: unknown, at: Path = []): Path[] {
  const out: Path[] = [at];
  if (Array.isArray(node)) node.forEach((v, i) => out.push(...paths(v, [...at, i])));
  else if (node !== null && typeof node === 'object')
    for (const [k, v] of Object.entries(node)) out.push(...paths(v, [...at, k]));
  return out;
}
const PATHS = paths(EXAMPLE).filter((p) => p.length > 0);

const badDuration = fc.constantFrom(
  '30 dayz',
  '-3 days',
  '0 days',
  '1.5 months',
  'days',
  '12',
  '99999999999999999999 days',
  '9007199254740993 years',
  '1e3 months',
  ' ',
  '30 days ago',
);
const badMoney = fc.oneof(
  fc.constantFrom('-5.00', '5.123', '$-1', 'abc', '', '1,23', '99999999999999999999', '1e21', 'NaN', '$ '),
  fc.constantFrom(-5, -0.01, 5.123, 1e21, Number.MAX_SAFE_INTEGER, 0.1 + 0.2),
);
const wrongValue = fc.oneof(
  fc.integer({ min: -1_000_000, max: 1_000_000 }),
  fc.double({ noNaN: false }),
  fc.string({ maxLength: 20 }),
  fc.boolean(),
  fc.constant(null),
  fc.array(fc.oneof(fc.string({ maxLength: 8 }), fc.integer()), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 8 }), fc.oneof(fc.string({ maxLength: 8 }), fc.integer()), {
    maxKeys: 3,
  }),
  badDuration,
  badMoney,
  fc.constantFrom('2026-02-30', '2026-13-01', 'not a url', 'ops@', '{key}', '{nope}', '-1', '101%', '0%'),
);
const oddKey = fc.oneof(
  fc.string({ minLength: 1, maxLength: 12 }),
  fc.constantFrom('__proto__', 'constructor', 'toString', 'hasOwnProperty', 'after', 'stage', '', ' ', '1'),
);

type Mutation =
  | { op: 'set'; path: Path; value: unknown }
  | { op: 'delete'; path: Path }
  | { op: 'add'; path: Path; key: string; value: unknown }
  | { op: 'rename'; path: Path; key: string };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constant('set' as const), path: fc.constantFrom(...PATHS), value: wrongValue }),
  fc.record({ op: fc.constant('delete' as const), path: fc.constantFrom(...PATHS) }),
  fc.record({
    op: fc.constant('add' as const),
    path: fc.constantFrom([], ...PATHS),
    key: oddKey,
    value: wrongValue,
  }),
  fc.record({ op: fc.constant('rename' as const), path: fc.constantFrom(...PATHS), key: oddKey }),
);

function apply(doc: unknown, m: Mutation): unknown {
  const root = structuredClone(doc);
  const parentPath = m.op === 'add' ? m.path : m.path.slice(0, -1);
  let parent: unknown = root;
  for (const seg of parentPath) {
    if (parent === null || typeof parent !== 'object') return root;
    parent = (parent as Record<string | number, unknown>)[seg];
  }
  if (parent === null || typeof parent !== 'object') return root;
  const container = parent as Record<string | number, unknown>;
  const last = m.path[m.path.length - 1] as string | number;
  switch (m.op) {
    case 'set':
      container[last] = m.value;
      break;
    case 'delete':
      if (Array.isArray(container)) container.splice(Number(last), 1);
      else delete container[last];
      break;
    case 'add':
      if (Array.isArray(container)) container.push({ [m.key]: m.value });
      else
        Object.defineProperty(container, m.key, {
          value: m.value,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      break;
    case 'rename':
      if (!Array.isArray(container) && last in container) {
        const value = container[last];
        delete container[last];
        Object.defineProperty(container, m.key, {
          value,
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      break;
  }
  return root;
}

/** Structural variants: 1-3 mutations of the example's data, written back as YAML. */
const structural = fc
  .array(mutation, { minLength: 1, maxLength: 3 })
  .map((ms) => stringify(ms.reduce(apply, EXAMPLE as unknown)));

const YAML_NOISE = [
  ':',
  ': ',
  '{',
  '}',
  '[',
  ']',
  '\t',
  '"',
  "'",
  '&a ',
  '*a',
  '!!js/function ',
  '- ',
  '#',
  '\n  ',
  '%',
  '@',
  '`',
  '|',
  '>',
  '? ',
  '<<: *b',
  '\u0000',
  '\uFEFF',
];

/** Text variants: the example truncated, with noise inserted, a range deleted, or a line repeated. */
const textual = fc.oneof(
  fc.nat({ max: EXAMPLE_TEXT.length }).map((n) => EXAMPLE_TEXT.slice(0, n)),
  fc
    .tuple(fc.nat({ max: EXAMPLE_TEXT.length }), fc.constantFrom(...YAML_NOISE))
    .map(([n, s]) => EXAMPLE_TEXT.slice(0, n) + s + EXAMPLE_TEXT.slice(n)),
  fc
    .tuple(fc.nat({ max: EXAMPLE_TEXT.length }), fc.nat({ max: 200 }))
    .map(([n, len]) => EXAMPLE_TEXT.slice(0, n) + EXAMPLE_TEXT.slice(n + len)),
  fc.nat({ max: 200 }).map((i) => {
    const lines = EXAMPLE_TEXT.split('\n');
    const at = i % lines.length;
    return [...lines.slice(0, at + 1), ...lines.slice(at)].join('\n');
  }),
  fc.nat({ max: 200 }).map((i) => {
    const lines = EXAMPLE_TEXT.split('\n');
    const at = i % lines.length;
    return [...lines.slice(0, at), ` ${lines[at]}`, ...lines.slice(at + 1)].join('\n');
  }),
);

/** Whole files that are not rules at all. */
const odd = fc.constantFrom(
  '',
  '   \n\n',
  '---\n',
  '~\n',
  'null\n',
  '[]\n',
  '42\n',
  '"a string"\n',
  'version: 1\n---\nversion: 2\n',
  'a: &a [*a]\n',
  'policies: !!binary aGVsbG8=\n',
  'policies: !custom { a: 1 }\n',
  '\uFEFFversion: 1\n',
  'version: 1\nversion: 1\n',
);

describe('1,000 mutated rules files (fast-check, fixed seed)', () => {
  test('every variant is valid or rejected with file:line on every line; never another exception', () => {
    const seen: Record<Outcome, number> = { valid: 0, rejected: 0 };
    fc.assert(
      fc.property(
        fc.oneof(
          { weight: 6, arbitrary: structural },
          { weight: 3, arbitrary: textual },
          { weight: 1, arbitrary: odd },
        ),
        (text) => {
          seen[check(text)] += 1;
        },
      ),
      { seed: 8_2026, numRuns: 1000 },
    );
    expect(seen.valid + seen.rejected).toBe(1000);
    expect(seen.rejected).toBeGreaterThan(500);
  });

  test('values that pass the formats but do not fit a number are rejected with file:line', () => {
    for (const [key, value] of [
      ['inactive_for', '99999999999999999999 days'],
      ['past_due_for', '9007199254740993 years'],
      ['overdue_balance_over', '99999999999999999999'],
      ['overdue_balance_over', '999,999,999,999,999,999.99'],
    ] as const) {
      const text = `version: 1\npolicies:\n  p:\n    stages:\n      - name: s\n        when: { ${key}: "${value}" }\n`;
      expect(check(text)).toBe('rejected');
      expect(() => validateRulesText(text, FILE)).toThrow(/^rules\.yaml:6 policies\.p\.stages\[0\]\.when\./);
    }
  });

  test('a huge file (a 3 MB message, 2,000 policies) and deep nesting are handled', () => {
    const long = EXAMPLE_TEXT.replace(
      "message: 'A reminder:",
      `message: '${'x'.repeat(3_000_000)} A reminder:`,
    );
    expect(check(long)).toBe('valid');
    const many = `version: 1\npolicies:\n${Array.from(
      { length: 2000 },
      (_, i) =>
        `  p${i}:\n    stages:\n      - name: s\n        when: { inactive_for: ${i % 2 ? '12 monthz' : '12 months'} }\n`,
    ).join('')}`;
    expect(check(many)).toBe('rejected');
    let nested = '{ inactive_for: 1 day }';
    for (let i = 0; i < 3000; i++) nested = `{ not: ${nested} }`;
    expect(
      check(`version: 1\npolicies:\n  p:\n    stages:\n      - name: s\n        when: ${nested}\n`),
    ).toMatch(/valid|rejected/);
  });

  test('an alias bomb is rejected with a line, not expanded', () => {
    const bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]'];
    for (let i = 1; i < 9; i++) {
      const prev = String.fromCharCode(96 + i);
      const name = String.fromCharCode(97 + i);
      bomb.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(',')}]`);
    }
    expect(check(`${bomb.join('\n')}\n`)).toBe('rejected');
  });
});

describe('bad rules through the CLI', () => {
  let db: TestDatabase;
  beforeAll(async () => {
    db = await seededDatabase(300, 2);
  });
  afterAll(async () => db.drop());

  test('a handful of bad files: exit 2, every line file:line, no stack, nothing written', async () => {
    const samples = fc.sample(structural, { seed: 4242, numRuns: 40 }).filter((t) => check(t) === 'rejected');
    const files = [
      ...samples.slice(0, 4),
      '',
      EXAMPLE_TEXT.slice(0, EXAMPLE_TEXT.indexOf('when: { overdue_balance_over') + 20), // mid-map
      EXAMPLE_TEXT.replace("overdue_balance_over: '5.00'", 'overdue_balance_over: -5'),
      EXAMPLE_TEXT.replace('past_due_for: 31 days', 'past_due_for: 31 dayz'),
    ].map((t) => writeRules(t, 'bad.yaml'));
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    for (const file of files) {
      for (const command of [['backfill'], ['sweep']]) {
        const r = await cli(db, [...command, '--as-of', AS_OF, '--no-notify'], file);
        expect(r.code).toBe(2);
        expect(r.stdout).toBe('');
        expect(r.stderr).not.toMatch(STACK_FRAME);
        for (const line of r.stderr.trim().split('\n')) expect(line).toMatch(/^error: \S*bad\.yaml:\d+ /);
      }
    }
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });

  test('a mapped column the table lacks, or of a type its use cannot take, is refused before the run opens with its line; the corrected file runs', async () => {
    const typo = ENGINE_RULES.replace(
      '    consent: [marketing_opt_out]\n',
      '    consent: [marketing_opt_out]\n  invoices:\n    table: invoices\n    amount: amount\n',
    );
    const file = writeRules(typo, 'typo.yaml');
    const line = typo.split('\n').indexOf('    amount: amount') + 1;
    await db.knex.raw('alter table invoices add column amount_float double precision');
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    for (const command of [['backfill', '--no-notify'], ['sweep', '--no-notify'], ['report']]) {
      const r = await cli(db, [...command, '--as-of', AS_OF], file);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toBe(
        `error: ${path.relative(ROOT, file)}:${line} source.invoices.amount: table "invoices" has no column "amount"; name one of its columns (id, customer_id, issued_on, due_on, amount_cents, paid_cents, paid_on, amount_float).\n`,
      );
    }
    // No ledger row either: a backfill left "interrupted" would refuse the corrected file.
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
    // A column of a type its use cannot take: the same, with the type there and what is needed.
    const wrongType: [string, string, string][] = [
      [
        '    created_at: created_at\n',
        '    created_at: email\n',
        'source.customers.created_at: column "email" of table "customers" is text and holds values that are not days (invalid input syntax for type date:',
      ],
      [
        '    flags: { vip: vip }',
        '    flags: { vip: email }',
        'source.customers.flags.vip: column "email" of table "customers" is text, and this needs a boolean column; name such a column.',
      ],
      [
        '    key: id\n',
        '    key: email\n',
        'source.activity.customer (not written: the default): column "customer_id" of table "reservations" is bigint, and it must match the customers\' key (source.customers.key: "email", text); name the column that holds the customer\'s key.',
      ],
      [
        '    consent: [marketing_opt_out]\n',
        '    consent: [marketing_opt_out]\n  invoices:\n    table: invoices\n    due_on: amount_cents\n',
        'source.invoices.due_on: column "amount_cents" of table "invoices" is bigint, and this needs a date column (day arithmetic: a timestamp will not do); name such a column.',
      ],
    ];
    // A float amount column: money is whole cents, never a float.
    wrongType.push([
      '    consent: [marketing_opt_out]\n',
      '    consent: [marketing_opt_out]\n  invoices:\n    table: invoices\n    amount: amount_float\n',
      'source.invoices.amount: column "amount_float" of table "invoices" is double precision, and this needs an integer or numeric column (whole cents and counts, never a float, nor decimals such as numeric(12,2) dollars); name such a column.',
    ]);
    for (const [from, to, message] of wrongType) {
      const variant = ENGINE_RULES.replace(from, to);
      const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify'], writeRules(variant, 'types.yaml'));
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toMatch(new RegExp(`^error: \\S+types\\.yaml:\\d+ `));
      expect(r.stderr).toContain(message);
    }
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
    const fixed = writeRules(ENGINE_RULES, 'fixed.yaml');
    const r = await cli(db, ['backfill', '--as-of', AS_OF, '--no-notify'], fixed);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    // Text of YYYY-MM-DD days as created_at is cast, so it is taken (as before the type check).
    await db.knex.raw('alter table customers add column created_txt text');
    await db.knex.raw('update customers set created_txt = created_at::date::text');
    const textDays = ENGINE_RULES.replace('    created_at: created_at\n', '    created_at: created_txt\n');
    const report = await cli(db, ['report', '--as-of', AS_OF], writeRules(textDays, 'text-days.yaml'));
    expect({ code: report.code, stderr: report.stderr }).toEqual({ code: 0, stderr: '' });
    // A column of the default mapping the table lacks: said to be the default, not written where the
    // line points (the source section).
    await db.knex.raw('alter table invoices rename column paid_on to paid_date');
    try {
      const gone = await cli(db, ['report', '--as-of', AS_OF], fixed);
      expect(gone.code).toBe(2);
      expect(gone.stderr).toContain(
        ' source.invoices.paid_on (not written: the default): table "invoices" has no column "paid_on"; name one of its columns',
      );
    } finally {
      await db.knex.raw('alter table invoices rename column paid_date to paid_on');
    }
  });

  test('a mapped table the database lacks is refused with its line and the closest table name; nothing written', async () => {
    const typo = ENGINE_RULES.replace(
      '    consent: [marketing_opt_out]\n',
      '    consent: [marketing_opt_out]\n  activity: { table: reservationz, customer: customer_id, at: created_at }\n',
    );
    const file = writeRules(typo, 'table.yaml');
    const line = typo.split('\n').findIndex((l) => l.includes('reservationz')) + 1;
    const before = await checksumTables(db.knex, ['public', 'suspend']);
    for (const command of [
      ['backfill', '--as-of', AS_OF, '--no-notify'],
      ['report', '--as-of', AS_OF],
      ['doctor'],
    ]) {
      const r = await cli(db, command, file);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
      expect(r.stderr).toBe(
        `error: ${path.relative(ROOT, file)}:${line} source.activity.table: table "reservationz" does not exist in this database (did you mean "reservations"?); fix source in the rules file.\n`,
      );
    }
    // Nothing like it: no guess, and for the customers table the reference data is offered.
    const far = ENGINE_RULES.replace('    table: customers\n', '    table: accounts_2019\n');
    const r = await cli(db, ['sweep', '--as-of', AS_OF, '--no-notify'], writeRules(far, 'far.yaml'));
    expect({ code: r.code, stdout: r.stdout }).toEqual({ code: 2, stdout: '' });
    expect(r.stderr).toMatch(
      /^error: \S+far\.yaml:\d+ source\.customers\.table: table "accounts_2019" does not exist in this database; fix source in the rules file or run `suspend seed` for the reference data\.\n$/,
    );
    // A schema that is not there is said at source.schema, not as each of its tables.
    const schema = ENGINE_RULES.replace('source:\n', 'source:\n  schema: app_data\n');
    const noSchema = await cli(db, ['report', '--as-of', AS_OF], writeRules(schema, 'schema.yaml'));
    expect({ code: noSchema.code, stdout: noSchema.stdout }).toEqual({ code: 2, stdout: '' });
    expect(noSchema.stderr).toMatch(
      /^error: \S+schema\.yaml:\d+ source\.schema: schema "app_data" does not exist in this database; name the schema that holds the host's tables, or null for the connection's search path\.\n$/,
    );
    expect(await checksumTables(db.knex, ['public', 'suspend'])).toEqual(before);
  });
});
