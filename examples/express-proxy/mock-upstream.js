// A tiny OpenAI-compatible upstream for the demo: chat completions as JSON or SSE, with usage.
import http from 'node:http';

/** Starts the mock on a free loopback port; resolves to its server. */
export function startMockUpstream() {
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      if (req.method !== 'POST' || !req.url?.startsWith('/v1/chat/completions')) {
        res.writeHead(404, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: { message: 'not found', type: 'invalid_request_error' } }));
      }
      let body = {};
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        res.writeHead(400, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ error: { message: 'body is not JSON', type: 'invalid_request_error' } }));
      }
      const words = ['Hello', ' from', ' the', ' mock', ' upstream', '.'];
      const usage = { prompt_tokens: Math.ceil(JSON.stringify(body.messages ?? []).length / 4), completion_tokens: words.length };
      usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
      const base = { id: 'chatcmpl-mock', object: 'chat.completion', created: Math.floor(Date.now() / 1000), model: body.model ?? 'mock-model' };
      if (!body.stream) {
        res.writeHead(200, { 'content-type': 'application/json' });
        return res.end(JSON.stringify({ ...base, choices: [{ index: 0, message: { role: 'assistant', content: words.join('') }, finish_reason: 'stop' }], usage }));
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      const events = words.map((word) => ({ ...base, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: word } }], usage: null }));
      events.push({ ...base, object: 'chat.completion.chunk', choices: [], usage });
      for (const event of events) res.write(`data: ${JSON.stringify(event)}\n\n`);
      res.end('data: [DONE]\n\n');
    });
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}
