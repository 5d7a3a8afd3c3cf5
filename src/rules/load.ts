import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ValidationErrors, UsageError } from '../errors';
import type { EffectiveRules, ExclusionRule, IsoDate, Rules } from '../types';
import { todayUtc } from './dates';
import {
  convertExclusion,
  convertNotifications,
  convertPolicy,
  convertSettings,
  convertSource,
} from './convert';
import { DEFAULT_MAPPING, DEFAULT_NOTIFICATIONS, DEFAULT_SETTINGS } from './defaults';
import { parseRulesYaml, type RulesDocument } from './document';
import { findRulesFile } from './find';
import { mergePolicies, mergeSettings } from './merge';
import { formatPath, type Problem, type YamlPath } from './problems';
import type { RawOrganization, RawPolicy, RawRules } from './schema';
import { semanticProblems } from './semantics';
import { shadowedStages } from './ladders';
import { parseMoney } from './values';
import { minorDigits } from '../evaluate/money';
import { schemaProblems } from './validate';

/**
 * The rules file from disk to `Rules`: find it (--rules, else cosmiconfig), parse it with line
 * numbers, validate it (schema, then the cross-references), and convert it. Every problem comes out
 * at once, each as `file:line yaml.path: what was given and what is allowed`; nothing is connected
 * or written before the rules are valid.
 */

export interface LoadOptions {
  /** --rules FILE; otherwise the file is searched from `cwd` up. */
  file?: string | undefined;
  cwd: string;
}

/** A validated file still in its own (snake_case) shape, with where it came from. */
export interface ValidatedRules {
  file: string | null;
  raw: RawRules;
  /** What is valid but likely not meant, each as `file:line yaml.path: what and what to do`. */
  notes?: string[];
  /** `file:line yaml.path` of a place in the file (the closest enclosing one if it is not written). */
  locate?: (path: YamlPath) => string;
}

export async function loadRules(options: LoadOptions): Promise<Rules> {
  return buildRules(await readValidatedRules(options));
}

export async function readValidatedRules(options: LoadOptions): Promise<ValidatedRules> {
  let file: string;
  let root: string[] = [];
  if (options.file !== undefined) {
    file = path.resolve(options.cwd, options.file);
    if (!fs.existsSync(file)) {
      throw new UsageError(`--rules ${options.file}: no such file (looked for ${file}).`);
    }
    if (fs.statSync(file).isDirectory()) {
      throw new UsageError(
        `--rules ${options.file || '""'}: ${file} is a folder; name the rules file (YAML) in it.`,
      );
    }
  } else {
    const found = await findRulesFile(options.cwd);
    if (!found) return { file: null, raw: {} };
    file = found.file;
    root = found.root;
  }
  const display = path.relative(options.cwd, file) || file;
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(
      `${display}: cannot read the rules file (${(err as NodeJS.ErrnoException).code ?? 'error'}).`,
      {
        cause: err,
      },
    );
  }
  return { file, ...validateRulesDocument(text, display, root) };
}

/** Parses and validates rules text; throws `ValidationErrors` with every problem, file and line. */
export function validateRulesText(text: string, display: string, root: YamlPath = []): RawRules {
  return validateRulesDocument(text, display, root).raw;
}

function validateRulesDocument(
  text: string,
  display: string,
  root: YamlPath,
): { raw: RawRules; notes: string[]; locate: (path: YamlPath) => string } {
  const parsed = parseRulesYaml(text, root);
  if (!parsed.ok) {
    throw new ValidationErrors(
      parsed.errors.map((e) => `${display}:${e.line} YAML syntax error: ${e.message}`),
    );
  }
  const { document } = parsed;
  if (document.data === null || document.data === undefined) {
    throw new ValidationErrors([
      `${display}:1 (top level): the rules file is empty (or only comments); write at least the policies to apply (see rules.example.yaml)`,
    ]);
  }
  const data = document.data;
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new ValidationErrors([
      `${display}:1 (top level): the rules file must be a map (settings, source, policies, ...), not ${Array.isArray(data) ? 'a list' : JSON.stringify(data)}`,
    ]);
  }
  const problems = [...schemaProblems(data), ...semanticProblems(data)];
  if (problems.length > 0) {
    const located = problems.map((p) => ({
      line: document.lineOf(p.path, p.atKey),
      text: formatProblem(p, document, display),
    }));
    throw new ValidationErrors(located.sort((a, b) => a.line - b.line).map((p) => p.text));
  }
  const raw = withMoneyAsWritten(data as RawRules, document);
  return {
    raw,
    notes: [...unsignedWebhooks(raw), ...expiredExclusions(raw, todayUtc()), ...shadowedStages(raw)].map(
      (p) => formatProblem(p, document, display),
    ),
    // A place the file does not write (a default) is said so: its line is that of the section.
    locate: (path) =>
      `${display}:${document.lineOf(path, true)} ${formatPath(path)}${document.writes(path) ? '' : ' (not written: the default)'}`,
  };
}

/** A section of the rules at the top level and in each organization's override, with its path. */
function everyLevel<K extends 'exclusions' | 'notifications'>(
  raw: RawRules,
  key: K,
): [YamlPath, RawRules[K]][] {
  return [
    [[key], raw[key]],
    ...Object.entries(raw.organizations ?? {}).map(([id, org]): [YamlPath, RawRules[K]] => [
      ['organizations', id, key],
      (org as Pick<RawRules, K>)[key],
    ]),
  ];
}

