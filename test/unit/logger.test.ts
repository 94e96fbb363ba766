// The logger's redaction: keys, tokens and credential headers never reach the output.
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logger.js';

describe('createLogger', () => {
  it('redacts keys, tokens and credential headers at the top level and one level down', () => {
    const out: string[] = [];
    const logger = createLogger(new Writable({ write: (chunk: Buffer, _encoding, done) => done(void out.push(chunk.toString())) }), 'debug');
    const secret = (n: number): string => `secret-${n}-value`;
    logger.debug({ key: secret(1), apiKey: secret(2), adminToken: secret(3), token: secret(4), authorization: `Bearer ${secret(5)}`, 'x-api-key': secret(6) }, 'top');
    logger.info({ created: { key: secret(7) }, config: { adminToken: secret(8), password: secret(9) } }, 'nested');
    logger.warn({ headers: { authorization: `Bearer ${secret(10)}`, 'x-api-key': secret(11), accept: 'json' } }, 'headers');
    logger.error({ req: { headers: { authorization: `Bearer ${secret(12)}`, 'x-api-key': secret(13) } } }, 'request');
    expect(out).toHaveLength(4);
    const text = out.join('');
    for (let n = 1; n <= 13; n++) expect(text).not.toContain(secret(n));
    expect(text.match(/\[redacted\]/g)).toHaveLength(13);
    expect(JSON.parse(out[2] ?? '')).toMatchObject({ headers: { accept: 'json' } });
  });

  it('takes the level it is given', () => {
    const out: string[] = [];
    const logger = createLogger(new Writable({ write: (chunk: Buffer, _encoding, done) => done(void out.push(chunk.toString())) }), 'warn');
    logger.info('not shown');
    logger.warn('shown');
    expect(out.map((line) => (JSON.parse(line) as { msg: string }).msg)).toEqual(['shown']);
  });
});
