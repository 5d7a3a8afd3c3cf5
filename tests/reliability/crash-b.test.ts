import { crashSuite, KILL_POINTS } from '../helpers/reliability';

/**
 * Crash and resume, kill points 6-10 of 10 (seeded): a backfill killed with SIGKILL inside a page's
 * transaction (after the read, or with every write done before COMMIT) or between pages, then
 * `suspend backfill --resume`, ends in the same states, history, outbox and host columns as a run
 * that was never interrupted, with no history row or event written twice. Two files so jest runs
 * them side by side.
 */
crashSuite(KILL_POINTS.slice(5, 10));
