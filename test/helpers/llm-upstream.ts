// An upstream that answers like OpenAI and Anthropic do (chat, streams, Responses, embeddings, messages), each with known usage.
import type { Respond } from './upstream.js';

/** Tokens each answer reports: what the gate must charge for it. */
export const USAGE = { chat: 15, chatStream: 7, responses: 12, embeddings: 4, messages: 22, messagesStream: 16 } as const;

const chatChunk = (delta: object, finish: string | null): object => ({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] });

const anthropicEvents: [string, object][] = [
  ['message_start', { type: 'message_start', message: { id: 'msg_1', type: 'message', role: 'assistant', model: 'claude', content: [], stop_reason: null, stop_sequence: null, usage: { input_tokens: 10, output_tokens: 1 } } }],
  ['content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }],
  ['content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: 'Hello' } }],
  ['content_block_stop', { type: 'content_block_stop', index: 0 }],
  ['message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: 6 } }],
  ['message_stop', { type: 'message_stop' }],
];

/** Routes by path and `stream`, as the real APIs do. */
export const llmUpstream: Respond = (req, body, res) => {
  const request = JSON.parse(body.toString('utf8') || '{}') as { stream?: boolean };
  const path = (req.url ?? '').split('?', 1)[0];
  const send = (payload: object): void => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify(payload));
  };
  const stream = (events: [string | undefined, object | string][]): void => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const [event, data] of events) res.write(`${event ? `event: ${event}\n` : ''}data: ${typeof data === 'string' ? data : JSON.stringify(data)}\n\n`);
    res.end();
  };
  if (path === '/v1/chat/completions' && request.stream) {
    return stream([
      [undefined, chatChunk({ role: 'assistant', content: 'Hi' }, null)],
      [undefined, chatChunk({}, 'stop')],
      [undefined, { id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 } }],
      [undefined, '[DONE]'],
    ]);
  }
  if (path === '/v1/chat/completions') {
    return send({ id: 'c1', object: 'chat.completion', created: 1, model: 'm', choices: [{ index: 0, message: { role: 'assistant', content: 'Hi' }, finish_reason: 'stop' }], usage: { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 } });
  }
  if (path === '/v1/responses') {
    return send({ id: 'resp_1', object: 'response', created_at: 1, status: 'completed', model: 'm', output: [{ type: 'message', id: 'm1', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text: 'Hi', annotations: [] }] }], usage: { input_tokens: 8, output_tokens: 4, total_tokens: 12 } });
  }
  if (path === '/v1/embeddings') {
    // The OpenAI SDK asks for base64 unless told otherwise, and decodes it.
    const vector = [0.5, 0.25];
    const embedding = (request as { encoding_format?: string }).encoding_format === 'base64' ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector;
    return send({ object: 'list', data: [{ object: 'embedding', index: 0, embedding }], model: 'e', usage: { prompt_tokens: 4, total_tokens: 4 } });
  }
  if (path === '/v1/messages' && request.stream) return stream(anthropicEvents);
  if (path === '/v1/messages') {
    return send({ id: 'msg_1', type: 'message', role: 'assistant', model: 'claude', content: [{ type: 'text', text: 'Hi' }], stop_reason: 'end_turn', stop_sequence: null, usage: { input_tokens: 12, output_tokens: 3, cache_creation_input_tokens: 2, cache_read_input_tokens: 5 } });
  }
  res.writeHead(404, { 'content-type': 'application/json' });
  res.end('{"error":{"message":"no such route","type":"invalid_request_error"}}');
};