/** Exclusions whose last day has passed: valid (a record of what was), but they spare nobody. */
function expiredExclusions(raw: RawRules, today: IsoDate): Problem[] {
  return everyLevel(raw, 'exclusions').flatMap(([at, exclusions]) =>
    (exclusions ?? []).flatMap((e, i) =>
      'until' in e && typeof e.until === 'string' && e.until < today
        ? [
            {
              path: [...at, i, 'until'],
              message: `${e.until} has passed, so this exclusion spares nobody; remove it, or give a day from ${today} on`,
            },
          ]
        : [],
    ),
  );
}

/** Webhooks without a secret: valid (a receiver on a private network may not check), but unsigned. */
function unsignedWebhooks(raw: RawRules): Problem[] {
  return everyLevel(raw, 'notifications').flatMap(([at, notifications]) =>
    notifications?.webhook && !notifications.webhook.secret
      ? [
          {
            path: [...at, 'webhook'],
            message: `has no secret, so its requests go unsigned and the receiver cannot tell them from forged ones; set ${formatPath([...at, 'webhook', 'secret'])}`,
          },
        ]
      : [],
  );
}

function formatProblem(problem: Problem, document: RulesDocument, display: string): string {
  return `${display}:${document.lineOf(problem.path, problem.atKey)} ${formatPath(problem.path)}: ${problem.message}`;
}

const MONEY_KEYS = new Set(['open_balance_over', 'overdue_balance_over']);

/** YAML numbers given as money (`19.99`) are replaced by the digits as written, so no float is ever used. */
function withMoneyAsWritten(raw: RawRules, document: RulesDocument): RawRules {
  const walk = (node: unknown, at: YamlPath): unknown => {
    if (Array.isArray(node)) return node.map((item, i) => walk(item, [...at, i]));
    if (node === null || typeof node !== 'object') return node;
    return Object.fromEntries(
      Object.entries(node).map(([key, value]) => [
        key,
        MONEY_KEYS.has(key) && typeof value === 'number'
          ? moneyText(document.sourceOf([...at, key]), value)
          : walk(value, [...at, key]),
      ]),
    );
  };
  return walk(raw, []) as RawRules;
}

/**
 * The digits as written (`19.90`), unless YAML wrote the number another way (`+5`, `1e2`, `0x10`):
 * then its decimal text, which the schema has checked converts.
 */
function moneyText(source: string | null, value: number): string {
  return source !== null && parseMoney(source, 4) !== null ? source : String(value);
}

/** The rules of one organization in the file's own shape: what `suspend rules show --org` prints. */
export function effectiveRawRules(raw: RawRules, orgId: string | null): RawRules {
  const org: RawOrganization | undefined = orgId === null ? undefined : raw.organizations?.[orgId];
  if (!org) {
    const { organizations: _organizations, ...rest } = raw;
    return rest;
  }
  const { organizations: _organizations, ...rest } = raw;
  return {
    ...rest,
    settings: mergeSettings(raw.settings, org),
    notifications: { ...raw.notifications, ...org.notifications },
    exclusions: [...(raw.exclusions ?? []), ...(org.exclusions ?? [])],
    policies: mergePolicies(raw.policies ?? {}, org),
  };
}

/** The policies, their amounts read in the minor units of the currency they are judged in. */
function policiesOf(raw: Record<string, RawPolicy> | undefined, currency: string) {
  const digits = minorDigits(currency);
  return Object.entries(raw ?? {}).flatMap(([name, p]) => {
    const policy = convertPolicy(name, p, digits);
    return policy ? [policy] : [];
  });
}

/** A validated file → `Rules`: defaults plus one `EffectiveRules` per organization with overrides. */
export function buildRules({ file, raw, locate }: ValidatedRules): Rules {
  const settings = convertSettings(raw.settings, DEFAULT_SETTINGS);
  const notifications = convertNotifications(raw.notifications, DEFAULT_NOTIFICATIONS);
  const exclusions: ExclusionRule[] = (raw.exclusions ?? []).map(convertExclusion);
  const defaults: EffectiveRules = {
    orgId: null,
    policies: policiesOf(raw.policies, settings.currency),
    exclusions,
    notifications,
    settings,
  };
  const organizations: Record<string, EffectiveRules> = {};
  for (const [orgId, org] of Object.entries(raw.organizations ?? {})) {
    const orgSettings = convertSettings(mergeSettings(raw.settings, org), DEFAULT_SETTINGS);
    organizations[orgId] = {
      orgId,
      policies: policiesOf(mergePolicies(raw.policies ?? {}, org), orgSettings.currency),
      exclusions: [...exclusions, ...(org.exclusions ?? []).map(convertExclusion)],
      notifications: convertNotifications(org.notifications, notifications),
      settings: orgSettings,
    };
  }
  const source = raw.source === undefined ? DEFAULT_MAPPING : convertSource(raw.source);
  const databaseUrl = raw.database?.url ?? null;
  return {
    file,
    hash: hashRules({ settings, source, defaults, organizations }),
    databaseUrl,
    preparedStatements: raw.database?.prepared_statements ?? true,
    settings,
    source,
    defaults,
    organizations,
    ...(locate && { locate }),
  };
}

/** sha256 of the effective rules with keys sorted, so formatting and key order do not change it. */
export function hashRules(value: unknown): string {
  return createHash('sha256').update(canonicalJson(value)).digest('hex');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value) ?? 'null';
}
