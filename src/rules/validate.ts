import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { default as Ajv, CodeOptions, ErrorObject, ValidateFunction } from 'ajv';
import { closest, describeValue, type Problem, type YamlPath } from './problems';
import { RULE_FORMATS } from './rule-formats';
import type { RawRules } from './schema';
import RULES_SCHEMA from './rules.schema.json';

/** The compiled validator's file name, in the build's folder of this module. */
export const VALIDATOR_FILE = 'rules.validator.js';

/**
 * Schema validation of a parsed rules file with Ajv, every error at once, each turned into one
 * phrase built from the schema's `title` ("what is allowed here").
 */

/** An Ajv that knows the rules file's formats (`duration`, `money`, ...); also used by the tests. */
export function createAjv(code?: CodeOptions): Ajv {
  // Loaded here, not with this module: a CLI start validates with the validator compiled at build
  // time and never needs Ajv itself (about 100 ms of loading).
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { default: AjvClass } = require('ajv') as typeof import('ajv');
  const ajv = new AjvClass({
    allErrors: true,
    verbose: true,
    strict: true,
    strictRequired: false,
    allowUnionTypes: true,
    ...(code ? { code } : {}),
  });
  for (const [name, format] of Object.entries(RULE_FORMATS)) ajv.addFormat(name, format);
  return ajv;
}

let compiled: ValidateFunction<RawRules> | null = null;

function validator(): ValidateFunction<RawRules> {
  compiled ??= precompiled() ?? createAjv().compile<RawRules>(RULES_SCHEMA);
  return compiled;
}

/**
 * The build writes the validator's code next to this file (see write-validator.ts), so a CLI start
 * does not compile the schema (about 150 ms of every command). Run from the sources (the tests), or
 * where the file was written for another schema (a build that ran tsc alone), it is compiled here.
 */
function precompiled(): ValidateFunction<RawRules> | null {
  const file = path.join(__dirname, VALIDATOR_FILE);
  if (!fs.existsSync(file)) return null;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const built = require(file) as ValidateFunction<RawRules> & { schemaHash?: string };
  return built.schemaHash === rulesSchemaHash() ? built : null;
}

/** What the compiled validator records of the schema it was compiled from. */
export function rulesSchemaHash(): string {
  return createHash('sha256').update(JSON.stringify(RULES_SCHEMA)).digest('hex');
}

/** Validates `data` against the rules schema: the problems found, or none when `data` is a `RawRules`. */
export function schemaProblems(data: unknown): Problem[] {
  const validate = validator();
  if (validate(data)) return [];
  return reduceErrors(validate.errors ?? []).map((e) => toProblem(e, data));
}

type AjvError = ErrorObject & { parentSchema?: SchemaLike; schema?: unknown; data?: unknown };
interface SchemaLike {
  type?: string | string[];
  title?: string;
  anyOf?: SchemaLike[];
  oneOf?: SchemaLike[];
  properties?: Record<string, unknown>;
  const?: unknown;
}

/**
 * Ajv reports every branch of a failed union. Keep the branch whose type fits the value (a string
 * given where text or a number is allowed gets the text branch's error); when none or several fit,
 * one sentence for the union. And a value of the wrong type gets only that error, not its follow-ups.
 */
function reduceErrors(all: ErrorObject[]): AjvError[] {
  let errors = all as AjvError[];
  const unions = errors
    .filter((e) => e.keyword === 'anyOf' || e.keyword === 'oneOf')
    .sort((a, b) => a.schemaPath.length - b.schemaPath.length);
  for (const union of unions) {
    if (!errors.includes(union)) continue;
    const prefix = `${union.schemaPath}/`;
    const inside = (e: AjvError) =>
      e.schemaPath.startsWith(prefix) && e.instancePath.startsWith(union.instancePath);
    const branches = (Array.isArray(union.schema) ? union.schema : []) as SchemaLike[];
    const fitting = branches.flatMap((b, i) => (typeFits(b, union.data) ? [i] : []));
    if (fitting.length === 1) {
      const keep = `${prefix}${fitting[0]}/`;
      errors = errors.filter((e) => e !== union && (!inside(e) || e.schemaPath.startsWith(keep)));
    } else {
      errors = errors.filter((e) => !inside(e));
    }
  }
  const wrongType = new Set(errors.filter((e) => e.keyword === 'type').map((e) => e.instancePath));
  errors = errors.filter((e) => e.keyword === 'type' || !wrongType.has(e.instancePath) || isKeyError(e));
  // The pattern that a record's key failed is reported by its `propertyNames` error.
  return errors.filter((e) => !(e.propertyName !== undefined && e.keyword !== 'propertyNames'));
}

function isKeyError(e: AjvError): boolean {
  return e.keyword === 'additionalProperties' || e.keyword === 'propertyNames';
}

function jsonType(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  return typeof value === 'object' ? 'object' : typeof value;
}

function typeFits(schema: SchemaLike, value: unknown): boolean {
  if (schema.anyOf) return schema.anyOf.some((b) => typeFits(b, value));
  if (schema.type === undefined) return false;
  const actual = jsonType(value);
  const types = Array.isArray(schema.type) ? schema.type : [schema.type];
  return types.some((t) => t === actual || (t === 'integer' && actual === 'number'));
}

/** `/policies/a~1b/stages/0` → `['policies', 'a/b', 'stages', 0]`, with list indexes as numbers. */
function toPath(pointer: string, data: unknown): YamlPath {
  const path: YamlPath = [];
  let node = data;
  for (const raw of pointer.split('/').slice(1)) {
    const key = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(node)) {
      path.push(Number(key));
      node = node[Number(key)];
    } else {
      path.push(key);
      node = node !== null && typeof node === 'object' ? (node as Record<string, unknown>)[key] : undefined;
    }
  }
  return path;
}

function toProblem(e: AjvError, data: unknown): Problem {
  const path = toPath(e.instancePath, data);
  const parent = e.parentSchema ?? {};
  const allowed = parent.title;
  switch (e.keyword) {
    case 'additionalProperties': {
      const key = String((e.params as { additionalProperty: string }).additionalProperty);
      const keys = Object.keys(parent.properties ?? {});
      const guess = closest(key, keys);
      return {
        path: [...path, key],
        atKey: true,
        message: `unknown key ${JSON.stringify(key)}${guess ? ` (did you mean ${guess}?)` : ''}; allowed here: ${keys.join(', ')}`,
      };
    }
    case 'propertyNames': {
      const key = String((e.params as { propertyName: string }).propertyName);
      return {
        path: [...path, key],
        atKey: true,
        message: `${JSON.stringify(key)} is not allowed as a key: ${allowed ?? e.message}`,
      };
    }
    case 'required': {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      return {
        path,
        message: `missing key ${JSON.stringify(missing)}${allowed ? `; expected ${allowed}` : ''}`,
      };
    }
    default:
      return {
        path,
        message: allowed
          ? `${describeValue(e.data)} is not ${allowed}`
          : `${describeValue(e.data)}: ${e.message ?? 'is not allowed'}`,
      };
  }
}
