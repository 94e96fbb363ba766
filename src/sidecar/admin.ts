// The admin API: /admin/keys create, list, show, update, delete, and each key's usage over time, behind a Bearer admin token.
import { createHash, timingSafeEqual } from 'node:crypto';
import express, { type ErrorRequestHandler, type Request, type RequestHandler, type Response, type Router } from 'express';
import { errorBody, type ErrorFields } from '../http/error-body.js';
import { ConflictError, NotFoundError, StorageError, ValidationError } from '../errors.js';
import { checkFutureExpiry, parseDate, validateNewKey, validatePatch, type KeyPatch, type NewKey } from '../keys/validate.js';
import { keyView } from '../keys/view.js';
import { checkWeights, formatWeights } from '../usage/weights.js';
import { checkLimits, type Limit } from '../quota/limits.js';
import type { Logger } from '../types.js';
import type { Storage } from '../storage/types.js';
import { limitsStatsOf, usageOf } from '../../middleware/stats.js';
import { windowFor } from '../../middleware/options.js';

export interface AdminOptions {
  storage: Storage;
  /** Without one, every admin route answers 404: the API does not exist. */
  adminToken: string | undefined;
  logger: Logger;
}

/** Key fields are a few hundred bytes: a larger admin body is refused before it is parsed. */
export const ADMIN_BODY_LIMIT = 16 * 1024;

const CREATE_FIELDS = ['name', 'token_limit_per_5h', 'limits', 'expiry_date', 'model', 'weights', 'key'];
const PATCH_FIELDS = ['name', 'token_limit_per_5h', 'limits', 'expiry_date', 'model', 'weights'];

type Status = 400 | 401 | 404 | 405 | 409 | 413 | 415 | 500 | 503;

function send(res: Response, status: Status, error: ErrorFields): void {
  res.status(status).json(errorBody(error));
}

const notFound: RequestHandler = (req, res) => {
  send(res, 404, { type: 'not_found_error', code: 'not_found', message: `No route ${req.method} ${req.originalUrl.split('?', 1)[0]}.` });
};

export function adminRouter(options: AdminOptions): Router {
  const router = express.Router();
  const { adminToken, storage } = options;
  const windowMs = windowFor(storage, undefined, 'adminRouter');
  if (adminToken === undefined) {
    router.use(notFound);
    return router;
  }
  router.use(requireToken(adminToken));
  // Any content type is read as JSON: a `curl -d` without a Content-Type header still works.
  router.use(express.json({ limit: ADMIN_BODY_LIMIT, type: () => true }));

  router
    .route('/keys')
    .post(handle(async (req, res) => {
      const input = newKeyFrom(req.body);
      checkFutureExpiry(input.expiresAt, Date.now(), 'expiry_date');
      const { record, key } = await storage.createKey(input).catch((error: unknown) => {
        throw error instanceof ConflictError ? new ValidationError('key', 'a key with this value already exists') : error;
      });
      res.status(201).location(`${req.baseUrl}/keys/${record.id}`).json({ ...keyView(record), key });
    }))
    .get(handle(async (req, res) => {
      const records = await storage.listKeys();
      if (!withUsage(req.query.usage)) return void res.json({ keys: records.map(keyView) });
      const now = Date.now();
      res.json({ keys: await inBatches(records, USAGE_BATCH, async (record) => ({ ...keyView(record), limits: await limitsStatsOf(storage, record, now, windowMs) })) });
    }))
    .all(methodNotAllowed('GET, POST'));

  router
    .route('/keys/:id')
    .get(handle(async (req, res) => {
      const record = await storage.getKey(String(req.params.id));
      if (!record) throw new NotFoundError(`No key with id ${req.params.id}.`);
      res.json(keyView(record));
    }))
    .patch(handle(async (req, res) => {
      res.json(keyView(await storage.updateKey(String(req.params.id), patchFrom(req.body))));
    }))
    .delete(handle(async (req, res) => {
      if (!(await storage.deleteKey(String(req.params.id)))) throw new NotFoundError(`No key with id ${req.params.id}.`);
      res.json({ id: req.params.id, deleted: true });
    }))
    .all(methodNotAllowed('GET, PATCH, DELETE'));

  // What /stats/usage shows the key's holder: each limit's window and its usage over it.
  router
    .route('/keys/:id/usage')
    .get(handle(async (req, res) => {
      const record = await storage.getKey(String(req.params.id));
      if (!record) throw new NotFoundError(`No key with id ${req.params.id}.`);
      res.json({ id: record.id, ...(await usageOf(storage, record, Date.now(), windowMs)) });
    }))
    .all(methodNotAllowed('GET'));

  router.use(notFound);
  router.use(adminErrors(options.logger));
  return router;
}

