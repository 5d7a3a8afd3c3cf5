import type { Knex } from 'knex';
import { countSkipped } from './counts';
import {
  keysAtRanksQuery,
  pageEndsQuery,
  readPage,
  type SignalNeeds,
  type SkippedAccount,
  type StateTables,
} from '../source/signals';
import type { PageState } from '../source/states';
import { planPage, type PagePlan } from './plan';
import { READ_DEPTH } from './pipeline';
import type { IsoDate, Rules, Signals } from '../types';

/**
 * Reading a run's accounts: key ranges for the workers, keyset pages within a range (one statement
 * each: the page's signals, states and exclusions), their evaluation, and a read-ahead that keeps
 * the next item of a stage in the making while the caller works on the current one.
 */

/** A key range `(after, until]`; null bounds are open. */
export interface KeyRange {
  after: string | null;
  until: string | null;
}

export const WHOLE_RANGE: KeyRange = { after: null, until: null };

export interface AccountFilter {
  orgs: string[] | null;
  shard: { index: number; count: number } | null;
}

export interface Page {
  /** The key before the page, null for the first page of a range. */
  after: string | null;
  /** Last key of the page: the next page starts after it, the checkpoint records it. */
  last: string;
  /** Accounts in the page, candidates or not. */
  total: number;
  /** Signals of the accounts a rule could touch (all of them with `allAccounts`), in key order. */
  signals: Signals[];
  /** Accounts that cannot be judged (bad data), with why. */
  skipped: SkippedAccount[];
  state: PageState;
}

export interface PageSource {
  rules: Rules;
  asOf: IsoDate;
  batchSize: number;
  filter: AccountFilter;
  /** suspend's own tables as the run found them; null before the first migrate (a dry run). */
  state: StateTables | null;
  /** Evaluate every account instead of the SQL pre-filter's candidates. */
  allAccounts: boolean;
  /** The signals the rules use (the re-check reads the same). */
  needs: SignalNeeds;
  /** 'now' in a run that writes every change it plans; 'later' in a dry run (it explains a sample). */
  explain: 'now' | 'later';
  /** How many of a page's changes to build (see planPage), asked as the page is evaluated: all when absent. */
  wanted?: () => number;
  signal?: AbortSignal;
}

/**
 * Splits the accounts into `n` key ranges of about the same number of accounts, at the keys of
 * ranks total/n, 2·total/n... (one index scan that stops at the last boundary).
 */
export async function splitRange(
  knex: Knex,
  rules: Rules,
  filter: AccountFilter,
  /** The accounts' count, awaited only to split them. */
  counted: number | Promise<number>,
  n: number,
): Promise<KeyRange[]> {
  if (n <= 1) return [WHOLE_RANGE];
  const total = await counted;
  if (total < n) return [WHOLE_RANGE];
  const ranks = Array.from({ length: n - 1 }, (_, i) => Math.floor((total * (i + 1)) / n) - 1);
  const rows = (await keysAtRanksQuery(knex, rules.source, filter, ranks)) as { key: string }[];
  const bounds = [null, ...rows.map((r) => r.key), null];
  return bounds.slice(0, -1).map((after, i) => ({ after, until: bounds[i + 1] ?? null }));
}

/**
 * Keyset pages of a range, in key order. READ_DEPTH are read at once (see readPagesAhead), but from a
 * signal view one at a time; connections go back to the pool between queries.
 */
export async function* readPages(knex: Knex, source: PageSource, range: KeyRange): AsyncGenerator<Page> {
  if (!source.rules.source.view) {
    yield* readPagesAhead(knex, source, range);
    return;
  }
  let after = range.after;
  for (;;) {
    if (source.signal?.aborted) return;
    const page = await readOnePage(knex, source, { after, until: range.until, limit: source.batchSize });
    if (!page) return;
    yield page;
    if (page.total < source.batchSize) return;
    after = page.last;
  }
}

/**
 * The page of the accounts after `after` up to `until`: at most `limit` of them (null: all); null
 * when there is none.
 */
async function readOnePage(
  knex: Knex,
  source: PageSource,
  range: { after: string | null; until: string | null; limit: number | null },
): Promise<Page | null> {
  const { rules, filter } = source;
  const scope = {
    ...range,
    ...filter,
    state: source.state,
    candidates: source.allAccounts ? null : rules,
  };
  const read = await readPage(knex, rules.source, source.asOf, scope, source.needs);
  if (read.total === 0 || read.last === null) return null;
  const { last, total, signals, skipped, state } = read;
  return { after: range.after, last, total, signals, skipped, state };
}

/** Page ends found per query: one statement for eight pages instead of one each. */
const ENDS_AHEAD = 8;
/** When this few ends are left, the next are looked for. */
const ENDS_LOW = 2;

