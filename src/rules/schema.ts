import { Type, type Static, type TSchema } from '@sinclair/typebox';

/** What settings.max_changes takes, as its errors say. */
const MAX_CHANGES =
  'a whole number (0 or more), a percentage (e.g. 500 or "5%"), or none (null) for no limit';

/**
 * The rules file's language as a schema: TypeBox gives both the JSON Schema that Ajv validates
 * (and `suspend rules schema` publishes) and the static type of a validated file. Keys are the
 * file's snake_case; `convert.ts` turns a validated file into the domain types of src/types.ts.
 *
 * Runs load the JSON Schema from `rules.schema.json`, written from this file by `npm run schema`
 * (loading TypeBox itself took a third of the CLI's start); a test keeps the two the same.
 *
 * Each schema's `title` is what is allowed there, as a phrase that completes "X is not ...": the
 * validator builds its error sentences from it. Unknown keys are errors everywhere.
 */

const NAME_PATTERN = '^[A-Za-z][A-Za-z0-9_-]*$';
const NAME_TEXT = 'a name of letters, digits, _ and - that starts with a letter';

const obj = <P extends Parameters<typeof Type.Object>[0]>(
  properties: P,
  title: string,
  description?: string,
) => Type.Object(properties, { additionalProperties: false, title, ...(description ? { description } : {}) });

const nullable = <T extends TSchema>(schema: T, title: string) =>
  Type.Union([schema, Type.Null()], { title });

const Text = (title = 'text') => Type.String({ minLength: 1, title });
const Name = (what: string) => Type.String({ pattern: NAME_PATTERN, title: `${what}: ${NAME_TEXT}` });
const Column = () => Type.String({ minLength: 1, title: 'a column name' });
const NullableColumn = () => nullable(Column(), 'a column name, or null when the host has none');
/** An http(s) URL: a customer opens it, or a webhook is posted to it. */
const WebUrl = (title = 'an http(s) URL (e.g. https://help.example.com)') =>
  Type.String({ format: 'web-url', title });
const Email = () => Type.String({ format: 'email', title: 'an email address (e.g. billing@example.com)' });
const Bool = () => Type.Boolean({ title: 'true or false' });
const Enum = <T extends string>(values: readonly T[]) =>
  Type.Union(
    values.map((v) => Type.Literal(v)),
    { title: `one of ${values.join(', ')}` },
  );

export const DURATION_TITLE = 'a duration (e.g. "30 days", "12 months")';
export const Duration = () => Type.String({ format: 'duration', title: DURATION_TITLE });

export const MONEY_TITLE =
  'an amount of money: not negative, at most as many decimals as the currency has (e.g. "5.00", "$5", 5)';
/** Text, or a YAML number whose decimal text (never the float) is converted to cents. */
export const Money = () =>
  Type.Union(
    [
      Type.String({ format: 'money', title: MONEY_TITLE }),
      Type.Number({ format: 'money-number', title: MONEY_TITLE }),
    ],
    {
      title: MONEY_TITLE,
    },
  );

const CONDITION_TITLE =
  'a condition: a map of one or more of all, any, not, inactive_for, account_age_at_least, open_balance_over, ' +
  'overdue_balance_over, past_due_for, invoice_overdue_for, has_active_subscription, unpaid_invoices_at_least, flag';

/** A map of one or more conditions, ANDed; `all`/`any`/`not` nest. */
export const Condition = Type.Recursive(
  (This) =>
    Type.Object(
      {
        all: Type.Optional(Type.Array(This, { minItems: 1, title: 'a non-empty list of conditions' })),
        any: Type.Optional(Type.Array(This, { minItems: 1, title: 'a non-empty list of conditions' })),
        not: Type.Optional(This),
        inactive_for: Type.Optional(Duration()),
        account_age_at_least: Type.Optional(Duration()),
        open_balance_over: Type.Optional(Money()),
        overdue_balance_over: Type.Optional(Money()),
        past_due_for: Type.Optional(Duration()),
        invoice_overdue_for: Type.Optional(Duration()),
        has_active_subscription: Type.Optional(Bool()),
        unpaid_invoices_at_least: Type.Optional(
          Type.Integer({ minimum: 1, title: 'a whole number, 1 or more' }),
        ),
        flag: Type.Optional(
          Type.String({ minLength: 1, title: 'a flag name declared in source.customers.flags' }),
        ),
      },
      { additionalProperties: false, minProperties: 1, title: CONDITION_TITLE },
    ),
  { $id: 'Condition', title: CONDITION_TITLE },
);
/** Where a condition is used: a reference to the one definition in the schema's `definitions`. */
const ConditionRef = () => Type.Ref(Condition);
export type RawCondition = Static<typeof Condition>;

