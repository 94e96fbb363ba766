// Lease bookkeeping: when a lease may admit without the database, and what a finished request gives back.
import { describe, expect, it } from 'vitest';
import { Lease, LeaseBook, LEASE_IDLE_MS, LEASE_TTL_MS, LEASE_VIEW_MS } from '../../../src/quota/leases.js';

const T = 1_000_000;
const W = 5 * 3_600_000;

function granted(held: number): Lease {
  const lease = new Lease('lease:test:1', 'k', '5h');
  lease.held = held;
  lease.confirmedAt = T;
  lease.view = { used: 500, oldestBucketStart: 42, reservedElsewhere: 70, tokenLimit: 1000, windowMs: W, at: T };
  return lease;
}

describe('Lease', () => {
  it('admits while the estimate fits, its view is fresh, its row renewed and the limit unchanged', () => {
    const lease = granted(100);
    expect(lease.admits(100, 1000, W, T)).toBe(true);
    expect(lease.admits(101, 1000, W, T)).toBe(false);
    expect(lease.admits(10, 1000, W, T + LEASE_VIEW_MS)).toBe(false);
    expect(lease.admits(10, 1000, W, T - 1)).toBe(false); // a clock that went back
    expect(lease.admits(10, 2000, W, T)).toBe(false); // the key's limit changed
    expect(lease.admits(10, 1000, 2 * W, T)).toBe(false); // ...or its window
    lease.view!.at = T + LEASE_TTL_MS / 2;
    expect(lease.admits(10, 1000, W, T + LEASE_TTL_MS / 2)).toBe(false); // not renewed for half its TTL
  });

  it('stops admitting once the window as it sees it is spent, usage that ran over its estimates included', () => {
    const lease = granted(300);
    const book = new LeaseBook();
    book.admit([lease], { id: 'a', keyId: 'k', tokens: 10, partial: false }, T);
    book.complete('a', 420); // 500 used + 420 + 70 elsewhere: 10 remain
    expect(lease.held - lease.inFlight).toBe(290);
    expect(lease.admits(10, 1000, W, T)).toBe(true);
    expect(lease.admits(11, 1000, W, T)).toBe(false);
  });

  it('admits nothing once told that usage reached the database another way', () => {
    const book = new LeaseBook();
    const lease = book.lease('k', '7d');
    lease.granted(100, { used: 0, oldestBucketStart: undefined, reservedElsewhere: 0, tokenLimit: 1000, windowMs: W, at: T }, T);
    expect(lease.admits(10, 1000, W, T)).toBe(true);
    book.forgetViews();
    expect(lease.admits(10, 1000, W, T)).toBe(false);
    expect(book.lease('k', '7d')).toBe(lease);
    expect(book.lease('k')).not.toBe(lease); // the key's 5h lease is another
  });

  it('asks for a share of the limit or four estimates, within half of what is free, or nothing', () => {
    const lease = new Lease('lease:test:1', 'k', '5h');
    expect(lease.target(10_000, 10, 16_000)).toBe(1000);
    expect(lease.target(10_000, 400, 1600)).toBe(1600);
    expect(lease.target(500, 10, 16_000)).toBe(250);
    expect(lease.target(100, 60, 16_000)).toBe(0);
    lease.inFlight = 40;
    expect(lease.target(100, 30, 1600)).toBe(70); // in flight plus half of the rest
  });

  it('gives back what a request did not charge, and takes at most its estimate off the row', () => {
    const lease = granted(100);
    const book = new LeaseBook();
    book.admit([lease], { id: 'a', keyId: 'k', tokens: 60, partial: false }, T);
    book.admit([lease], { id: 'b', keyId: 'k', tokens: 40, partial: false }, T);
    expect(lease.window()).toEqual({ used: 500, reserved: 170, oldestBucketStart: 42 });
    expect(book.complete('a', 25)).toBe(true);
    expect(book.complete('a', 25)).toBe(false);
    expect(book.complete('b', 90)).toBe(true); // over its estimate: the row loses only the estimate
    expect({ held: lease.held, inFlight: lease.inFlight, taken: lease.takenSinceGrant }).toEqual({ held: 35, inFlight: 0, taken: 65 });
    expect(lease.window()).toEqual({ used: 615, reserved: 70, oldestBucketStart: 42 });
  });
});

describe('LeaseBook', () => {
  it('gives back leases idle for long enough and renews the others, never twice the same row id', () => {
    const book = new LeaseBook();
    const idle = book.lease('idle');
    idle.held = 10;
    const busy = book.lease('busy');
    busy.held = 10;
    book.admit([busy], { id: 'r', keyId: 'busy', tokens: 5, partial: false }, T);
    const { renew, drop } = book.sweep(T + LEASE_IDLE_MS + 1);
    expect(drop).toEqual([idle]);
    expect(renew).toEqual([busy]);
    const reopened = book.lease('idle');
    expect(reopened).not.toBe(idle);
    expect(reopened.id).not.toBe(idle.id);
    expect(reopened.id.startsWith(book.prefix)).toBe(true);
  });
});
