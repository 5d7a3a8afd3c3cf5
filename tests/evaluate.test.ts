import { addDays, addDuration } from '../src/rules/dates';
import { DEFAULT_NOTIFICATIONS, DEFAULT_SETTINGS } from '../src/rules/defaults';
import {
  evaluateAccount,
  evaluatePolicy,
  explainDecision,
  formatMoney,
  messageContext,
  renderMessage,
  renderMessageFor,
  templatePlaceholders,
} from '../src/evaluate/evaluate';
import { PLACEHOLDERS } from '../src/evaluate/placeholders';
import { capturedHostValues } from '../src/evaluate/host-values';
import { markHolds, planHostColumns, settleHostColumns, staleCaptures } from '../src/engine/plan';
import { accountSignals } from './helpers/fixtures';
import type { StateChange } from '../src/write/apply';
import type {
  AccountEvaluation,
  AccountPolicyState,
  Action,
  Condition,
  Duration,
  EffectiveRules,
  ExclusionRule,
  Policy,
  Settings,
  Signals,
  Stage,
} from '../src/types';

/** The pure evaluator on hand-built signals and rules: the four example ladders, transitions, exclusions. */

const AS_OF = '2026-11-23';

function dur(text: string): Duration {
  const [amount, unit] = text.split(' ') as [string, string];
  return { amount: Number(amount), unit: unit.replace(/s$/, '') as Duration['unit'], text };
}

const signals = (overrides: Partial<Signals> = {}): Signals =>
  accountSignals({ lastActivityOn: AS_OF, ...overrides });

/** Past due for `days` days on AS_OF. */
const pastDue = (days: number) => ({ pastDueSince: addDays(AS_OF, -days) });

function stage(index: number, name: string, when: Condition, extra: Partial<Stage> = {}): Stage {
  return {
    name,
    index,
    when,
    actions: [{ type: 'notify' }],
    blocksBooking: false,
    allowsLogin: true,
    message: '',
    ...extra,
  };
}

function policy(name: string, stages: Stage[], extra: Partial<Policy> = {}): Policy {
  return { name, description: '', reinstate: 'auto', fireSkippedStages: false, stages, ...extra };
}

const SUSPEND: Partial<Stage> = { blocksBooking: true, allowsLogin: false };
const PAUSE: Partial<Stage> = { blocksBooking: true, allowsLogin: true };

const inactivity = policy(
  'inactivity',
  [
    stage(
      0,
      'suspended',
      { all: [{ inactive_for: dur('12 months') }, { account_age_at_least: dur('3 months') }] },
      {
        ...SUSPEND,
        actions: [{ type: 'notify' }, { type: 'suspend' }, { type: 'set', columns: { status: 'suspended' } }],
        message: 'We have not seen you since {last_activity}. Contact {support_url} to reactivate.',
      },
    ),
  ],
  { reinstate: 'manual' },
);

const delinquency = policy('delinquency', [
  stage(
    0,
    'suspended',
    { all: [{ overdue_balance_over: 500 }, { past_due_for: dur('31 days') }] },
    {
      ...SUSPEND,
      actions: [{ type: 'notify' }, { type: 'suspend' }],
      message:
        'Your account is suspended: {overdue_balance} is {days_past_due} days past due. Pay at {pay_url}.',
    },
  ),
]);

const overduePause = policy('overdue_pause', [
  stage(
    0,
    'paused',
    { invoice_overdue_for: dur('10 days') },
    {
      ...PAUSE,
      actions: [{ type: 'notify' }, { type: 'pause' }],
      message:
        'Invoice {invoice} for {invoice_amount} is {invoice_days_overdue} days overdue. Pay it at {pay_url}.',
    },
  ),
]);

const escalation = policy('escalation', [
  stage(
    0,
    'day_14',
    { all: [{ has_active_subscription: true }, { past_due_for: dur('14 days') }] },
    {
      message: 'Hello {name}, your payment is {days_past_due} days late.',
    },
  ),
  stage(
    1,
    'day_30',
    { all: [{ has_active_subscription: true }, { past_due_for: dur('30 days') }] },
    {
      ...PAUSE,
      actions: [{ type: 'notify' }, { type: 'pause' }],
    },
  ),
]);

const SETTINGS: Settings = {
  ...DEFAULT_SETTINGS,
  payUrl: 'https://pay.example.com/{key}',
  supportUrl: 'https://help.example.com',
};

function rules(policies: Policy[], extra: Partial<EffectiveRules> = {}): EffectiveRules {
  return {
    orgId: null,
    policies,
    exclusions: [],
    notifications: DEFAULT_NOTIFICATIONS,
    settings: SETTINGS,
    ...extra,
  };
}

const ALL = rules([inactivity, delinquency, overduePause, escalation]);

function state(
  p: Policy,
  stageName: string | null,
  extra: Partial<AccountPolicyState> = {},
): AccountPolicyState {
  const st = p.stages.find((s) => s.name === stageName);
  return {
    stage: st?.name ?? null,
    stageIndex: st?.index ?? -1,
    enteredOn: null,
    reinstatedOn: null,
    ...extra,
  };
}

function evaluate(
  s: Signals,
  options: {
    rules?: EffectiveRules;
    states?: Record<string, AccountPolicyState>;
    exclusion?: { reason: string; until: string | null } | null;
    asOf?: string;
  } = {},
): AccountEvaluation {
  return evaluateAccount({
    signals: s,
    rules: options.rules ?? ALL,
    asOf: options.asOf ?? AS_OF,
    states: options.states ?? {},
    exclusion: options.exclusion ?? null,
  });
}