export const ACTION_NAMES = ['notify', 'notify_customer', 'pause', 'suspend'] as const;
const ACTION_TITLE = `an action: ${ACTION_NAMES.join(', ')}, { tag: NAME } or { set: { COLUMN: VALUE } }`;

const SetValue = Type.Union([Type.String(), Type.Number(), Type.Boolean(), Type.Null()], {
  title: 'a text, number, true/false or null',
});
const Action = Type.Union(
  [
    Type.Union(
      ACTION_NAMES.map((a) => Type.Literal(a)),
      { title: ACTION_TITLE },
    ),
    Type.Object(
      {
        tag: Type.Optional(Name('a tag')),
        set: Type.Optional(
          Type.Record(Type.String({ minLength: 1 }), SetValue, {
            minProperties: 1,
            title: 'a map of host column: value (e.g. { status: suspended })',
          }),
        ),
      },
      { additionalProperties: false, minProperties: 1, maxProperties: 1, title: ACTION_TITLE },
    ),
  ],
  { title: ACTION_TITLE },
);
export type RawAction = Static<typeof Action>;

const StageFields = {
  when: ConditionRef(),
  actions: Type.Array(Action, { title: 'a list of actions' }),
  blocks_booking: Bool(),
  allows_login: Bool(),
  message: Text('a message text'),
  description: Text(),
};

const STAGE_TITLE =
  'a stage: a map with name, when, and optionally actions, blocks_booking, allows_login, message';
const Stage = obj(
  {
    name: Name('a stage name'),
    when: StageFields.when,
    actions: Type.Optional(StageFields.actions),
    blocks_booking: Type.Optional(StageFields.blocks_booking),
    allows_login: Type.Optional(StageFields.allows_login),
    message: Type.Optional(StageFields.message),
    description: Type.Optional(StageFields.description),
  },
  STAGE_TITLE,
  'One rung of the ladder; later stages are more severe.',
);
export type RawStage = Static<typeof Stage>;

const POLICY_TITLE =
  'a policy: a map with stages, and optionally description, reinstate, fire_skipped_stages, enabled';
const Policy = obj(
  {
    description: Type.Optional(Text('a description text')),
    enabled: Type.Optional(Bool()),
    reinstate: Type.Optional(Enum(['auto', 'manual'] as const)),
    fire_skipped_stages: Type.Optional(Bool()),
    stages: Type.Array(Stage, { minItems: 1, title: 'a non-empty list of stages' }),
  },
  POLICY_TITLE,
);
export type RawPolicy = Static<typeof Policy>;

const Policies = Type.Record(Type.String(), Policy, {
  propertyNames: { pattern: NAME_PATTERN },
  title: `a map of policy name: policy (a policy name is ${NAME_TEXT})`,
});

/** Each branch of a union has its title too: the branch a value's type fits reports the error. */
const KEY_TITLE = 'an account key (text or a whole number)';
const STATUS_VALUE_TITLE = 'a status value written as text (e.g. active, or "1" for a number)';

const Exclusion = Type.Object(
  {
    key: Type.Optional(
      Type.Union([Type.String({ minLength: 1, title: KEY_TITLE }), Type.Integer({ title: KEY_TITLE })], {
        title: KEY_TITLE,
      }),
    ),
    flag: Type.Optional(
      Type.String({ minLength: 1, title: 'a flag name declared in source.customers.flags' }),
    ),
    reason: Text('a reason text'),
    until: Type.Optional(
      Type.String({ format: 'date', title: 'a day written YYYY-MM-DD (e.g. 2026-12-31)' }),
    ),
  },
  {
    additionalProperties: false,
    oneOf: [{ required: ['key'] }, { required: ['flag'] }],
    title:
      'an exclusion: { key: ID, reason: TEXT, until: YYYY-MM-DD } or { flag: NAME, reason: TEXT }, with key or flag but not both',
  },
);
export type RawExclusion = Static<typeof Exclusion>;
const Exclusions = Type.Array(Exclusion, { title: 'a list of exclusions' });

const Webhook = obj(
  {
    url: WebUrl('an http(s) URL (e.g. https://hooks.example.com/suspend)'),
    secret: Type.Optional(Text('a secret text')),
    batch: Type.Optional(Bool()),
  },
  'a webhook: { url, secret, batch }',
);

