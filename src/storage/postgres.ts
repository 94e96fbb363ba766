// PostgreSQL storage through Drizzle on postgres.js: shared reservations, so quotas hold across instances.
import { and, asc, eq, gt, inArray, sql, type SQL } from 'drizzle-orm';
import { NotFoundError, StorageError } from '../errors.js';
import type { OpenedPostgres } from '../db/postgres.js';
import { apiKeys, keyColumns, reservations, usageBuckets, usageRecords } from '../db/schema/postgres.js';
import { GroupCommit } from '../quota/group-commit.js';
import { judge, refusal } from '../quota/admission.js';
import { bucketStart, countsAfter, type Bucket } from '../quota/window.js';
import { admittedOn, decideAll, LEGACY, limitWait, MAX_WINDOW_MS, refusedOn, withLimitBuckets, type LimitReading } from '../quota/limits.js';
import { validateCharge, type KeyPatch, type NewKey } from '../keys/validate.js';
import { KeyCache } from './key-cache.js';
import { Lease, LeaseBook, LEASE_TTL_MS, type LeaseView } from '../quota/leases.js';
import { PostgresKeys } from './postgres-keys.js';
import { Pruner, postgresTarget, type PruneOptions } from './prune.js';
import { withRetry } from './retry.js';
import { withBuckets, type SnapshotKey } from './snapshot.js';
import type { Admission, AdmitRequest, CreatedKey, KeyRecord, Limit, LimitWindow, Reservation, SharedStorage, StorageHealth, UsageRecord, WindowUsage } from './types.js';

/** Default time after which a reservation no longer counts: its instance is presumed dead. */
export const DEFAULT_RESERVATION_TTL_MS = 15 * 60_000;

interface WindowRow extends Record<string, unknown> {
  used: string;
  oldest: string | null;
  reserved_elsewhere: string;
  partial: boolean;
  mine: string | null;
  mine_partial: boolean | null;
  lease_row: string | null;
}

type Tx = Parameters<Parameters<OpenedPostgres['db']['transaction']>[0]>[0];

/** What the database decided: a (re)granted lease to admit against here, or the request on its own. */
type Decided = { lease: true; held: number; view: LeaseView } | { lease: false; admission: Admission };

/** The same for a key with several limits: a lease of each limit that applies, or the request on its own. */
type DecidedAll = { lease: true; held: number[]; views: LeaseView[] } | { lease: false; admission: Admission };

interface Queued {
  record: UsageRecord;
  reservation: Reservation;
}

/** One limit's window and what is held against it, as the database has them. */
interface LimitRow extends Record<string, unknown> {
  used: string;
  oldest: string | null;
  /** Held by everything but this process's leases. */
  reserved: string;
  partial: boolean;
  /** What this process's lease of the limit holds. */
  lease_row: string | null;
  /** What this request holds against the limit already (a retried admission whose first attempt committed). */
  mine: string | null;
  mine_partial: boolean | null;
}

/** The id of the reservation row of a request's part against one of several limits. */
const partRowId = (requestId: string, limit: string): string => `${requestId}:${limit}`;

/** The reservation rows a request holds: one per limit when it was admitted on several. */
const rowIds = (reservation: Reservation): string[] => (reservation.meters ? reservation.meters.map((meter) => partRowId(reservation.id, meter.limit)) : [reservation.id]);

/**
 * The reservation rows a settled request gives up. A record replayed from the journal comes with a
 * stand-in reservation: its buckets say which limits' rows its request may still hold.
 */
const releasedRows = (reservation: Reservation, record: UsageRecord): string[] =>
  reservation.meters || !record.buckets ? rowIds(reservation) : [record.id, ...record.buckets.map(([limit]) => partRowId(record.id, limit))];

const FIVE_HOURS_MS = 5 * 3_600_000;

/** Most usage records one statement writes. */
const MAX_BATCH = 500;

const num = (value: string | number | null): number | undefined => (value === null ? undefined : Number(value));

/**
 * The store for several instances. A busy key is admitted against a lease: a share of its budget
 * held in the database as one reservation row, granted under the key's row lock, so that the limit
 * holds across instances while most admissions need no round trip. A key near its limit is decided
 * request by request under that lock. Usage is recorded in batches: one statement, one transaction,
 * for the records finished meanwhile, each idempotent by its id.
 */
/** One usage record of a batch, as the recording statement reads it. */
export interface RecordingRow {
  id: string;
  key_id: string;
  tokens: number;
  at: number;
  /** The 5h minute bucket of a record of the one limit; null when `buckets` names them. */
  bucket: number | null;
  buckets: readonly (readonly [string, number])[] | null;
  /** `[lease id, tokens]`: what each lease the request went through gives up. */
  leases: (readonly [string, number])[] | null;
}

