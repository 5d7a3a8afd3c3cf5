import fc from 'fast-check';
import { addDays, addDuration, atLeast, fromDayNumber, toDayNumber } from '../src/rules/dates';
import { DEFAULT_NOTIFICATIONS, DEFAULT_SETTINGS } from '../src/rules/defaults';
import {
  accountTransitions,
  conditionHolds,
  evaluateAccount,
  evaluateCondition,
  evaluatePolicy,
  messageContext,
  renderMessage,
  renderMessageFor,
} from '../src/evaluate/evaluate';
import { PLACEHOLDERS } from '../src/evaluate/placeholders';
import type {
  AccountEvaluation,
  AccountPolicyState,
  Condition,
  Duration,
  EffectiveRules,
  ExclusionRule,
  Policy,
  Signals,
  Stage,
} from '../src/types';

/** Properties of the pure evaluator over thousands of generated accounts, ladders and states. */

const AS_OF = '2026-11-23';
const SETTINGS = { ...DEFAULT_SETTINGS, payUrl: 'https://pay.example.com/{key}' };

const day = (back: number) => addDays(AS_OF, -back);

const durationArb: fc.Arbitrary<Duration> = fc
  .record({
    amount: fc.integer({ min: 1, max: 40 }),
    unit: fc.constantFrom<Duration['unit']>('day', 'week', 'month', 'year'),
  })
  .map(({ amount, unit }) => ({ amount, unit, text: `${amount} ${unit}${amount === 1 ? '' : 's'}` }));

/** Amounts, often on a boundary (balances equal to a threshold must not count as over it). */
const centsArb = fc.oneof(fc.integer({ min: 0, max: 2_000_000 }), fc.constantFrom(0, 500, 501));

/** Conditions that can only go from false to true as an account gets worse (subscriptions and flags stay fixed). */
const monotoneLeaf: fc.Arbitrary<Condition> = fc.oneof(
  durationArb.map((d) => ({ inactive_for: d })),
  durationArb.map((d) => ({ account_age_at_least: d })),
  centsArb.map((c) => ({ open_balance_over: c })),
  centsArb.map((c) => ({ overdue_balance_over: c })),
  durationArb.map((d) => ({ past_due_for: d })),
  durationArb.map((d) => ({ invoice_overdue_for: d })),
  fc.integer({ min: 0, max: 20 }).map((n) => ({ unpaid_invoices_at_least: n })),
  fc.boolean().map((b) => ({ has_active_subscription: b })),
  fc.constantFrom('vip', 'late').map((f) => ({ flag: f })),
);

const monotoneCondition: fc.Arbitrary<Condition> = fc.letrec<{ c: Condition }>((tie) => ({
  c: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    monotoneLeaf,
    fc.array(tie('c'), { minLength: 1, maxLength: 3 }).map((all) => ({ all })),
    fc.array(tie('c'), { minLength: 1, maxLength: 3 }).map((any) => ({ any })),
  ),
})).c;

/** Any condition, `not` included, for properties that do not need monotonicity. */
const anyCondition: fc.Arbitrary<Condition> = fc.oneof(
  monotoneCondition,
  monotoneCondition.map((c) => ({ not: c })),
);

function policyArb(condition: fc.Arbitrary<Condition>, name: string): fc.Arbitrary<Policy> {
  return fc
    .record({
      whens: fc.array(condition, { minLength: 1, maxLength: 4 }),
      reinstate: fc.constantFrom<Policy['reinstate']>('auto', 'manual'),
      fireSkippedStages: fc.boolean(),
    })
    .map(({ whens, reinstate, fireSkippedStages }) => ({
      name,
      description: '',
      reinstate,
      fireSkippedStages,
      stages: whens.map((when, index): Stage => ({
        name: `s${index}`,
        index,
        when,
        actions: [{ type: 'notify' }, index % 2 === 0 ? { type: 'pause' } : { type: 'suspend' }],
        blocksBooking: index > 0,
        allowsLogin: index < 2,
        message:
          'Hi {name}: {overdue_balance} overdue for {days_past_due} days; last seen {last_activity}; pay at {pay_url}',
      })),
    }));
}

const rulesArb = (condition: fc.Arbitrary<Condition>) =>
  fc
    .array(fc.nat(), { minLength: 1, maxLength: 3 })
    .chain((ids) => fc.tuple(...ids.map((_, i) => policyArb(condition, `p${i}`))))
    .map((policies): EffectiveRules => ({
      orgId: null,
      policies,
      exclusions: [],
      notifications: DEFAULT_NOTIFICATIONS,
      settings: SETTINGS,
    }));

