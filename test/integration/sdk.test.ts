// The official SDKs through the middleware (the example proxy on SQLite).
import { afterAll, beforeAll } from 'vitest';
import { startGate, type Gate } from '../helpers/gate.js';
import { llmUpstream } from '../helpers/llm-upstream.js';
import { describeSdks } from '../helpers/sdk-suite.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;
let gate: Gate;
beforeAll(async () => {
  upstream = await startUpstream(llmUpstream);
  gate = await startGate(upstream);
});
afterAll(async () => {
  await gate?.close();
  await upstream?.close();
});

describeSdks('the middleware', () => ({
  url: gate.url,
  async createKey(tokenLimit) {
    const { key, record } = await gate.createKey(tokenLimit);
    return {
      key,
      charged: async (requests) => (await gate.settled(record.id, requests)).totalLifetimeTokens,
      expire: async () => void (await gate.storage.updateKey(record.id, { expiresAt: gate.clock.now() - 1 })),
    };
  },
}));