const NotificationFields = {
  emails: Type.Array(Email(), { title: 'a list of email addresses' }),
  webhook: nullable(Webhook, 'a webhook: { url, secret, batch }, or null'),
  use_organization_column: Bool(),
};
const Notifications = obj(
  {
    emails: Type.Optional(NotificationFields.emails),
    webhook: Type.Optional(NotificationFields.webhook),
    use_organization_column: Type.Optional(NotificationFields.use_organization_column),
  },
  'a map with emails, webhook, use_organization_column',
);
export type RawNotifications = Static<typeof Notifications>;

/** Settings an organization may override: those that only shape what its customers are told. */
const OrgSettingFields = {
  support_url: nullable(WebUrl(), 'an http(s) URL (e.g. https://help.example.com), or null'),
  pay_url: nullable(
    WebUrl('an http(s) URL, may contain {key} (e.g. https://pay.example.com/{key})'),
    'an http(s) URL, or null',
  ),
  currency: Type.String({ pattern: '^[A-Z]{3}$', title: 'a 3-letter currency code (e.g. USD, EUR)' }),
};

const Settings = obj(
  {
    schema: Type.Optional(
      Type.String({
        pattern: '^[a-z_][a-z0-9_]{0,62}$',
        title: 'a Postgres schema name (lower case letters, digits, _)',
      }),
    ),
    batch_size: Type.Optional(
      Type.Integer({ minimum: 1, maximum: 1_000_000, title: 'a whole number from 1 to 1000000' }),
    ),
    max_changes: Type.Optional(
      Type.Union(
        [
          Type.Integer({ minimum: 0, title: MAX_CHANGES }),
          // `none`, as --max-changes takes it, or null: no limit.
          Type.Union([Type.String({ format: 'percent' }), Type.Literal('none')], { title: MAX_CHANGES }),
          Type.Null(),
        ],
        { title: MAX_CHANGES },
      ),
    ),
    support_url: Type.Optional(OrgSettingFields.support_url),
    pay_url: Type.Optional(OrgSettingFields.pay_url),
    currency: Type.Optional(OrgSettingFields.currency),
    smtp: Type.Optional(
      obj(
        {
          url: Type.Optional(
            nullable(
              Type.String({
                format: 'smtp-url',
                title: 'an SMTP URL: smtp:// or smtps:// (e.g. smtp://localhost:2525)',
              }),
              'an SMTP URL, or null',
            ),
          ),
          from: Type.Optional(
            Type.String({ format: 'mailbox', title: 'a sender (e.g. "Billing <billing@example.com>")' }),
          ),
        },
        'a map with url and from',
      ),
    ),
  },
  'a map of settings',
);
export type RawSettings = Static<typeof Settings>;

const OrgSettings = obj(
  {
    support_url: Type.Optional(OrgSettingFields.support_url),
    pay_url: Type.Optional(OrgSettingFields.pay_url),
    currency: Type.Optional(OrgSettingFields.currency),
  },
  'a map with support_url, pay_url, currency (the other settings apply to whole runs)',
);

const Source = obj(
  {
    schema: Type.Optional(
      nullable(
        Type.String({ minLength: 1, title: 'a schema name, or null for the search path' }),
        'a schema name, or null for the search path',
      ),
    ),
    customers: Type.Optional(
      obj(
        {
          table: Type.Optional(Text('a table name')),
          key: Type.Optional(Column()),
          org: Type.Optional(Column()),
          created_at: Type.Optional(NullableColumn()),
          email: Type.Optional(NullableColumn()),
          name: Type.Optional(NullableColumn()),
          net_terms_days: Type.Optional(NullableColumn()),
          flags: Type.Optional(
            Type.Record(Type.String(), Column(), {
              propertyNames: { pattern: NAME_PATTERN },
              title: 'a map of flag name: boolean column (e.g. { vip: vip })',
            }),
          ),
          consent: Type.Optional(Type.Array(Column(), { title: 'a list of column names' })),
        },
        'a map with table, key, org, created_at, email, name, net_terms_days, flags, consent',
      ),
    ),
    activity: Type.Optional(
      nullable(
        obj(
          { table: Text('a table name'), customer: Column(), at: Column() },
          'a map with table, customer, at',
        ),
        'a map with table, customer, at, or null',
      ),
    ),
    invoices: Type.Optional(
      nullable(
        obj(
          {
            table: Text('a table name'),
            key: Type.Optional(Column()),
            customer: Type.Optional(Column()),
            issued_on: Type.Optional(NullableColumn()),
            due_on: Type.Optional(Column()),
            amount: Type.Optional(Column()),
            paid: Type.Optional(Column()),
            paid_on: Type.Optional(Column()),
          },
          'a map with table, key, customer, issued_on, due_on, amount, paid, paid_on',
        ),
        'a map with table, key, customer, issued_on, due_on, amount, paid, paid_on, or null',
      ),
    ),
    subscriptions: Type.Optional(
      nullable(
        obj(
          {
            table: Text('a table name'),
            customer: Type.Optional(Column()),
            status: Type.Optional(Column()),
            active_values: Type.Optional(
              Type.Array(Type.String({ title: STATUS_VALUE_TITLE }), {
                minItems: 1,
                title: 'a non-empty list of status values',
              }),
            ),
          },
          'a map with table, customer, status, active_values',
        ),
        'a map with table, customer, status, active_values, or null',
      ),
    ),
    organizations: Type.Optional(
      nullable(
        obj(
          {
            table: Text('a table name'),
            key: Type.Optional(Column()),
            timezone: Type.Optional(NullableColumn()),
            notification_emails: Type.Optional(NullableColumn()),
          },
          'a map with table, key, timezone, notification_emails',
        ),
        'a map with table, key, timezone, notification_emails, or null',
      ),
    ),
    view: Type.Optional(nullable(Text('a view name'), 'a view name, or null')),
  },
  'a map with schema, customers, activity, invoices, subscriptions, organizations, view',
);
export type RawSource = Static<typeof Source>;

