import { PLACEHOLDERS } from '../evaluate/placeholders';
import { isPlaceholder, templatePlaceholders } from '../evaluate/message';
import { currencySymbol, minorDigits } from '../evaluate/money';
import { DEFAULT_MAPPING, DEFAULT_SETTINGS } from './defaults';
import { moneyHasDollarSign, parseMoney } from './values';
import { closest, formatPath, type Problem, type YamlPath } from './problems';
import { postgresUrlProblem } from '../db/url';

/**
 * The checks a schema cannot express, because they relate one part of the file to another: stage
 * names unique in a policy, message placeholders that exist, `set` never on a consent or key
 * column, flags the mapping declares, overrides that name existing policies and stages.
 *
 * They run on the parsed file even when the schema found problems (so every error comes out at
 * once), and therefore look at the data defensively: anything malformed was already reported.
 */

type Dict = Record<string, unknown>;

const isDict = (v: unknown): v is Dict => v !== null && typeof v === 'object' && !Array.isArray(v);
const dict = (v: unknown): Dict => (isDict(v) ? v : {});
const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

interface MappingFacts {
  key: string;
  consent: string[];
  /** Customer columns the runs read as signals, with their place in the mapping (none with a view). */
  signals: Map<string, string>;
  /** Declared flag names; null when a signal view supplies the flags (any name may be used). */
  flags: string[] | null;
}

function mappingFacts(data: Dict): MappingFacts {
  const source = dict(data.source);
  const customers = dict(source.customers);
  const key = typeof customers.key === 'string' ? customers.key : DEFAULT_MAPPING.customers.key;
  const consent = Array.isArray(customers.consent)
    ? customers.consent.filter((c): c is string => typeof c === 'string')
    : DEFAULT_MAPPING.customers.consent;
  const flags =
    typeof source.view === 'string' ? null : Object.keys(isDict(customers.flags) ? customers.flags : {});
  const signals = new Map<string, string>();
  if (typeof source.view !== 'string') {
    const d = DEFAULT_MAPPING.customers;
    const mapped = (field: string, fallback: string | null) => {
      const column = field in customers ? customers[field] : fallback;
      if (typeof column === 'string') signals.set(column, `source.customers.${field}`);
    };
    mapped('org', d.org);
    mapped('created_at', d.createdAt);
    mapped('net_terms_days', d.netTermsDays);
    for (const [flag, column] of Object.entries(isDict(customers.flags) ? customers.flags : d.flags))
      if (typeof column === 'string') signals.set(column, `source.customers.flags.${flag}`);
  }
  return { key, consent, signals, flags };
}

export function semanticProblems(data: unknown): Problem[] {
  const root = dict(data);
  const facts = mappingFacts(root);
  const problems: Problem[] = [];
  checkSourceNames(dict(root.source), problems);
  const url = dict(root.database).url;
  if (typeof url === 'string' && url !== '') {
    const problem = postgresUrlProblem(url);
    if (problem) problems.push({ path: ['database', 'url'], message: problem });
  }
  const policies = dict(root.policies);

  for (const [name, policy] of Object.entries(policies)) {
    const stages = list(dict(policy).stages);
    const seen = new Map<string, number>();
    stages.forEach((stage, i) => {
      const path: YamlPath = ['policies', name, 'stages', i];
      const s = dict(stage);
      if (typeof s.name === 'string') {
        const first = seen.get(s.name);
        if (first !== undefined) {
          problems.push({
            path: [...path, 'name'],
            message: `${JSON.stringify(s.name)} is already the name of stages[${first}]; stage names must be unique within a policy`,
          });
        } else seen.set(s.name, i);
      }
      checkStage(s, path, facts, problems);
    });
  }
  checkExclusionList(list(root.exclusions), ['exclusions'], facts, problems);
  checkUrlPlaceholders(dict(root.settings), ['settings'], problems);
  checkCurrency(dict(root.settings), ['settings'], problems);
  checkWebhookUrl(dict(root.notifications), ['notifications'], problems);
  checkAmounts(root, problems);

  for (const [orgId, org] of Object.entries(dict(root.organizations))) {
    const o = dict(org);
    checkUrlPlaceholders(dict(o.settings), ['organizations', orgId, 'settings'], problems);
    checkCurrency(dict(o.settings), ['organizations', orgId, 'settings'], problems);
    checkWebhookUrl(dict(o.notifications), ['organizations', orgId, 'notifications'], problems);
    for (const [name, override] of Object.entries(dict(o.policies))) {
      const path: YamlPath = ['organizations', orgId, 'policies', name];
      const policy = policies[name];
      if (!isDict(policy)) {
        const known = Object.keys(policies);
        const guess = closest(name, known);
        problems.push({
          path,
          atKey: true,
          message: `there is no policy ${JSON.stringify(name)} to override${guess ? ` (did you mean ${guess}?)` : ''}; the policies are: ${known.join(', ') || 'none'}`,
        });
        continue;
      }
      const stageNames = list(policy.stages)
        .map((s) => dict(s).name)
        .filter((n): n is string => typeof n === 'string');
      const overridden = new Set<string>();
      list(dict(override).stages).forEach((stage, i) => {
        const s = dict(stage);
        const stagePath: YamlPath = [...path, 'stages', i];
        if (typeof s.name === 'string') {
          if (!stageNames.includes(s.name)) {
            const guess = closest(s.name, stageNames);
            problems.push({
              path: [...stagePath, 'name'],
              message: `policy ${name} has no stage ${JSON.stringify(s.name)}${guess ? ` (did you mean ${guess}?)` : ''}; its stages are: ${stageNames.join(', ') || 'none'} (an override changes existing stages, it cannot add one)`,
            });
          } else if (overridden.has(s.name)) {
            problems.push({
              path: [...stagePath, 'name'],
              message: `stage ${JSON.stringify(s.name)} is overridden twice; merge the two entries into one`,
            });
          }
          overridden.add(s.name);
        }
        checkStage(s, stagePath, facts, problems);
      });
    }
    checkExclusionList(list(o.exclusions), ['organizations', orgId, 'exclusions'], facts, problems);
  }
  return problems;
}

