import crypto from 'node:crypto';
import knexFactory, { type Knex } from 'knex';
import { readServerState, withDatabase } from './server';

export interface TestDatabase {
  name: string;
  url: string;
  knex: Knex;
  drop(): Promise<void>;
}

function adminKnex(adminUrl: string): Knex {
  return knexFactory({ client: 'pg', connection: adminUrl, pool: { min: 0, max: 1 } });
}

/**
 * A fresh database for one test file, cloned from the template that global-setup built with the
 * real `suspend seed --customers 0` and `suspend migrate`. Call `drop()` in afterAll.
 */
export async function createTestDatabase(options: { template?: boolean } = {}): Promise<TestDatabase> {
  const state = readServerState();
  const name = `suspend_test_${crypto.randomBytes(5).toString('hex')}`;
  const admin = adminKnex(state.adminUrl);
  try {
    if (options.template === false) await admin.raw('create database ??', [name]);
    else await admin.raw('create database ?? template ??', [name, state.template]);
  } finally {
    await admin.destroy();
  }
  const url = withDatabase(state.adminUrl, name);
  const knex = knexFactory({ client: 'pg', connection: url, pool: { min: 0, max: 4 } });
  return {
    name,
    url,
    knex,
    async drop() {
      await knex.destroy();
      const a = adminKnex(state.adminUrl);
      try {
        await a.raw('drop database if exists ?? with (force)', [name]);
      } finally {
        await a.destroy();
      }
    },
  };
}
