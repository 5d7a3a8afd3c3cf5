/**
 * Glossary
 *
 * account       One row of the host's customer table, named by its key. Keys travel as text so
 *               bigint, uuid and text keys are handled alike; Postgres casts them back.
 * organization  The tenant an account belongs to. Rules have defaults plus per-organization overrides.
 * signal        A fact about an account as of a day, computed by SQL: last activity, balances, the
 *               continuous past-due streak, active subscriptions, net terms, flags.
 * condition     A test on signals (`inactive_for: 12 months`, `past_due_for: 30 days`, `all`/`any`/`not`).
 * policy        A named, ordered ladder of stages (inactivity, delinquency, ...). Policies are evaluated
 *               independently; each account has one state per policy.
 * stage         One rung of a ladder: a condition, the actions fired on entry, the effects on the customer
 *               (booking blocked? sign-in allowed?) and the message the customer is shown. Later = more severe.
 * decision      The pure outcome of evaluating one policy for one account: the stage it belongs in (or
 *               none: clear) with the reasons and the evidence behind them.
 * transition    A decision that differs from the account's current state: what a run writes (state,
 *               history row, outbox event, mapped host columns).
 * episode       The span from entering a policy's first stage to clearing it. Stage entry fires once per
 *               episode; a manual reinstatement restarts the policy's clocks.
 * exclusion     An account spared from every policy (by key or by flag), with a reason and an optional expiry.
 * run           One execution of backfill, sweep, revert... recorded in the ledger (`<schema>.runs`).
 * as-of         The calendar day a run evaluates, `YYYY-MM-DD`. Defaults to today (UTC); `--as-of` pins it.
 */

/** A calendar day, `YYYY-MM-DD`. Days are compared as strings and counted with `src/rules/dates.ts`. */
export type IsoDate = string;

/** Money is integer minor units (cents); never a float. */
export type Cents = number;

export type DurationUnit = 'day' | 'week' | 'month' | 'year';

/** `12 months`, `30 days`: months and years are calendar arithmetic, days and weeks exact. */
export interface Duration {
  amount: number;
  unit: DurationUnit;
  /** As the user wrote it, for messages. */
  text: string;
}

/** Everything the evaluator knows about one account on the as-of day. */
export interface Signals {
  key: string;
  orgId: string | null;
  /** Day the account was created; null when the host does not know. */
  accountCreatedOn: IsoDate | null;
  /** Day of the last activity (e.g. last reservation); null if never. */
  lastActivityOn: IsoDate | null;
  /** Sum of unpaid amounts of all invoices issued on or before as-of. */
  openBalance: Cents;
  /** Sum of unpaid amounts of invoices that are overdue on the as-of day. */
  overdueBalance: Cents;
  /**
   * The effective due day (due_on + net terms) after which the current continuous past-due streak
   * began; as-of minus it is the number of days past due. Null when not past due on as-of.
   */
  pastDueSince: IsoDate | null;
  /** Age in days of the single oldest overdue unpaid invoice; null when none. */
  oldestOverdueDays: number | null;
  /** The oldest overdue unpaid invoice, for messages ("invoice 1043 for $42.00 is 12 days overdue"). */
  oldestOverdueInvoice: { id: string; unpaid: Cents; daysOverdue: number } | null;
  unpaidInvoiceCount: number;
  activeSubscriptions: number;
  netTermsDays: number;
  /** Flags/tags the mapping exposes, e.g. `vip`. */
  flags: string[];
  /** Customer fields for message templates. */
  name: string | null;
  email: string | null;
}

export type Condition =
  | { all: Condition[] }
  | { any: Condition[] }
  | { not: Condition }
  | { inactive_for: Duration }
  | { account_age_at_least: Duration }
  | { open_balance_over: Cents }
  | { overdue_balance_over: Cents }
  | { past_due_for: Duration }
  | { invoice_overdue_for: Duration }
  | { has_active_subscription: boolean }
  | { unpaid_invoices_at_least: number }
  | { flag: string };

/**
 * What entering a stage does. `pause` blocks booking and keeps sign-in; `suspend` blocks both;
 * `notify` tells the organization's contacts; `notify_customer` mails the customer the stage message;
 * `set` writes mapped host columns (e.g. `customers.status`); `tag` adds a flag in suspend's own state.
 */
export type Action =
  | { type: 'notify' }
  | { type: 'notify_customer' }
  | { type: 'pause' }
  | { type: 'suspend' }
  | { type: 'tag'; tag: string }
  | { type: 'set'; columns: Record<string, string | number | boolean | null> };

export interface Stage {
  name: string;
  /** Index in the ladder: higher is more severe. */
  index: number;
  when: Condition;
  actions: Action[];
  blocksBooking: boolean;
  allowsLogin: boolean;
  /** Customer-facing template; placeholders are checked at load time. */
  message: string;
}

export interface Policy {
  name: string;
  description: string;
  /** `auto`: the sweep clears the stage when its condition no longer holds. `manual`: only `suspend reinstate`. */
  reinstate: 'auto' | 'manual';
  /** Whether entering a stage directly also fires the actions of the lower stages it skipped. */
  fireSkippedStages: boolean;
  stages: Stage[];
}

export interface ExclusionRule {
  /** By account key ... */
  key?: string;
  /** ... or by flag. */
  flag?: string;
  reason: string;
  /** Last day the exclusion applies; absent: no expiry. */
  until?: IsoDate;
}

export interface NotificationSettings {
  emails: string[];
  webhook?: { url: string; secret?: string; batch: boolean };
  /** Also take contacts from the organizations table's mapped column. */
  useOrganizationColumn: boolean;
}

