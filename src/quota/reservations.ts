// Reservations held in this process: per-key totals, whether a partial one is in flight, and admission against them (one limit or several).
import type { Admission, AdmitRequest, Limit, Reservation } from '../types.js';
import { judge, refusal, type Held, type Recorded } from './admission.js';
import { admittedOn, decideAll, limitWait, meterId, meterOf, refusedOn, type LimitReading } from './limits.js';
import { countsAfter, type Bucket } from './window.js';

interface Entry {
  keyId: string;
  tokens: number;
  partial: boolean;
}

/** How a store reads a key's window of one limit, from the buckets that start after `since`. */
export interface LimitWindows {
  /** The usage they hold, and the oldest of them. */
  usage(keyId: string, limit: string, since: number): Recorded;
  /** The buckets themselves, oldest first: read for a refusal's Retry-After only. */
  buckets(keyId: string, limit: string, since: number): readonly Bucket[];
}

const NONE: Held = Object.freeze({ reserved: 0, partialInFlight: false });

export class ReservationBook {
  private readonly byId = new Map<string, Entry>();
  private readonly byKey = new Map<string, { reserved: number; partials: number }>();
  private sum = 0;

  held(keyId: string): Held {
    const totals = this.byKey.get(keyId);
    return totals ? { reserved: totals.reserved, partialInFlight: totals.partials > 0 } : NONE;
  }

  /**
   * Admits a request of a store whose reservations all live in this process (SQLite, the file
   * store): decides on the key's recorded usage and what is held here, and books the reservation.
   * `buckets` is read only for a refusal's Retry-After.
   */
  admit(request: AdmitRequest, recorded: Recorded, buckets: () => readonly Bucket[]): Admission {
    const verdict = judge(request, recorded, this.held(request.keyId));
    if (!verdict.admitted) return refusal(verdict, buckets(), request);
    const { id, keyId, tokens, partial } = verdict.reservation;
    this.add(id, keyId, tokens, partial);
    return verdict;
  }

  /**
   * Admits against every limit that applies, in one step: each decides on its own window and what is
   * held against it; the request is admitted only when all of them admit, and then holds its part
   * (the estimate, or what remains: partial) against each, booked as its meter.
   */
  admitAll(request: AdmitRequest, limits: readonly Limit[], windows: LimitWindows): Admission {
    const { keyId, now, estimate, requestId } = request;
    // Plain loops and literals: this runs for every request of a key with several limits.
    const readings: LimitReading[] = [];
    for (const limit of limits) {
      const { used, oldestBucketStart } = windows.usage(keyId, limit.name, countsAfter(now, limit.windowMs));
      const { reserved, partialInFlight } = this.held(meterOf(keyId, limit.name));
      readings.push({ limit, used, oldestBucketStart, reserved, partialInFlight });
    }
    const decision = decideAll(readings, estimate);
    if (!decision.admit) {
      const waits = readings.map((reading) => limitWait(reading, windows.buckets(keyId, reading.limit.name, countsAfter(now, reading.limit.windowMs)), now));
      return refusedOn(readings, decision.refusedBy, waits);
    }
    const admission = admittedOn(request, readings, decision.parts);
    for (const meter of admission.reservation.meters!) this.add(meterId(requestId, meter.limit), meterOf(keyId, meter.limit), meter.tokens, meter.partial);
    return admission;
  }

  /** Drops what a reservation holds: its one booking, or its part against each limit (whichever store admitted it). */
  release(reservation: Reservation): void {
    if (!reservation.meters) return void this.remove(reservation.id);
    for (const meter of reservation.meters) this.remove(meterId(reservation.id, meter.limit));
  }

  add(id: string, keyId: string, tokens: number, partial: boolean): void {
    if (this.byId.has(id)) return;
    this.byId.set(id, { keyId, tokens, partial });
    const totals = this.byKey.get(keyId) ?? { reserved: 0, partials: 0 };
    totals.reserved += tokens;
    if (partial) totals.partials += 1;
    this.byKey.set(keyId, totals);
    this.sum += tokens;
  }

  /** Drops a reservation; false when it was not held (already settled or released). */
  remove(id: string): boolean {
    const entry = this.byId.get(id);
    if (!entry) return false;
    this.byId.delete(id);
    const totals = this.byKey.get(entry.keyId);
    if (totals) {
      totals.reserved -= entry.tokens;
      if (entry.partial) totals.partials -= 1;
      if (totals.reserved === 0 && totals.partials === 0) this.byKey.delete(entry.keyId);
    }
    this.sum -= entry.tokens;
    return true;
  }

  /** Tokens reserved across all keys. */
  get total(): number {
    return this.sum;
  }
}