const maybeDay = fc.option(fc.integer({ min: 0, max: 3000 }), { nil: null });

const signalsArb: fc.Arbitrary<Signals> = fc
  .record({
    key: fc.constantFrom('c1', 'c2', 'acct/3'),
    created: maybeDay,
    lastActivity: maybeDay,
    openBalance: centsArb,
    overdueBalance: centsArb,
    pastDue: maybeDay,
    oldestOverdueDays: fc.option(fc.integer({ min: 0, max: 2000 }), { nil: null }),
    unpaidInvoiceCount: fc.integer({ min: 0, max: 25 }),
    activeSubscriptions: fc.integer({ min: 0, max: 3 }),
    flags: fc.subarray(['vip', 'late']),
    name: fc.constantFrom<string | null>('Ada', '  ', null),
  })
  .map((r) => ({
    key: r.key,
    orgId: null,
    accountCreatedOn: r.created === null ? null : day(r.created),
    lastActivityOn: r.lastActivity === null ? null : day(r.lastActivity),
    openBalance: r.openBalance,
    overdueBalance: r.overdueBalance,
    pastDueSince: r.pastDue === null ? null : day(r.pastDue),
    oldestOverdueDays: r.oldestOverdueDays,
    oldestOverdueInvoice:
      r.oldestOverdueDays === null
        ? null
        : { id: 'inv-1', unpaid: r.overdueBalance, daysOverdue: r.oldestOverdueDays },
    unpaidInvoiceCount: r.unpaidInvoiceCount,
    activeSubscriptions: r.activeSubscriptions,
    netTermsDays: 0,
    flags: r.flags,
    name: r.name,
    email: null,
  }));

interface Worse {
  balance: number;
  days: number;
  invoices: number;
  becomePastDue: boolean;
  becomeOverdue: boolean;
}

/** Makes an account worse on every monotone axis at once (or not at all, for a zero step). */
const worseArb: fc.Arbitrary<Worse> = fc.record({
  balance: fc.nat(100_000),
  days: fc.nat(800),
  invoices: fc.nat(10),
  becomePastDue: fc.boolean(),
  becomeOverdue: fc.boolean(),
});

function worsen(s: Signals, w: Worse): Signals {
  const earlier = (d: string | null) => (d === null ? null : addDays(d, -w.days));
  return {
    ...s,
    openBalance: s.openBalance + w.balance,
    overdueBalance: s.overdueBalance + w.balance,
    accountCreatedOn: earlier(s.accountCreatedOn),
    lastActivityOn: earlier(s.lastActivityOn),
    pastDueSince: s.pastDueSince === null ? (w.becomePastDue ? day(w.days) : null) : earlier(s.pastDueSince),
    oldestOverdueDays:
      s.oldestOverdueDays === null ? (w.becomeOverdue ? w.days : null) : s.oldestOverdueDays + w.days,
    unpaidInvoiceCount: s.unpaidInvoiceCount + w.invoices,
  };
}

/** A stored state per policy: clear, or some stage (possibly one the rules no longer have), maybe reinstated. */
function statesArb(rules: EffectiveRules): fc.Arbitrary<Record<string, AccountPolicyState>> {
  return fc
    .tuple(
      ...rules.policies.map((p) =>
        fc
          .record({ index: fc.integer({ min: -1, max: p.stages.length }), reinstated: maybeDay })
          .map(({ index, reinstated }): AccountPolicyState => ({
            stage: index === -1 ? null : `s${index}`,
            stageIndex: index,
            enteredOn: index === -1 ? null : day(5),
            reinstatedOn: reinstated === null ? null : day(reinstated),
          })),
      ),
    )
    .map((states) =>
      Object.fromEntries(rules.policies.map((p, i) => [p.name, states[i] as AccountPolicyState])),
    );
}

const scenarioArb = (condition: fc.Arbitrary<Condition>) =>
  rulesArb(condition).chain((rules) =>
    fc.record({ rules: fc.constant(rules), states: statesArb(rules), signals: signalsArb }),
  );

/** The state a run writes for the transitions of an evaluation (holds are not written). */
function applied(
  states: Record<string, AccountPolicyState>,
  e: AccountEvaluation,
): Record<string, AccountPolicyState> {
  const next = { ...states };
  for (const t of e.transitions) {
    if (t.kind === 'hold') continue;
    next[t.policy] = {
      stage: t.to,
      stageIndex: t.toIndex,
      enteredOn: t.to === null ? null : AS_OF,
      reinstatedOn: states[t.policy]?.reinstatedOn ?? null,
    };
  }
  return next;
}