/** The decided stage name per policy, `clear` when none. */
function stageOf(s: Signals, p: Policy, st: AccountPolicyState | null = null, asOf = AS_OF): string {
  return evaluatePolicy(s, p, asOf, st, SETTINGS).stage?.name ?? 'clear';
}

describe('inactivity: 12 months without activity, account at least 3 months old (calendar months)', () => {
  const twelveMonthsAgo = addDuration(AS_OF, dur('12 months'), -1); // 2025-11-23
  test.each<[string, Partial<Signals>, string]>([
    ['active today', {}, 'clear'],
    ['last activity exactly 12 months ago', { lastActivityOn: twelveMonthsAgo }, 'suspended'],
    ['last activity 12 months ago less one day', { lastActivityOn: addDays(twelveMonthsAgo, 1) }, 'clear'],
    ['last activity 3 years ago', { lastActivityOn: '2023-06-01' }, 'suspended'],
    [
      'never active, created 13 months ago',
      { lastActivityOn: null, accountCreatedOn: '2025-10-23' },
      'suspended',
    ],
    [
      'never active, created 11 months ago',
      { lastActivityOn: null, accountCreatedOn: '2025-12-23' },
      'clear',
    ],
    [
      'inactive 2 years but creation day unknown',
      { lastActivityOn: '2024-11-01', accountCreatedOn: null },
      'clear',
    ],
    ['neither activity nor creation day known', { lastActivityOn: null, accountCreatedOn: null }, 'clear'],
    [
      'inactive 2 years, account only 2 months old (imported)',
      { lastActivityOn: '2024-11-01', accountCreatedOn: '2026-09-30' },
      'clear',
    ],
  ])('%s → %s', (_label, overrides, expected) => {
    expect(stageOf(signals(overrides), inactivity)).toBe(expected);
  });

  test('months are calendar months at month ends (Feb 28 + 12 months)', () => {
    const s = signals({ lastActivityOn: '2025-02-28' });
    expect(stageOf(s, inactivity, null, '2026-02-27')).toBe('clear');
    expect(stageOf(s, inactivity, null, '2026-02-28')).toBe('suspended');
  });

  test('the reasons name the last activity, the days and both thresholds', () => {
    const d = evaluatePolicy(
      signals({ lastActivityOn: '2025-11-01', accountCreatedOn: '2024-01-15' }),
      inactivity,
      AS_OF,
      null,
      SETTINGS,
    );
    expect(d.reasons).toEqual([
      {
        condition: 'inactive_for',
        text: 'inactive for 387 days (last activity 2025-11-01); threshold 12 months',
        evidence: { last_activity: '2025-11-01', days: 387, threshold: '12 months' },
      },
      {
        condition: 'account_age_at_least',
        text: 'account 1043 days old (created 2024-01-15); threshold 3 months',
        evidence: { account_created: '2024-01-15', days: 1043, threshold: '3 months' },
      },
    ]);
  });

  test('never active: inactivity counts from the creation day and says so', () => {
    const d = evaluatePolicy(
      signals({ lastActivityOn: null, accountCreatedOn: '2025-01-10' }),
      inactivity,
      AS_OF,
      null,
      SETTINGS,
    );
    expect(d.reasons[0]?.text).toBe(
      'inactive for 682 days (never active; account created 2025-01-10); threshold 12 months',
    );
    expect(d.reasons[0]?.evidence).toMatchObject({ last_activity: null, account_created: '2025-01-10' });
  });
});

describe('delinquency: overdue balance over $5.00 and past due more than 30 days', () => {
  test.each<[string, Partial<Signals>, string]>([
    ['$5.01 overdue, day 31', { overdueBalance: 501, ...pastDue(31) }, 'suspended'],
    ['$5.00 overdue is not over $5.00', { overdueBalance: 500, ...pastDue(60) }, 'clear'],
    ['$42.00 overdue, day 29', { overdueBalance: 4200, ...pastDue(29) }, 'clear'],
    ['$42.00 overdue, day 30', { overdueBalance: 4200, ...pastDue(30) }, 'clear'],
    ['$42.00 overdue, day 31', { overdueBalance: 4200, ...pastDue(31) }, 'suspended'],
    ['$42.00 overdue, day 32', { overdueBalance: 4200, ...pastDue(32) }, 'suspended'],
    ['$42.00 overdue but not past due', { overdueBalance: 4200, pastDueSince: null }, 'clear'],
    [
      'large open balance but nothing overdue',
      { openBalance: 900_000, overdueBalance: 0, ...pastDue(90) },
      'clear',
    ],
  ])('%s → %s', (_label, overrides, expected) => {
    expect(stageOf(signals(overrides), delinquency)).toBe(expected);
  });

  test('each reason is one sentence with the values that met the threshold', () => {
    const d = evaluatePolicy(
      signals({ overdueBalance: 4200, pastDueSince: '2026-10-22' }),
      delinquency,
      AS_OF,
      null,
      SETTINGS,
    );
    expect(d.stage?.name).toBe('suspended');
    expect(d.reasons).toEqual([
      {
        condition: 'overdue_balance_over',
        text: 'overdue balance $42.00 is over $5.00',
        evidence: {
          overdue_balance: '$42.00',
          overdue_balance_cents: 4200,
          threshold: '$5.00',
          threshold_cents: 500,
        },
      },
      {
        condition: 'past_due_for',
        text: 'past due for 32 days (since 2026-10-22); threshold 31 days',
        evidence: { past_due_since: '2026-10-22', days: 32, threshold: '31 days' },
      },
    ]);
    expect(explainDecision(d)).toBe(
      'delinquency: suspended, because overdue balance $42.00 is over $5.00 and past due for 32 days (since 2026-10-22); threshold 31 days',
    );
  });

  test("a clear decision says which of the first stage's conditions failed, and only those", () => {
    const d = evaluatePolicy(
      signals({ overdueBalance: 4200, ...pastDue(12) }),
      delinquency,
      AS_OF,
      null,
      SETTINGS,
    );
    expect(d.stage).toBeNull();
    expect(d.reasons).toHaveLength(1);
    expect(d.reasons[0]).toMatchObject({
      condition: 'past_due_for',
      evidence: { days: 12, threshold: '31 days' },
    });
    expect(d.reasons[0]?.text).toBe(
      `past due for 12 days (since ${addDays(AS_OF, -12)}); threshold 31 days not reached`,
    );
    expect(explainDecision(d)).toMatch(/^delinquency: clear, because past due for 12 days/);
  });
});

