// Shares of keys' budgets this process holds in PostgreSQL, one per key and limit, and the requests admitted against them here.
import { randomUUID } from 'node:crypto';
import type { Reservation, WindowUsage } from '../types.js';
import { LEGACY, meterOf } from './limits.js';

/** A lease stops admitting once its view of the window is this old: the next admission reads the database again. */
export const LEASE_VIEW_MS = 2_000;
/**
 * A view this old is read again in the background, while the lease goes on admitting on it: a busy
 * key's view does not run out on a request's path. Late in the view's life, so that a busy key asks
 * the database about as often as when its requests waited for the view to run out (every 2 s).
 */
export const LEASE_REFRESH_MS = (LEASE_VIEW_MS * 3) / 4;
/** A lease row counts this long after its last renewal; renewals come every third of it. */
export const LEASE_TTL_MS = 30_000;
/** A lease with nothing in flight for this long is given back. */
export const LEASE_IDLE_MS = 10_000;
/** A lease asks for at most this share of the key's limit at once (and never more than half of what is free). */
const LEASE_SHARE = 16;
/** ...and at least this many times the request's estimate, so that a busy key seldom goes back to the database. */
const LEASE_ESTIMATES = 4;

/** What the database said about a key's window when the lease was last granted. */
export interface LeaseView {
  used: number;
  oldestBucketStart: number | undefined;
  /** Tokens reserved for the key by everything but this process's lease. */
  reservedElsewhere: number;
  /** The limit the view was read for: a lease admits for that limit only. */
  tokenLimit: number;
  windowMs: number;
  at: number;
}

/**
 * One lease: a reservation row of `held` tokens against one limit of a key. This process admits a
 * request against it while its estimate fits in what is not in flight. The database's row never holds
 * less than `held` (when in doubt, `held` is lowered first), so the sum of all leases and reservations
 * stays within the limit.
 */
export class Lease {
  /** Tokens the row holds, as far as this process can be sure. */
  held = 0;
  /** Estimates of the requests admitted against this lease and not yet settled or released. */
  inFlight = 0;
  /** Tokens taken from the row by settles completed since the running grant was sent. */
  takenSinceGrant = 0;
  /** Usage settled through this lease since the running grant was sent: its view may not hold it. */
  settledSinceGrant = 0;
  /** When the row was last written or renewed (its expiry is this plus LEASE_TTL_MS). */
  confirmedAt = 0;
  lastUsedAt = 0;
  /** Usage settled through this lease since the view was read. */
  settledSinceView = 0;
  view: LeaseView | undefined;
  /** The round trip in flight for this key; other admissions of the key wait for it. */
  granting: Promise<unknown> | undefined;
  /** The background read of a view growing old (see refreshes()); admissions wait for it only when this lease cannot admit them. */
  refreshing: Promise<unknown> | undefined;
  /** Bumped when the view is forgotten, so that a refresh read before then does not bring it back. */
  epoch = 0;

  constructor(
    readonly id: string,
    readonly keyId: string,
    /** The limit the row holds tokens against (`5h` for a key without limits of its own). */
    readonly limit: string,
  ) {}

  /** Where the lease is booked: its key and limit. */
  get meter(): string {
    return meterOf(this.keyId, this.limit);
  }

  /**
   * Whether a request with this estimate can be admitted here, without the database: the lease holds
   * it, and the window as this process sees it (usage that ran over its estimates included) has room.
   */
  admits(estimate: number, tokenLimit: number, windowMs: number, now: number): boolean {
    const { view } = this;
    return (
      view !== undefined &&
      view.tokenLimit === tokenLimit &&
      view.windowMs === windowMs &&
      now >= view.at &&
      now - view.at < LEASE_VIEW_MS &&
      now - this.confirmedAt < LEASE_TTL_MS / 2 &&
      this.held - this.inFlight >= estimate &&
      tokenLimit - view.used - this.settledSinceView - view.reservedElsewhere - this.inFlight >= estimate
    );
  }

  /** Whether the view should be read again in the background: old enough, and nothing else in flight for the lease. */
  refreshes(now: number): boolean {
    return this.view !== undefined && this.granting === undefined && this.refreshing === undefined && now - this.view.at >= LEASE_REFRESH_MS;
  }

  /** The round trip or refresh in flight, if any. */
  get busy(): Promise<unknown> | undefined {
    return this.granting ?? this.refreshing;
  }

  /** Forgets the view: the next admission asks the database. */
  forgetView(): void {
    this.view = undefined;
    this.epoch++;
  }

  /** A round trip for the lease starts: what settles take and charge from now on is counted apart. Returns what is in flight. */
  deciding(): number {
    this.takenSinceGrant = 0;
    this.settledSinceGrant = 0;
    return this.inFlight;
  }

  /**
   * The database granted the row `held` tokens on this view: settles since the grant was sent took
   * some already, and their usage counts on top of the view (counted twice at worst, never missed).
   */
  granted(held: number, view: LeaseView, now: number): void {
    this.held = held - this.takenSinceGrant;
    this.view = view;
    this.settledSinceView = this.settledSinceGrant;
    this.confirmedAt = now;
  }