const RUNS = { numRuns: 1500 };

describe('calendar clocks', () => {
  // atLeast compares with one cutoff per duration and as-of; this is its definition, day by day.
  test('at least a duration has passed exactly when the start shifted by it is not after as-of', () => {
    const dayArb = fc
      .integer({ min: toDayNumber('1995-01-01'), max: toDayNumber('2035-12-31') })
      .map(fromDayNumber);
    // As-of days around month ends and leap days, where shifting by months clamps.
    const asOfArb = fc.oneof(
      dayArb,
      fc.constantFrom('2024-02-29', '2025-02-28', '2024-03-31', '2025-03-01', '2026-01-31', '2026-04-30'),
    );
    // Up to the longest the rules allow, back into years 0-99 (which Date.UTC reads as 1900-1999) and before.
    const bigDurationArb = fc.oneof(
      durationArb,
      fc
        .record({
          amount: fc.integer({ min: 41, max: 9999 }),
          unit: fc.constantFrom<Duration['unit']>('day', 'week', 'month', 'year'),
        })
        .map(({ amount, unit }) => ({ amount, unit, text: `${amount} ${unit}s` })),
    );
    fc.assert(
      fc.property(
        asOfArb,
        bigDurationArb,
        fc.integer({ min: -3, max: 3 }),
        dayArb,
        (asOf, d, nudge, anyDay) => {
          // Starts near the boundary (where an off-by-one shows), and anywhere.
          const near = addDays(addDuration(asOf, d, -1), nudge);
          for (const since of [near, anyDay])
            expect(atLeast(since, asOf, d)).toBe(toDayNumber(addDuration(since, d)) <= toDayNumber(asOf));
        },
      ),
      { numRuns: 3000 },
    );
  });

  test('a day read by arithmetic is the day Date reads, and what is not a day is read as Date reads it', () => {
    const DAY_MS = 86_400_000;
    const byDate = (text: string) => Math.floor(Date.parse(`${text}T00:00:00Z`) / DAY_MS);
    fc.assert(
      fc.property(fc.integer({ min: toDayNumber('1000-01-01'), max: toDayNumber('9999-12-31') }), (n) => {
        const text = new Date(n * DAY_MS).toISOString().slice(0, 10);
        expect(toDayNumber(text)).toBe(n);
        expect(toDayNumber(text)).toBe(byDate(text));
      }),
      { numRuns: 5000 },
    );
    for (const text of ['2024-02-29', '2100-02-28', '2000-02-29', '2026-12-31', '1000-01-01', '9999-12-31'])
      expect(toDayNumber(text)).toBe(byDate(text));
    // Not days of the calendar: the same answer as before (Date is lenient with a day past the month's end).
    for (const text of [
      '2026-02-29',
      '2100-02-29',
      '2026-04-31',
      '2026-13-01',
      '2026-00-10',
      '2026-1-01',
      '0999-12-31',
    ])
      expect(Object.is(toDayNumber(text), byDate(text))).toBe(true);
  });

  test('a duration longer than the calendar has run never passes (9999 years, or back into years 0-99)', () => {
    const forever = { amount: 9999, unit: 'year' as const, text: '9999 years' };
    expect(atLeast('2020-01-01', AS_OF, forever)).toBe(false);
    const years = (amount: number) => ({ amount, unit: 'year' as const, text: `${amount} years` });
    expect(atLeast('1999-01-01', '2026-05-20', years(1927))).toBe(false);
    expect(atLeast('1900-01-01', '2026-05-20', years(2026))).toBe(false);
    expect(atLeast('0036-05-20', '2026-05-20', years(1990))).toBe(true);
    expect(atLeast('0036-05-21', '2026-05-20', years(1990))).toBe(false);
    expect(atLeast('2020-01-01', AS_OF, { amount: 12, unit: 'month', text: '12 months' })).toBe(true);
  });
});