describe('overdue pause: any invoice at least 10 days overdue', () => {
  const invoice = (days: number) => ({
    oldestOverdueDays: days,
    oldestOverdueInvoice: { id: '1043', unpaid: 4200, daysOverdue: days },
    overdueBalance: 4200,
  });
  test.each<[number | null, string]>([
    [null, 'clear'],
    [0, 'clear'],
    [9, 'clear'],
    [10, 'paused'],
    [11, 'paused'],
    [400, 'paused'],
  ])('oldest overdue invoice %p days → %s', (days, expected) => {
    const s = days === null ? signals() : signals(invoice(days));
    expect(stageOf(s, overduePause)).toBe(expected);
  });

  test('the reason names the invoice, its amount and since when it is overdue', () => {
    const d = evaluatePolicy(signals(invoice(12)), overduePause, AS_OF, null, SETTINGS);
    expect(d.reasons[0]).toEqual({
      condition: 'invoice_overdue_for',
      text: 'invoice 1043 ($42.00 unpaid) overdue for 12 days (since 2026-11-11); threshold 10 days',
      evidence: {
        invoice: '1043',
        unpaid_cents: 4200,
        overdue_since: '2026-11-11',
        days: 12,
        threshold: '10 days',
      },
    });
  });

  test('a month threshold compares calendar dates, not 30 days', () => {
    const monthly = policy('m', [stage(0, 'paused', { invoice_overdue_for: dur('1 month') })]);
    // Overdue since 2026-02-01: one calendar month later is 2026-03-01, only 28 days.
    expect(stageOf(signals({ oldestOverdueDays: 28 }), monthly, null, '2026-03-01')).toBe('paused');
    expect(stageOf(signals({ oldestOverdueDays: 27 }), monthly, null, '2026-03-01')).toBe('clear');
  });
});

describe('escalation for customers with an active subscription: day 14 notify, day 30 notify + pause', () => {
  test.each<[number, number, string]>([
    [1, 13, 'clear'],
    [1, 14, 'day_14'],
    [1, 15, 'day_14'],
    [2, 29, 'day_14'],
    [1, 30, 'day_30'],
    [1, 31, 'day_30'],
    [0, 31, 'clear'],
    [0, 14, 'clear'],
  ])('%p active subscriptions, past due %p days → %s', (subs, days, expected) => {
    expect(stageOf(signals({ activeSubscriptions: subs, ...pastDue(days) }), escalation)).toBe(expected);
  });

  test('a clear decision lists the failed leaves of the first stage only (the subscription held)', () => {
    const d = evaluatePolicy(
      signals({ activeSubscriptions: 1, ...pastDue(5) }),
      escalation,
      AS_OF,
      null,
      SETTINGS,
    );
    expect(d.reasons.map((r) => r.condition)).toEqual(['past_due_for']);
  });

  test('day 14 enters with notify and the rendered message; day 30 escalates with notify + pause', () => {
    const day14 = evaluate(signals({ activeSubscriptions: 1, ...pastDue(14) }), {
      rules: rules([escalation]),
    });
    expect(day14.transitions).toEqual([
      expect.objectContaining({
        key: 'c1',
        orgId: 'org-1',
        policy: 'escalation',
        kind: 'enter',
        from: null,
        to: 'day_14',
        toIndex: 0,
        actions: [{ type: 'notify' }],
        blocksBooking: false,
        allowsLogin: true,
        message: 'Hello Ada Lovelace, your payment is 14 days late.',
      }),
    ]);
    const day30 = evaluate(signals({ activeSubscriptions: 1, ...pastDue(30) }), {
      rules: rules([escalation]),
      states: { escalation: state(escalation, 'day_14') },
    });
    expect(day30.transitions).toEqual([
      expect.objectContaining({
        kind: 'escalate',
        from: 'day_14',
        to: 'day_30',
        toIndex: 1,
        actions: [{ type: 'notify' }, { type: 'pause' }],
        blocksBooking: true,
        allowsLogin: true,
        message: null,
      }),
    ]);
  });

  test('same stage as stored: no transition', () => {
    const e = evaluate(signals({ activeSubscriptions: 1, ...pastDue(20) }), {
      rules: rules([escalation]),
      states: { escalation: state(escalation, 'day_14') },
    });
    expect(e.decisions[0]?.stage?.name).toBe('day_14');
    expect(e.transitions).toEqual([]);
  });
});

