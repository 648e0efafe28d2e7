// The browser SDK's logic without any I/O: the seq rule (Inbox), the outbox
// schedule (Outbox), debounced cumulative acks (AckTracker), the resume
// state machine (ResumeState), backoff, and what an error frame means.
//
// Nothing here touches the DOM, a timer, the network or IndexedDB: callers
// pass `now` (any monotonic clock, in the unit of the timeouts they chose)
// and act on what the methods return. session.js feeds frames in and writes
// frames out. It mirrors client/core.py, the Python SDK's core, name for
// name where the languages allow; tests/vectors/client_core.json holds cases
// both cores must decide alike.

export const MAX_BODY_BYTES = 16384;
export const MESSAGE_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
/** A `resume` lists at most this many conversations (docs/protocol.md). */
export const MAX_RESUME_CONVERSATIONS = 100;

/**
 * Error codes of a send that are worth retrying with the same messageId:
 * `internal` (the protocol says so) and `rate_limited` (nothing was stored).
 */
export const RETRYABLE_SEND_CODES = new Set(["internal", "rate_limited"]);

/**
 * A message of a conversation as the SDK keeps it (the `message` frame's
 * fields; system messages add event, status, agentId, previousAgentId).
 * @typedef {object} Message
 * @property {string} conversationId
 * @property {number} seq
 * @property {string} messageId
 * @property {string} senderId
 * @property {string} senderRole
 * @property {string} body
 * @property {string} sentAt
 * @property {string} [event]
 * @property {string} [status]
 * @property {string | null} [agentId]
 * @property {string | null} [previousAgentId]
 * @property {boolean} [void] a void seq of protocol 1.1: processed, never shown
 */

