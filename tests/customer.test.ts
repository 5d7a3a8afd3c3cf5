import knexFactory from 'knex';
import { createTestDatabase, type TestDatabase } from './helpers/database';
import { runCli } from './helpers/cli';
import { recordedSweep } from './helpers/fixtures';
import { accountStatus, isBookingBlocked } from '../src/index';
import { activeExclusions } from '../src/customer/exclusions';
import { reinstateAccount } from '../src/customer/reinstate';
import { acquireRunLock } from '../src/engine/lock';
import { loadRules } from '../src/rules/load';
import { addDays } from '../src/rules/dates';
import type { Policy, Rules } from '../src/types';

/**
 * The customer's side on a real database: states are inserted as the engine writes them, then read
 * through account_status(), the booking guard (a real INSERT), `suspend status`, `reinstate` and the
 * exclusions commands.
 */

const AS_OF = '2026-11-23';
const SUSPENDED_MESSAGE =
  'Your account is suspended: $42.00 is 40 days past due. Pay at https://pay.example.com/1 and book again.';
const PAUSED_MESSAGE = 'Invoice 7 for $12.00 is 12 days overdue.';

let db: TestDatabase;
let sweepRun: string;

function cli(args: string[]) {
  return runCli([...args, '--database-url', db.url]);
}

async function insertState(row: Record<string, unknown>): Promise<void> {
  await db.knex('suspend.account_states').insert({
    stage_index: 0,
    blocks_booking: false,
    allows_login: true,
    reasons: '[]',
    version: 1,
    ...row,
  });
}

async function hostRows(): Promise<Record<string, unknown>[]> {
  return db.knex('customers').select('*').orderBy('id');
}

const pastDue = {
  condition: 'past_due_for',
  text: 'past due for 40 days (since 2026-10-14); threshold 30 days',
  evidence: { days_past_due: 40, past_due_since: '2026-10-14' },
};

beforeAll(async () => {
  db = await createTestDatabase();
  await db.knex('customers').insert([
    { id: 1, name: 'Ada', email: 'ada@example.com', status: 'suspended', marketing_opt_out: true },
    { id: 2, name: 'Bo', email: 'bo@example.com', marketing_opt_out: false },
    { id: 3, name: 'Cy', email: 'cy@example.com' },
    { id: 4, name: 'Di', email: 'di@example.com' },
    { id: 5, name: 'Ed', email: 'ed@example.com' },
    { id: 6, name: 'Flo', email: 'flo@example.com', status: 'suspended', marketing_opt_out: true },
  ]);
  sweepRun = await recordedSweep(db.knex);
  // 1: suspended by delinquency (which set customers.status) and paused by overdue_pause.
  await insertState({
    customer_key: '1',
    policy: 'delinquency',
    stage: 'suspended',
    blocks_booking: true,
    allows_login: false,
    message: SUSPENDED_MESSAGE,
    reasons: JSON.stringify([pastDue]),
    entered_on: '2026-11-01',
    episode_started_on: '2026-11-01',
    host_before: JSON.stringify({ status: 'active' }),
    run_id: sweepRun,
  });
  await insertState({
    customer_key: '1',
    policy: 'overdue_pause',
    stage: 'paused',
    blocks_booking: true,
    message: PAUSED_MESSAGE,
    entered_on: '2026-10-20',
    episode_started_on: '2026-10-20',
    run_id: sweepRun,
  });
  await db.knex('suspend.history').insert({
    run_id: sweepRun,
    customer_key: '1',
    policy: 'delinquency',
    kind: 'enter',
    to_stage: 'suspended',
    to_index: 0,
    reasons: JSON.stringify([pastDue]),
    previous_state: JSON.stringify({ host: { status: 'active' } }),
    as_of: '2026-11-01',
    actor: 'cron',
  });
  // 2: paused only: no booking, sign-in allowed.
  await insertState({
    customer_key: '2',
    policy: 'overdue_pause',
    stage: 'paused',
    blocks_booking: true,
    message: PAUSED_MESSAGE,
    entered_on: '2026-11-10',
  });
  // 3: was in a stage once, clear now. 4 and 5: no state at all.
  await insertState({
    customer_key: '3',
    policy: 'delinquency',
    stage: null,
    stage_index: -1,
    entered_on: '2026-09-01',
  });
  // 6: two policies that both set customers.status (for the rules-aware host restore).
  for (const policy of ['inactivity', 'delinquency']) {
    await insertState({
      customer_key: '6',
      policy,
      stage: 'suspended',
      blocks_booking: true,
      allows_login: false,
      message: 'Suspended.',
      entered_on: '2026-11-01',
      host_before: policy === 'inactivity' ? JSON.stringify({ status: 'active' }) : null,
    });
  }
});