describe('catch-up and skipped stages', () => {
  test('first seen at day 40 enters the most severe stage once; the next run with that state changes nothing', () => {
    const s = signals({ activeSubscriptions: 1, ...pastDue(40) });
    const first = evaluate(s, { rules: rules([escalation]) });
    expect(first.transitions).toHaveLength(1);
    expect(first.transitions[0]).toMatchObject({
      kind: 'enter',
      from: null,
      to: 'day_30',
      actions: [{ type: 'notify' }, { type: 'pause' }],
    });
    const after = { escalation: { stage: 'day_30', stageIndex: 1, enteredOn: AS_OF, reinstatedOn: null } };
    expect(evaluate(s, { rules: rules([escalation]), states: after }).transitions).toEqual([]);
    expect(
      evaluate(s, { rules: rules([escalation]), states: after, asOf: addDays(AS_OF, 7) }).transitions,
    ).toEqual([]);
  });

  const ladder = (fire: boolean) =>
    policy(
      'ladder',
      [
        stage(
          0,
          'warned',
          { past_due_for: dur('7 days') },
          { actions: [{ type: 'notify' }, { type: 'notify_customer' }] },
        ),
        stage(
          1,
          'paused',
          { past_due_for: dur('14 days') },
          {
            ...PAUSE,
            actions: [
              { type: 'notify' },
              { type: 'pause' },
              { type: 'set', columns: { status: 'paused', note: 'x' } },
            ],
          },
        ),
        stage(
          2,
          'suspended',
          { past_due_for: dur('30 days') },
          {
            ...SUSPEND,
            actions: [
              { type: 'notify' },
              { type: 'suspend' },
              { type: 'set', columns: { note: 'x', status: 'paused' } },
              { type: 'tag', tag: 'late' },
            ],
          },
        ),
      ],
      { fireSkippedStages: fire },
    );

  test('fire_skipped_stages: entering at the top fires the skipped stages too, deduplicated, in ladder order', () => {
    const s = signals(pastDue(45));
    const fired = evaluate(s, { rules: rules([ladder(true)]) }).transitions[0]?.actions;
    expect(fired).toEqual<Action[]>([
      { type: 'notify' },
      { type: 'notify_customer' },
      { type: 'pause' },
      { type: 'set', columns: { status: 'paused', note: 'x' } },
      { type: 'suspend' },
      { type: 'tag', tag: 'late' },
    ]);
    const fromWarned = evaluate(s, {
      rules: rules([ladder(true)]),
      states: { ladder: state(ladder(true), 'warned') },
    });
    expect(fromWarned.transitions[0]).toMatchObject({ kind: 'escalate', from: 'warned', to: 'suspended' });
    expect(fromWarned.transitions[0]?.actions.map((a) => a.type)).toEqual([
      'notify',
      'pause',
      'set',
      'suspend',
      'tag',
    ]);
  });

  test('without fire_skipped_stages only the entered stage fires', () => {
    const t = evaluate(signals(pastDue(45)), { rules: rules([ladder(false)]) }).transitions[0];
    expect(t?.actions.map((a) => a.type)).toEqual(['notify', 'suspend', 'set', 'tag']);
  });
});

describe('exclusions beat every rule', () => {
  const due = signals({
    key: 'c7',
    activeSubscriptions: 1,
    overdueBalance: 4200,
    ...pastDue(40),
    flags: ['vip'],
  });
  const withExclusions = (exclusions: ExclusionRule[]) => rules([delinquency, escalation], { exclusions });

  test.each<
    [string, ExclusionRule[], { reason: string; until: string | null } | null, 'rules' | 'exclusion' | null]
  >([
    ['no exclusion', [], null, null],
    ['rules key, no expiry', [{ key: 'c7', reason: 'key account' }], null, 'rules'],
    ['rules key, until today (inclusive)', [{ key: 'c7', reason: 'grace', until: AS_OF }], null, 'rules'],
    ['rules key, expired yesterday', [{ key: 'c7', reason: 'grace', until: addDays(AS_OF, -1) }], null, null],
    ['rules key of another account', [{ key: 'c8', reason: 'other' }], null, null],
    ['rules flag vip', [{ flag: 'vip', reason: 'VIP accounts are handled by hand' }], null, 'rules'],
    ['rules flag the account lacks', [{ flag: 'partner', reason: 'partners' }], null, null],
    ['rules flag, expired', [{ flag: 'vip', reason: 'old', until: '2026-01-01' }], null, null],
    ['table, no expiry', [], { reason: 'support ticket 12', until: null }, 'exclusion'],
    ['table, until tomorrow', [], { reason: 'promised to pay', until: addDays(AS_OF, 1) }, 'exclusion'],
    ['table, expired', [], { reason: 'promised to pay', until: addDays(AS_OF, -1) }, null],
  ])('%s', (_label, exclusions, table, by) => {
    const e = evaluate(due, { rules: withExclusions(exclusions), exclusion: table });
    // Decisions are computed either way, for the report.
    expect(e.decisions.map((d) => d.stage?.name ?? 'clear')).toEqual(['suspended', 'day_30']);
    if (by === null) {
      expect(e.excluded).toBeNull();
      expect(e.transitions.map((t) => t.kind)).toEqual(['enter', 'enter']);
    } else {
      expect(e.excluded).toMatchObject({ by });
      expect(e.transitions).toEqual([]);
    }
  });

  test('an excluded account whose suspension no longer holds (it paid) is cleared: an exclusion never keeps access away', () => {
    const e = evaluate(signals(), {
      rules: withExclusions([{ key: 'c1', reason: 'payment plan' }]),
      states: { delinquency: state(delinquency, 'suspended') },
    });
    expect(e.excluded).toEqual({ reason: 'payment plan', until: null, by: 'rules' });
    expect(e.decisions[0]?.stage).toBeNull();
    expect(e.transitions.map((t) => `${t.policy} ${t.kind} ${t.from}`)).toEqual([
      'delinquency clear suspended',
    ]);
  });

  test('an excluded account still owing stays in its stage and does not escalate', () => {
    const e = evaluate(due, {
      rules: withExclusions([{ key: 'c7', reason: 'payment plan' }]),
      states: { escalation: state(escalation, 'day_14') },
    });
    expect(e.excluded).toMatchObject({ reason: 'payment plan' });
    expect(e.decisions.map((d) => d.stage?.name ?? 'clear')).toEqual(['suspended', 'day_30']);
    expect(e.transitions).toEqual([]);
  });
});