/**
 * The statement that records a batch: one round trip. The key rows are reached through their
 * primary key as `= any(array(…))`, which the planner takes as a handful of values: with the batch
 * as a join input it guesses 100 rows (a set-returning function's default) and, from about 10^3 to
 * 10^5 keys, scans the whole key table instead, twice per batch (docs/benchmarks.md).
 */
export function recordingStatement(rows: readonly RecordingRow[], released: readonly string[]): SQL {
  return sql`
    with input as (
      select * from jsonb_to_recordset(${JSON.stringify(rows)}::jsonb)
        as t(id text, key_id text, tokens bigint, at bigint, bucket bigint, buckets jsonb, leases jsonb)
    ), recorded as (
      insert into ${usageRecords} (id, key_id, tokens, recorded_at) select id, key_id, tokens, at from input
      on conflict (id) do nothing returning id
    ), applied as (
      select input.* from input join recorded using (id)
    ), locked as (
      select id from ${apiKeys} where id = any(array(select key_id from applied)) order by id for update
    ), charged as (
      update ${apiKeys} set
        total_lifetime_tokens = total_lifetime_tokens + per_key.tokens,
        total_requests = total_requests + per_key.requests,
        last_used = greatest(coalesce(last_used, 0), per_key.at)
      from (select key_id, sum(tokens) as tokens, count(*) as requests, max(at) as at from applied group by key_id) as per_key
      where ${apiKeys.id} = per_key.key_id and ${apiKeys.id} = any(array(select id from locked)) returning ${apiKeys.id} as id
    ), bucketed as (
      insert into ${usageBuckets} (key_id, limit_name, bucket_start, tokens)
      select key_id, name, start, sum(tokens) from (
        select key_id, ${LEGACY} as name, bucket as start, tokens from applied where bucket is not null
        union all
        select key_id, part->>0, (part->>1)::bigint, tokens from applied cross join jsonb_array_elements(applied.buckets) as part where applied.buckets is not null
      ) as counted
      where tokens > 0 and key_id in (select id from charged) group by key_id, name, start
      on conflict (key_id, limit_name, bucket_start) do update set tokens = ${usageBuckets.tokens} + excluded.tokens
    ), released as (
      delete from ${reservations} where id in (select jsonb_array_elements_text(${JSON.stringify(released)}::jsonb))
    ), taken as (
      update ${reservations} set tokens = greatest(${reservations.tokens} - per_lease.tokens, 0)
      from (
        select lease->>0 as lease_id, sum((lease->>1)::bigint) as tokens from applied cross join jsonb_array_elements(applied.leases) as lease
        where applied.leases is not null and key_id in (select id from charged) group by 1
      ) as per_lease
      where ${reservations.id} = per_lease.lease_id
    )
    select count(*) from recorded`;
}

export class PostgresStorage implements SharedStorage {
  readonly backend = 'postgres';
  private readonly reservationTtlMs: number;
  private readonly keyCache: KeyCache;
  private readonly keys: PostgresKeys;
  private readonly leases = new LeaseBook();
  /** Lease views being read again in the background (close() waits for them). */
  private readonly refreshing = new Set<Promise<void>>();
  private readonly renewer: NodeJS.Timeout;
  private renewing: Promise<void> = Promise.resolve();
  /** Usage is recorded in batches: one statement for the records finished while the last one ran. */
  private readonly commits = new GroupCommit<Queued>({
    write: (batch) => this.commit(batch),
    // One bad record must fail only its own request; an unreachable database fails them all.
    isolates: (error) => !(error instanceof StorageError && error.transient),
    failed: async ({ record, reservation }, error) => {
      this.leases.complete(reservation.id, record.tokens);
      throw error;
    },
    maxBatch: MAX_BATCH,
  });
  /** Prunes old usage and expired reservations in the background, when the store was opened with `prune`. */
  readonly pruner: Pruner | undefined;

  constructor(
    private readonly opened: OpenedPostgres,
    options: { reservationTtlMs?: number; keyCacheTtlMs?: number; prune?: PruneOptions } = {},
  ) {
    this.pruner = options.prune && new Pruner(postgresTarget(opened.sql), options.prune).start();
    this.reservationTtlMs = options.reservationTtlMs ?? DEFAULT_RESERVATION_TTL_MS;
    this.keyCache = new KeyCache(options.keyCacheTtlMs);
    this.keys = new PostgresKeys(opened.db, (id) => this.keyCache.forget(id));
    this.renewer = setInterval(() => {
      this.renewing = this.renewLeases();
    }, LEASE_TTL_MS / 3).unref();
  }

