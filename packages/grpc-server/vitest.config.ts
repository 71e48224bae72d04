import { defineProjectConfig } from '../../vitest.shared.js';

// pg-global-setup.ts starts a throwaway PostgreSQL for the run when none is configured and one is installed.
export default defineProjectConfig('grpc-server', { globalSetup: ['./test/pg-global-setup.ts'] });