describe('evaluator properties', () => {
  test('a more severe account never lands in a less severe stage (monotone conditions)', () => {
    fc.assert(
      fc.property(
        policyArb(monotoneCondition, 'p'),
        signalsArb,
        worseArb,
        maybeDay,
        (policy, s, w, reinstated) => {
          const state: AccountPolicyState = {
            stage: null,
            stageIndex: -1,
            enteredOn: null,
            reinstatedOn: reinstated === null ? null : day(reinstated),
          };
          const before = evaluatePolicy(s, policy, AS_OF, state, SETTINGS).stage?.index ?? -1;
          const after = evaluatePolicy(worsen(s, w), policy, AS_OF, state, SETTINGS).stage?.index ?? -1;
          expect(after).toBeGreaterThanOrEqual(before);
        },
      ),
      RUNS,
    );
  });

  test('a message rendered from only the placeholders it names equals one rendered from the whole context', () => {
    const piece = fc.oneof(
      fc.constantFrom(...Object.keys(PLACEHOLDERS)).map((name) => `{${name}}`),
      fc.constantFrom(...Object.keys(PLACEHOLDERS)).map((name) => `{ ${name} }`),
      fc.constantFrom(
        '{nope}',
        '{ nope }',
        '{constructor}',
        '{toString}',
        '{__proto__}',
        '{',
        '}',
        'Pay ',
        '$',
        '',
      ),
    );
    const input = fc.record({
      signals: signalsArb,
      settings: fc.record({
        currency: fc.constantFrom('USD', 'EUR', 'JPY', 'BHD'),
        payUrl: fc.constantFrom(null, 'https://pay.example.com/{key}'),
        supportUrl: fc.constantFrom(null, 'https://help.example.com'),
      }),
      asOf: fc.constant(AS_OF),
      policy: fc.constantFrom('p', 'delinquency'),
      stage: fc.constantFrom(null, 'suspended'),
    });
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 8 }), input, (pieces, i) => {
        const template = pieces.join('');
        expect(renderMessageFor(template, i)).toBe(renderMessage(template, messageContext(i)));
      }),
      RUNS,
    );
  });

  test('the decision is the most severe stage whose condition holds, and every decision has reasons', () => {
    fc.assert(
      fc.property(policyArb(anyCondition, 'p'), signalsArb, (policy, s) => {
        const d = evaluatePolicy(s, policy, AS_OF, null, SETTINGS);
        expect(d.reasons.length).toBeGreaterThan(0);
        for (const r of d.reasons) expect(r.text).not.toMatch(/undefined|null|NaN/);
        if (d.stage) {
          // No more severe stage would hold on its own.
          for (const higher of policy.stages.filter((st) => st.index > (d.stage as Stage).index)) {
            const only = { ...policy, stages: [higher] };
            expect(evaluatePolicy(s, only, AS_OF, null, SETTINGS).stage).toBeNull();
          }
        }
      }),
      RUNS,
    );
  });

  test('conditionHolds says exactly what evaluateCondition says, with or without a reinstatement', () => {
    fc.assert(
      fc.property(anyCondition, signalsArb, maybeDay, (condition, s, reinstated) => {
        const ctx = {
          asOf: AS_OF,
          reinstatedOn: reinstated === null ? null : day(reinstated),
          currency: SETTINGS.currency,
        };
        expect(conditionHolds(condition, s, ctx)).toBe(evaluateCondition(condition, s, ctx).holds);
      }),
      RUNS,
    );
  });

  test('accountTransitions (the batch engine) gives the transitions and exclusion of evaluateAccount', () => {
    const tableExclusion = fc.option(
      fc.record({ reason: fc.constant('by table'), until: fc.integer({ min: -30, max: 30 }) }),
      { nil: null },
    );
    fc.assert(
      fc.property(scenarioArb(anyCondition), tableExclusion, ({ rules, states, signals }, ex) => {
        const input = {
          signals,
          rules,
          asOf: AS_OF,
          states,
          exclusion: ex && { reason: ex.reason, until: addDays(AS_OF, ex.until) },
        };
        const { key, orgId, excluded, transitions } = evaluateAccount(input);
        // Explained when asked (a dry run) and right away (a real run): the same as evaluateAccount.
        for (const mode of ['later', 'now'] as const) {
          const planned = accountTransitions(input, mode);
          const explained = planned.transitions.map(({ explain, ...t }) => ({ ...t, ...explain() }));
          expect({ ...planned, transitions: explained }).toEqual({ key, orgId, excluded, transitions });
        }
      }),
      RUNS,
    );
  });

  test('a live exclusion always wins against entering or escalating: decisions are computed, transitions only go down', () => {
    const exclusionArb = fc.oneof(
      fc.record({
        kind: fc.constant('key' as const),
        until: maybeDay.map((d) => (d === null ? null : addDays(AS_OF, d))),
      }),
      fc.record({
        kind: fc.constant('flag' as const),
        until: maybeDay.map((d) => (d === null ? null : addDays(AS_OF, d))),
      }),
      fc.record({
        kind: fc.constant('table' as const),
        until: maybeDay.map((d) => (d === null ? null : addDays(AS_OF, d))),
      }),
    );
    fc.assert(
      fc.property(scenarioArb(anyCondition), exclusionArb, ({ rules, states, signals }, ex) => {
        const s = ex.kind === 'flag' ? { ...signals, flags: [...signals.flags, 'frozen'] } : signals;
        const rule: ExclusionRule[] =
          ex.kind === 'key'
            ? [{ key: s.key, reason: 'by key', ...(ex.until ? { until: ex.until } : {}) }]
            : ex.kind === 'flag'
              ? [{ flag: 'frozen', reason: 'by flag', ...(ex.until ? { until: ex.until } : {}) }]
              : [];
        const table = ex.kind === 'table' ? { reason: 'by table', until: ex.until } : null;
        const e = evaluateAccount({
          signals: s,
          rules: { ...rules, exclusions: rule },
          asOf: AS_OF,
          states,
          exclusion: table,
        });
        expect(e.excluded).not.toBeNull();
        // Down only: each to a milder stage (or clear) than the account is in, the way it would go unexcluded.
        const unexcluded = evaluateAccount({ signals: s, rules, asOf: AS_OF, states, exclusion: null });
        expect(e.transitions).toEqual(
          unexcluded.transitions.filter((t) => t.kind !== 'enter' && t.kind !== 'escalate'),
        );
        for (const t of e.transitions) expect(t.toIndex).toBeLessThan(states[t.policy]?.stageIndex ?? -1);
        expect(e.decisions).toHaveLength(rules.policies.length);
      }),
      RUNS,
    );
  });

  test('an expired exclusion changes nothing', () => {
    fc.assert(
      fc.property(
        scenarioArb(anyCondition),
        fc.integer({ min: 1, max: 400 }),
        ({ rules, states, signals }, ago) => {
          const until = day(ago);
          const plain = evaluateAccount({ signals, rules, asOf: AS_OF, states, exclusion: null });
          const expired = evaluateAccount({
            signals,
            rules: { ...rules, exclusions: [{ key: signals.key, reason: 'old', until }] },
            asOf: AS_OF,
            states,
            exclusion: { reason: 'old', until },
          });
          expect(expired).toEqual(plain);
        },
      ),
      RUNS,
    );
  });

  test('evaluating again with the state the first evaluation produced yields no new transitions', () => {
    fc.assert(
      fc.property(scenarioArb(anyCondition), ({ rules, states, signals }) => {
        const first = evaluateAccount({ signals, rules, asOf: AS_OF, states, exclusion: null });
        const second = evaluateAccount({
          signals,
          rules,
          asOf: AS_OF,
          states: applied(states, first),
          exclusion: null,
        });
        // Only the informational holds repeat (the state under a manual policy stays until a person reinstates).
        expect(second.transitions.filter((t) => t.kind !== 'hold')).toEqual([]);
        expect(second.transitions).toEqual(first.transitions.filter((t) => t.kind === 'hold'));
        expect(second.decisions).toEqual(first.decisions);
      }),
      RUNS,
    );
  });

  test('transitions agree with their direction and policy', () => {
    fc.assert(
      fc.property(scenarioArb(anyCondition), ({ rules, states, signals }) => {
        const e = evaluateAccount({ signals, rules, asOf: AS_OF, states, exclusion: null });
        for (const t of e.transitions) {
          const policy = rules.policies.find((p) => p.name === t.policy) as Policy;
          const from = states[t.policy]?.stageIndex ?? -1;
          expect(t.toIndex).not.toBe(from);
          if (t.toIndex > from) {
            expect(t.kind).toBe(from === -1 ? 'enter' : 'escalate');
            expect(t.actions.length).toBeGreaterThan(0);
          } else {
            expect(t.actions).toEqual([]);
            expect(t.kind).toBe(
              policy.reinstate === 'manual' ? 'hold' : t.toIndex === -1 ? 'clear' : 'deescalate',
            );
          }
          if (t.to === null)
            expect(t).toMatchObject({ blocksBooking: false, allowsLogin: true, message: null });
          else expect(t.message).not.toMatch(/undefined|null|NaN|\{/);
        }
      }),
      RUNS,
    );
  });
});
