/** Tests run against a real Postgres (DATABASE_URL, or the embedded default); see tests/helpers/. */
module.exports = {
  preset: 'ts-jest',
  testEnvironment: 'node',
  roots: ['<rootDir>/tests'],
  testMatch: ['**/*.test.ts'],
  globalSetup: '<rootDir>/tests/helpers/global-setup.ts',
  globalTeardown: '<rootDir>/tests/helpers/global-teardown.ts',
  // isolatedModules in tsconfig.json makes ts-jest transpile each file without type-checking.
  transform: { '^.+\\.ts$': 'ts-jest' },
  testTimeout: 60000,
  maxWorkers: 2,
  // Fail the run if a test file forgets to close a pool: jest would otherwise hang or warn.
  detectOpenHandles: false,
  forceExit: false,
};