describe('going down: automatic clear, manual hold, reinstatement', () => {
  test('auto: paid up, the delinquency suspension clears with no actions and says why', () => {
    const e = evaluate(signals(), {
      rules: rules([delinquency]),
      states: { delinquency: state(delinquency, 'suspended') },
    });
    expect(e.transitions).toEqual([
      expect.objectContaining({
        kind: 'clear',
        from: 'suspended',
        to: null,
        toIndex: -1,
        actions: [],
        blocksBooking: false,
        allowsLogin: true,
        message: null,
      }),
    ]);
    expect(e.transitions[0]?.reasons.map((r) => r.text)).toEqual([
      'overdue balance $0.00 is not over $5.00',
      'not past due; threshold 31 days',
    ]);
  });

  test('auto: day 30 back to day 14 de-escalates', () => {
    const e = evaluate(signals({ activeSubscriptions: 1, ...pastDue(20) }), {
      rules: rules([escalation]),
      states: { escalation: state(escalation, 'day_30') },
    });
    expect(e.transitions[0]).toMatchObject({
      kind: 'deescalate',
      from: 'day_30',
      to: 'day_14',
      toIndex: 0,
      actions: [],
    });
    expect(e.transitions[0]?.reasons[0]?.text).toMatch(/threshold 30 days not reached$/);
  });

  test('manual: active again, the inactivity suspension is held for manual reinstatement', () => {
    const e = evaluate(signals({ lastActivityOn: addDays(AS_OF, -1) }), {
      rules: rules([inactivity]),
      states: { inactivity: state(inactivity, 'suspended') },
    });
    expect(e.transitions).toEqual([
      expect.objectContaining({ kind: 'hold', from: 'suspended', to: null, actions: [] }),
    ]);
  });

  test('a manual reinstatement restarts the inactivity clock', () => {
    const s = signals({ lastActivityOn: '2023-01-01' });
    const reinstated = (on: string) => state(inactivity, null, { reinstatedOn: on });
    expect(stageOf(s, inactivity, reinstated('2026-11-01'))).toBe('clear');
    expect(stageOf(s, inactivity, reinstated(addDuration(AS_OF, dur('12 months'), -1)))).toBe('suspended');
    // Activity after the reinstatement counts from the activity.
    expect(stageOf(signals({ lastActivityOn: '2026-01-01' }), inactivity, reinstated('2025-06-01'))).toBe(
      'clear',
    );
    const d = evaluatePolicy(s, inactivity, AS_OF, reinstated('2026-11-01'), SETTINGS);
    expect(d.reasons[0]?.text).toBe(
      'inactive for 22 days (last activity 2023-01-01; counted from the manual reinstatement on 2026-11-01); threshold 12 months not reached',
    );
    expect(d.reasons[0]?.evidence).toMatchObject({ days: 22, reinstated_on: '2026-11-01' });
  });

  test('a manual reinstatement restarts the past-due and overdue-invoice clocks, not balances', () => {
    const s = signals({
      activeSubscriptions: 1,
      overdueBalance: 4200,
      ...pastDue(40),
      oldestOverdueDays: 40,
    });
    const after = (days: number) => ({
      stage: null,
      stageIndex: -1,
      enteredOn: null,
      reinstatedOn: addDays(AS_OF, -days),
    });
    expect(stageOf(s, escalation, after(10))).toBe('clear');
    expect(stageOf(s, escalation, after(14))).toBe('day_14');
    expect(stageOf(s, escalation, after(30))).toBe('day_30');
    expect(stageOf(s, overduePause, after(9))).toBe('clear');
    expect(stageOf(s, overduePause, after(10))).toBe('paused');
    const balanceOnly = policy('balance', [stage(0, 'flagged', { overdue_balance_over: 1000 })]);
    expect(stageOf(s, balanceOnly, after(0))).toBe('flagged');
  });
});

describe('organizations', () => {
  test("an organization's effective rules with a longer threshold give a different stage for the same account", () => {
    const lenient = policy('delinquency', [
      stage(
        0,
        'suspended',
        { all: [{ overdue_balance_over: 500 }, { past_due_for: dur('45 days') }] },
        SUSPEND,
      ),
    ]);
    const s = signals({ overdueBalance: 4200, ...pastDue(40) });
    const defaults = evaluate(s, { rules: rules([delinquency]) });
    const org = evaluate(s, { rules: rules([lenient], { orgId: 'org-1' }) });
    expect(defaults.decisions[0]?.stage?.name).toBe('suspended');
    expect(defaults.transitions).toHaveLength(1);
    expect(org.decisions[0]?.stage).toBeNull();
    expect(org.decisions[0]?.reasons[0]?.text).toMatch(
      /past due for 40 days .*threshold 45 days not reached/,
    );
    expect(org.transitions).toEqual([]);
  });
});