const MONEY_KEYS = ['open_balance_over', 'overdue_balance_over'] as const;

const currencyOf = (settings: unknown): string | null => {
  const c = dict(settings).currency;
  return typeof c === 'string' ? c : null;
};

/**
 * Amounts are read in the minor units of the currency they are judged in (settings.currency, or an
 * organization's): "5.50" is 550 cents in USD but no amount in JPY, which has no minor unit, and
 * "$5" is not an amount of EUR. A policy of the defaults is judged in each organization's currency
 * too, unless the organization overrides that stage's conditions.
 */
function checkAmounts(root: Dict, problems: Problem[]): void {
  const base = currencyOf(root.settings) ?? DEFAULT_SETTINGS.currency;
  const policies = dict(root.policies);
  const orgs = Object.entries(dict(root.organizations)).map(([orgId, o]) => ({
    orgId,
    org: dict(o),
    currency: currencyOf(dict(o).settings) ?? base,
  }));
  const seen = new Set<string>();
  const check = (condition: unknown, path: YamlPath, currency: string, whose: string) => {
    const c = dict(condition);
    for (const nested of ['all', 'any'] as const)
      list(c[nested]).forEach((item, i) => check(item, [...path, nested, i], currency, whose));
    if (c.not !== undefined) check(c.not, [...path, 'not'], currency, whose);
    for (const key of MONEY_KEYS) {
      const value = c[key];
      if (typeof value !== 'string' && typeof value !== 'number') continue;
      const text = String(value);
      const digits = minorDigits(currency);
      let message: string | null = null;
      if (typeof value === 'string' && moneyHasDollarSign(text) && currencySymbol(currency) !== '$')
        message = `${JSON.stringify(text)} is written in dollars, but amounts ${whose} are in ${currency}; write the amount alone (e.g. "5")`;
      else if (parseMoney(text, 4) !== null && parseMoney(text, digits) === null)
        message =
          digits === 0
            ? `${text} has decimals, but ${currency} (the currency of amounts ${whose}) has no minor unit; write a whole amount`
            : `${text} has more decimals than ${currency} has (${digits}), the currency of amounts ${whose}; write at most ${digits}`;
      const at = formatPath([...path, key]);
      if (message && !seen.has(`${at}\u0000${message}`)) {
        seen.add(`${at}\u0000${message}`);
        problems.push({ path: [...path, key], message });
      }
    }
  };
  for (const [name, policy] of Object.entries(policies)) {
    list(dict(policy).stages).forEach((stage, i) => {
      const s = dict(stage);
      const path: YamlPath = ['policies', name, 'stages', i, 'when'];
      check(s.when, path, base, 'of the defaults (settings.currency)');
      for (const { orgId, org, currency } of orgs) {
        if (currency === base) continue;
        const overridden = list(dict(dict(org.policies)[name]).stages).some(
          (o) => dict(o).name === s.name && dict(o).when !== undefined,
        );
        if (!overridden)
          check(s.when, path, currency, `of organization ${orgId}, which this stage applies to`);
      }
    });
  }
  for (const { orgId, org, currency } of orgs) {
    for (const [name, override] of Object.entries(dict(org.policies)))
      list(dict(override).stages).forEach((stage, i) =>
        check(
          dict(stage).when,
          ['organizations', orgId, 'policies', name, 'stages', i, 'when'],
          currency,
          `of organization ${orgId}`,
        ),
      );
  }
}

