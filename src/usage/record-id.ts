// Ids of requests, their reservations and usage records: UUIDv7 (RFC 9562), ordered by creation time.
import { randomUUID } from 'node:crypto';

/**
 * A UUIDv7: the millisecond timestamp, then 74 random bits. Time-ordered ids land at the end of the
 * usage_records primary key instead of anywhere in it: on SQLite an insert then costs about half,
 * and no more as the table grows (random UUIDv4 ids cost more with every row). Node.js 20 has no
 * v7 generator, and the `uuid` package's v7 costs ten times randomUUID(); this reuses the random
 * part (and variant bits) of a v4 and writes the version and timestamp over it.
 */
export function newRecordId(now: number = Date.now()): string {
  const time = Math.max(0, Math.trunc(now)).toString(16).padStart(12, '0').slice(-12);
  // randomUUID(): xxxxxxxx-xxxx-4xxx-Vxxx-xxxxxxxxxxxx; from index 15 on: xxx-Vxxx-xxxxxxxxxxxx.
  return `${time.slice(0, 8)}-${time.slice(8)}-7${randomUUID().slice(15)}`;
}
