import { stringify } from 'yaml';

/** A path into the rules file: map keys and list indexes, as in `policies.delinquency.stages[1]`. */
export type YamlPath = (string | number)[];

/**
 * One thing wrong with a rules file, before it is given a file and line: where (the path, and whether
 * the key itself is at fault rather than its value) and what (one phrase: what was given, what is allowed).
 */
export interface Problem {
  path: YamlPath;
  /** Point at the key (an unknown key, a bad name) instead of its value. */
  atKey?: boolean;
  message: string;
}

/** `policies.delinquency.stages[1].when`; keys that are not plain words are quoted: `organizations["a b"]`. */
export function formatPath(path: YamlPath): string {
  let out = '';
  for (const segment of path) {
    if (typeof segment === 'number') out += `[${segment}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(segment)) out += out === '' ? segment : `.${segment}`;
    else out += `[${JSON.stringify(segment)}]`;
  }
  return out === '' ? '(top level)' : out;
}

/** A value as the user wrote it, short enough for one line: `"30 dayz"`, `12`, `{ tg: x }`. */
export function describeValue(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  if (value === null || typeof value !== 'object') return String(value);
  if (Array.isArray(value) && value.length === 0) return 'an empty list';
  if (!Array.isArray(value) && Object.keys(value).length === 0) return 'an empty map';
  const flow = stringify(value, { collectionStyle: 'flow', lineWidth: 0 }).trim();
  if (flow.length <= 60 && !flow.includes('\n')) return flow;
  return Array.isArray(value) ? 'a list' : 'a map';
}

/** The closest of `candidates` to a mistyped `word`, when it is close enough to be a likely typo. */
export function closest(word: string, candidates: readonly string[]): string | null {
  let best: string | null = null;
  let bestDistance = Infinity;
  for (const c of candidates) {
    const d = editDistance(word.toLowerCase(), c.toLowerCase());
    if (d < bestDistance) {
      best = c;
      bestDistance = d;
    }
  }
  return best !== null && bestDistance <= Math.max(1, Math.floor(word.length / 3)) ? best : null;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, (previous[j - 1] ?? 0) + cost);
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}