  /** Writes the probe row: a database that answers reads but refuses writes (disk full, read-only) is not up. */
  async ping(): Promise<void> {
    await withRetry('health probe', () => this.opened.sql`insert into health_probes (id, at) values ('gate', ${Date.now()}) on conflict (id) do update set at = excluded.at`);
  }

  health(): StorageHealth {
    return { mode: 'primary', recording: 'ok', journalPendingRecords: 0, quarantinedFiles: [], recordingFailures: { database: 0, journal: 0 }, lastFailure: null, lastReplay: null };
  }

  /** Reused for a few seconds (KeyCache): other instances' key changes show within KEY_CACHE_TTL_MS. */
  findKeyByDigest(digest: string): Promise<KeyRecord | undefined> {
    return this.keyCache.find(digest, (hash) =>
      withRetry('key lookup', async () => (await this.opened.db.select(keyColumns).from(apiKeys).where(eq(apiKeys.keyHash, hash)))[0]),
    );
  }

  /**
   * Admits against the key's lease when the estimate fits in it; otherwise one round trip decides,
   * under the key's row lock: a larger lease, or this request alone. One round trip per key at a time.
   */
  async admit(request: AdmitRequest): Promise<Admission> {
    if (request.limits) return this.admitOnLimits(request, request.limits);
    const { keyId, estimate, tokenLimit, now, requestId } = request;
    const known = this.leases.find(requestId);
    if (known) return { admitted: true, reservation: known.reservation, window: await this.windowUsage(keyId, now, request.windowMs) };
    let lease = this.leases.lease(keyId);
    // A refresh in flight holds up only the admissions the lease cannot take on its current view.
    while (lease.granting || (lease.refreshing && !lease.admits(estimate, tokenLimit, request.windowMs, now))) {
      await lease.busy!.catch(() => undefined);
      lease = this.leases.lease(keyId);
    }
    if (!lease.admits(estimate, tokenLimit, request.windowMs, now)) {
      const deciding = withRetry('admission', () => this.opened.db.transaction((tx) => this.decide(tx, request, lease)));
      lease.granting = deciding;
      let decided: Decided;
      try {
        decided = await deciding;
      } finally {
        lease.granting = undefined;
      }
      if (!decided.lease) return decided.admission;
      lease.granted(decided.held, decided.view, now);
    }
    const reservation = { id: requestId, keyId, tokens: estimate, partial: false };
    this.leases.admit([lease], reservation, now);
    const window = lease.window();
    if (lease.refreshes(now)) this.refresh(lease, request);
    return { admitted: true, reservation, window };
  }

  /**
   * Reads a busy lease's window again before its view runs out, off the request path: admissions go
   * on against the lease meanwhile. The row is renewed and may grow, never shrink (those admissions
   * count on what it holds); a lease that would have to shrink is left for the admission that finds
   * its view too old, which decides with every other admission of the key waiting; so is a row that
   * is gone. A failed refresh is not retried and changes nothing: the view ages out as it would have.
   */
  private refresh(lease: Lease, request: AdmitRequest): void {
    const { epoch } = lease;
    const refreshing = this.opened.db
      .transaction((tx) => this.reread(tx, lease, request))
      .then((grant) => {
        // A view forgotten meanwhile (usage replayed from the journal) stays forgotten; the row is renewed all the same.
        if (grant && lease.epoch === epoch) lease.granted(grant.held, grant.view, request.now);
      })
      .catch(() => undefined)
      .finally(() => {
        lease.refreshing = undefined;
        this.refreshing.delete(refreshing);
      });
    lease.refreshing = refreshing;
    this.refreshing.add(refreshing);
  }

  private async reread(tx: Tx, lease: Lease, request: AdmitRequest): Promise<{ held: number; view: LeaseView } | undefined> {
    const { keyId, now, windowMs, tokenLimit, estimate } = request;
    lease.deciding();
    await this.lockKey(tx, keyId);
    const row = await this.windowRow(tx, keyId, windowMs, now, lease.id, lease.id);
    const used = Number(row.used);
    const reservedElsewhere = Number(row.reserved_elsewhere);
    const free = tokenLimit - used - reservedElsewhere;
    // A row gone (expired, or its lease retired) is not written again from here.
    const holds = num(row.lease_row);
    const target = row.partial ? 0 : lease.target(free, estimate, tokenLimit);
    if (holds === undefined || target === 0 || holds > lease.ceiling(free)) return undefined;
    const held = Math.max(target, holds);
    await this.holdLeases(tx, [lease], [held], now);
    return { held, view: { used, oldestBucketStart: num(row.oldest), reservedElsewhere, tokenLimit, windowMs, at: now } };
  }

