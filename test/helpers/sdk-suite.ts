// The official OpenAI and Anthropic SDKs, unmodified, through a gate: every API charged exactly, refusals as each SDK's own errors.
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import { USAGE } from './llm-upstream.js';

export interface SdkTarget {
  /** Where the gate serves `/v1/...`. */
  url: string;
  /** A key with `tokenLimit` per window; `charged(n)` waits until its n-th request is recorded and returns its lifetime tokens. */
  createKey(tokenLimit: number): Promise<{ key: string; charged(requests: number): Promise<number>; expire(): Promise<void> }>;
}

export function describeSdks(name: string, target: () => SdkTarget): void {
  describe(`the official SDKs through ${name}`, () => {
    const openai = (key: string): OpenAI => new OpenAI({ apiKey: key, baseURL: `${target().url}/v1` });
    const anthropic = (key: string): Anthropic => new Anthropic({ apiKey: key, baseURL: target().url });

    it('openai: chat JSON and stream, Responses, embeddings, each charged exactly what the upstream reported', async () => {
      const { key, charged } = await target().createKey(1_000_000);
      const client = openai(key);
      const chat = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }] });
      expect(chat.choices[0]?.message.content).toBe('Hi');
      expect(await charged(1)).toBe(USAGE.chat);
      let text = '';
      for await (const chunk of await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true, stream_options: { include_usage: true } })) text += chunk.choices[0]?.delta.content ?? '';
      expect(text).toBe('Hi');
      expect(await charged(2)).toBe(USAGE.chat + USAGE.chatStream);
      expect((await client.responses.create({ model: 'm', input: 'hi' })).output_text).toBe('Hi');
      expect(await charged(3)).toBe(USAGE.chat + USAGE.chatStream + USAGE.responses);
      expect((await client.embeddings.create({ model: 'e', input: 'hi' })).data[0]?.embedding).toEqual([0.5, 0.25]);
      expect(await charged(4)).toBe(USAGE.chat + USAGE.chatStream + USAGE.responses + USAGE.embeddings);
    });

    it('anthropic: messages JSON and stream, each charged exactly what the upstream reported', async () => {
      const { key, charged } = await target().createKey(1_000_000);
      const client = anthropic(key);
      const message = await client.messages.create({ model: 'claude', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] });
      expect(message.content[0]).toMatchObject({ type: 'text', text: 'Hi' });
      expect(await charged(1)).toBe(USAGE.messages);
      const streamed = await client.messages.stream({ model: 'claude', max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }).finalMessage();
      expect(streamed.content[0]).toMatchObject({ type: 'text', text: 'Hello' });
      expect(await charged(2)).toBe(USAGE.messages + USAGE.messagesStream);
    });

    it("the gate's 429 is each SDK's RateLimitError within a second, with default retries", async () => {
      const { key, charged } = await target().createKey(10);
      await openai(key).chat.completions.create({ model: 'm', messages: [] });
      expect(await charged(1)).toBe(USAGE.chat);
      let started = Date.now();
      const openaiError = await openai(key).chat.completions.create({ model: 'm', messages: [] }).catch((error: unknown) => error);
      expect(openaiError).toBeInstanceOf(OpenAI.RateLimitError);
      expect(Date.now() - started).toBeLessThan(1000);
      started = Date.now();
      const anthropicError = await anthropic(key).messages.create({ model: 'claude', max_tokens: 10, messages: [] }).catch((error: unknown) => error);
      expect(anthropicError).toBeInstanceOf(Anthropic.RateLimitError);
      expect(Date.now() - started).toBeLessThan(1000);
      expect((anthropicError as InstanceType<typeof Anthropic.RateLimitError>).error).toMatchObject({ type: 'error', error: { type: 'rate_limit_error' } });
    });

    it('401 and 403 are each SDK’s AuthenticationError and PermissionDeniedError', async () => {
      const unknown = 'tg-not-a-key-of-this-gate';
      await expect(openai(unknown).chat.completions.create({ model: 'm', messages: [] })).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
      await expect(anthropic(unknown).messages.create({ model: 'claude', max_tokens: 10, messages: [] })).rejects.toBeInstanceOf(Anthropic.AuthenticationError);
      const { key, expire } = await target().createKey(1000);
      await expire();
      await expect(openai(key).chat.completions.create({ model: 'm', messages: [] })).rejects.toBeInstanceOf(OpenAI.PermissionDeniedError);
      await expect(anthropic(key).messages.create({ model: 'claude', max_tokens: 10, messages: [] })).rejects.toBeInstanceOf(Anthropic.PermissionDeniedError);
    });
  });
}