/** A stage override names an existing stage and changes some of its fields. */
const StageOverride = obj(
  {
    name: Name('a stage name'),
    when: Type.Optional(StageFields.when),
    actions: Type.Optional(StageFields.actions),
    blocks_booking: Type.Optional(StageFields.blocks_booking),
    allows_login: Type.Optional(StageFields.allows_login),
    message: Type.Optional(StageFields.message),
    description: Type.Optional(StageFields.description),
  },
  'a stage override: a map with the name of an existing stage and the fields to change',
);
export type RawStageOverride = Static<typeof StageOverride>;

const PolicyOverride = obj(
  {
    enabled: Type.Optional(Bool()),
    description: Type.Optional(Text('a description text')),
    reinstate: Type.Optional(Enum(['auto', 'manual'] as const)),
    fire_skipped_stages: Type.Optional(Bool()),
    stages: Type.Optional(Type.Array(StageOverride, { title: 'a list of stage overrides' })),
  },
  'a policy override: a map with enabled, description, reinstate, fire_skipped_stages, stages',
);
export type RawPolicyOverride = Static<typeof PolicyOverride>;

const Organization = obj(
  {
    policies: Type.Optional(
      Type.Record(Type.String(), PolicyOverride, { title: 'a map of policy name: policy override' }),
    ),
    notifications: Type.Optional(Notifications),
    settings: Type.Optional(OrgSettings),
    exclusions: Type.Optional(Exclusions),
  },
  'an organization override: a map with policies, notifications, settings, exclusions',
);
export type RawOrganization = Static<typeof Organization>;

export const RulesFile = Type.Object(
  {
    version: Type.Optional(Type.Literal(1, { title: '1 (the only version so far)' })),
    database: Type.Optional(
      obj(
        {
          // What a Postgres URL may be is checked by semantics.ts (as for --database-url): a socket
          // URL (postgres://user@/db?host=/run/postgresql) is none that URL() parses.
          url: Type.Optional(
            nullable(
              Type.String({
                minLength: 1,
                title: 'a Postgres URL (e.g. postgres://user@host:5432/database)',
              }),
              'a Postgres URL (e.g. postgres://user@host:5432/database), or null',
            ),
          ),
          prepared_statements: Type.Optional(Bool()),
        },
        'a map with url, prepared_statements',
      ),
    ),
    settings: Type.Optional(Settings),
    source: Type.Optional(Source),
    notifications: Type.Optional(Notifications),
    exclusions: Type.Optional(Exclusions),
    policies: Type.Optional(Policies),
    organizations: Type.Optional(
      Type.Record(Type.String(), Organization, {
        title: 'a map of organization id: overrides',
      }),
    ),
  },
  {
    $schema: 'http://json-schema.org/draft-07/schema#',
    definitions: { Condition },
    title:
      'a rules file: a map with version, database, settings, source, notifications, exclusions, policies, organizations',
    description:
      'suspend rules: policies (ladders of stages) that pause or suspend customer accounts, with per-organization overrides. See rules.example.yaml.',
    additionalProperties: false,
  },
);
export type RawRules = Static<typeof RulesFile>;

/** The JSON Schema of the rules file, as `suspend rules schema` prints it (plain JSON, no TypeBox symbols). */
export function rulesJsonSchema(): Record<string, unknown> {
  return JSON.parse(JSON.stringify(RulesFile)) as Record<string, unknown>;
}