let currencies: readonly string[] | null = null;

/**
 * A currency is an ISO 4217 code Node knows (its amounts' minor units and symbol come from there):
 * three capitals alone let a typo (UDS) or a made-up code (XYZ) through. Any other shape the schema
 * reports.
 */
function checkCurrency(settings: Dict, path: YamlPath, problems: Problem[]): void {
  const code = settings.currency;
  if (typeof code !== 'string' || !/^[A-Z]{3}$/.test(code)) return;
  currencies ??= Intl.supportedValuesOf('currency');
  if (currencies.includes(code)) return;
  // Two letters swapped (UDS for USD) is two edits to `closest`, too far for a three-letter word.
  const swapped = [1, 2]
    .map((i) => code.slice(0, i - 1) + code[i] + code[i - 1] + code.slice(i + 1))
    .find((c) => currencies?.includes(c));
  const guess = swapped ?? closest(code, currencies);
  problems.push({
    path: [...path, 'currency'],
    message: `${JSON.stringify(code)} is not an ISO 4217 currency code${guess ? ` (did you mean ${guess}?)` : ''}; write a code such as USD, EUR, GBP or JPY`,
  });
}

/**
 * A webhook URL with a user or password (`https://user:pw@host/`) is an http(s) URL, but fetch
 * refuses to send a request to it: accepted, every event would be tried and fail until it gave up,
 * with the password in each error. Its value is not repeated here, for the same reason.
 */
function checkWebhookUrl(notifications: Dict, path: YamlPath, problems: Problem[]): void {
  const url = dict(notifications.webhook).url;
  if (typeof url !== 'string') return;
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return; // the schema's format says so
  }
  if (parsed.username === '' && parsed.password === '') return;
  problems.push({
    path: [...path, 'webhook', 'url'],
    message:
      'has a user or password before the host, which webhook requests cannot carry; remove it and let the receiver check the signature (secret), or put a token in the path or query',
  });
}

/**
 * The settings' URLs are filled in before a customer sees them: pay_url takes {key}, support_url
 * nothing. Any other {name} would reach the customer as written.
 */