/** Where the host keeps its data. Defaults describe the reference schema (`suspend seed`). */
export interface SourceMapping {
  schema: string | null;
  customers: {
    table: string;
    key: string;
    org: string;
    createdAt: string | null;
    email: string | null;
    name: string | null;
    netTermsDays: string | null;
    /** Boolean columns exposed as flags: flag name → column. */
    flags: Record<string, string>;
    /** Columns that hold consent (e.g. marketing_opt_out): suspend never writes them. */
    consent: string[];
  };
  activity: { table: string; customer: string; at: string } | null;
  invoices: {
    table: string;
    key: string;
    customer: string;
    issuedOn: string | null;
    dueOn: string;
    amount: string;
    paid: string;
    paidOn: string;
  } | null;
  subscriptions: { table: string; customer: string; status: string; activeValues: string[] } | null;
  organizations: {
    table: string;
    key: string;
    timezone: string | null;
    notificationEmails: string | null;
  } | null;
  /** Alternative to the tables above: a view that yields the signal columns directly. */
  view: string | null;
}

export interface Settings {
  /** Postgres schema for suspend's own tables. */
  schema: string;
  batchSize: number;
  /** Safety limit per run: a count, or a fraction of scanned accounts. */
  maxChanges: { count: number } | { fraction: number } | null;
  supportUrl: string | null;
  /** May contain `{key}`. */
  payUrl: string | null;
  currency: string;
  /** SMTP for notification mail: `smtp.url` in the rules, or SMTP_URL. */
  smtp: { url: string | null; from: string };
}

/** The rules of one organization after defaults and its overrides are merged. */
export interface EffectiveRules {
  orgId: string | null;
  policies: Policy[];
  exclusions: ExclusionRule[];
  notifications: NotificationSettings;
  settings: Settings;
}

/** The loaded rules file: defaults plus per-organization overrides, and the source mapping. */
export interface Rules {
  /** Where the rules came from, for messages and the ledger. */
  file: string | null;
  /** sha256 of the canonical form of the effective rules; recorded on every run. */
  hash: string;
  databaseUrl: string | null;
  /** `database.prepared_statements` (default true): false runs every query unnamed (db/prepared.ts). */
  preparedStatements: boolean;
  settings: Settings;
  source: SourceMapping;
  defaults: EffectiveRules;
  /** Effective rules for organizations with overrides, by organization id (as text). */
  organizations: Record<string, EffectiveRules>;
  /** `file:line yaml.path` of a place in the rules file, for messages about it (none without a file). */
  locate?: (path: (string | number)[]) => string;
}

/** One reason a condition held, with the values that met the threshold. */
export interface Reason {
  condition: string;
  /** One sentence: "past due for 32 days (since 2026-10-22); threshold 30 days". */
  text: string;
  evidence: Record<string, string | number | boolean | null>;
}

/** The current state of one account under one policy, as stored by suspend. */
export interface AccountPolicyState {
  stage: string | null;
  stageIndex: number;
  /** When the current stage was entered (as-of day). */
  enteredOn: IsoDate | null;
  /** Day of the last manual reinstatement: clocks of this policy restart there. */
  reinstatedOn: IsoDate | null;
}

/** The evaluator's verdict for one policy. */
export interface PolicyDecision {
  policy: string;
  /** Target stage; null means clear. */
  stage: Stage | null;
  reasons: Reason[];
}

export type TransitionKind = 'enter' | 'escalate' | 'deescalate' | 'clear' | 'hold';

/** What a run changes for one account under one policy. */
export interface Transition {
  key: string;
  orgId: string | null;
  policy: string;
  kind: TransitionKind;
  from: string | null;
  to: string | null;
  toIndex: number;
  /** Actions to fire: those of the entered stage (plus skipped ones when the policy says so). */
  actions: Action[];
  blocksBooking: boolean;
  allowsLogin: boolean;
  message: string | null;
  reasons: Reason[];
}

/** Evaluation of one account: every policy, or why it was spared. */
export interface AccountEvaluation {
  key: string;
  orgId: string | null;
  excluded: { reason: string; until: IsoDate | null; by: 'rules' | 'exclusion' } | null;
  decisions: PolicyDecision[];
  transitions: Transition[];
}

/**
 * The payload of one outbox event (`<schema>.outbox.payload`), written in the same transaction as
 * the change it reports, delivered later by `suspend notify`.
 */
export interface OutboxPayload {
  /** enter | escalate | deescalate | clear | reinstate | revert */
  event: TransitionKind | 'reinstate' | 'revert';
  runId: string | null;
  asOf: IsoDate;
  orgId: string | null;
  customer: { key: string; name: string | null; email: string | null };
  policy: string;
  from: string | null;
  to: string | null;
  blocksBooking: boolean;
  allowsLogin: boolean;
  /** The customer-facing message of the new stage, rendered. */
  message: string | null;
  reasons: Reason[];
  /** Actions of the stage entered: `notify_customer` asks for a mail to the customer too. */
  actions: Action['type'][];
  /**
   * The names its `tag` actions add to the account's state for the episode (a revert: the tags of the
   * state it restores); absent when none.
   */
  tags?: string[];
  actor: string;
  /**
   * The account across its policies after this event, present only when another policy still holds
   * it so that booking or sign-in is not what `blocksBooking` and `allowsLogin` (this policy's) say:
   * a clear of one policy while another still suspends the account.
   */
  account?: AccountHold;
}

/** An account still held by other policies' stages (see OutboxPayload.account). */
export interface AccountHold {
  blocksBooking: boolean;
  allowsLogin: boolean;
  /** The stages that still hold it: "suspended under inactivity". */
  heldBy: string[];
}