  /** Deciding request by request: the row keeps only what is in flight, and admits nothing more here. */
  shrunk(inFlight: number): void {
    this.held = inFlight - this.takenSinceGrant;
    this.view = undefined;
  }

  /** The window as this process sees it: the last view, moved by what went through this lease since. */
  window(): WindowUsage {
    const view = this.view!;
    return { used: view.used + this.settledSinceView, reserved: view.reservedElsewhere + this.inFlight, oldestBucketStart: view.oldestBucketStart };
  }

  /** The most a grant may give the row, given what is free for this process (as target() with the whole spare). */
  ceiling(free: number): number {
    return this.inFlight + Math.floor((free - this.inFlight) / 2);
  }

  /**
   * How many tokens the row should hold after a grant, given what the database says is free for this
   * process (limit - used - reserved elsewhere); 0 when the request must be decided one by one.
   */
  target(free: number, estimate: number, tokenLimit: number): number {
    const spare = Math.floor((free - this.inFlight) / 2);
    if (spare < estimate) return 0;
    return this.inFlight + Math.min(spare, Math.max(estimate * LEASE_ESTIMATES, Math.ceil(tokenLimit / LEASE_SHARE)));
  }

  /** Takes the tokens a finished request charged (at most its estimate) off the lease. */
  complete(estimate: number, charged: number): void {
    const taken = Math.min(charged, estimate);
    this.inFlight -= estimate;
    this.held -= taken;
    this.takenSinceGrant += taken;
    this.settledSinceGrant += charged;
    this.settledSinceView += charged;
  }
}

/** A request admitted against leases: its reservation and the lease of each limit it holds its estimate on. */
export interface Leased {
  reservation: Reservation;
  leases: readonly Lease[];
}

/** This process's leases, one current lease per key and limit, and which leases each admitted request went through. */
export class LeaseBook {
  /** Prefix of this process's lease rows: other instances' rows never start with it. */
  readonly prefix = `lease:${randomUUID()}:`;
  private sequence = 0;
  private readonly current = new Map<string, Lease>();
  private readonly requests = new Map<string, Leased>();

  /** The current lease of the key's limit, opened (empty, with a row id never used before) when there is none. */
  lease(keyId: string, limit: string = LEGACY): Lease {
    const meter = meterOf(keyId, limit);
    let lease = this.current.get(meter);
    if (!lease) {
      lease = new Lease(`${this.prefix}${++this.sequence}`, keyId, limit);
      this.current.set(meter, lease);
    }
    return lease;
  }

  /** Admits a request against a lease of each limit it is held on (the caller checked that it fits in each). */
  admit(leases: readonly Lease[], reservation: Reservation, now: number): void {
    for (const lease of leases) {
      lease.inFlight += reservation.tokens;
      lease.lastUsedAt = now;
    }
    this.requests.set(reservation.id, { reservation, leases });
  }

  /** The request's reservation and leases, when it was admitted against leases here. */
  find(requestId: string): Leased | undefined {
    return this.requests.get(requestId);
  }

  /** Ends a request admitted against leases: `charged` tokens come off each, the rest of its estimate returns. */
  complete(requestId: string, charged: number): boolean {
    const entry = this.requests.get(requestId);
    if (!entry) return false;
    this.requests.delete(requestId);
    for (const lease of entry.leases) lease.complete(entry.reservation.tokens, charged);
    return true;
  }

  /** In-flight estimates of this process's lease of the key's limit. */
  inFlight(keyId: string, limit: string = LEGACY): number {
    return this.current.get(meterOf(keyId, limit))?.inFlight ?? 0;
  }

  /**
   * Splits the leases for the periodic renewal: those to renew, and those idle long enough to give
   * back (they leave the book now, so nothing is admitted against them any more).
   */
  sweep(now: number): { renew: Lease[]; drop: Lease[] } {
    const renew: Lease[] = [];
    const drop: Lease[] = [];
    for (const lease of this.current.values()) {
      const idle = lease.inFlight === 0 && lease.busy === undefined && now - lease.lastUsedAt > LEASE_IDLE_MS;
      if (idle) {
        this.current.delete(lease.meter);
        drop.push(lease);
      } else if (lease.held > 0) renew.push(lease);
    }
    return { renew, drop };
  }

  /** Usage reached the database another way (a replayed journal): every lease asks the database again before it admits. */
  forgetViews(): void {
    for (const lease of this.current.values()) lease.forgetView();
  }

  /** Stops admitting against a lease (its row is gone); requests in flight on it finish as usual. */
  retire(lease: Lease): void {
    if (this.current.get(lease.meter) === lease) this.current.delete(lease.meter);
  }

  /** Forgets every lease (the store is closing); returns their row ids. */
  clear(): string[] {
    const ids = [...this.current.values()].map((lease) => lease.id);
    this.current.clear();
    return ids;
  }
}