/** How many keys' windows `GET /admin/keys?usage=1` reads at once: a long list does not take every connection of a pool. */
const USAGE_BATCH = 8;

/** `?usage=1` (or `true`) adds each limit's window to the list; absent, the list is only the keys. */
function withUsage(value: unknown): boolean {
  if (value === undefined) return false;
  if (value === '1' || value === 'true') return true;
  throw new ValidationError('usage', 'must be 1 or true');
}

/** `work` over `items`, `size` at a time, results in order. */
async function inBatches<T, R>(items: readonly T[], size: number, work: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = [];
  for (let start = 0; start < items.length; start += size) results.push(...(await Promise.all(items.slice(start, start + size).map(work))));
  return results;
}

/** An async handler whose failure goes to the error handler (Express 5 does that itself; Express 4 does not). */
function handle(work: (req: Request, res: Response) => Promise<void>): RequestHandler {
  return (req, res, next) => {
    work(req, res).catch(next);
  };
}

/** `Authorization: Bearer <ADMIN_TOKEN>`, compared over SHA-256 digests in constant time, so neither content nor length leaks. */
function requireToken(adminToken: string): RequestHandler {
  const expected = digest(adminToken);
  return (req, res, next) => {
    const given = /^\s*bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1];
    if (given !== undefined && timingSafeEqual(digest(given), expected)) return next();
    res.setHeader('WWW-Authenticate', 'Bearer realm="tokengate admin"');
    send(res, 401, { type: 'authentication_error', code: 'invalid_admin_token', message: 'The admin API needs "Authorization: Bearer <ADMIN_TOKEN>".' });
  };
}