  /**
   * A key with several limits has a lease of each: a request whose estimate fits in the lease of
   * every limit that applies is admitted here; otherwise one round trip decides them together, under
   * the key's row lock: larger leases, or this request alone, with a reservation row per limit.
   */
  private async admitOnLimits(request: AdmitRequest, limits: readonly Limit[]): Promise<Admission> {
    const { keyId, estimate, now, requestId } = request;
    const known = this.leases.find(requestId);
    if (known) {
      const seen = await this.limitsUsage(keyId, limits, now);
      return { admitted: true, reservation: known.reservation, window: seen[0]!, limits: seen };
    }
    const current = () => limits.map((limit) => this.leases.lease(keyId, limit.name));
    let leases = current();
    for (let busy = leases.find((lease) => lease.busy); busy; busy = leases.find((lease) => lease.busy)) {
      await busy.busy!.catch(() => undefined);
      leases = current();
    }
    if (!leases.every((lease, index) => lease.admits(estimate, limits[index]!.tokens, limits[index]!.windowMs, now))) {
      const deciding = withRetry('admission', () => this.opened.db.transaction((tx) => this.decideAll(tx, request, limits, leases)));
      for (const lease of leases) lease.granting = deciding;
      let decided: DecidedAll;
      try {
        decided = await deciding;
      } finally {
        for (const lease of leases) lease.granting = undefined;
      }
      if (!decided.lease) return decided.admission;
      leases.forEach((lease, index) => lease.granted(decided.held[index]!, decided.views[index]!, now));
    }
    const meters = limits.map((limit) => ({ limit: limit.name, windowMs: limit.windowMs, tokens: estimate, partial: false }));
    const reservation = { id: requestId, keyId, tokens: estimate, partial: false, meters };
    this.leases.admit(leases, reservation, now);
    const seen = leases.map((lease, index) => ({ limit: limits[index]!, ...lease.window() }));
    return { admitted: true, reservation, window: seen[0]!, limits: seen };
  }

