// `tokengate db migrate`: applies pending migrations to the configured store, then exits.
import { Command } from 'commander';
import { withStorage } from './shared.js';

export function dbCommand(): Command {
  const db = new Command('db').description('database maintenance');
  db.command('migrate')
    .description('apply pending migrations to the store DATABASE_URL or DATABASE_PATH names (also done on every start)')
    .action(async () => {
      // Opening a store migrates it, under an advisory lock on PostgreSQL.
      await withStorage(async () => undefined);
    });
  return db;
}