afterAll(async () => db.drop());

describe('account_status()', () => {
  test('a suspended account: booking blocked, sign-in refused, the most severe stage speaks', async () => {
    const s = await accountStatus(db.knex, '1');
    expect(s).toEqual({
      key: '1',
      state: 'suspended',
      blocksBooking: true,
      allowsLogin: false,
      message: SUSPENDED_MESSAGE,
      policy: 'delinquency',
      since: '2026-11-01',
      reasons: [pastDue],
    });
  });

  test('a paused account can still sign in but not book', async () => {
    const s = await accountStatus(db.knex, '2', { schema: 'suspend' });
    expect(s).toMatchObject({
      state: 'paused',
      blocksBooking: true,
      allowsLogin: true,
      message: PAUSED_MESSAGE,
    });
  });

  test('a clear account and an unknown one are active', async () => {
    for (const key of ['3', '4', 'no-such-key']) {
      expect(await accountStatus(db.knex, key)).toEqual({
        key,
        state: 'active',
        blocksBooking: false,
        allowsLogin: true,
        message: null,
        policy: null,
        since: null,
        reasons: [],
      });
    }
  });

  test('the SQL function answers the host application directly', async () => {
    const r = await db.knex.raw('select state, allows_login from suspend.account_status(?)', ['2']);
    expect(r.rows).toEqual([{ state: 'paused', allows_login: true }]);
  });
});

