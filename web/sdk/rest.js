// The browser SDK's REST side: tokens (a cached token callback), the REST
// API with its errors, and the pages' configuration file.

/** A REST answer other than 2xx: `status` (0: no answer) and the protocol's `code`. */
export class RestError extends Error {
  /**
   * @param {number} status
   * @param {string | null | undefined} code
   * @param {string | null | undefined} [message]
   */
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/**
 * The claims of a JWT, decoded without verifying it (only to learn sub and role).
 * @param {string} token
 * @returns {{sub?: string, role?: string, exp?: number, [claim: string]: unknown}}
 */
export function tokenClaims(token) {
  const part = token.split(".")[1] || "";
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
  return JSON.parse(atob(b64));
}

/** @typedef {() => Promise<string>} TokenProvider a callback `async () => jwt` */

/**
 * A token callback for a token endpoint: POSTs `payload` as JSON with the
 * page's cookies (`credentials: "include"`, for a real sign-in) and expects
 * `{"token": "..."}`. On another origin than the page's, the endpoint must
 * answer CORS with that origin itself and `Access-Control-Allow-Credentials:
 * true` (never `*`): docs/web.md, "Tokens". A refusal's JSON `message` (or
 * its `code`) becomes the error's message.
 * @param {string} url
 * @param {object} [payload]
 * @returns {TokenProvider}
 */
export function tokenFromEndpoint(url, payload = {}) {
  return async () => {
    const response = await fetch(url, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    if (!response.ok) {
      /** @type {{code?: string, message?: string}} */
      let body = {};
      try { body = await response.json(); } catch { /* not JSON: the status says it */ }
      throw new RestError(response.status, body.code || "token",
        body.message || `token endpoint answered ${response.status}`);
    }
    const data = await response.json();
    return data.token;
  };
}

/**
 * The pages' configuration: `{restUrl, websocketUrl, tokenUrl, ...}` from a JSON file.
 * @param {string} url
 * @returns {Promise<Record<string, any>>}
 */
export async function loadConfig(url) {
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`configuration ${url}: HTTP ${response.status}`);
  return response.json();
}

/** The token callback behind a cache: called again only within a minute of expiry (or when forced). */
export class Tokens {
  /** @param {TokenProvider} provider */
  constructor(provider) {
    this.provider = provider;
    /** @type {string | null} */
    this._token = null;
    this._exp = 0;
  }

  /** A token valid for at least another minute. @param {boolean} [force] a new one even if the cached one is fresh */
  async fresh(force = false) {
    const now = Date.now() / 1000;
    if (!force && this._token && now < this._exp - 60) return this._token;
    const token = await this.provider();
    if (typeof token !== "string" || !token) throw new Error("the token callback returned no token");
    let exp = now + 300;
    try {
      const claimed = tokenClaims(token).exp;
      if (typeof claimed === "number") exp = claimed;
    } catch {
      // not a JWT we can read: use it for five minutes
    }
    this._token = token;
    this._exp = exp;
    return token;
  }
}

/**
 * A conversation as REST returns it (docs/protocol.md, "Conversations").
 * @typedef {object} Conversation
 * @property {string} conversationId
 * @property {string} customerId
 * @property {string | null} agentId
 * @property {"waiting" | "active" | "closed"} status
 * @property {number} lastSeq
 * @property {number | null} [position]
 * @property {{userId: string, role: string, ackSeq: number, readSeq: number}[]} [participants]
 */

/** The REST API with a Bearer token on every call; errors are RestError. */
export class Rest {
  /** @param {string} baseUrl @param {Tokens} tokens */
  constructor(baseUrl, tokens) {
    this.baseUrl = baseUrl.replace(/\/+$/, "");
    this.tokens = tokens;
  }

  /**
   * One call; the JSON answer, or RestError (status 0, code `network`, when there is no answer).
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @param {Record<string, string>} [headers]
   * @returns {Promise<any>}
   */
  async call(method, path, body, headers = {}) {
    const token = await this.tokens.fresh();
    let response;
    try {
      response = await fetch(this.baseUrl + path, {
        method,
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...headers },
        body: body === undefined ? (method === "GET" ? undefined : "{}") : JSON.stringify(body),
      });
    } catch (err) {
      throw new RestError(0, "network", String(err instanceof Error ? err.message : err));
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) throw new RestError(response.status, data && data.code, data && data.message);
    return data;
  }

  /** @param {string} cid */
  static path(cid) {
    return `/conversations/${encodeURIComponent(cid)}`;
  }

  /** `POST /conversations` with an Idempotency-Key (a retry answers the same conversation). @param {string} [key] @returns {Promise<Conversation>} */
  openConversation(key) {
    return this.call("POST", "/conversations", undefined, key ? { "Idempotency-Key": key } : {});
  }

  /** @param {string} cid @returns {Promise<Conversation>} */
  conversation(cid) {
    return this.call("GET", Rest.path(cid));
  }

  /** @param {string} [status] @returns {Promise<{conversations: Conversation[], next: string | null}>} */
  conversations(status) {
    return this.call("GET", "/conversations" + (status ? `?status=${encodeURIComponent(status)}` : ""));
  }

  /**
   * A page of history: `{before: N}` (the latest ones below N) or `{after: N}`.
   * @param {string} cid
   * @param {{before?: number | null, after?: number | null, limit?: number}} [page]
   * @returns {Promise<{messages: import("./core.js").Message[], next: number | null, prev: number | null}>}
   */
  history(cid, { before, after, limit = 30 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before != null) q.set("before", String(before));
    if (after != null) q.set("after", String(after));
    return this.call("GET", `${Rest.path(cid)}/messages?${q}`);
  }

  /** @param {string} cid @returns {Promise<Conversation>} */
  closeConversation(cid) {
    return this.call("POST", `${Rest.path(cid)}/close`);
  }

  /** @param {string} cid @param {string} agentId @returns {Promise<Conversation>} */
  transfer(cid, agentId) {
    return this.call("POST", `${Rest.path(cid)}/transfer`, { agentId });
  }

  /** @param {{status?: string, capacity?: number}} changes */
  setStatus(changes) {
    return this.call("PUT", "/agents/me/status", changes);
  }

  agents() {
    return this.call("GET", "/agents");
  }

  queue() {
    return this.call("GET", "/queue");
  }
}
