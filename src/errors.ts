// Typed errors: each names what went wrong in words an operator can act on.

/** Base class of every error tokengate throws on purpose; `code` is stable for scripts. */
export class TokenGateError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** Input that cannot be accepted; `field` names the offending field. */
export class ValidationError extends TokenGateError {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(`${field}: ${message}`, 'invalid_input');
  }
}

export class NotFoundError extends TokenGateError {
  constructor(message: string) {
    super(message, 'not_found');
  }
}

/** A write that would break a uniqueness rule, such as a key value already in use. */
export class ConflictError extends TokenGateError {
  constructor(message: string) {
    super(message, 'conflict');
  }
}

/** Configuration or environment that keeps tokengate from starting. */
export class ConfigError extends TokenGateError {
  constructor(message: string, options?: ErrorOptions) {
    super(message, 'invalid_config', options);
  }
}

/**
 * A store operation that failed. `transient` marks failures of the connection class (the database
 * went away, restarted, or was overloaded), which may succeed on another attempt.
 */
export class StorageError extends TokenGateError {
  constructor(
    message: string,
    readonly transient: boolean,
    options?: ErrorOptions,
  ) {
    super(message, transient ? 'storage_unavailable' : 'storage_error', options);
  }
}
