// The response tap: sees every chunk the response writes (without holding any back), then settles.
import { ServerResponse } from 'node:http';
import type { Request, Response } from 'express';
import { UsageTap, type Failure } from '../src/usage/tap.js';
import { usageFromHeader } from '../src/usage/header.js';
import { chargeFor, type Charge } from '../src/usage/charge.js';
import type { UnreadableReason, UsageReading } from '../src/usage/tokens.js';
import type { ResolvedWeights } from '../src/usage/weights.js';
import type { Reservation, UsageRecord } from '../src/storage/types.js';
import type { GateConfig } from './options.js';
import { Delivery } from './delivery.js';
import { storageCall } from './storage-call.js';

type Chunk = string | Buffer | Uint8Array;

/** What a metered response carries: handed each chunk the response writes, with its encoding; never throws. */
type Meter = (chunk: unknown, encoding: unknown) => void;
type Writes = Record<'write' | 'end', (...args: unknown[]) => unknown>;

// Process-wide, so that copies of tokengate loaded side by side (the package installed twice, an ESM
// and a CommonJS build) patch the prototype once between them and each meters through that one
// patch: the first copy marks the prototype, and its wrappers call whatever meter any copy put on
// a response. Every version must keep both keys and what the response's slot holds (a Meter).
const METER = Symbol.for('tokengate.meter');
const INSTALLED = Symbol.for('tokengate.meter.installed');
type MeteredResponse = ServerResponse & { [METER]?: Meter };

/**
 * Makes http.ServerResponse's write and end hand each chunk to the response's meter, once per
 * process; tokenGate() calls it when it is created, before any request, so that wrappers other
 * middleware put on a response (compression, tracing: they keep the write they found) lead here
 * too, and the body is seen exactly once whichever way it is written. A closure pair assigned to
 * res.write and res.end on every response instead costs more than the rest of the gate (the
 * response object's shape changes per request; see docs/benchmarks.md). Responses not metered get
 * Node's own write and end, called with the arguments they were given, returning what they return;
 * nothing is added to them.
 */
export function installMeter(): void {
  const prototype = ServerResponse.prototype;
  if (Object.hasOwn(prototype, INSTALLED)) return;
  wrapWrites(prototype as never, meterOf);
  Object.defineProperty(prototype, INSTALLED, { value: true });
}

const meterOf = (self: MeteredResponse): Meter | undefined => self[METER];

/**
 * Hands what `res` writes to `meter`; also when another gate meters it already (two quotas on one
 * request). Responses of another class than http.ServerResponse get wrappers of their own.
 */
function tapWrites(res: ServerResponse, meter: Meter): void {
  if (!(res instanceof ServerResponse)) return wrapWrites(res as never, () => meter);
  installMeter();
  const metered = res as MeteredResponse;
  const earlier = metered[METER];
  metered[METER] = earlier ? both(earlier, meter) : meter;
}

const both =
  (first: Meter, second: Meter): Meter =>
  (chunk, encoding) => {
    first(chunk, encoding);
    second(chunk, encoding);
  };

/**
 * Replaces `target`'s write and end with ones that hand each chunk on, then to the meter `find`
 * names (after end too: a hook that sets headers as they are written, as compression does, has run
 * by then).
 */
function wrapWrites(target: Writes, find: (self: MeteredResponse) => Meter | undefined): void {
  target.write = metered(target, 'write', find);
  target.end = metered(target, 'end', find);
}

/**
 * `target`'s method `name`, metered. One `target` has of its own is kept; an inherited one (Node's,
 * on OutgoingMessage) is looked up at each call, so that a library that patches
 * OutgoingMessage.prototype later still applies. A chunk the response refuses (written after its
 * end, or once it is destroyed) is not metered.
 */
function metered(target: Writes, name: keyof Writes, find: (self: MeteredResponse) => Meter | undefined): Writes[keyof Writes] {
  const own = Object.hasOwn(target, name) ? target[name] : undefined;
  const inherited = Object.getPrototypeOf(target) as Writes;
  return function (this: MeteredResponse, ...args: unknown[]) {
    const meter = open(this) ? find(this) : undefined;
    const result = (own ?? inherited[name]).apply(this, args);
    meter?.(args[0], args[1]);
    return result;
  };
}

const open = (res: ServerResponse): boolean => !res.writableEnded && !res.destroyed;

/**
 * Copies each chunk the response writes to a usage tap after handing it on, and settles the
 * reservation once, when the response finishes or the connection closes before that; `track` is
 * handed the settling, so that shutdown can wait for it.
 */
export function meterResponse(
  req: Request,
  res: Response,
  config: GateConfig,
  reservation: Reservation,
  requestBytes: number,
  weights: ResolvedWeights,
  track: (settling: Promise<void>) => void,
): void {
  const body: BodySeen = { tap: undefined, failure: undefined };
  const delivery = new Delivery(res, res.socket);
  tapWrites(res, (chunk, encoding) => {
    if (body.failure || (typeof chunk !== 'string' && !(chunk instanceof Uint8Array))) return;
    try {
      body.tap ??= openTap(res, config);
      delivery.wrote(body.tap.push(chunk as Chunk, typeof encoding === 'string' ? (encoding as BufferEncoding) : undefined));
    } catch (error) {
      // The chunk goes out all the same; its usage can no longer be read (see readCharge).
      body.failure = { error };
    }
  });
  let done = false;
  const settle = (aborted: boolean): void => {
    if (done) return;
    done = true;
    const cut = { aborted, answered: res.headersSent, deliveredShare: aborted ? delivery.share() : 1 };
    delivery.stop();
    track(recordUsage(readCharge(req, res, config, reservation, { requestBytes, weights }, body, cut), config, reservation));
  };
  // On 'finish', so that settled() covers a response from its end on; on 'close' for one cut short.
  res.once('finish', () => settle(false));
  res.once('close', () => settle(!res.writableFinished));
}

