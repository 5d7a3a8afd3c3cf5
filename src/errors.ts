/** Exit codes, documented in README.md and `suspend --help`. */
export const ExitCode = {
  ok: 0,
  failed: 1,
  usage: 2,
  lockHeld: 3,
  safetyLimit: 4,
} as const;
export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

/**
 * An error the user can act on: its message is one sentence that says what, where and what is
 * allowed, and the CLI prints only that (the stack only with --debug).
 */
export class SuspendError extends Error {
  readonly exitCode: ExitCodeValue;
  constructor(message: string, options: { exitCode?: ExitCodeValue; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SuspendError';
    this.exitCode = options.exitCode ?? ExitCode.failed;
  }
}

/** Bad flags, bad rules file, bad database URL: exit code 2, nothing connected or written. */
export class UsageError extends SuspendError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, { ...options, exitCode: ExitCode.usage });
    this.name = 'UsageError';
  }
}

/** Several problems found at once (e.g. every error in a rules file), each one sentence. */
export class ValidationErrors extends UsageError {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(problems.join('\n'));
    this.name = 'ValidationErrors';
    this.problems = problems;
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
