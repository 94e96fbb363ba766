// Preloaded with --import: appends every ES module resolution (specifier, importing module, resolved URL) to the file $IMPORTS_LOG, one JSON line each.
import { appendFileSync } from 'node:fs';
import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';

// Node.js runs resolve hooks on a thread of their own, where this same file is loaded as the hooks module.
if (isMainThread) register(import.meta.url);

export async function resolve(specifier, context, nextResolve) {
  const resolved = await nextResolve(specifier, context);
  appendFileSync(process.env.IMPORTS_LOG, `${JSON.stringify({ specifier, parent: context.parentURL, url: resolved.url })}\n`);
  return resolved;
}