  private async decide(tx: Tx, request: AdmitRequest, lease: Lease): Promise<Decided> {
    const { keyId, requestId, now, windowMs, tokenLimit, estimate } = request;
    const since = countsAfter(now, windowMs);
    const inFlight = lease.deciding();
    await this.lockKey(tx, keyId);
    const row = await this.windowRow(tx, keyId, windowMs, now, requestId, lease.id);
    const used = Number(row.used);
    const reservedElsewhere = Number(row.reserved_elsewhere);
    const oldestBucketStart = num(row.oldest);
    const window: WindowUsage = { used, reserved: reservedElsewhere + inFlight, oldestBucketStart };
    if (row.mine !== null) {
      // A retried admission whose first attempt committed: it is already admitted.
      return { lease: false, admission: { admitted: true, reservation: { id: requestId, keyId, tokens: Number(row.mine), partial: row.mine_partial === true }, window } };
    }
    const held = row.partial ? 0 : lease.target(tokenLimit - used - reservedElsewhere, estimate, tokenLimit);
    if (held > 0) {
      await this.holdLeases(tx, [lease], [held], now);
      return { lease: true, held, view: { used, oldestBucketStart, reservedElsewhere, tokenLimit, windowMs, at: now } };
    }
    // Near the limit: the lease keeps only what is in flight, and this request is decided alone.
    await this.shrinkLeases(tx, [{ lease, row: row.lease_row, inFlight }], now);
    const verdict = judge(request, window, { reserved: window.reserved, partialInFlight: row.partial });
    if (!verdict.admitted) {
      const buckets = await tx
        .select({ start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        .where(and(eq(usageBuckets.keyId, keyId), eq(usageBuckets.limitName, LEGACY), gt(usageBuckets.bucketStart, since)))
        .orderBy(asc(usageBuckets.bucketStart));
      return { lease: false, admission: refusal(verdict, buckets, request) };
    }
    await tx.insert(reservations).values({ ...verdict.reservation, expiresAt: now + this.reservationTtlMs });
    return { lease: false, admission: verdict };
  }

  /**
   * The key's window of its one limit under its row lock, expired reservations gone: usage, what is
   * reserved elsewhere, and what `requestId` (`mine`) and this process's lease (`lease_row`) hold.
   */
  private async windowRow(tx: Tx, keyId: string, windowMs: number, now: number, requestId: string, leaseId: string): Promise<WindowRow> {
    const since = countsAfter(now, windowMs);
    const [row] = await tx.execute<WindowRow>(sql`
      with expired as (delete from ${reservations} where ${reservations.keyId} = ${keyId} and ${reservations.expiresAt} <= ${now})
      select
        (select coalesce(sum(tokens), 0) from ${usageBuckets} where key_id = ${keyId} and limit_name = ${LEGACY} and bucket_start > ${since}) as used,
        (select min(bucket_start) from ${usageBuckets} where key_id = ${keyId} and limit_name = ${LEGACY} and bucket_start > ${since}) as oldest,
        coalesce(sum(tokens) filter (where expires_at > ${now} and not starts_with(id, ${this.leases.prefix})), 0) as reserved_elsewhere,
        coalesce(bool_or(partial) filter (where expires_at > ${now}), false) as partial,
        max(tokens) filter (where id = ${requestId}) as mine,
        bool_or(partial) filter (where id = ${requestId}) as mine_partial,
        max(tokens) filter (where id = ${leaseId} and expires_at > ${now}) as lease_row
      from ${reservations} where key_id = ${keyId} and limit_name = ${LEGACY}`);
    if (!row) throw new Error('window query returned no row');
    return row;
  }

  /** The key's row lock serializes its admissions across instances; reads after it see fresh data. */
  private async lockKey(tx: Tx, keyId: string): Promise<void> {
    const locked = await tx.select({ id: apiKeys.id }).from(apiKeys).where(eq(apiKeys.id, keyId)).for('update');
    if (locked.length === 0) throw new NotFoundError(`no key with id ${keyId}`);
  }

  /**
   * Decides a request of a key with several limits under the key's row lock, each limit on its own
   * window and reservation rows: when each has room, its lease grows (as decide() does for one);
   * near any of them, that limit's lease keeps only what is in flight, the others stay as they are
   * (counted whole), and the request is decided alone and holds a reservation row per limit. Either
   * way every limit's sum of usage, leases and reservations stays within it across instances.
   */
  private async decideAll(tx: Tx, request: AdmitRequest, limits: readonly Limit[], leases: readonly Lease[]): Promise<DecidedAll> {
    const { keyId, requestId, now, estimate } = request;
    const inFlight = leases.map((lease) => lease.deciding());
    await this.lockKey(tx, keyId);
    const rows = await this.limitRows(tx, keyId, limits, now, requestId, leases);
    /** The limit's window, this process's lease counted as `own`. */
    const reading = (index: number, own: number): LimitReading => {
      const row = rows[index]!;
      return { limit: limits[index]!, used: Number(row.used), reserved: Number(row.reserved) + own, partialInFlight: row.partial, oldestBucketStart: num(row.oldest) };
    };
    if (rows[0]?.mine != null) {
      // A retried admission whose first attempt committed: it is admitted on the parts it holds.
      const parts = rows.map((row, index) => ({ name: limits[index]!.name, reserve: Number(row.mine), partial: row.mine_partial === true }));
      return { lease: false, admission: admittedOn(request, rows.map((_, index) => reading(index, inFlight[index]! - parts[index]!.reserve)), parts) };
    }
    const held = rows.map((row, index) => (row.partial ? 0 : leases[index]!.target(limits[index]!.tokens - Number(row.used) - Number(row.reserved), estimate, limits[index]!.tokens)));
    if (held.every((tokens) => tokens > 0)) {
      await this.holdLeases(tx, leases, held, now);
      const views = rows.map((row, index) => ({ used: Number(row.used), oldestBucketStart: num(row.oldest), reservedElsewhere: Number(row.reserved), tokenLimit: limits[index]!.tokens, windowMs: limits[index]!.windowMs, at: now }));
      return { lease: true, held, views };
    }
    // A lease is kept only where its limit has room for the request with the lease's whole row counted:
    // the key's requests that the other limits do not apply to go on without the database. The rest shrink.
    const whole = (index: number): number => Math.max(num(rows[index]!.lease_row) ?? 0, inFlight[index]!);
    const free = (index: number): number => limits[index]!.tokens - Number(rows[index]!.used) - Number(rows[index]!.reserved);
    const kept = leases.map((_, index) => held[index]! > 0 && free(index) - whole(index) >= estimate);
    await this.shrinkLeases(tx, leases.flatMap((lease, index) => (kept[index] ? [] : [{ lease, row: rows[index]!.lease_row, inFlight: inFlight[index]! }])), now);
    // A kept lease's row counts whole in the decision; the windows reported count this process's leases by what is in flight, as windowUsage does.
    const decision = decideAll(rows.map((_, index) => reading(index, kept[index] ? whole(index) : inFlight[index]!)), estimate);
    const readings = rows.map((_, index) => reading(index, inFlight[index]!));
    if (!decision.admit) return { lease: false, admission: refusedOn(readings, decision.refusedBy, await this.waits(tx, keyId, readings, now)) };
    const admission = admittedOn(request, readings, decision.parts);
    const expiresAt = now + this.reservationTtlMs;
    await tx.insert(reservations).values(admission.reservation.meters!.map((meter) => ({ id: partRowId(requestId, meter.limit), keyId, limitName: meter.limit, tokens: meter.tokens, partial: meter.partial, expiresAt })));
    return { lease: false, admission };
  }

  /**
   * Each limit's usage in its window and what is held against it, in the order of `limits`; `mine`
   * is what `requestId` holds, `lease_row` what `leases` (of the same limits) hold. In a transaction,
   * expired reservations of the key go too.
   */
  private limitRows(db: Tx | OpenedPostgres['db'], keyId: string, limits: readonly Limit[], now: number, requestId?: string, leases?: readonly Lease[]): Promise<LimitRow[]> {
    const wanted = JSON.stringify(
      limits.map((limit, index) => ({ index, name: limit.name, since: countsAfter(now, limit.windowMs), part: requestId === undefined ? null : partRowId(requestId, limit.name), lease: leases?.[index]!.id ?? null })),
    );
    const expired = db === this.opened.db ? sql`` : sql`with expired as (delete from ${reservations} where key_id = ${keyId} and expires_at <= ${now}) `;
    return db.execute<LimitRow>(sql`${expired}
      select
        (select coalesce(sum(tokens), 0) from ${usageBuckets} where key_id = ${keyId} and limit_name = wanted.name and bucket_start > wanted.since) as used,
        (select min(bucket_start) from ${usageBuckets} where key_id = ${keyId} and limit_name = wanted.name and bucket_start > wanted.since) as oldest,
        held.reserved, held.partial, held.lease_row, mine.tokens as mine, mine.partial as mine_partial
      from jsonb_to_recordset(${wanted}::jsonb) as wanted(index int, name text, since bigint, part text, lease text)
      cross join lateral (
        select
          coalesce(sum(tokens) filter (where not starts_with(id, ${this.leases.prefix})), 0) as reserved,
          coalesce(bool_or(partial), false) as partial,
          max(tokens) filter (where id = wanted.lease) as lease_row
        from ${reservations} where key_id = ${keyId} and limit_name = wanted.name and expires_at > ${now}
      ) as held
      left join ${reservations} as mine on mine.id = wanted.part
      order by wanted.index`);
  }

  /** How long each limit takes to admit again, from its buckets (a refusal's Retry-After). */
  private async waits(tx: Tx, keyId: string, readings: readonly LimitReading[], now: number): Promise<number[]> {
    const earliest = Math.min(...readings.map((reading) => countsAfter(now, reading.limit.windowMs)));
    const buckets = await tx
      .select({ limit: usageBuckets.limitName, start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
      .from(usageBuckets)
      .where(and(eq(usageBuckets.keyId, keyId), inArray(usageBuckets.limitName, readings.map((reading) => reading.limit.name)), gt(usageBuckets.bucketStart, earliest)))
      .orderBy(asc(usageBuckets.bucketStart));
    return readings.map((reading) => {
      const since = countsAfter(now, reading.limit.windowMs);
      const own = buckets.filter((bucket) => bucket.limit === reading.limit.name && bucket.start > since);
      return limitWait(reading, own, now);
    });
  }

  /** Writes each lease's row with its tokens, renewed. */
  private async holdLeases(tx: Tx, leases: readonly Lease[], tokens: readonly number[], now: number): Promise<void> {
    const expiresAt = now + LEASE_TTL_MS;
    await tx
      .insert(reservations)
      .values(leases.map((lease, index) => ({ id: lease.id, keyId: lease.keyId, limitName: lease.limit, tokens: tokens[index]!, partial: false, expiresAt })))
      .onConflictDoUpdate({ target: reservations.id, set: { tokens: sql`excluded.tokens`, expiresAt: sql`excluded.expires_at` } });
  }

  /**
   * Near a limit: each lease's row keeps only what is in flight on it (`row`: what it holds now;
   * written when that differs), and the lease admits nothing more.
   */
  private async shrinkLeases(tx: Tx, near: readonly { lease: Lease; row: string | null; inFlight: number }[], now: number): Promise<void> {
    const stale = near.filter(({ row, inFlight }) => num(row) !== inFlight && (row !== null || inFlight > 0));
    if (stale.length > 0) await this.holdLeases(tx, stale.map(({ lease }) => lease), stale.map(({ inFlight }) => inFlight), now);
    for (const { lease, inFlight } of near) lease.shrunk(inFlight);
  }

  /**
   * Queues the record for the next batch. It resolves once its batch committed; the reservation (or
   * the lease's share) goes in the same transaction as the usage comes in.
   */
  async settle(reservation: Reservation, record: UsageRecord): Promise<void> {
    try {
      validateCharge(record.tokens);
    } catch (error) {
      await this.release(reservation);
      throw error;
    }
    await this.commits.add({ record: withLimitBuckets(record, reservation), reservation });
  }

  /** Whatever the outcome, the lease stops counting the request (at worst its row holds more than needed). */
  private async commit(batch: readonly Queued[]): Promise<void> {
    await this.write(batch);
    for (const { record, reservation } of batch) this.leases.complete(reservation.id, record.tokens);
  }

  /**
   * One statement, so one round trip and one transaction: each record id goes in first; a record
   * that was there already changes nothing else. Reservations go either way; a lease gives up what
   * its request charged (up to the estimate). Key rows are locked first and in id order, as admission
   * locks them before touching a lease: no deadlock with it nor with other instances' batches.
   */
  private write(batch: readonly Queued[]): Promise<unknown> {
    const released: string[] = [];
    const rows = batch.map(({ record, reservation }): RecordingRow => {
      const leased = this.leases.find(reservation.id);
      if (!leased) released.push(...releasedRows(reservation, record));
      return {
        id: record.id,
        key_id: record.keyId,
        tokens: record.tokens,
        at: record.at,
        // A record of several limits counts in a bucket of each; the others, in the 5h minute bucket.
        bucket: record.buckets ? null : bucketStart(record.at),
        buckets: record.buckets ?? null,
        // What each lease the request went through gives up: its charge, up to its estimate.
        leases: leased ? leased.leases.map((lease) => [lease.id, Math.min(record.tokens, reservation.tokens)]) : null,
      };
    });
    return withRetry('recording usage', () => this.opened.db.execute(recordingStatement(rows, released)));
  }

  /** A request admitted against a lease gives its estimate back here; one decided alone, in the database. */
  async release(reservation: Reservation): Promise<void> {
    if (this.leases.complete(reservation.id, 0)) return;
    await withRetry('releasing a reservation', () => this.opened.db.delete(reservations).where(inArray(reservations.id, rowIds(reservation))));
  }

  /**
   * Stops tracking a request whose settle or release never reached the database (the fallback took
   * it over): a lease stops counting it, as if it charged `charged` tokens.
   */
  forget(reservation: Reservation, charged: number): void {
    this.leases.complete(reservation.id, charged);
  }

  forgetWindows(): void {
    this.leases.forgetViews();
  }

  /** Renews the leases in use and gives back the idle ones; a lease whose row is gone is retired. */
  private async renewLeases(): Promise<void> {
    const now = Date.now();
    const { renew, drop } = this.leases.sweep(now);
    if (renew.length === 0 && drop.length === 0) return;
    try {
      const renewed = await this.opened.sql<{ id: string }[]>`
        with dropped as (delete from reservations where id = any(${drop.map((lease) => lease.id)}::text[]))
        update reservations set expires_at = ${now + LEASE_TTL_MS} where id = any(${renew.map((lease) => lease.id)}::text[]) returning id`;
      const alive = new Set(renewed.map((row) => row.id));
      for (const lease of renew) {
        if (alive.has(lease.id)) lease.confirmedAt = Math.max(lease.confirmedAt, now);
        else this.leases.retire(lease);
      }
    } catch {
      // Unrenewed, a lease stops admitting after half its TTL, and the next admission grants it again.
    }
  }

  /** Window usage; reserved counts this process's leases by what is in flight on them, not their spare. */
  windowUsage(keyId: string, now: number, windowMs: number): Promise<WindowUsage> {
    return withRetry('window usage', async () => {
      const since = countsAfter(now, windowMs);
      const [row] = await this.opened.db.execute<{ used: string; oldest: string | null; reserved: string }>(sql`
        select
          (select coalesce(sum(tokens), 0) from ${usageBuckets} where key_id = ${keyId} and limit_name = ${LEGACY} and bucket_start > ${since}) as used,
          (select min(bucket_start) from ${usageBuckets} where key_id = ${keyId} and limit_name = ${LEGACY} and bucket_start > ${since}) as oldest,
          (select coalesce(sum(tokens), 0) from ${reservations} where key_id = ${keyId} and limit_name = ${LEGACY} and expires_at > ${now} and not starts_with(id, ${this.leases.prefix})) as reserved`);
      return { used: Number(row?.used ?? 0), reserved: Number(row?.reserved ?? 0) + this.leases.inFlight(keyId), oldestBucketStart: num(row?.oldest ?? null) };
    });
  }

  /** Each limit's window of a key with several, for /stats. */
  limitsUsage(keyId: string, limits: readonly Limit[], now: number): Promise<LimitWindow[]> {
    return withRetry('window usage', async () =>
      (await this.limitRows(this.opened.db, keyId, limits, now)).map((row, index) => {
        const limit = limits[index]!;
        // This process's leases count by what is in flight on them, not their spare (as in windowUsage).
        return { limit, used: Number(row.used), reserved: Number(row.reserved) + this.leases.inFlight(keyId, limit.name), oldestBucketStart: num(row.oldest) };
      }),
    );
  }

  usageBuckets(keyId: string, limit: Limit, now: number): Promise<Bucket[]> {
    return withRetry('window usage', () =>
      this.opened.db
        .select({ start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
        .from(usageBuckets)
        .where(and(eq(usageBuckets.keyId, keyId), eq(usageBuckets.limitName, limit.name), gt(usageBuckets.bucketStart, countsAfter(now, limit.windowMs))))
        .orderBy(asc(usageBuckets.bucketStart)),
    );
  }

  createKey(input: NewKey, now?: number): Promise<CreatedKey> {
    return this.keys.createKey(input, now);
  }

  listKeys(): Promise<KeyRecord[]> {
    return this.keys.listKeys();
  }

  /** The id of the key whose digest starts with `prefix` (16 hex digits), for records journaled under an id derived from it. */
  keyIdByDigestPrefix(prefix: string): Promise<string | undefined> {
    return withRetry('key lookup', async () => (await this.opened.db.select({ id: apiKeys.id }).from(apiKeys).where(sql`substr(${apiKeys.keyHash}, 1, 16) = ${prefix}`))[0]?.id);
  }

  getKey(id: string): Promise<KeyRecord | undefined> {
    return this.keys.getKey(id);
  }

  updateKey(id: string, patch: KeyPatch): Promise<KeyRecord> {
    return this.keys.updateKey(id, patch);
  }

  deleteKey(id: string): Promise<boolean> {
    return this.keys.deleteKey(id);
  }

  /**
   * Every key with its digest and the buckets that may count: the `5h` limit's that start after
   * `since` (or within 5 hours, the window of a key's own `5h` limit), and those of any other limit
   * within the longest window: what the file fallback mirrors.
   */
  snapshotKeys(since: number): Promise<SnapshotKey[]> {
    return withRetry('reading a snapshot', async () => {
      const now = Date.now();
      const [keys, buckets] = await Promise.all([
        this.opened.db.select({ ...keyColumns, keyHash: apiKeys.keyHash }).from(apiKeys),
        this.opened.db
          .select({ keyId: usageBuckets.keyId, limit: usageBuckets.limitName, start: usageBuckets.bucketStart, tokens: usageBuckets.tokens })
          .from(usageBuckets)
          .where(
            sql`(${usageBuckets.limitName} = ${LEGACY} and ${usageBuckets.bucketStart} > ${Math.min(since, countsAfter(now, FIVE_HOURS_MS))}) or (${usageBuckets.limitName} <> ${LEGACY} and ${usageBuckets.bucketStart} > ${countsAfter(now, MAX_WINDOW_MS)})`,
          ),
      ]);
      return withBuckets(keys, buckets);
    });
  }

  /** Writes what is queued, gives the leases back, then closes the connections. */
  async close(): Promise<void> {
    clearInterval(this.renewer);
    await this.pruner?.stop();
    await this.commits.drain();
    await Promise.all([...this.refreshing]);
    await this.renewing;
    const leaseIds = this.leases.clear();
    if (leaseIds.length > 0) await this.opened.sql`delete from reservations where id = any(${leaseIds}::text[])`.catch(() => undefined); // they expire anyway
    await this.opened.sql.end({ timeout: 5 });
  }
}
