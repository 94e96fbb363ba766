// The Express face of tokengate.
export { tokenGate, type TokenGateMiddleware } from './gate.js';
export { statsHandler, statsUsageHandler, type StatsOptions } from './stats.js';
export { metricsHandler, healthHandler, readyHandler } from './ops.js';
export type { TokenGateOptions } from './options.js';
export type { Rejection, RejectionHandler } from './reject.js';
export type { RejectionType, ErrorType, ErrorBody } from '../src/http/error-body.js';
export type { RequestBody } from './body.js';
export type { TokenGateContext } from './request.js';