describe('conditions: any, not, flags, counts', () => {
  const p = (when: Condition) => policy('p', [stage(0, 'hit', when)]);
  test.each<[string, Condition, Partial<Signals>, boolean]>([
    [
      'any: one branch holds',
      { any: [{ flag: 'late' }, { unpaid_invoices_at_least: 3 }] },
      { unpaidInvoiceCount: 3 },
      true,
    ],
    [
      'any: none holds',
      { any: [{ flag: 'late' }, { unpaid_invoices_at_least: 3 }] },
      { unpaidInvoiceCount: 2 },
      false,
    ],
    ['not: inner fails', { not: { flag: 'vip' } }, {}, true],
    ['not: inner holds', { not: { flag: 'vip' } }, { flags: ['vip'] }, false],
    [
      'has_active_subscription: false wanted',
      { has_active_subscription: false },
      { activeSubscriptions: 0 },
      true,
    ],
    [
      'has_active_subscription: false wanted, has one',
      { has_active_subscription: false },
      { activeSubscriptions: 2 },
      false,
    ],
    ['open_balance_over: strictly greater', { open_balance_over: 1000 }, { openBalance: 1000 }, false],
    ['open_balance_over: one cent more', { open_balance_over: 1000 }, { openBalance: 1001 }, true],
    ['empty all holds', { all: [] }, {}, true],
    ['empty any fails', { any: [] }, {}, false],
  ])('%s', (_label, when, overrides, holds) => {
    const d = evaluatePolicy(signals(overrides), p(when), AS_OF, null, SETTINGS);
    expect(d.stage !== null).toBe(holds);
    expect(d.reasons.length).toBeGreaterThan(0);
  });

  test('any gives the reasons of the branches that held; not says the inner condition did not hold', () => {
    const anyDecision = evaluatePolicy(
      signals({ unpaidInvoiceCount: 4, flags: ['late'] }),
      p({ any: [{ flag: 'late' }, { unpaid_invoices_at_least: 3 }, { open_balance_over: 100 }] }),
      AS_OF,
      null,
      SETTINGS,
    );
    expect(anyDecision.reasons.map((r) => r.text)).toEqual([
      'flag late is set',
      '4 unpaid invoices; threshold 3',
    ]);
    const notDecision = evaluatePolicy(signals(), p({ not: { flag: 'vip' } }), AS_OF, null, SETTINGS);
    expect(notDecision.reasons).toEqual([
      {
        condition: 'not',
        text: 'not (flag vip): flag vip is not set',
        evidence: { flag: 'vip', set: false },
      },
    ]);
  });
});

