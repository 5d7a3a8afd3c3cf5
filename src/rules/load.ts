// Placeholder until the rules loader lands (issue 3): no file means the defaults.
import { DEFAULT_MAPPING, DEFAULT_NOTIFICATIONS, DEFAULT_SETTINGS } from './defaults';
import type { Rules } from '../types';
export async function loadRules(_options: { file?: string | undefined; cwd: string }): Promise<Rules> {
  const defaults = {
    orgId: null,
    policies: [],
    exclusions: [],
    notifications: DEFAULT_NOTIFICATIONS,
    settings: DEFAULT_SETTINGS,
  };
  return {
    file: null,
    hash: 'none',
    databaseUrl: null,
    settings: DEFAULT_SETTINGS,
    source: DEFAULT_MAPPING,
    defaults,
    organizations: {},
  };
}
