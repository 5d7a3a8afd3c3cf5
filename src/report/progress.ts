import type * as CliProgress from 'cli-progress';
import { formatCount } from './tables';

/**
 * Progress on stderr: a bar with accounts/s and ETA on a terminal, a plain line every few seconds
 * when stderr is not a terminal (cron, CI), nothing with --quiet.
 */
export interface Progress {
  update(scanned: number, changes: number): void;
  stop(): void;
}

const LOG_EVERY_MS = 5000;

export function createProgress(options: {
  quiet: boolean;
  total: number;
  label: string;
  stream?: NodeJS.WriteStream;
}): Progress {
  const stream = options.stream ?? process.stderr;
  if (options.quiet) return { update() {}, stop() {} };
  const started = Date.now();
  if (stream.isTTY) {
    // Loaded only for a terminal: cron and --quiet runs do not pay its memory.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const cliProgress = require('cli-progress') as typeof CliProgress;
    const bar = new cliProgress.SingleBar(
      {
        stream,
        format: `${options.label} {bar} {percentage}% | {value}/{total} accounts | {speed} accounts/s | ETA {eta_formatted} | {changes} changes`,
        hideCursor: true,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(options.total, 0, { speed: '0', changes: '0' });
    return {
      update(scanned, changes) {
        const seconds = Math.max((Date.now() - started) / 1000, 0.001);
        bar.update(scanned, {
          speed: formatCount(Math.round(scanned / seconds)),
          changes: formatCount(changes),
        });
      },
      stop() {
        bar.stop();
      },
    };
  }
  let lastLog = started;
  return {
    update(scanned, changes) {
      const now = Date.now();
      if (now - lastLog < LOG_EVERY_MS) return;
      lastLog = now;
      const rate = Math.round(scanned / ((now - started) / 1000));
      const pct = options.total > 0 ? Math.floor((100 * scanned) / options.total) : 100;
      stream.write(
        `${options.label}: ${formatCount(scanned)}/${formatCount(options.total)} accounts (${pct}%), ${formatCount(rate)} accounts/s, ${formatCount(changes)} changes\n`,
      );
    },
    stop() {},
  };
}
