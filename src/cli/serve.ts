// `tokengate serve`: the standalone sidecar, configured by the environment, until SIGTERM or SIGINT.
import { Command } from 'commander';
import { loadSidecarConfig } from '../sidecar/config.js';
import { runSidecar } from '../sidecar/server.js';
import { variablesHelp } from './variables.js';

/** How long the process may linger after a clean stop before it exits anyway (a stray timer or socket). */
const EXIT_GRACE_MS = 2000;

export function serveCommand(): Command {
  return new Command('serve')
    .description(
      'run the sidecar: gate every request with the key it carries and proxy it to UPSTREAM_URL; ' +
        '/stats, /admin/keys (with ADMIN_TOKEN); configured by the environment',
    )
    .addHelpText('after', `\n${variablesHelp()}`)
    .action(async () => {
      const config = loadSidecarConfig(process.env);
      const sidecar = await runSidecar(config);
      await sidecar.stopped;
      setTimeout(() => process.exit(process.exitCode ?? 0), EXIT_GRACE_MS).unref();
    });
}
