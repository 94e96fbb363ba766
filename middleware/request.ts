// `req.tokenGate`: what the gate tells later handlers about an admitted request.

export interface TokenGateContext {
  key: { id: string; name: string; model: string | null; tokenLimit: number };
  /** Of the key's one limit, or (a key with several) of the one with the least remaining. */
  usage: {
    /** Tokens recorded in the window at admission. */
    used: number;
    /** Tokens reserved by requests in flight, this one included. */
    reserved: number;
    /** Tokens left after this request's reservation. */
    remaining: number;
    windowEndsAt: Date;
  };
}

declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** Set by tokenGate() on admitted requests. */
      tokenGate?: TokenGateContext;
    }
  }
}
