import type { Duration, IsoDate } from '../types';

/**
 * Calendar-day arithmetic on `YYYY-MM-DD` strings, in UTC so a day is always 24 hours.
 * Pure: nothing here reads the clock.
 */

const DAY_MS = 86_400_000;

// A run evaluates millions of conditions over a few thousand distinct days: parsing and formatting
// dates dominated its profile, so conversions are memoized (bounded: a full cache is dropped).
const MEMO_LIMIT = 100_000;
const dayNumbers = new Map<string, number>();
const isoDays = new Map<number, IsoDate>();

function remember<K, V>(memo: Map<K, V>, key: K, value: V): V {
  if (memo.size >= MEMO_LIMIT) memo.clear();
  memo.set(key, value);
  return value;
}

export function toDayNumber(date: IsoDate): number {
  const day = civilDayNumber(date);
  if (day !== null) return day;
  return (
    dayNumbers.get(date) ?? remember(dayNumbers, date, Math.floor(Date.parse(`${date}T00:00:00Z`) / DAY_MS))
  );
}

/**
 * A valid `YYYY-MM-DD` of years 1000-9999 (every day Postgres and the rules give) by arithmetic
 * (days from the civil date, H. Hinnant), null for anything else. A run converts millions of days
 * read from rows: a memo keyed by each new string had to hash it every time.
 */
function civilDayNumber(date: string): number | null {
  if (date.length !== 10 || date.charCodeAt(4) !== 45 || date.charCodeAt(7) !== 45) return null;
  const y = digits(date, 0, 4);
  const m = digits(date, 5, 7);
  const d = digits(date, 8, 10);
  if (y < 1000 || m < 1 || m > 12 || d < 1 || (d > 28 && d > monthLength(y, m))) return null;
  const yy = m <= 2 ? y - 1 : y;
  const era = Math.floor(yy / 400);
  const yoe = yy - era * 400;
  const doy = Math.floor((153 * (m > 2 ? m - 3 : m + 9) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

/** The number written in `text` from `start` to `end` (decimal digits only), or -1. */
function digits(text: string, start: number, end: number): number {
  let n = 0;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i) - 48;
    if (c < 0 || c > 9) return -1;
    n = n * 10 + c;
  }
  return n;
}

function monthLength(year: number, month: number): number {
  if (month !== 2) return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
  return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
}

export function fromDayNumber(day: number): IsoDate {
  return isoDays.get(day) ?? remember(isoDays, day, isoDay(day));
}

/** `YYYY-MM-DD`; outside years 0-9999 as Date writes them (`+012023-11-17`, `-000001-01-01`). */
function isoDay(day: number): IsoDate {
  const text = new Date(day * DAY_MS).toISOString();
  return text.slice(0, text.indexOf('T'));
}

/** Whole days from `from` to `to` (positive when `to` is later). */
export function daysBetween(from: IsoDate, to: IsoDate): number {
  return toDayNumber(to) - toDayNumber(from);
}

export function addDays(date: IsoDate, days: number): IsoDate {
  return fromDayNumber(toDayNumber(date) + days);
}

/** Months and years move the calendar date, clamping to the month's last day (Jan 31 + 1 month = Feb 28/29). */
const forward = new WeakMap<Duration, Map<IsoDate, IsoDate>>();
const backward = new WeakMap<Duration, Map<IsoDate, IsoDate>>();

export function addDuration(date: IsoDate, duration: Duration, sign: 1 | -1 = 1): IsoDate {
  // One memo per duration of the rules, looked up by the date alone: no key string per call.
  const memos = sign === 1 ? forward : backward;
  let memo = memos.get(duration);
  if (!memo) memos.set(duration, (memo = new Map()));
  return memo.get(date) ?? remember(memo, date, shift(date, duration, sign));
}

function shift(date: IsoDate, duration: Duration, sign: 1 | -1): IsoDate {
  return fromDayNumber(shiftDay(toDayNumber(date), duration, sign));
}

/** `day` (a day number) moved by `duration`, forward or back. */
function shiftDay(day: number, duration: Duration, sign: 1 | -1): number {
  const n = duration.amount * sign;
  switch (duration.unit) {
    case 'day':
      return day + n;
    case 'week':
      return day + 7 * n;
    case 'month':
    case 'year': {
      const months = duration.unit === 'year' ? 12 * n : n;
      const start = new Date(day * DAY_MS);
      const d = start.getUTCDate();
      const total = start.getUTCFullYear() * 12 + start.getUTCMonth() + months;
      const year = Math.floor(total / 12);
      const month = total - year * 12;
      // setUTCFullYear, not Date.UTC, which reads years 0-99 as 1900-1999.
      const t = new Date(0);
      t.setUTCFullYear(year, month + 1, 0);
      t.setUTCFullYear(year, month, Math.min(d, t.getUTCDate()));
      return Math.floor(t.getTime() / DAY_MS);
    }
  }
}

/**
 * True when at least `duration` has passed from `since` to `asOf` (day-exact: day 14 of 14 days counts),
 * that is when `since` + `duration` is not after `asOf`.
 */
export function atLeast(since: IsoDate, asOf: IsoDate, duration: Duration): boolean {
  const cutoff = lastStartReaching(asOf, duration);
  // `YYYY-MM-DD` days compare as text; a cutoff outside years 0-9999, or a start written otherwise, by number.
  return cutoff.text !== null && since.length === 10
    ? since <= cutoff.text
    : toDayNumber(since) <= cutoff.day;
}

const cutoffs = new WeakMap<Duration, Map<IsoDate, { day: number; text: IsoDate | null }>>();

/**
 * The last day from which `duration` reaches `asOf`. Adding a duration never moves a later day
 * before an earlier one (a month end clamps, it does not wrap), so the days that qualify are exactly
 * those up to this one: it is found once per duration and as-of, and each account then costs one
 * comparison instead of a date shifted and looked up per account (the run's hottest function before).
 */
function lastStartReaching(asOf: IsoDate, duration: Duration): { day: number; text: IsoDate | null } {
  let memo = cutoffs.get(duration);
  if (!memo) cutoffs.set(duration, (memo = new Map()));
  const known = memo.get(asOf);
  if (known !== undefined) return known;
  const end = toDayNumber(asOf);
  const reaches = (day: number) => shiftDay(day, duration, 1) <= end;
  // Shifting back lands on the cutoff or, where month ends clamp, a few days before it.
  let day = shiftDay(end, duration, -1);
  for (let step = 0; !reaches(day); step++) {
    if (step > 31 || !Number.isFinite(day)) throw new Error(`no day reaches ${asOf} by ${duration.text}`);
    day--;
  }
  while (reaches(day + 1)) day++;
  const text = fromDayNumber(day);
  return remember(memo, asOf, { day, text: text.length === 10 ? text : null });
}

/** Today's date in UTC; only the CLI calls this, never the evaluator. */
export function todayUtc(now: Date = new Date()): IsoDate {
  return now.toISOString().slice(0, 10);
}

export function isIsoDate(value: string): boolean {
  if (!/^\d{4}-\d{2}-\d{2}$/.test(value)) return false;
  // A month or day out of range (2026-13-45) is no day at all (NaN), not one of another month.
  const day = toDayNumber(value);
  return Number.isFinite(day) && fromDayNumber(day) === value;
}
