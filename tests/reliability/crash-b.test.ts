import { crashAndResume, KILL_POINTS, uninterruptedBackfill } from '../helpers/reliability';

/**
 * Crash and resume (kill points 6-10 of 10, seeded): a backfill killed with SIGKILL inside a page's
 * transaction (after the read, or with every write done before COMMIT) or between pages, then
 * `suspend backfill --resume`, ends in the same states, history, outbox and host columns as a run
 * that was never interrupted, with no history row or event written twice.
 */

let reference: Record<string, string>;
beforeAll(async () => {
  reference = await uninterruptedBackfill();
});

test.each(KILL_POINTS.slice(5, 10))(
  'killed at page %o, resumed: the same final state as an uninterrupted run',
  async (point) => {
    await crashAndResume(point, reference);
  },
);
