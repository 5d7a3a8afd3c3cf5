import { countSkipped, emptyCounts, mergeCounts, restoreCounts, SKIPPED_KEYS } from '../src/engine/counts';

/** What a run counts of the accounts it skipped for bad data, page by page and worker by worker. */

const skipped = (from: number, to: number, reason: string) =>
  Array.from({ length: to - from + 1 }, (_, i) => ({ key: String(from + i), reason }));

test('skipped accounts: every one counted, the first keys of each reason kept, in page order', () => {
  let run = emptyCounts();
  for (const [from, to] of [
    [1, 4],
    [5, 12],
    [13, 25],
  ] as const) {
    const page = emptyCounts();
    countSkipped(page, [
      ...skipped(from, to, 'bad terms'),
      ...skipped(100 + from, 100 + from, 'huge balance'),
    ]);
    run = mergeCounts(run, page);
  }
  expect(run.skipped).toBe(28);
  expect(run.skippedByReason).toEqual({ 'bad terms': 25, 'huge balance': 3 });
  expect(run.skippedKeys).toEqual({
    'bad terms': ['1', '2', '3', '4', '5', '6', '7', '8', '9', '10'],
    'huge balance': ['101', '105', '113'],
  });
  expect(run.skippedKeys['bad terms']).toHaveLength(SKIPPED_KEYS);
});

test('counts stored by an older run (no skipped keys) merge with a page that has some', () => {
  const stored = restoreCounts({ skipped: 2, skippedByReason: { 'bad terms': 2 } } as never);
  const page = emptyCounts();
  countSkipped(page, skipped(7, 7, 'bad terms'));
  const merged = mergeCounts({ ...stored, skippedKeys: undefined } as never, page);
  expect(merged.skipped).toBe(3);
  expect(merged.skippedKeys).toEqual({ 'bad terms': ['7'] });
});