function openTap(res: Response, config: GateConfig): UsageTap {
  // Non-2xx bodies are only counted, not parsed, unless they are to be charged.
  const parse = config.chargeFailedResponses || (res.statusCode >= 200 && res.statusCode < 300);
  return new UsageTap({
    contentType: parse ? headerText(res.getHeader('content-type')) : undefined,
    contentEncoding: headerText(res.getHeader('content-encoding')),
  });
}

/** What the meter saw of the body: the tap it opened at the first chunk, and what stopped it reading, if anything did. */
interface BodySeen {
  tap: UsageTap | undefined;
  failure: Failure | undefined;
}

/** How the response ended: cut short or not, begun or not, and how much of its body the client got. */
interface Ending {
  aborted: boolean;
  answered: boolean;
  deliveredShare: number;
}

interface Reckoning {
  record: UsageRecord;
  source: Charge['source'];
  unreadable: UnreadableReason | undefined;
}

/**
 * What the response used, read once it has ended; the record to store and where its count came from.
 * Rejects when reading the body failed (a bug in the gate): what the client got is not known, so
 * recordUsage charges what was reserved rather than what was seen before the failure.
 */
async function readCharge(
  req: Request,
  res: Response,
  config: GateConfig,
  reservation: Reservation,
  request: { requestBytes: number; weights: ResolvedWeights },
  body: BodySeen,
  ending: Ending,
): Promise<Reckoning> {
  // What getUsage and the usage header say come first: with one of them, the body's reading does not matter.
  const declared = [customReading(req, res, config), usageFromHeader(res.getHeader(config.usageHeader), config.usageHeader)];
  const seen = body.tap ? await body.tap.finish() : { bytes: 0, reading: undefined, malformedEvents: 0, generatedText: undefined, failure: undefined };
  const failure = body.failure ?? seen.failure;
  if (failure && !declared.some(isWhole)) throw failure.error;
  const readings: (UsageReading | undefined)[] = [...declared, failure ? undefined : seen.reading];
  const charge = chargeFor({
    status: res.statusCode,
    ...ending,
    chargeFailedResponses: config.chargeFailedResponses,
    readings,
    ...request,
    responseBytes: seen.bytes,
    generatedText: seen.generatedText,
  });
  if (charge.problem !== undefined || seen.malformedEvents > 0) {
    config.logger.warn(
      { keyId: reservation.keyId, status: res.statusCode, problem: charge.problem, malformedEvents: seen.malformedEvents, charged: charge.tokens, source: charge.source },
      'upstream usage could not be read exactly',
    );
  }
  return { record: { id: reservation.id, keyId: reservation.keyId, tokens: charge.tokens, at: config.now() }, source: charge.source, unreadable: charge.unreadable };
}

/**
 * Stores the charge, or gives the reservation back when it cannot be read or stored. Kept apart from
 * the request and response (not even in a closure's scope): a response would otherwise stay in memory
 * until its batch commits, long enough on PostgreSQL to reach the old generation and triple the time
 * spent collecting garbage.
 */
async function recordUsage(charging: Promise<Reckoning>, config: GateConfig, reservation: Reservation): Promise<void> {
  try {
    const { record, source, unreadable } = await charging.catch((error: unknown): Reckoning => {
      // The response was served: when its usage cannot even be worked out, it is charged what was reserved for it.
      config.logger.error({ err: error, keyId: reservation.keyId, requestId: reservation.id, charged: reservation.tokens }, 'reading usage failed: charging the reserved estimate');
      return { record: { id: reservation.id, keyId: reservation.keyId, tokens: reservation.tokens, at: Date.now() }, source: 'estimated', unreadable: 'malformed' };
    });
    if (unreadable !== undefined) config.metrics?.usageUnreadable.inc({ reason: unreadable });
    await storageCall(config, 'settle', () => config.storage.settle(reservation, record));
    if (source !== 'none') config.metrics?.countTokens(source, record.tokens, reservation.keyId);
  } catch (error) {
    config.logger.error({ err: error, keyId: reservation.keyId, requestId: reservation.id }, 'recording usage failed');
    await storageCall(config, 'release', () => config.storage.release(reservation)).catch(() => undefined);
  } finally {
    config.metrics?.reservedTokens.dec(reservation.tokens);
  }
}

const isWhole = (reading: UsageReading | undefined): boolean => reading !== undefined && 'tokens' in reading && !reading.partial;

function customReading(req: Request, res: Response, config: GateConfig): UsageReading | undefined {
  if (!config.getUsage) return undefined;
  let tokens: number | undefined;
  try {
    tokens = config.getUsage(req, res);
  } catch (error) {
    return { problem: `getUsage threw: ${(error as Error).message}` };
  }
  if (tokens === undefined) return undefined;
  return Number.isSafeInteger(tokens) && tokens >= 0 ? { tokens } : { problem: `getUsage returned ${String(tokens)}, not a non-negative integer` };
}

function headerText(value: number | string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  return Array.isArray(value) ? value.join(', ') : String(value);
}