/**
 * Keyset pages of a range with READ_DEPTH reads in flight: each page's last key is found first, so
 * the next page's read need not wait for this one's rows. One statement finds the ends of the next
 * ENDS_AHEAD pages, while the pages before them are still being read (a 1M dry run had one read in
 * flight for 0.6-0.7 s of 6 s, now 0.3-0.5 s). A page is then every account up to that key when it
 * is read: accounts inserted meanwhile make it larger, never push one out. Where no last key is
 * found (the range's tail), the page is read as a keyset page and the walk goes on from it if it
 * came back full. Not for a signal view, whose keys cost as much to list as its signals.
 */
async function* readPagesAhead(knex: Knex, source: PageSource, range: KeyRange): AsyncGenerator<Page> {
  const { rules, filter, batchSize } = source;
  let after = range.after;
  let more = true;
  /** Ends of the next pages, found ahead; none left and `tailNext`: the next page is the tail. */
  const ends: string[] = [];
  let tailNext = false;
  /** The query finding the next ends, while one is in flight. */
  let finding: Promise<void> | null = null;
  /** Finds where up to ENDS_AHEAD pages after `from` end, and queues those ends. */
  const findEnds = (from: string | null): Promise<void> => {
    const found = (async () => {
      const result = await pageEndsQuery(knex, rules.source, filter, batchSize, ENDS_AHEAD, {
        after: from,
        until: range.until,
      });
      const rows = (result as { rows: { key: string }[] }).rows;
      ends.push(...rows.map((r) => r.key));
      tailNext = rows.length < ENDS_AHEAD;
    })().finally(() => {
      finding = null;
    });
    finding = found;
    return found;
  };
  /** Starts reading the next page once its end is known; null when the range is done. */
  const start = async (): Promise<{ page: Promise<Page | null>; tail: boolean } | null> => {
    if (!more || source.signal?.aborted) return null;
    if (ends.length === 0 && !tailNext) await (finding ?? findEnds(after));
    const from = after;
    const end = ends.shift();
    if (end !== undefined) after = end;
    else more = false;
    const page =
      end !== undefined
        ? readOnePage(knex, source, { after: from, until: end, limit: null })
        : readOnePage(knex, source, { after: from, until: range.until, limit: batchSize });
    // A failure surfaces when the page is awaited.
    page.catch(() => undefined);
    // The next ends are found while the pages up to these are read, so no read waits for them
    // (a failure is found again, and surfaces, when the ends run out).
    if (end !== undefined && ends.length <= ENDS_LOW && !tailNext && finding === null)
      findEnds(ends[ends.length - 1] ?? after).catch(() => undefined);
    return { page, tail: end === undefined };
  };
  const reading: { page: Promise<Page | null>; tail: boolean }[] = [];
  try {
    for (;;) {
      while (reading.length < READ_DEPTH) {
        const started = await start();
        if (!started) break;
        reading.push(started);
      }
      const next = reading.shift();
      if (!next) return;
      const page = await next.page;
      // The tail came back full (accounts were added meanwhile): walk on from its last key.
      if (next.tail && page && page.total >= batchSize) {
        more = true;
        tailNext = false;
        after = page.last;
      }
      // An empty page (its accounts went away meanwhile) is skipped, not the end of the range.
      if (page) yield page;
    }
  } finally {
    await Promise.allSettled([...reading.map((r) => r.page), finding]);
  }
}

/** Each page with its plan: the pure evaluation of its accounts. */
export async function* evaluated(
  pages: AsyncGenerator<Page>,
  source: Pick<PageSource, 'rules' | 'asOf' | 'explain' | 'wanted'>,
): AsyncGenerator<Page & { plan: PagePlan }> {
  const { rules, asOf, explain, wanted } = source;
  for await (const page of pages) {
    // Let the queries already started go out before this page's evaluation holds the event loop.
    await new Promise((resolve) => setImmediate(resolve));
    const plan = planPage(page.signals, page.state, rules, asOf, explain, wanted?.());
    countSkipped(plan.tally, page.skipped);
    yield { ...page, plan };
  }
}

/**
 * Keeps one `next()` of `source` in flight: while the caller works on an item (evaluates a page,
 * writes it), the next one is already in the making (read on another connection, evaluated).
 */
export async function* readAhead<T>(source: AsyncGenerator<T>): AsyncGenerator<T> {
  let pending: Promise<IteratorResult<T>> | null = source.next();
  try {
    for (;;) {
      const result: IteratorResult<T> = await pending;
      pending = null;
      if (result.done) return;
      pending = source.next();
      // Its failure surfaces when awaited; until then it must not count as unhandled.
      pending.catch(() => undefined);
      yield result.value;
    }
  } finally {
    if (pending) await pending.catch(() => undefined);
    await source.return(undefined);
  }
}