function checkUrlPlaceholders(settings: Dict, path: YamlPath, problems: Problem[]): void {
  const allowed: Record<string, string[]> = { pay_url: ['key'], support_url: [] };
  for (const [setting, names] of Object.entries(allowed)) {
    const url = settings[setting];
    if (typeof url !== 'string') continue;
    for (const name of templatePlaceholders(url)) {
      if (names.includes(name)) continue;
      problems.push({
        path: [...path, setting],
        message: `{${name}} is not filled in here; ${names.length > 0 ? `the only placeholder it takes is ${names.map((n) => `{${n}}`).join(', ')} (the customer's key)` : 'it takes no placeholder'}`,
      });
    }
  }
}

function checkStage(stage: Dict, path: YamlPath, facts: MappingFacts, problems: Problem[]): void {
  if (typeof stage.message === 'string') {
    for (const name of templatePlaceholders(stage.message)) {
      if (isPlaceholder(name)) continue;
      const guess = closest(name, Object.keys(PLACEHOLDERS));
      problems.push({
        path: [...path, 'message'],
        message: `{${name}} is not a placeholder${guess ? ` (did you mean {${guess}}?)` : ''}; allowed: ${Object.keys(
          PLACEHOLDERS,
        )
          .map((p) => `{${p}}`)
          .join(', ')}`,
      });
    }
  }
  if (stage.when !== undefined) checkCondition(stage.when, [...path, 'when'], facts, problems);
  list(stage.actions).forEach((action, i) => {
    const set = dict(action).set;
    if (!isDict(set)) return;
    for (const column of Object.keys(set)) {
      const at: YamlPath = [...path, 'actions', i, 'set', column];
      const unusable = unusableName(column, 'column');
      if (unusable) {
        problems.push({ path: at, atKey: true, message: unusable });
      } else if (facts.consent.includes(column)) {
        problems.push({
          path: at,
          atKey: true,
          message: `${column} is a consent column (source.customers.consent) and suspend never writes consent; set another column`,
        });
      } else if (column === facts.key) {
        problems.push({
          path: at,
          atKey: true,
          message: `${column} is the customers' key column (source.customers.key) and cannot be set; set another column`,
        });
      } else if (facts.signals.has(column)) {
        problems.push({
          path: at,
          atKey: true,
          message: `${column} is read by every run as ${facts.signals.get(column)}: setting it would change what the next run judges; set another column`,
        });
      }
    }
  });
}

function checkCondition(condition: unknown, path: YamlPath, facts: MappingFacts, problems: Problem[]): void {
  const c = dict(condition);
  for (const nested of ['all', 'any'] as const) {
    list(c[nested]).forEach((item, i) => checkCondition(item, [...path, nested, i], facts, problems));
  }
  if (c.not !== undefined) checkCondition(c.not, [...path, 'not'], facts, problems);
  if (typeof c.flag === 'string') checkFlag(c.flag, [...path, 'flag'], facts, problems);
}

/** Each exclusion's flag is declared, and no key or flag is excluded twice in one list. */
function checkExclusionList(
  exclusions: unknown[],
  path: YamlPath,
  facts: MappingFacts,
  problems: Problem[],
): void {
  const seen = new Map<string, number>();
  exclusions.forEach((e, i) => {
    const exclusion = dict(e);
    if (typeof exclusion.flag === 'string') checkFlag(exclusion.flag, [...path, i, 'flag'], facts, problems);
    const field = typeof exclusion.key === 'string' || typeof exclusion.key === 'number' ? 'key' : 'flag';
    const value = exclusion[field];
    if (typeof value !== 'string' && typeof value !== 'number') return;
    const id = `${field}\u0000${String(value)}`;
    const first = seen.get(id);
    if (first === undefined) seen.set(id, i);
    else
      problems.push({
        path: [...path, i, field],
        message: `${field} ${JSON.stringify(String(value))} is excluded already by ${formatPath([...path, first])}; keep one entry (which of two reasons and expiries applies would be a guess)`,
      });
  });
}

function checkFlag(flag: string, path: YamlPath, facts: MappingFacts, problems: Problem[]): void {
  if (facts.flags === null || facts.flags.includes(flag)) return;
  const declared =
    facts.flags.length > 0 ? `the declared flags are: ${facts.flags.join(', ')}` : 'no flags are declared';
  problems.push({
    path,
    message: `${JSON.stringify(flag)} is not a flag declared in source.customers.flags (${declared}); declare it there, e.g. flags: { ${flag}: ${flag} }`,
  });
}

// ---------------------------------------------------------------------------------------------
// Names of tables and columns in the mapping

/** Where the mapping names tables (which may be schema-qualified) and columns. */
const SOURCE_NAMES: Record<string, { tables: string[]; columns: string[] }> = {
  customers: {
    tables: ['table'],
    columns: ['key', 'org', 'created_at', 'email', 'name', 'net_terms_days'],
  },
  activity: { tables: ['table'], columns: ['customer', 'at'] },
  invoices: {
    tables: ['table'],
    columns: ['key', 'customer', 'issued_on', 'due_on', 'amount', 'paid', 'paid_on'],
  },
  subscriptions: { tables: ['table'], columns: ['customer', 'status'] },
  organizations: { tables: ['table'], columns: ['key', 'timezone', 'notification_emails'] },
};

/**
 * Every name is quoted when it reaches SQL, so a hostile one can only ever be a name. A few are
 * still refused, because the query builder reads them as something else: a dot (a table prefix)
 * in a column or schema name, " as " (an alias), and control characters.
 */
function unusableName(name: string, kind: 'column' | 'table' | 'schema'): string | null {
  // eslint-disable-next-line no-control-regex -- control characters are what this looks for
  const why = /[\u0000-\u001f\u007f]/.test(name)
    ? 'it contains a control character'
    : /\sas\s/i.test(name)
      ? 'suspend would read " as " in it as an alias'
      : kind !== 'table' && name.includes('.')
        ? `a dot would be read as a ${kind === 'column' ? 'table' : 'database'} prefix`
        : null;
  return why
    ? `${JSON.stringify(name)} cannot be used as a ${kind} name: ${why}; rename it in the database or map a view`
    : null;
}

function checkSourceNames(source: Dict, problems: Problem[]): void {
  const check = (value: unknown, path: YamlPath, kind: 'column' | 'table' | 'schema') => {
    if (typeof value !== 'string') return;
    const message = unusableName(value, kind);
    if (message) problems.push({ path, message });
  };
  check(source.schema, ['source', 'schema'], 'schema');
  check(source.view, ['source', 'view'], 'table');
  for (const [section, names] of Object.entries(SOURCE_NAMES)) {
    const s = dict(source[section]);
    for (const key of names.tables) check(s[key], ['source', section, key], 'table');
    for (const key of names.columns) check(s[key], ['source', section, key], 'column');
  }
  const customers = dict(source.customers);
  for (const [flag, column] of Object.entries(dict(customers.flags))) {
    check(column, ['source', 'customers', 'flags', flag], 'column');
  }
  list(customers.consent).forEach((column, i) =>
    check(column, ['source', 'customers', 'consent', i], 'column'),
  );
}
