import { cosmiconfig } from 'cosmiconfig';

/** Where a rules file is looked for, in order, from the working directory up to the project root. */
export const SEARCH_PLACES = [
  'package.json',
  'suspend.config.yaml',
  'suspend.config.yml',
  '.suspendrc.yaml',
  '.suspendrc.yml',
] as const;

export interface FoundRules {
  file: string;
  /** For package.json: the key that holds the rules. */
  root: string[];
}

/**
 * Finds the rules file with cosmiconfig, only to learn its path: the file is then parsed by
 * `load.ts` with line numbers. A package.json counts only when it has a `suspend` key.
 */
export async function findRulesFile(cwd: string): Promise<FoundRules | null> {
  const explorer = cosmiconfig('suspend', {
    searchPlaces: [...SEARCH_PLACES],
    searchStrategy: 'project',
    ignoreEmptySearchPlaces: false,
    cache: false,
    loaders: {
      '.json': (_file: string, content: string) => {
        try {
          return JSON.parse(content) as unknown;
        } catch {
          return null;
        }
      },
      // Found is all we need; an empty file still counts (and is reported as empty).
      '.yaml': () => ({}),
      '.yml': () => ({}),
    },
  });
  const result = await explorer.search(cwd);
  if (!result) return null;
  return { file: result.filepath, root: /(^|[\\/])package\.json$/.test(result.filepath) ? ['suspend'] : [] };
}