/** @param {unknown} value @returns {value is number} */
export function isSeq(value) {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

/** @param {unknown} value @returns {value is Record<string, unknown>} */
function isObject(value) {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * A `message` frame as a Message, or null when it breaks the protocol (no
 * conversationId, a seq that is not an integer of at least 1): such a frame
 * is dropped, like client/core.py's `Message.from_frame` raising.
 * @param {unknown} frame
 * @returns {Message | null}
 */
export function messageFromFrame(frame) {
  if (!isObject(frame)) return null;
  const { conversationId, seq } = frame;
  if (typeof conversationId !== "string" || !isSeq(seq) || seq < 1) return null;
  /** @type {Message} */
  const m = {
    conversationId, seq,
    messageId: String(frame.messageId ?? ""),
    senderId: String(frame.senderId ?? ""),
    senderRole: String(frame.senderRole ?? ""),
    body: String(frame.body ?? ""),
    sentAt: String(frame.sentAt ?? ""),
  };
  if (typeof frame.event === "string") m.event = frame.event;
  if (typeof frame.status === "string") m.status = frame.status;
  if ("agentId" in frame) m.agentId = typeof frame.agentId === "string" ? frame.agentId : null;
  if ("previousAgentId" in frame) m.previousAgentId = typeof frame.previousAgentId === "string" ? frame.previousAgentId : null;
  if (frame.void === true) m.void = true;
  return m;
}

/**
 * An `accepted` frame's fields, or null when it breaks the protocol (no
 * messageId or conversationId, a seq that is not an integer of at least 1).
 * @param {unknown} frame
 * @returns {{conversationId: string, messageId: string, seq: number, sentAt: string, duplicate: boolean} | null}
 */
export function acceptedFromFrame(frame) {
  if (!isObject(frame)) return null;
  const { conversationId, messageId, seq } = frame;
  if (typeof conversationId !== "string" || typeof messageId !== "string" || !isSeq(seq) || seq < 1) return null;
  return { conversationId, messageId, seq, sentAt: String(frame.sentAt ?? ""), duplicate: frame.duplicate === true };
}

/** Whether the app shows a processed message (a void seq is for the cursor only). @param {{void?: boolean}} m */
export function isShown(m) {
  return m.void !== true;
}

/**
 * The `[code, reason]` the server would refuse this send with, or null.
 * @param {unknown} body
 * @param {string} messageId
 * @returns {[string, string] | null}
 */
export function validateSend(body, messageId) {
  if (!MESSAGE_ID_RE.test(messageId)) return ["bad_request", "messageId must be 1 to 64 characters of [A-Za-z0-9_-]"];
  if (typeof body !== "string" || body.length === 0) return ["bad_request", "body must be non-empty text"];
  if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) return ["payload_too_large", `body over ${MAX_BODY_BYTES} bytes`];
  return null;
}

/**
 * What an `error` frame naming a pending message does to it: `reconnect`
 * (the server does not know this connection; the message stays pending),
 * `retry` (same messageId, after a backoff) or `reject` (final: drop it).
 * @param {string} code
 * @returns {"reconnect" | "retry" | "reject"}
 */
export function sendErrorAction(code) {
  if (code === "unauthorized") return "reconnect";
  return RETRYABLE_SEND_CODES.has(code) ? "retry" : "reject";
}

// --------------------------------------------------------------- backoff

/** Exponential backoff with full jitter: `uniform(0, min(cap, base * 2^attempt))`. */
export class Backoff {
  /** @param {{base?: number, cap?: number, random?: () => number}} [options] base and cap in ms by default */
  constructor({ base = 500, cap = 30000, random = Math.random } = {}) {
    this.base = base;
    this.cap = cap;
    this.random = random;
  }

  /** The upper bound of the delay before retry number `attempt` (0-based). @param {number} attempt */
  ceiling(attempt) {
    return Math.min(this.cap, this.base * 2 ** Math.min(attempt, 62));
  }

  /** A random delay in `[0, ceiling(attempt)]`. @param {number} attempt */
  delay(attempt) {
    return this.random() * this.ceiling(attempt);
  }
}

// ----------------------------------------------------------------- inbox

/**
 * The protocol's client rule, per conversation.
 *
 * `last` is the highest seq released (processed). A message with
 * `seq == last + 1` is released (with any buffered successors), `seq <= last`
 * is dropped, `seq > last + 1` is buffered until the gap is filled (by a
 * resume's replay, or by the `accepted` of an own send).
 * @template {{conversationId: string, seq: number}} [M=Message]
 */
export class Inbox {
  /**
   * @param {Record<string, number>} [cursors] `{conversationId: last}` to start from
   * @param {Iterable<string>} [paused] conversations known but not resumed
   */
  constructor(cursors = {}, paused = []) {
    /** @type {Map<string, number>} */
    this.last = new Map(Object.entries(cursors));
    /** @type {Map<string, number>} highest seq known to exist (from frames and resumed) */
    this.latest = new Map();
    /** @type {Map<string, Map<number, M>>} */
    this._buffer = new Map();
    /** @type {Set<string>} */
    this._paused = new Set(paused);
  }

  /** Know a conversation (so resumes list it), starting after `cursor` if new. @param {string} cid @param {number} [cursor] */
  track(cid, cursor = 0) {
    this._paused.delete(cid);
    if (!this.last.has(cid)) this.last.set(cid, cursor);
  }

  /**
   * Stop listing a conversation the user no longer takes part in, keeping
   * its cursor (an agent may get it back after a transfer: what was
   * processed is never handed over again). A message of it, or `track`,
   * follows it again.
   * @param {string} cid
   */
  pause(cid) {
    this._paused.add(cid);
    this.latest.delete(cid);
    this._buffer.delete(cid);
  }

  /** @param {string} cid */
  isPaused(cid) {
    return this._paused.has(cid);
  }

  /** Stop following a conversation. @param {string} cid */
  forget(cid) {
    this.last.delete(cid);
    this.latest.delete(cid);
    this._buffer.delete(cid);
    this._paused.delete(cid);
  }

  /**
   * Apply the rule to one message; return what is released, in seq order.
   * @param {M} msg
   * @returns {M[]}
   */
  receive(msg) {
    const cid = msg.conversationId;
    this._paused.delete(cid);
    let last = this.last.get(cid) ?? 0;
    this.last.set(cid, last);
    this.latest.set(cid, Math.max(this.latest.get(cid) ?? 0, msg.seq));
    if (msg.seq <= last) return [];
    let buffered = this._buffer.get(cid);
    if (!buffered) this._buffer.set(cid, (buffered = new Map()));
    if (!buffered.has(msg.seq)) buffered.set(msg.seq, msg); // copies of one seq are the same message
    /** @type {M[]} */
    const released = [];
    for (let next = buffered.get(last + 1); next !== undefined; next = buffered.get(last + 1)) {
      buffered.delete(last + 1);
      last += 1;
      released.push(next);
    }
    this.last.set(cid, last);
    if (!buffered.size) this._buffer.delete(cid);
    return released;
  }

  /**
   * Record the latest seqs of a `resumed` frame (and learn new conversations);
   * values that are not seqs (true, "3", -1) are ignored.
   * @param {Record<string, unknown>} latest
   * @returns {string[]} the conversations it named that were not known
   */
  noteLatest(latest) {
    /** @type {string[]} */
    const learned = [];
    for (const [cid, seq] of Object.entries(latest)) {
      if (!isSeq(seq)) continue;
      if (!this.last.has(cid)) learned.push(cid);
      this.track(cid);
      this.latest.set(cid, Math.max(this.latest.get(cid) ?? 0, seq));
    }
    return learned;
  }

  /** @param {string} cid */
  isConversationBehind(cid) {
    return !this._paused.has(cid) && ((this.latest.get(cid) ?? 0) > (this.last.get(cid) ?? 0) || this._buffer.has(cid));
  }

  /** Conversations with a known gap (buffered or known to exist): `{cid: last}`. @returns {Record<string, number>} */
  behind() {
    /** @type {Record<string, number>} */
    const out = {};
    for (const [cid, last] of this.last) if (this.isConversationBehind(cid)) out[cid] = last;
    return out;
  }

  /**
   * `{cid: last}` for the followed conversations a `resume` lists: at most
   * MAX_RESUME_CONVERSATIONS, those with a known gap first.
   * @returns {Record<string, number>}
   */
  cursors() {
    /** @type {Record<string, number>} */
    const out = {};
    let n = 0;
    for (const behind of [true, false]) {
      for (const [cid, last] of this.last) {
        if (n >= MAX_RESUME_CONVERSATIONS) return out;
        if (this._paused.has(cid) || this.isConversationBehind(cid) !== behind) continue;
        out[cid] = last;
        n += 1;
      }
    }
    return out;
  }

  /** The sum of every cursor: it grows whenever anything is processed (a resume's progress). */
  progress() {
    let sum = 0;
    for (const last of this.last.values()) sum += last;
    return sum;
  }

  /** The buffered (not yet released) seqs of a conversation, sorted. @param {string} cid */
  buffered(cid) {
    return [...(this._buffer.get(cid)?.keys() ?? [])].sort((a, b) => a - b);
  }
}

// ---------------------------------------------------------------- outbox

/**
 * @typedef {object} OutgoingMessage
 * @property {string} conversationId
 * @property {string} messageId
 * @property {string} body
 */

/**
 * One message that is not yet `accepted`, with its send schedule.
 * @typedef {OutgoingMessage & {attempts: number, failures: number, dueAt: number, answerBy: number | null}} PendingSend
 * attempts: how many times it was written to a connection; failures:
 * consecutive retryable errors; dueAt: when it should be (re)sent (Infinity
 * while in flight); answerBy: when in flight, resend if no answer by then.
 */

/**
 * Every unaccepted message, in the order it was sent, with its retry schedule.
 *
 * A message is *due* when it was never sent on the current connection, when
 * its answer is overdue (`sendTimeout`), or when a retry delay after a
 * retryable error has passed. `ordered` keeps one message in flight per
 * conversation, so the server stores them in send order.
 * @template {OutgoingMessage} [E=OutgoingMessage]
 */
export class Outbox {
  /** The answer timeout doubles with each unanswered attempt, up to this factor. */
  static MAX_TIMEOUT_FACTOR = 8;

  /**
   * @param {{sendTimeout?: number, ordered?: boolean, maxAttempts?: number}} [options]
   *   maxAttempts: after that many unanswered attempts of one message the
   *   connection is presumed dead (`hopeless`)
   */
  constructor({ sendTimeout = 5000, ordered = false, maxAttempts = Infinity } = {}) {
    this.sendTimeout = sendTimeout;
    this.ordered = ordered;
    this.maxAttempts = maxAttempts;
    /** @type {Map<string, E & PendingSend>} */
    this._entries = new Map();
    /** @type {Set<string>} messageIds accepted or rejected: a late copy of one is not taken again */
    this._settled = new Set();
  }

  get size() {
    return this._entries.size;
  }

  /** @param {string} messageId */
  has(messageId) {
    return this._entries.has(messageId);
  }

  /** The pending entry of a messageId, if any. @param {string} messageId */
  get(messageId) {
    return this._entries.get(messageId);
  }

  /** All pending entries in send order. */
  entries() {
    return [...this._entries.values()];
  }

  /**
   * Queue a message; due at once. Throws on a messageId already pending.
   * @param {E} entry
   * @param {number} now
   * @returns {E & PendingSend}
   */
  add(entry, now) {
    if (this._entries.has(entry.messageId)) throw new Error(`messageId ${entry.messageId} is already pending`);
    const pending = { ...entry, attempts: 0, failures: 0, dueAt: now, answerBy: null };
    this._entries.set(entry.messageId, pending);
    return pending;
  }

  /**
   * Take the messages of a stored outbox (oldest first) that are neither
   * pending nor already settled here; the number taken.
   * @param {E[]} entries
   * @param {number} now
   */
  adopt(entries, now) {
    let added = 0;
    for (const e of entries) {
      if (this._entries.has(e.messageId) || this._settled.has(e.messageId)) continue;
      this.add(e, now);
      added += 1;
    }
    return added;
  }

  /**
   * Entries to write to the connection now, in send order.
   * @param {number} now
   */
  due(now) {
    /** @type {(E & PendingSend)[]} */
    const out = [];
    /** @type {Set<string>} */
    const blocked = new Set();
    for (const e of this._entries.values()) {
      if (e.answerBy !== null && now >= e.answerBy) {
        e.dueAt = now; // no answer in time: the send may be lost
        e.answerBy = null;
      }
      if (this.ordered && blocked.has(e.conversationId)) continue;
      if (e.answerBy === null && e.dueAt <= now) out.push(e);
      if (this.ordered) blocked.add(e.conversationId); // later ones wait for this one's accepted
    }
    return out;
  }

  /**
   * Whether a message went unanswered `maxAttempts` times: the connection
   * is silently dead, and only a new one helps.
   * @param {number} now
   */
  hopeless(now) {
    for (const e of this._entries.values()) {
      if (e.answerBy !== null && now >= e.answerBy && e.attempts >= this.maxAttempts) return true;
    }
    return false;
  }

  /**
   * The entry was written to the connection; it expects an answer in time.
   * The first attempt waits `sendTimeout`, each further one twice as long,
   * up to MAX_TIMEOUT_FACTOR times: a slow server is not sent ever more
   * copies of the same messages.
   * @param {string} messageId
   * @param {number} now
   */
  markSent(messageId, now) {
    const e = this._entries.get(messageId);
    if (!e) return;
    const factor = Math.min(2 ** e.attempts, Outbox.MAX_TIMEOUT_FACTOR);
    e.attempts += 1;
    e.dueAt = Infinity;
    e.answerBy = now + this.sendTimeout * factor;
  }

  /** Remove and return the entry of an `accepted` (undefined if not pending: a late answer). @param {string} messageId */
  accepted(messageId) {
    return this._settle(messageId);
  }

  /** Remove and return the entry of a final error (undefined if not pending). @param {string} messageId */
  reject(messageId) {
    return this._settle(messageId);
  }

  /** @param {string} messageId */
  _settle(messageId) {
    const e = this._entries.get(messageId);
    if (!e) return undefined;
    this._entries.delete(messageId);
    this._settled.add(messageId);
    return e;
  }

  /**
   * A retryable error: send again after `delay`.
   * @param {string} messageId
   * @param {number} now
   * @param {number} delay
   */
  retryAfter(messageId, now, delay) {
    const e = this._entries.get(messageId);
    if (!e) return;
    e.failures += 1;
    e.dueAt = now + delay;
    e.answerBy = null;
  }

  /**
   * A new connection: everything in flight on the old one is due again now.
   * Retry delays of errored entries are kept (the server asked for a pause).
   * @param {number} now
   */
  connectionChanged(now) {
    for (const e of this._entries.values()) {
      if (e.answerBy !== null || e.dueAt === Infinity) {
        e.dueAt = now;
        e.answerBy = null;
      }
    }
  }

  /**
   * Some in-flight request failed without saying which (API Gateway's
   * `Internal server error`): answer within `timeout` or be resent.
   * @param {number} now
   * @param {number} timeout
   */
  shortenDeadlines(now, timeout) {
    for (const e of this._entries.values()) {
      if (e.answerBy !== null) e.answerBy = Math.min(e.answerBy, now + timeout);
    }
  }

  /** The earliest time something becomes due (null: nothing pending). @returns {number | null} */
  nextDeadline() {
    let next = Infinity;
    for (const e of this._entries.values()) next = Math.min(next, e.answerBy !== null ? e.answerBy : e.dueAt);
    return Number.isFinite(next) ? next : null;
  }
}

// ------------------------------------------------------------------ acks

/**
 * Debounced cumulative acks: per conversation, ack after `every` processed
 * messages or `delay` after the first un-acked one, whichever comes first.
 * Call `processed` only once the messages are stored: an ack promises the
 * server they are never needed again.
 */
export class AckTracker {
  /**
   * @param {{every?: number, delay?: number}} [options]
   * @param {Record<string, number>} [acked] cursors already acked (or stored, hence safe to ack)
   */
  constructor({ every = 20, delay = 5000 } = {}, acked = {}) {
    this.every = Math.max(1, every);
    this.delay = delay;
    /** @type {Map<string, number>} */
    this.acked = new Map(Object.entries(acked));
    /** @type {Map<string, {seq: number, count: number, first: number}>} */
    this._pending = new Map();
  }

  /**
   * The conversation is processed and stored up to `seq` (`count` messages more).
   * @param {string} cid
   * @param {number} seq
   * @param {number} now
   * @param {number} [count]
   */
  processed(cid, seq, now, count = 1) {
    if (seq <= (this.acked.get(cid) ?? 0)) return;
    const p = this._pending.get(cid);
    this._pending.set(cid, { seq, count: (p ? p.count : 0) + count, first: p ? p.first : now });
  }

  /** Acks to send now `{cid: seq}`; call `sent` once they are written. @param {number} now */
  due(now) {
    /** @type {Record<string, number>} */
    const out = {};
    for (const [cid, p] of this._pending) if (p.count >= this.every || now >= p.first + this.delay) out[cid] = p.seq;
    return out;
  }

  /** Every pending ack (to flush on close). */
  pending() {
    /** @type {Record<string, number>} */
    const out = {};
    for (const [cid, p] of this._pending) out[cid] = p.seq;
    return out;
  }

  /** These acks were written to a connection. @param {Record<string, number>} acks */
  sent(acks) {
    for (const [cid, seq] of Object.entries(acks)) {
      this.acked.set(cid, Math.max(this.acked.get(cid) ?? 0, seq));
      const p = this._pending.get(cid);
      if (p && p.seq <= seq) this._pending.delete(cid);
    }
  }

  /** An ack already sent, to repeat as a keep-alive (a no-op for the server), or null. @returns {[string, number] | null} */
  anyAcked() {
    for (const [cid, seq] of this.acked) if (seq > 0) return [cid, seq];
    return null;
  }

  /** When the earliest pending ack falls due (null: nothing pending). @returns {number | null} */
  nextDeadline() {
    let next = Infinity;
    for (const p of this._pending.values()) next = Math.min(next, p.count >= this.every ? p.first : p.first + this.delay);
    return Number.isFinite(next) ? next : null;
  }
}

// ---------------------------------------------------------------- resume

/**
 * The resume state machine of one connection: at most one `resume` in
 * flight, listing every followed conversation (so none has two); again at
 * once after a `resumed` that made progress while still behind, paced by
 * the backoff when it made none; a refused resume (`forbidden`,
 * `not_found`: a conversation transferred away) probed one conversation at
 * a time and the culprit paused. client/sdk.py runs the same machine.
 */
export class ResumeState {
  /** @param {{timeout?: number, maxUnanswered?: number}} [options] */
  constructor({ timeout = 10000, maxUnanswered = 2 } = {}) {
    this.timeout = timeout;
    this.maxUnanswered = maxUnanswered;
    /** @type {number | null} when to send the next resume */
    this.wantedAt = null;
    /** @type {number | null} when the resume in flight is overdue */
    this.answerBy = null;
    /** @type {Record<string, number> | null} the cursors of the resume in flight */
    this.sent = null;
    this.progress = -1;
    this.failures = 0;
    /** @type {string[]} conversations to resume one by one after a refused resume */
    this.probes = [];
    this.unanswered = 0;
  }

  /** A new connection: resume at once. @param {number} now */
  connected(now) {
    this.wantedAt = now;
    this.answerBy = null;
    this.sent = null;
    this.progress = -1;
    this.failures = 0;
    this.probes = [];
    this.unanswered = 0;
  }

  get inFlight() {
    return this.answerBy !== null;
  }

  /** Resume after `delay`, unless one is in flight or already planned. @param {number} now @param {number} delay */
  want(now, delay) {
    if (this.wantedAt === null && this.answerBy === null) this.wantedAt = now + delay;
  }

  /**
   * What to do now: `{send: cursors}` (write a resume frame), `{drop: true}`
   * (resumes go unanswered: the connection is dead), or null.
   * @param {number} now
   * @param {Inbox<any>} inbox
   * @returns {{send: Record<string, number>} | {drop: true} | null}
   */
  poll(now, inbox) {
    if (this.answerBy !== null && now >= this.answerBy) {
      // No `resumed` in time: the resume (or the connection) is lost.
      this.answerBy = null;
      this.sent = null;
      this.wantedAt = now;
      this.unanswered += 1;
      if (this.unanswered >= this.maxUnanswered) return { drop: true };
    }
    if (this.answerBy !== null || this.wantedAt === null || now < this.wantedAt) return null;
    /** @type {Record<string, number>} */
    let cursors;
    if (this.probes.length) {
      const cid = this.probes[0];
      cursors = { [cid]: inbox.last.get(cid) ?? 0 };
    } else {
      cursors = inbox.cursors();
      this.progress = inbox.progress();
    }
    this.sent = cursors;
    this.wantedAt = null;
    this.answerBy = now + this.timeout;
    return { send: cursors };
  }

  /** @param {Record<string, number> | null} sent */
  _isProbe(sent) {
    if (!this.probes.length || !sent) return false;
    const keys = Object.keys(sent);
    return keys.length === 1 && keys[0] === this.probes[0];
  }

  /**
   * A `resumed` frame arrived (its latest seqs already noted in `inbox`).
   * Returns false while probing goes on, true when a round is complete.
   * @param {number} now
   * @param {Inbox<any>} inbox
   * @param {Backoff} backoff
   */
  resumed(now, inbox, backoff) {
    this.answerBy = null;
    this.unanswered = 0;
    const sent = this.sent;
    this.sent = null;
    if (this._isProbe(sent)) {
      this.probes.shift();
      if (this.probes.length) {
        this.wantedAt = now;
        return false;
      }
    }
    if (Object.keys(inbox.behind()).length) {
      // Still behind after the replay: the server capped it, or live
      // messages raced it. Again at once if it made progress, else paced by
      // the backoff so a stuck server is not hammered.
      if (inbox.progress() > this.progress) {
        this.failures = 0;
        this.wantedAt = now;
      } else {
        this.wantedAt = now + backoff.delay(this.failures);
        this.failures += 1;
      }
    } else {
      this.failures = 0;
      this.wantedAt = null;
    }
    return true;
  }

  /**
   * The resume in flight was refused (`forbidden` or `not_found`): it is
   * refused whole, so resume the conversations one by one; the one refused
   * alone is paused and returned.
   * @param {number} now
   * @param {Inbox<any>} inbox
   * @returns {string | null}
   */
  refused(now, inbox) {
    const sent = this.sent;
    this.sent = null;
    this.answerBy = null;
    let gone = null;
    if (this._isProbe(sent)) {
      gone = this.probes.shift() ?? null;
      if (gone !== null) inbox.pause(gone);
    } else if (sent && Object.keys(sent).length) {
      this.probes = Object.keys(sent);
    }
    this.wantedAt = now;
    return gone;
  }

  /** Some request failed without saying which: the resume in flight answers within `timeout` or is resent. @param {number} now @param {number} timeout */
  requestFailed(now, timeout) {
    if (this.answerBy !== null) this.answerBy = Math.min(this.answerBy, now + timeout);
  }

  /** @returns {number | null} */
  nextDeadline() {
    return this.answerBy !== null ? this.answerBy : this.wantedAt;
  }
}
