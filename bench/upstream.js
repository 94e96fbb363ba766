// @ts-check
// The benchmark's upstream, in a process of its own: the demo's mock (OpenAI JSON and SSE, with usage).
import { startMockUpstream } from '../examples/express-proxy/mock-upstream.js';

const server = await startMockUpstream();
process.stdout.write(`${JSON.stringify({ port: /** @type {import('node:net').AddressInfo} */ (server.address()).port })}\n`);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
