#!/usr/bin/env node
// The `tokengate` command line. Each command group lives in a sibling module and is added here.
import { Command } from 'commander';
import { backupCommand, restoreCommand } from './backup.js';
import { dbCommand } from './db.js';
import { keysCommand } from './keys.js';
import { packageVersion } from '../package-root.js';
import { serveCommand } from './serve.js';
import { runCli } from './shared.js';
import { exportCommand, importCommand } from './transfer.js';

const program = new Command('tokengate')
  .description('Per-key token quotas over a rolling 5-hour window in front of LLM and HTTP proxies')
  .version(packageVersion())
  .addCommand(serveCommand())
  .addCommand(keysCommand())
  .addCommand(importCommand())
  .addCommand(exportCommand())
  .addCommand(backupCommand())
  .addCommand(restoreCommand())
  .addCommand(dbCommand());

await runCli(program, process.argv);