describe('messages and money', () => {
  test.each<[number, string, string]>([
    [4200, 'USD', '$42.00'],
    [5, 'USD', '$0.05'],
    [0, 'USD', '$0.00'],
    [-1234, 'USD', '-$12.34'],
    [123456789, 'USD', '$1,234,567.89'],
    [Number.MAX_SAFE_INTEGER, 'USD', '$90,071,992,547,409.91'],
    [2 ** 60, 'USD', '$11,529,215,046,068,469.76'],
    [4200, 'usd', '$42.00'],
    [99, 'EUR', '€0.99'],
    [500, 'JPY', '¥500'],
    [1234, 'KWD', 'KWD 1.234'],
    [150, 'XYZ', 'XYZ 1.50'],
  ])('formatMoney(%p, %p) = %p', (cents, currency, expected) => {
    expect(formatMoney(cents, currency)).toBe(expected);
  });

  test('stage messages fill every placeholder: money, days, invoice, urls with {key}', () => {
    const s = signals({
      key: 'acct 9',
      overdueBalance: 4200,
      pastDueSince: '2026-10-22',
      oldestOverdueDays: 12,
      oldestOverdueInvoice: { id: '1043', unpaid: 4200, daysOverdue: 12 },
    });
    const e = evaluate(s, { rules: rules([delinquency, overduePause]) });
    expect(e.transitions.map((t) => t.message)).toEqual([
      'Your account is suspended: $42.00 is 32 days past due. Pay at https://pay.example.com/acct%209.',
      'Invoice 1043 for $42.00 is 12 days overdue. Pay it at https://pay.example.com/acct%209.',
    ]);
  });

  test('each placeholder renders its own value, from only the placeholders a template names', () => {
    const s = signals({
      key: 'acct 9',
      name: ' Ada Lovelace ',
      openBalance: 9900,
      overdueBalance: 4200,
      pastDueSince: '2026-10-22',
      oldestOverdueDays: 12,
      oldestOverdueInvoice: { id: '1043', unpaid: 3100, daysOverdue: 13 },
      lastActivityOn: '2025-11-20',
    });
    const settings = {
      ...DEFAULT_SETTINGS,
      payUrl: 'https://pay.example.com/{key}',
      supportUrl: 'https://help.example.com',
    };
    const input = { signals: s, settings, asOf: AS_OF, policy: 'delinquency', stage: 'suspended' };
    const template = Object.keys(PLACEHOLDERS)
      .map((k) => `${k}={${k}}`)
      .join('; ');
    const expected =
      'name=Ada Lovelace; key=acct 9; balance=$99.00; overdue_balance=$42.00; days_past_due=32; ' +
      'past_due_since=2026-10-22; invoice=1043; invoice_amount=$31.00; invoice_days_overdue=13; ' +
      'last_activity=2025-11-20; days_inactive=368; stage=suspended; policy=delinquency; ' +
      'support_url=https://help.example.com; pay_url=https://pay.example.com/acct%209';
    expect(renderMessageFor(template, input)).toBe(expected);
    expect(renderMessage(template, messageContext(input))).toBe(expected);
    expect(renderMessageFor('Only {balance}, { stage } and {nope}.', input)).toBe(
      'Only $99.00, suspended and {nope}.',
    );
    expect(renderMessageFor('No placeholders.', input)).toBe('No placeholders.');
  });

  test('missing values render as readable words, never undefined or null', () => {
    const everything = Object.keys(PLACEHOLDERS)
      .map((k) => `${k}={${k}}`)
      .join(' ');
    const s = signals({ name: null, email: null, lastActivityOn: null, accountCreatedOn: null });
    const text = renderMessage(
      everything,
      messageContext({ signals: s, settings: DEFAULT_SETTINGS, asOf: AS_OF, policy: 'p', stage: null }),
    );
    expect(text).not.toMatch(/undefined|null|NaN|\{/);
    expect(text).toContain('name=customer');
    expect(text).toContain('last_activity=never');
    expect(text).toContain('pay_url=our payment page');
    expect(text).toContain('invoice=none');
    expect(renderMessage('Hi {name}, see {support_url}', {})).toBe('Hi customer, see our support team');
  });

  test('placeholders may have spaces inside braces; unknown names stay as written; the loader can list them', () => {
    expect(renderMessage('{ name } owes { balance }, {nope}', { name: 'Ada', balance: '$1.00' })).toBe(
      'Ada owes $1.00, {nope}',
    );
    expect(templatePlaceholders('{a} {b} { a }')).toEqual(['a', 'b']);
  });
});

describe('host columns (customers.status and the like)', () => {
  const set = (columns: Record<string, string>) => ({ type: 'set' as const, columns });
  const paused = stage(
    0,
    'paused',
    { invoice_overdue_for: dur('10 days') },
    {
      actions: [set({ status: 'paused', note: 'overdue' })],
      allowsLogin: true,
      blocksBooking: true,
    },
  );
  const suspended = stage(
    0,
    'suspended',
    { inactive_for: dur('12 months') },
    {
      actions: [set({ status: 'suspended' })],
      allowsLogin: false,
      blocksBooking: true,
    },
  );
  const policies = [policy('overdue', [paused]), policy('inactivity', [suspended])];
  const stored = (entries: [string, string | null, Record<string, unknown> | null][]) =>
    new Map(
      entries.map(([p, st, hostBefore]) => [
        p,
        {
          stage: st,
          stageIndex: st === null ? -1 : 0,
          enteredOn: AS_OF,
          reinstatedOn: null,
          version: 1,
          hostBefore,
        },
      ]),
    );
  const change = (p: string, to: string | null) => ({ policy: p, to }) as unknown as StateChange;

  test('the most severe stage sets a column, in the order the stages name them; a first set is captured', () => {
    const both = [change('overdue', 'paused'), change('inactivity', 'suspended')];
    expect(planHostColumns('c1', policies, new Map(), both)).toEqual([
      { key: 'c1', column: 'status', value: 'suspended', capture: true },
      { key: 'c1', column: 'note', value: 'overdue', capture: true },
    ]);
    // The same account with a cleared state stored: the same columns, the same winner.
    expect(planHostColumns('c1', policies, stored([['overdue', null, null]]), both)).toEqual(
      planHostColumns('c1', policies, new Map(), both),
    );
    // Already paused: suspension takes the column over (while it still says paused, the value the
    // stage set), nothing is captured again.
    expect(
      planHostColumns('c1', policies, stored([['overdue', 'paused', { status: 'active' }]]), [
        change('inactivity', 'suspended'),
      ]),
    ).toEqual([{ key: 'c1', column: 'status', value: 'suspended', capture: false, expected: 'paused' }]);
  });

  test('a clear gives back the captured value; a column named like an Object property is not captured by default', () => {
    const weird = stage(
      0,
      'flagged',
      { inactive_for: dur('12 months') },
      { actions: [set({ constructor: 'x' })] },
    );
    const all = [...policies, policy('odd', [weird])];
    expect(
      planHostColumns('c1', all, stored([['overdue', 'paused', { status: 'active', note: null }]]), [
        change('overdue', null),
      ]),
    ).toEqual([
      // Given back only over what the stage set: a value the host wrote since stays.
      { key: 'c1', column: 'status', value: 'active', capture: false, expected: 'paused' },
      { key: 'c1', column: 'note', value: null, capture: false, expected: 'overdue' },
    ]);
    // Nothing captured for "constructor": the column is left as it is, never set to Object's text.
    expect(planHostColumns('c1', all, stored([['odd', 'flagged', null]]), [change('odd', null)])).toEqual([]);
    const rows: [string, Record<string, unknown>][] = [
      ['delinquency', JSON.parse('{"__proto__": "kept", "status": "first"}') as Record<string, unknown>],
      ['inactivity', { status: 'second' }],
    ];
    const captured = capturedHostValues(rows);
    expect(Object.hasOwn(captured, '__proto__')).toBe(true);
    expect(captured['__proto__']).toBe('kept');
    expect(captured['status']).toBe('first');
    // The policy first by name wins, in whatever order the rows came.
    expect(capturedHostValues([...rows].reverse())['status']).toBe('first');
    expect(Object.hasOwn(captured, 'constructor')).toBe(false);
  });

  test("a new capture drops the account's older captures of that column, except where a stage may still hold it", () => {
    const rows = stored([
      ['inactivity', null, { status: 'long ago', note: 'kept' }],
      ['overdue', null, { status: 'long ago' }],
      ['retired', 'gone', { status: 'the host value' }],
    ]);
    expect(staleCaptures(policies, rows, new Set(['overdue']), new Set(['status']))).toEqual([
      { policy: 'inactivity', version: 1, hostBefore: { note: 'kept' } },
    ]);
    expect(staleCaptures(policies, rows, new Set(), new Set(['status']))).toEqual([
      { policy: 'inactivity', version: 1, hostBefore: { note: 'kept' } },
      { policy: 'overdue', version: 1, hostBefore: null },
    ]);
    // A stage that sets the column keeps its capture of it.
    expect(
      staleCaptures(
        policies,
        stored([['overdue', 'paused', { status: 'x' }]]),
        new Set(),
        new Set(['status']),
      ),
    ).toEqual([]);
  });

  test('settling the columns of an account with a refused change: its current stages decide, else what a clear or the page would give back', () => {
    const wrote = [
      { key: 'c1', column: 'status', value: 'suspended', capture: true },
      { key: 'c1', column: 'note', value: 'overdue', capture: true },
    ];
    const old = { status: 'active', note: null };
    // Someone else paused it: its stage sets both columns.
    expect(
      settleHostColumns('c1', policies, [], [{ policy: 'overdue', stage: 'paused' }], wrote, old),
    ).toEqual([
      { key: 'c1', column: 'status', value: 'paused', capture: false },
      { key: 'c1', column: 'note', value: 'overdue', capture: false },
    ]);
    // No stage sets them now or before: back to the values before the page, whatever an earlier
    // episode captured; a customer row that was not there is left alone.
    const earlier = { policy: 'inactivity', stage: null, host_before: { status: 'long ago' } };
    expect(settleHostColumns('c1', policies, [], [earlier], wrote, { status: 'active' })).toEqual([
      { key: 'c1', column: 'status', value: 'active', capture: false },
    ]);
    expect(settleHostColumns('c1', policies, [], [], wrote, {})).toEqual([]);
    // Suspended before the page, its clear written: the captured value comes back, whether the page
    // wrote the column or not; nothing captured and not written: left as it is.
    const held = [{ policy: 'inactivity', stage: 'suspended' }];
    const cleared = [{ policy: 'inactivity', stage: null, host_before: { status: 'active' } }];
    const restored = [{ key: 'c1', column: 'status', value: 'active', capture: false }];
    expect(
      settleHostColumns('c1', policies, held, cleared, wrote.slice(0, 1), { status: 'suspended' }),
    ).toEqual(restored);
    expect(settleHostColumns('c1', policies, held, cleared, [], {})).toEqual(restored);
    expect(settleHostColumns('c1', policies, held, [{ policy: 'inactivity', stage: null }], [], {})).toEqual(
      [],
    );
    // The capture as read before the page counts too (a row written since may hold others only).
    const heldWithCapture = [{ ...held[0]!, host_before: { status: 'active' } }];
    const otherCapture = [{ policy: 'inactivity', stage: null, host_before: { note: null } }];
    expect(settleHostColumns('c1', policies, heldWithCapture, otherCapture, [], {})).toEqual(restored);
    // A winning value of null is written as null, not replaced by the old value.
    const blank = policy('blank', [
      stage(
        0,
        'blank',
        { inactive_for: dur('12 months') },
        { actions: [{ type: 'set', columns: { status: null } }] },
      ),
    ]) as unknown as (typeof policies)[number];
    expect(
      settleHostColumns('c1', [blank], [], [{ policy: 'blank', stage: 'blank' }], wrote.slice(0, 1), old),
    ).toEqual([{ key: 'c1', column: 'status', value: null, capture: false }]);
  });

  test("an event names the other policies that still hold the account in the rules file's order", () => {
    const third = policy('third', [
      stage(0, 'paused', { inactive_for: dur('6 months') }, { allowsLogin: true, blocksBooking: true }),
    ]) as unknown as (typeof policies)[number];
    const all = [...policies, third];
    const clear = () =>
      ({ policy: 'overdue', to: null, blocksBooking: false, allowsLogin: true }) as StateChange;
    const heldBy = (order: string[]) => {
      const c = clear();
      markHolds(all, new Map(order.map((p) => [p, { stage: p === 'inactivity' ? 'suspended' : 'paused' }])), [
        c,
      ]);
      return c.account;
    };
    // The stored states arrive in any order; the text is the same for each.
    const expected = {
      blocksBooking: true,
      allowsLogin: false,
      heldBy: ['suspended under inactivity', 'paused under third'],
    };
    expect(heldBy(['third', 'inactivity', 'overdue'])).toEqual(expected);
    expect(heldBy(['overdue', 'inactivity', 'third'])).toEqual(expected);
    // Nothing else holds it: the event tells the policy's own state only.
    const alone = clear();
    markHolds(all, new Map([['overdue', { stage: 'paused' }]]), [alone]);
    expect(alone.account).toBeUndefined();
  });
});
