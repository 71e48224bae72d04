import { defineProjectConfig } from '../../vitest.shared.js';

// The benchmark's smoke run (bench/smoke.test.ts), apart from the other tests: nx target `test:bench-smoke`, after
// `test`. Its own PostgreSQL cluster when none is configured, as the other tests get one.
export default defineProjectConfig(
  'grpc-server',
  { include: ['bench/**/*.test.ts'], globalSetup: ['./test/pg-global-setup.ts'] },
  'vitest.bench',
);
