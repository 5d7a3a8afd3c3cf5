import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const ROOT = path.resolve(__dirname, '../..');
/** Written by global-setup so every worker finds the server and template it prepared. */
export const STATE_FILE = path.join(ROOT, '.suspend', 'test-server.json');

export interface TestServerState {
  /** URL of a maintenance database on the server (CREATE/DROP DATABASE run there). */
  adminUrl: string;
  template: string;
  embedded: boolean;
}

export function readServerState(): TestServerState {
  return JSON.parse(fs.readFileSync(STATE_FILE, 'utf8')) as TestServerState;
}

/** The same URL with another database name. */
export { withDatabase } from '../../src/db/connection';

/** The template's name changes whenever what builds it changes, so a stale template is never reused. */
export function templateName(): string {
  const hash = crypto.createHash('sha256');
  for (const dir of ['migrations', 'dist/seed']) {
    const abs = path.join(ROOT, dir);
    if (!fs.existsSync(abs)) continue;
    for (const f of fs.readdirSync(abs).sort()) {
      if (f.endsWith('.map')) continue;
      hash.update(f).update(fs.readFileSync(path.join(abs, f)));
    }
  }
  return `suspend_template_${hash.digest('hex').slice(0, 12)}`;
}