function digest(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

function methodNotAllowed(allow: string): RequestHandler {
  return (req, res) => {
    res.setHeader('Allow', allow);
    send(res, 405, { type: 'invalid_request_error', code: 'method_not_allowed', message: `${req.method} is not allowed here; use ${allow}.` });
  };
}

/** The body as an object with only the known fields; anything else is a 400 naming the field. */
function fieldsOf(body: unknown, known: readonly string[]): Record<string, unknown> {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new ValidationError('body', 'must be a JSON object');
  const unknown = Object.keys(body).find((field) => !known.includes(field));
  if (unknown !== undefined) throw new ValidationError(unknown, `is not a known field (known: ${known.join(', ')})`);
  return body as Record<string, unknown>;
}

function newKeyFrom(body: unknown): NewKey {
  const fields = fieldsOf(body, CREATE_FIELDS);
  if (fields.expiry_date === undefined) throw new ValidationError('expiry_date', 'is required (an ISO 8601 date)');
  const input: NewKey = {
    name: fields.name as string,
    tokenLimit: fields.token_limit_per_5h as number | undefined,
    limits: limitsField(fields.limits),
    expiresAt: dateField(fields.expiry_date),
    model: modelField(fields.model),
    tokenWeights: weightsField(fields.weights),
  };
  if (fields.key !== undefined) {
    if (typeof fields.key !== 'string') throw new ValidationError('key', 'must be a string');
    input.key = fields.key;
  }
  // validateNewKey checks the types of name and token_limit_per_5h, naming each.
  return validateNewKey(input);
}

function patchFrom(body: unknown): KeyPatch {
  const fields = fieldsOf(body, PATCH_FIELDS);
  const patch: KeyPatch = {};
  if (fields.name !== undefined) patch.name = fields.name as string;
  if (fields.token_limit_per_5h !== undefined) patch.tokenLimit = fields.token_limit_per_5h as number;
  if ('limits' in fields) patch.limits = limitsField(fields.limits);
  if (fields.expiry_date !== undefined) patch.expiresAt = dateField(fields.expiry_date);
  if ('model' in fields) patch.model = modelField(fields.model);
  if ('weights' in fields) patch.tokenWeights = weightsField(fields.weights);
  if (Object.keys(patch).length === 0) throw new ValidationError('body', `give at least one of ${PATCH_FIELDS.join(', ')}`);
  return validatePatch(patch);
}

function dateField(value: unknown): number {
  if (typeof value !== 'string') throw new ValidationError('expiry_date', 'must be an ISO 8601 date string');
  return parseDate(value, 'expiry_date');
}

/** `null`, absent or "" mean no model, as `--model ''` does on the command line. */
function modelField(value: unknown): string | null {
  return value === undefined || value === null || value === '' ? null : (value as string);
}

/** `[{"window": "5h", "tokens": 200000}, {"window": "7d", "tokens": 2000000}]`; `null` or absent: the one `5h` limit of token_limit_per_5h. */
function limitsField(value: unknown): Limit[] | null {
  return value === undefined || value === null ? null : checkLimits(value, 'limits');
}

/** `{"cache_read": 0.1}` or the same as text (`"cache_read=0.1"`); `null`, absent or `{}` mean the gate's defaults. */
function weightsField(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  return typeof value === 'string' ? value : formatWeights(checkWeights(value, 'weights'));
}

/** zlib's failures: gzip and deflate name them Z_*, brotli ERR_*, and both carry a numeric errno. */
function isDecodingError(error: unknown): boolean {
  const { code, errno } = error as { code?: unknown; errno?: unknown };
  return typeof errno === 'number' && /^(Z_|ERR_)/.test(String(code));
}

/** Every admin failure as a JSON error body; storage outages are 503, anything unexpected 500 (logged). */
function adminErrors(logger: Logger): ErrorRequestHandler {
  return (error: unknown, _req, res, _next) => {
    const parserType = (error as { type?: string }).type;
    if (parserType === 'entity.parse.failed') {
      return send(res, 400, { type: 'invalid_request_error', code: 'invalid_json', message: 'The request body is not valid JSON.', details: { param: 'body' } });
    }
    if (parserType === 'entity.too.large') return send(res, 413, { type: 'invalid_request_error', code: 'request_too_large', message: `The admin request body is larger than ${ADMIN_BODY_LIMIT} bytes.` });
    if (parserType === 'encoding.unsupported' || parserType === 'charset.unsupported') {
      return send(res, 415, { type: 'invalid_request_error', code: 'unsupported_encoding', message: (error as Error).message });
    }
    // A body its Content-Encoding does not describe (corrupt gzip, deflate or br) fails in zlib, below the parser.
    if (isDecodingError(error)) {
      return send(res, 400, { type: 'invalid_request_error', code: 'invalid_body', message: 'The request body could not be decoded as its Content-Encoding says.', details: { param: 'body' } });
    }
    if (error instanceof ValidationError) {
      return send(res, 400, { type: 'invalid_request_error', code: 'invalid_value', message: error.message, details: { param: error.field } });
    }
    if (error instanceof NotFoundError) return send(res, 404, { type: 'not_found_error', code: 'key_not_found', message: error.message });
    if (error instanceof StorageError) {
      logger.error({ err: error }, 'admin request failed in storage');
      return send(res, 503, { type: 'service_unavailable', code: 'service_unavailable', message: error.message });
    }
    logger.error({ err: error }, 'admin request failed');
    send(res, 500, { type: 'api_error', code: 'internal_error', message: 'The admin request failed; see the sidecar log.' });
  };
}
