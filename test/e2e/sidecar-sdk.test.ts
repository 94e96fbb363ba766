// The official SDKs through `tokengate serve` as a child process.
import { afterAll, beforeAll } from 'vitest';
import { llmUpstream } from '../helpers/llm-upstream.js';
import { describeSdks } from '../helpers/sdk-suite.js';
import { startSidecar, type Sidecar } from '../helpers/sidecar.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

let upstream: Upstream;
let sidecar: Sidecar;
beforeAll(async () => {
  upstream = await startUpstream(llmUpstream);
  sidecar = await startSidecar({ UPSTREAM_URL: upstream.url });
});
afterAll(async () => {
  await sidecar?.stop();
  await upstream?.close();
});

describeSdks('the sidecar', () => ({
  url: sidecar.url,
  async createKey(tokenLimit) {
    const { key, id } = await sidecar.createKey({ token_limit_per_5h: tokenLimit });
    return {
      key,
      charged: async (requests) => (await sidecar.settled(key, requests)).total_lifetime_tokens,
      async expire() {
        const response = await sidecar.admin('PATCH', `/admin/keys/${id}`, { expiry_date: '2020-01-01T00:00:00Z' });
        if (response.status !== 200) throw new Error(`expiring the key failed: ${response.status}`);
      },
    };
  },
}));
