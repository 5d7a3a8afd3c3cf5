/**
 * How many statements one worker keeps in flight, and so the connections it opens. Its own module,
 * free of imports, so the CLI's help can name the count without loading the engine.
 */

/**
 * Page reads in flight per worker. Two instead of one: 1M dry run 5.3 s -> 4.7 s, a sweep with
 * nothing to change 7.8 s -> 6.2 s. Three instead of two: a read that has finished no longer leaves
 * its core idle while Node parses and evaluates the page before (1M dry run 3.69 -> 3.48 s, the
 * report after a backfill 4.88 -> 4.60 s, medians of alternating runs on 2 cores; a sweep gained
 * less, within the spread, a backfill nothing measurable).
 */
export const READ_DEPTH = 3;

/**
 * Pages of one worker written at once, each in its own transaction on its own connection: while
 * one waits on Node between statements, the other's statements run.
 */
export const WRITE_DEPTH = 2;

/**
 * Connections of one worker's pipeline, which its READ_DEPTH reads, WRITE_DEPTH writes and the
 * page-ends query share. Four, as with two reads: a dry run's reads and ends fit, and a real run's
 * writes wait for a read now and then. A fifth made a sweep 2.6% and a backfill 2-3% faster (within
 * the spread of runs), and it is one a run of one worker, which is never checked against the
 * connection limits, may not get under a tight role limit where it ran before.
 */
export const PIPELINE_CONNECTIONS = 4;
