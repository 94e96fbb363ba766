// Header and query handling of the proxy: hop-by-hop removal, key removal and replacement.
import { describe, expect, it } from 'vitest';
import { decodableAcceptEncoding, endToEnd, keyStyle, upstreamRequestHeaders, withoutQueryKey } from '../../../src/sidecar/headers.js';

describe('endToEnd', () => {
  it('drops hop-by-hop headers and those Connection names, case-insensitively', () => {
    expect(
      endToEnd({ connection: 'close, X-Hop', 'x-hop': '1', 'keep-alive': 't', te: 'trailers', trailer: 'a', 'transfer-encoding': 'chunked', upgrade: 'h2c', 'proxy-authorization': 'p', 'proxy-connection': 'k', 'x-kept': 'y', 'set-cookie': ['a=1', 'b=2'] }),
    ).toEqual({ 'x-kept': 'y', 'set-cookie': ['a=1', 'b=2'] });
  });
});

describe('upstreamRequestHeaders', () => {
  it('removes the client key, Host and Expect; adds the upstream key in the style used', () => {
    const bearer = { authorization: 'Bearer tg-client', 'x-api-key': 'tg-other', host: 'sidecar', expect: '100-continue', 'content-type': 'application/json' };
    expect(upstreamRequestHeaders(bearer, undefined)).toEqual({ 'content-type': 'application/json' });
    expect(upstreamRequestHeaders(bearer, 'sk-up')).toEqual({ 'content-type': 'application/json', authorization: 'Bearer sk-up' });
    expect(upstreamRequestHeaders({ 'x-api-key': 'tg-client' }, 'sk-up')).toEqual({ 'x-api-key': 'sk-up' });
  });

  it('sends the upstream key in the fixed style when one is configured, whatever the client used', () => {
    expect(upstreamRequestHeaders({ authorization: 'Bearer tg-client' }, 'sk-up', 'x-api-key')).toEqual({ 'x-api-key': 'sk-up' });
    expect(upstreamRequestHeaders({ 'x-api-key': 'tg-client' }, 'sk-up', 'authorization')).toEqual({ authorization: 'Bearer sk-up' });
  });

  it('takes the key style from where the gate found the key', () => {
    expect(keyStyle({ authorization: 'bearer  k' })).toBe('authorization');
    expect(keyStyle({ authorization: 'Bearer ', 'x-api-key': 'k' })).toBe('x-api-key');
    expect(keyStyle({ authorization: 'Basic abc', 'x-api-key': 'k' })).toBe('x-api-key');
    expect(keyStyle({})).toBe('authorization');
  });
});

describe('withoutQueryKey', () => {
  it.each([
    ['/v1/x', '/v1/x'],
    ['/v1/x?api_key=k', '/v1/x'],
    ['/v1/x?a=%20b+c&api_key=k&api%5Fkey=k2&z=', '/v1/x?a=%20b+c&z='],
    ['/v1/x?api_keys=1&a', '/v1/x?api_keys=1&a'],
    ['/v1/x?bad=%E0%A4%A', '/v1/x?bad=%E0%A4%A'],
  ])('%s becomes %s', (url, expected) => {
    expect(withoutQueryKey(url)).toBe(expected);
  });
});

describe('decodableAcceptEncoding', () => {
  it('offers only the codings the tap decodes, with their q-values', () => {
    expect(decodableAcceptEncoding('gzip, deflate, br, zstd')).toBe('gzip, deflate, br');
    expect(decodableAcceptEncoding('zstd;q=1.0, br;q=0.9, gzip;q=0.5, *;q=0.1')).toBe('br;q=0.9, gzip;q=0.5');
    expect(decodableAcceptEncoding(['GZIP', 'compress, identity;q=0.2'])).toBe('GZIP, identity;q=0.2');
  });

  it('asks for identity when nothing decodable is left, or nothing was sent', () => {
    expect(decodableAcceptEncoding('zstd')).toBe('identity');
    expect(decodableAcceptEncoding('*')).toBe('identity');
    expect(decodableAcceptEncoding('gzip;q=0, zstd')).toBe('identity');
    expect(decodableAcceptEncoding(undefined)).toBe('identity');
    expect(decodableAcceptEncoding('')).toBe('identity');
  });
});
