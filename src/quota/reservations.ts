// Reservations held in this process: per-key totals, whether a partial one is in flight, and admission against them.
import type { Admission, AdmitRequest } from '../types.js';
import { judge, refusal, type Held, type Recorded } from './admission.js';
import type { Bucket } from './window.js';

interface Entry {
  keyId: string;
  tokens: number;
  partial: boolean;
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
