import type { Command } from 'commander';
import { runCommand, writeArtifact, type CommonOptions } from '../context';
import { withCommonOptions } from '../options';

export function registerEmbedded(program: Command): void {
  const embedded = program
    .command('embedded')
    .description(
      'the Postgres suspend runs itself when no database is configured (data in .suspend/ or $SUSPEND_HOME)',
    );

  withCommonOptions(
    embedded
      .command('status')
      .description('is the embedded server running for this folder? prints its URL and data folder'),
  ).action(async (opts: CommonOptions) =>
    runCommand(opts, async (ctx) => {
      const { embeddedDataDir, embeddedStatus } = await import('../../db/embedded');
      const s = await embeddedStatus(embeddedDataDir(ctx.cwd));
      const details = [
        s.pid === null ? null : `pid ${s.pid}`,
        s.clients === null ? null : `${s.clients} client(s) connected`,
        s.ownerPid === null ? null : `started by process ${s.ownerPid}`,
      ].filter((d) => d !== null);
      const lines = [
        `running   ${s.running ? `yes (${details.join(', ')})` : 'no'}`,
        ...(s.url ? [`url       ${s.url}`] : []),
        `data dir  ${s.dataDir}`,
        `pgdata    ${s.pgdata}`,
      ];
      writeArtifact(lines.join('\n'));
    }),
  );

  withCommonOptions(
    embedded
      .command('stop')
      .description('stop the embedded server for this folder (it starts again on the next command)')
      .option(
        '--force',
        'stop even while other suspend processes are connected (their transactions roll back)',
      ),
  ).action(async (opts: CommonOptions & { force?: boolean }) =>
    runCommand(opts, async (ctx) => {
      const { embeddedDataDir, stopEmbeddedPostgres } = await import('../../db/embedded');
      const dataDir = embeddedDataDir(ctx.cwd);
      const r = await stopEmbeddedPostgres(dataDir, { force: opts.force, log: (line) => ctx.debug(line) });
      ctx.log(
        r.stopped
          ? `stopped the embedded Postgres (pid ${r.pid}) in ${dataDir}`
          : `no embedded Postgres running in ${dataDir}`,
      );
    }),
  );
}