describe('suspend status', () => {
  test('text: state, booking, sign-in, message, policies with reasons and evidence, history', async () => {
    const r = await cli(['status', '1']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('customer 1: suspended (policy delinquency since 2026-11-01)');
    expect(r.stdout).toContain('booking blocked: yes');
    expect(r.stdout).toContain('sign-in allowed: no');
    expect(r.stdout).toContain(`message: ${SUSPENDED_MESSAGE}`);
    expect(r.stdout).toContain('delinquency: suspended since 2026-11-01 (booking blocked, sign-in blocked)');
    expect(r.stdout).toContain('overdue_pause: paused since 2026-10-20 (booking blocked, sign-in allowed)');
    expect(r.stdout).toContain(`- ${pastDue.text} [days_past_due=40, past_due_since=2026-10-14]`);
    expect(r.stdout).toContain(
      `2026-11-01  delinquency: enter clear -> suspended  by cron (run ${sweepRun} sweep)`,
    );
  });

  test('a key written otherwise (001, " 1") names the same customer of an integer key column', async () => {
    for (const key of ['001', ' 1']) {
      const r = await cli(['status', key]);
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      expect(r.stdout).toContain('customer 1: suspended (policy delinquency since 2026-11-01)');
    }
  });

  test('--json carries the same facts', async () => {
    const r = await cli(['status', '2', '--json']);
    expect(r.code).toBe(0);
    const json = JSON.parse(r.stdout);
    expect(json).toMatchObject({
      key: '2',
      inHostTable: true,
      status: { state: 'paused', blocksBooking: true, allowsLogin: true, message: PAUSED_MESSAGE },
      policies: [{ policy: 'overdue_pause', stage: 'paused', since: '2026-11-10' }],
      history: [],
      exclusion: null,
    });
  });

  test('a customer without state is active; an unknown key is exit 2', async () => {
    const known = await cli(['status', '4']);
    expect(known.code).toBe(0);
    expect(known.stdout).toContain('customer 4: no state recorded: active');
    const unknown = await cli(['status', '999']);
    expect(unknown.code).toBe(2);
    expect(unknown.stdout).toBe('');
    expect(unknown.stderr).toContain('There is no customer 999 in table customers.');
    const badType = await cli(['status', 'abc']);
    expect(badType.code).toBe(2);
    // Past the bigint key's range: the same sentence, not a failed query.
    for (const args of [['status'], ['reinstate', '--reason', 'x'], ['exclude', '--reason', 'x']]) {
      const huge = await cli([args[0]!, '99999999999999999999', ...args.slice(1)]);
      expect(huge.code).toBe(2);
      expect(huge.stderr).toBe('error: There is no customer 99999999999999999999 in table customers.\n');
    }
  });

  test('an empty key is one sentence saying to give one, not "no customer  in table"; exit 2', async () => {
    for (const args of [
      ['status', ''],
      ['reinstate', ' ', '--reason', 'x'],
      ['exclude', '', '--reason', 'x'],
      ['exclusions', 'remove', ''],
    ]) {
      const r = await cli(args);
      expect({ args, code: r.code, stdout: r.stdout, stderr: r.stderr }).toEqual({
        args,
        code: 2,
        stdout: '',
        stderr: 'error: The customer key is empty; give the key of a customer (e.g. suspend status 1042).\n',
      });
    }
  });
});

describe('the booking guard', () => {
  const book = (id: number, customer: number) =>
    db.knex('reservations').insert({ id, customer_id: customer, created_at: '2026-11-23T10:00:00Z' });

  test('install validates the table and the column in one sentence', async () => {
    const noTable = await cli([
      'guard',
      'install',
      '--table',
      'bookings',
      '--customer-column',
      'customer_id',
    ]);
    expect(noTable.code).toBe(2);
    expect(noTable.stderr).toContain('There is no table "public"."bookings"');
    const noColumn = await cli([
      'guard',
      'install',
      '--table',
      'reservations',
      '--customer-column',
      'client',
    ]);
    expect(noColumn.code).toBe(2);
    expect(noColumn.stderr).toContain('has no column "client"');
    // A column that cannot hold a customer key: the guard would compare it with keys and block nobody.
    const notAKey = await cli([
      'guard',
      'install',
      '--table',
      'reservations',
      '--customer-column',
      'created_at',
    ]);
    expect({ code: notAKey.code, stdout: notAKey.stdout }).toEqual({ code: 2, stdout: '' });
    expect(notAKey.stderr).toBe(
      `error: Column "created_at" of "public"."reservations" is timestamp with time zone, and it must hold the customers' key (source.customers.key: "id" of "customers", bigint): the guard would block nobody; pass --customer-column with the column that holds the customer key.\n`,
    );
    expect((await cli(['guard', 'status'])).stdout).toContain('No booking guard installed');
  });

  test('a real INSERT for a blocked customer fails with SP001, the message and the next step', async () => {
    const r = await cli([
      'guard',
      'install',
      '--table',
      'reservations',
      '--customer-column',
      'customer_id',
      '--schema',
      'public',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Booking guard installed on "public"."reservations"');
    expect((await cli(['guard', 'status'])).stdout).toContain(
      'guarded: "public"."reservations" (customer column "customer_id")',
    );

    const err = await book(1, 1).then(
      () => null,
      (e: unknown) => e as { code: string; message: string; hint: string; detail: string },
    );
    expect(err).not.toBeNull();
    expect(err!.code).toBe('SP001');
    expect(isBookingBlocked(err)).toBe(true);
    expect(err!.message).toContain(SUSPENDED_MESSAGE);
    expect(err!.hint).toBe('Pay at https://pay.example.com/1 and book again.');
    expect(err!.detail).toContain('customer 1 is in stage suspended of policy delinquency');

    const paused = await book(2, 2).then(
      () => null,
      (e: unknown) => e as { code: string; hint: string },
    );
    expect(paused).toMatchObject({ code: 'SP001', hint: 'Contact support to book again.' });

    await book(3, 4);
    expect(await db.knex('reservations').pluck('customer_id')).toEqual(['4']);

    // A name with full stops in the message does not end its first sentence: the next step is the
    // sentence after the account's situation, not the rest of the name.
    const messages = [
      [
        'Hello Dr. J. Smith & Co, your account is on hold (last booking: 2025-01-01). Contact us at https://help.example.com and we will reopen it.',
        'Contact us at https://help.example.com and we will reopen it.',
      ],
      [
        'Mrs. Ann Lee of St. Louis owes $42.50. Pay at https://pay.example.com/1.',
        'Pay at https://pay.example.com/1.',
      ],
      [
        'Your account is paused. 2 invoices are open: pay them at https://pay.example.com/1.',
        '2 invoices are open: pay them at https://pay.example.com/1.',
      ],
      ['Hello Dr. J. Smith, your account is on hold.', 'Contact support to book again.'],
    ];
    for (const [i, [message, hint]] of messages.entries()) {
      await db.knex('suspend.account_states').where({ customer_key: '1' }).update({ message });
      const named = await book(10 + i, 1).then(
        () => null,
        (e: unknown) => e as { hint: string },
      );
      expect(named).toMatchObject({ hint });
    }
    await db
      .knex('suspend.account_states')
      .where({ customer_key: '1' })
      .update({ message: SUSPENDED_MESSAGE });
  });

  test('after `suspend reinstate` the same INSERT succeeds', async () => {
    const r = await cli(['reinstate', '1', '--reason', 'paid by phone', '--by', 'alice', '--as-of', AS_OF]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    await book(1, 1);
    expect(await db.knex('reservations').where({ id: 1 }).pluck('customer_id')).toEqual(['1']);
  });

  test('remove takes the trigger away', async () => {
    const r = await cli(['guard', 'remove', '--table', 'reservations']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('Booking guard removed from "public"."reservations"');
    await book(4, 2);
    expect((await cli(['guard', 'status'])).stdout).toContain('No booking guard installed');
    const again = await cli(['guard', 'remove', '--table', 'reservations']);
    expect(again.code).toBe(2);
  });
});

describe('suspend reinstate', () => {
  test('wrote state, history, outbox and ledger, bumped the version and put the host status back', async () => {
    const states = await db
      .knex('suspend.account_states')
      .where({ customer_key: '1' })
      .orderBy('policy')
      .select('policy', 'stage', 'stage_index', 'blocks_booking', 'allows_login', 'message', 'version')
      .select(db.knex.raw("to_char(reinstated_on, 'YYYY-MM-DD') as reinstated_on"));
    expect(states).toEqual([
      {
        policy: 'delinquency',
        stage: null,
        stage_index: -1,
        blocks_booking: false,
        allows_login: true,
        message: null,
        version: 2,
        reinstated_on: AS_OF,
      },
      {
        policy: 'overdue_pause',
        stage: null,
        stage_index: -1,
        blocks_booking: false,
        allows_login: true,
        message: null,
        version: 2,
        reinstated_on: AS_OF,
      },
    ]);
    const [run] = await db.knex('suspend.runs').where({ kind: 'reinstate' }).select('*');
    expect(run).toMatchObject({ status: 'succeeded', started_by: 'alice' });
    expect(run.counts).toMatchObject({ changes: 2 });
    const history = await db.knex('suspend.history').where({ run_id: run.id }).orderBy('policy');
    expect(history.map((h) => [h.policy, h.kind, h.from_stage, h.to_stage, h.actor])).toEqual([
      ['delinquency', 'reinstate', 'suspended', null, 'alice'],
      ['overdue_pause', 'reinstate', 'paused', null, 'alice'],
    ]);
    expect(history[0].reasons[0].text).toContain('paid by phone');
    expect(history[0].previous_state).toMatchObject({
      customer_key: '1',
      policy: 'delinquency',
      stage: 'suspended',
      version: 1,
      message: SUSPENDED_MESSAGE,
      host: { status: 'suspended' },
    });
    const outbox = await db.knex('suspend.outbox').where({ run_id: run.id }).orderBy('id');
    expect(outbox).toHaveLength(2);
    expect(outbox[0]).toMatchObject({ event: 'reinstate', customer_key: '1', history_id: expect.anything() });
    expect(outbox.find((o) => o.payload.policy === 'delinquency')?.payload).toEqual({
      event: 'reinstate',
      runId: String(run.id),
      asOf: AS_OF,
      orgId: null,
      customer: { key: '1', name: 'Ada', email: 'ada@example.com' },
      policy: 'delinquency',
      from: 'suspended',
      to: null,
      blocksBooking: false,
      allowsLogin: true,
      message: null,
      reasons: [expect.objectContaining({ condition: 'reinstate' })],
      actions: [],
      actor: 'alice',
    });
    const [host] = await db.knex('customers').where({ id: 1 }).select('status', 'marketing_opt_out');
    expect(host).toEqual({ status: 'active', marketing_opt_out: true });
    const status = await cli(['status', '1']);
    expect(status.stdout).toContain('customer 1: active');
    expect(status.stdout).toContain('delinquency: reinstate suspended -> clear  by alice');
  });

  test('nothing to do, unknown customer, wrong policy', async () => {
    const nothing = await cli(['reinstate', '4', '--reason', 'x']);
    expect(nothing.code).toBe(0);
    expect(nothing.stdout).toContain('Nothing to reinstate');
    // 002 is customer 2 (paused): the policy check below sees its stage, as for '2'.
    const padded = await cli(['reinstate', '002', '--reason', 'x', '--policy', 'delinquency']);
    expect(padded.code).toBe(2);
    expect(padded.stderr).toContain(
      'account 2 is not in a stage of policy delinquency (the rules have no policy delinquency); its current stages: overdue_pause (paused)',
    );
    const unknown = await cli(['reinstate', '999', '--reason', 'x']);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain('There is no customer 999 in table customers.');
    const policy = await cli(['reinstate', '2', '--reason', 'x', '--policy', 'delinquency']);
    expect(policy.code).toBe(2);
    expect(policy.stderr).toContain(
      'account 2 is not in a stage of policy delinquency (the rules have no policy delinquency); its current stages: overdue_pause (paused)',
    );
    // Dated before the stage was entered (the next sweep would suspend again at once), or in the
    // future (shielded until then): refused, nothing written (the ledger count below).
    const early = await cli(['reinstate', '2', '--reason', 'x', '--as-of', '2026-11-01']);
    expect({ code: early.code, stderr: early.stderr }).toEqual({
      code: 2,
      stderr:
        'error: --as-of 2026-11-01: account 2 entered overdue_pause (paused) on 2026-11-10; a reinstatement cannot be dated before that (leave --as-of out for the first day it can be).\n',
    });
    const late = await cli(['reinstate', '2', '--reason', 'x', '--as-of', '2100-01-01']);
    expect(late.code).toBe(2);
    expect(late.stderr).toMatch(
      /^error: --as-of 2100-01-01: a reinstatement cannot be dated after \d{4}-\d{2}-\d{2}; its clocks would not start until then/,
    );
    const noReason = await cli(['reinstate', '2']);
    expect(noReason.code).toBe(2);
    expect(
      await db.knex('suspend.runs').where({ kind: 'reinstate' }).count<{ n: string }[]>({ n: '*' }),
    ).toEqual([{ n: '1' }]);
  });

  test('it takes the run lock: a sweep holding it means exit 3, nothing written', async () => {
    const other = knexFactory({ client: 'pg', connection: db.url, pool: { min: 0, max: 1 } });
    try {
      const lock = await acquireRunLock(other, 'suspend', {
        wait: false,
        description: 'suspend sweep by test',
      });
      try {
        const r = await cli(['reinstate', '2', '--reason', 'x']);
        expect(r.code).toBe(3);
        expect(r.stderr).toContain('"suspend sweep by test"');
      } finally {
        await lock.release();
      }
    } finally {
      await other.destroy();
    }
    expect(await db.knex('suspend.account_states').where({ customer_key: '2' }).pluck('stage')).toEqual([
      'paused',
    ]);
  });

  test('with the rules: reinstating one policy keeps the status another policy still sets', async () => {
    const base = await loadRules({ cwd: process.cwd() });
    const suspendStage = (name: string): Policy => ({
      name,
      description: '',
      reinstate: 'manual',
      fireSkippedStages: false,
      stages: [
        {
          name: 'suspended',
          index: 0,
          when: { flag: 'x' },
          actions: [{ type: 'suspend' }, { type: 'set', columns: { status: 'suspended' } }],
          blocksBooking: true,
          allowsLogin: false,
          message: 'Suspended.',
        },
      ],
    });
    const rules: Rules = {
      ...base,
      defaults: { ...base.defaults, policies: [suspendStage('inactivity'), suspendStage('delinquency')] },
    };
    const before = await hostRows();
    const opts = { key: '6', reason: 'checked', actor: 'bob', asOf: AS_OF, wait: false };
    const first = await reinstateAccount(db.knex, rules, { ...opts, policies: ['delinquency'] });
    expect(first.reinstated.map((p) => p.policy)).toEqual(['delinquency']);
    expect(await db.knex('customers').where({ id: 6 }).pluck('status')).toEqual(['suspended']);
    const second = await reinstateAccount(db.knex, rules, { ...opts, policies: null });
    expect(second.reinstated.map((p) => p.policy)).toEqual(['inactivity']);
    expect(second.hostRestored).toEqual({ status: 'active' });
    // Only customers.status of customer 6 moved: consent and every other column are byte-identical.
    const after = await hostRows();
    expect(after).toEqual(before.map((r) => (r.id === '6' ? { ...r, status: 'active' } : r)));
  });

  test('a stage entered on a day still ahead (an organization whose day is ahead of UTC): without --as-of it is dated that day', async () => {
    const ahead = addDays(new Date().toISOString().slice(0, 10), 2);
    await insertState({
      customer_key: '4',
      policy: 'overdue_pause',
      stage: 'paused',
      blocks_booking: true,
      message: PAUSED_MESSAGE,
      entered_on: ahead,
      episode_started_on: ahead,
      run_id: sweepRun,
    });
    const today = await cli([
      'reinstate',
      '4',
      '--reason',
      'x',
      '--as-of',
      new Date().toISOString().slice(0, 10),
    ]);
    expect(today.code).toBe(2);
    expect(today.stderr).toContain(
      `entered overdue_pause (paused) on ${ahead}; a reinstatement cannot be dated before that`,
    );
    const r = await cli(['reinstate', '4', '--reason', 'x', '--json']);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
    expect(JSON.parse(r.stdout)).toMatchObject({
      run: { asOf: ahead },
      reinstated: [{ policy: 'overdue_pause' }],
    });
  });
});

describe('exclusions', () => {
  test('exclude, list, refuse a second, remove (the record stays)', async () => {
    const r = await cli([
      'exclude',
      '5',
      '--reason',
      'key account',
      '--until',
      '2030-01-31',
      '--by',
      'carol',
    ]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(
      'Customer 5 is excluded from every run until 2030-01-31: key account (by carol). No run pauses, suspends or escalates it meanwhile.',
    );
    const twice = await cli(['exclude', '5', '--reason', 'again']);
    expect(twice.code).toBe(2);
    expect(twice.stderr).toContain('Account 5 is already excluded (key account, by carol, until 2030-01-31)');
    const unknown = await cli(['exclude', '999', '--reason', 'x']);
    expect(unknown.code).toBe(2);

    const list = await cli(['exclusions']);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^5\s+key account\s+2030-01-31\s+carol/m);
    const json = JSON.parse((await cli(['exclusions', 'list', '--json'])).stdout);
    expect(json).toMatchObject([
      { key: '5', reason: 'key account', until: '2030-01-31', createdBy: 'carol' },
    ]);

    const live = await activeExclusions(db.knex, 'suspend', ['4', '5'], AS_OF);
    expect([...live]).toEqual([['5', { reason: 'key account', until: '2030-01-31' }]]);
    expect((await activeExclusions(db.knex, 'suspend', ['5'], '2030-02-01')).size).toBe(0);

    // Written with a leading zero: the same customer, refused as already excluded (not a second row
    // under "05" that no run would ever match).
    const padded = await cli(['exclude', '05', '--reason', 'again']);
    expect(padded.code).toBe(2);
    expect(padded.stderr).toContain('Account 5 is already excluded');

    const removed = await cli(['exclusions', 'remove', '05', '--by', 'dan']);
    expect(removed.code).toBe(0);
    expect((await activeExclusions(db.knex, 'suspend', ['5'], AS_OF)).size).toBe(0);
    const rows = await db.knex('suspend.exclusions').where({ customer_key: '5' });
    expect(rows).toHaveLength(1);
    expect(rows[0]).toMatchObject({ removed_by: 'dan', created_by: 'carol' });
    expect(rows[0].removed_at).not.toBeNull();
    expect((await cli(['exclusions'])).stdout).toContain('No account is excluded.');
    expect((await cli(['exclusions', 'list', '--all'])).stdout).toMatch(/^5\s+key account.*dan$/m);
    expect((await cli(['exclusions', 'remove', '5'])).code).toBe(2);

    // One recorded under the key as typed ("004") before keys were stored as the table writes them:
    // still removable by that key.
    await db.knex('suspend.exclusions').insert({ customer_key: '004', reason: 'old', created_by: 'erin' });
    const old = await cli(['exclusions', 'remove', '004', '--by', 'dan']);
    expect({ code: old.code, stderr: old.stderr }).toEqual({ code: 0, stderr: '' });
    expect(
      await db.knex('suspend.exclusions').where({ customer_key: '004' }).whereNull('removed_at'),
    ).toEqual([]);
  });

  test('an exclusion whose last day has passed is over: not listed, not in status, and a new one replaces it', async () => {
    expect(
      (await cli(['exclude', '3', '--reason', 'short', '--until', '2030-01-31', '--by', 'carol'])).code,
    ).toBe(0);
    // As the days passing do it.
    await db.knex('suspend.exclusions').where({ customer_key: '3' }).update({ until: '2026-11-30' });
    expect((await cli(['exclusions'])).stdout).not.toMatch(/^3\s/m);
    expect((await cli(['exclusions', 'list', '--all'])).stdout).toMatch(/^3\s+short\s+2026-11-30\s+carol/m);
    expect((await cli(['status', '3'])).stdout).not.toContain('excluded:');
    const again = await cli(['exclude', '3', '--reason', 'again', '--until', '2030-06-30', '--by', 'dan']);
    expect({ code: again.code, stderr: again.stderr }).toEqual({ code: 0, stderr: '' });
    expect(again.stdout).toContain('(Its exclusion that ended on 2026-11-30 (short) is closed.)');
    expect(
      await db
        .knex('suspend.exclusions')
        .where({ customer_key: '3' })
        .orderBy('id')
        .select('reason', 'removed_by', db.knex.raw("to_char(until, 'YYYY-MM-DD') as until")),
    ).toEqual([
      { reason: 'short', removed_by: 'dan', until: '2026-11-30' },
      { reason: 'again', removed_by: null, until: '2030-06-30' },
    ]);
    expect((await cli(['status', '3'])).stdout).toContain('excluded: again');
  });

  test('an excluded account still shows its exclusion in suspend status', async () => {
    expect((await cli(['exclude', '2', '--reason', 'billing dispute'])).code).toBe(0);
    const r = await cli(['status', '2']);
    expect(r.stdout).toContain('excluded: billing dispute');
    expect(r.stdout).toContain('no expiry');
  });
});
