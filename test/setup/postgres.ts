// Global setup: one throwaway PostgreSQL server for the whole run, unless TEST_DATABASE_URL names one.
import type { TestProject } from 'vitest/node';
import { startPostgres } from '../helpers/postgres.js';

declare module 'vitest' {
  export interface ProvidedContext {
    postgresUrl: string;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const given = process.env.TEST_DATABASE_URL;
  if (given) {
    project.provide('postgresUrl', given);
    return async () => undefined;
  }
  const server = await startPostgres();
  project.provide('postgresUrl', server.url);
  return () => server.close();
}
