// oncechat browser SDK: ES modules, no build step, no dependency.
//
//   import { OnceChat } from "./sdk/oncechat.js";
//   const chat = new OnceChat({ restUrl, websocketUrl, token: async () => myToken });
//   chat.addEventListener("message", (e) => show(e.detail));
//   await chat.start();
//   await chat.send(conversationId, "hello");
//
// It keeps the protocol's promise (docs/protocol.md) in a browser. This
// module is the public face; the work is done by:
//   core.js     the decisions, pure (no DOM, timers, network or storage):
//               the seq rule, the outbox schedule, acks, resumes, backoff;
//   session.js  the leader tab's WebSocket: connect, reconnect, frames in
//               and out, driving core.js;
//   leader.js   Web Locks election of the leader tab and the tab bus;
//   store.js    IndexedDB: the outbox, processed messages, cursors;
//   rest.js     the REST API, tokens, RestError.
//
// docs/web.md is the manual; client/ is the Python twin (client/core.py
// mirrors core.js, and tests/vectors/client_core.json holds both to it).

import { Backoff, MAX_BODY_BYTES, validateSend } from "./core.js";
import { TabBus, electLeader } from "./leader.js";
import { Rest, RestError, Tokens, loadConfig, tokenClaims, tokenFromEndpoint } from "./rest.js";
import { Session } from "./session.js";
import { Store, newRecord } from "./store.js";

export { Backoff, MAX_BODY_BYTES, RestError, loadConfig, tokenClaims, tokenFromEndpoint };

/** @typedef {import("./core.js").Message} Message */
/** @typedef {import("./store.js").OutboxEntry} OutboxEntry */
/** @typedef {import("./store.js").ConversationRecord} ConversationRecord */
/** @typedef {import("./leader.js").BusMessage} BusMessage */
/** @typedef {import("./rest.js").Conversation} Conversation */
/** @typedef {"queued" | "sent" | "delivered" | "read"} MessageState */

/** A new messageId: time-ordered, random, within the protocol's alphabet and length. */
export function newMessageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  const rand = Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
  return `w${Date.now().toString(36)}-${rand}`;
}

/**
 * @typedef {object} OnceChatOptions
 * @property {string} restUrl
 * @property {string} websocketUrl
 * @property {import("./rest.js").TokenProvider} token
 * @property {Backoff} [backoff] reconnects, retries after retryable errors, repeated resumes (ms)
 * @property {number} [sendTimeout] resend an unanswered message after this (ms; doubling per attempt)
 * @property {number} [resumeTimeout] send `resume` again when `resumed` takes longer (ms)
 * @property {number} [gapDelay] how long a gap may stay open before resuming (ms)
 * @property {number} [ackDelay] ack this long after the first un-acked message (ms)...
 * @property {number} [ackEvery] ...or after this many messages
 * @property {number} [peerPollInterval] how often the peers' ack cursors are read (ms)
 * @property {number} [keepAliveInterval] repeat an ack after this much quiet (ms)
 * @property {boolean} [ordered] one message in flight per conversation
 * @property {string} [databasePrefix] names the IndexedDB database, the lock and the channel
 */

/**
 * One user's oncechat client in one tab. Events (all tabs alike):
 * - `message`: a processed message (each (conversationId, seq) once per tab, in seq order;
 *   a void seq of protocol 1.1 comes with `void: true` and is for the cursor, not for display);
 * - `outbox`: the unaccepted messages changed (detail: the entries, oldest first);
 * - `accepted` / `rejected`: a message was stored (with its seq) / refused (with the code);
 * - `cursors`: a conversation's cursors moved (detail: its record: last, peerAck, peerRead, myRead);
 * - `connection`: detail `{state, leader}`, state one of connecting, open, reconnecting, offline, stopped;
 * - `conversation`, `typing`, `read`: the server's ephemeral frames (detail: the frame).
 */
export class OnceChat extends EventTarget {
  /** @param {OnceChatOptions} options */
  constructor({
    restUrl,
    websocketUrl,
    token,
    backoff = new Backoff(),
    sendTimeout = 5000,
    resumeTimeout = 10000,
    gapDelay = 200,
    ackDelay = 5000,
    ackEvery = 20,
    peerPollInterval = 2500,
    keepAliveInterval = 240000,
    ordered = true,
    databasePrefix = "oncechat",
  }) {
    super();
    if (!restUrl || !websocketUrl || typeof token !== "function") {
      throw new TypeError("OnceChat needs restUrl, websocketUrl and a token() callback");
    }
    this.restUrl = restUrl.replace(/\/+$/, "");
    this.websocketUrl = websocketUrl;
    this.tokenProvider = token;
    this.databasePrefix = databasePrefix;
    /** @type {import("./session.js").SessionOptions} */
    this.options = {
      websocketUrl, backoff, sendTimeout, resumeTimeout, gapDelay, ackDelay, ackEvery,
      peerPollInterval, keepAliveInterval, ordered,
    };
    this.tokens = new Tokens(token);
    this.api = new Rest(this.restUrl, this.tokens);
    /** @type {string | null} */
    this.userId = null;
    /** @type {string | null} */
    this.role = null;
    this.leader = false;
    this.connectionState = "connecting";
    /** @type {Store | null} */
    this._store = null;
    /** @type {TabBus | null} */
    this._bus = null;
    /** @type {Session | null} the leader's connection (this tab leads) */
    this._session = null;
    this._stopped = false;
    /** @type {Map<string, number>} per tab: highest seq handed to the app, per conversation */
    this._emitted = new Map();
    /** @type {Promise<unknown>} */
    this._delivering = Promise.resolve();
    this._orderTick = 0;
    /** @type {() => void} */
    this._resign = () => {};
    this._onOnline = () => this._session?.wakeUp();
    this._onOffline = () => this._session?.drop("offline");
  }

  /** The IndexedDB store (after `start()`). */
  get store() {
    if (!this._store) throw new Error("OnceChat: call start() first");
    return this._store;
  }

  // ------------------------------------------------------------------ start

  /** Learn who we are from a token, open the database, join the tabs. */
  async start() {
    const claims = tokenClaims(await this.tokens.fresh());
    const userId = String(claims.sub);
    this.userId = userId;
    this.role = claims.role ?? null;
    this._store = await Store.open(`${this.databasePrefix}-${userId}`);
    for (const rec of await this._store.conversations()) this._emitted.set(rec.conversationId, rec.last);
    this._bus = new TabBus(`${this.databasePrefix}-${userId}`, (msg, local) => this._onBus(msg, local));
    window.addEventListener("online", this._onOnline);
    window.addEventListener("offline", this._onOffline);
    this._resign = electLeader(`${this.databasePrefix}-leader-${userId}`, () => this._becomeLeader(), () => this._stopped);
    this._bus.post({ t: "hello" });
    return this;
  }

  /** Leave: close the connection, give up leadership (another tab takes over). */
  stop() {
    this._stopped = true;
    window.removeEventListener("online", this._onOnline);
    window.removeEventListener("offline", this._onOffline);
    this._session?.drop("stopped");
    this._resign();
    this._bus?.close();
  }

  _becomeLeader() {
    this.leader = true;
    const session = new Session({
      userId: this.userId ?? "",
      role: this.role ?? "",
      store: this.store,
      token: (force) => this.tokens.fresh(force),
      conversation: (cid) => this.api.conversation(cid),
      publish: (msg) => this._publish(msg),
      stopped: () => this._stopped,
    }, this.options);
    this._session = session;
    session.start().catch((err) => console.error("oncechat: leading failed", err));
  }

  // --------------------------------------------------------------- messages

  /**
   * Queue a message; resolves with its messageId once it is in the
   * IndexedDB outbox (it is then sent, and re-sent, until accepted).
   * `messageId`: one the page chose and kept itself (for a message written
   * before its conversation existed); queuing it again is harmless, the
   * server answers a repeat with the same seq.
   * @param {string} conversationId
   * @param {string} body
   * @param {string} [messageId]
   */
  async send(conversationId, body, messageId = newMessageId()) {
    const refusal = validateSend(body, messageId);
    if (refusal) throw new RangeError(refusal[1]);
    this._orderTick = (this._orderTick + 1) % 1000;
    /** @type {OutboxEntry} */
    const entry = {
      messageId,
      conversationId,
      body,
      senderId: this.userId,
      order: Date.now() + this._orderTick / 1000,
      createdAt: new Date().toISOString(),
    };
    await this.store.addOutbox(entry);
    this._publish({ t: "outbox" });
    return entry.messageId;
  }

  /** Unaccepted messages (all, or of one conversation), oldest first. @param {string} [conversationId] */
  async pending(conversationId) {
    const all = await this.store.outbox();
    return conversationId ? all.filter((e) => e.conversationId === conversationId) : all;
  }

  /** The latest `limit` processed messages of a conversation from IndexedDB, in seq order. @param {string} conversationId */
  async log(conversationId, limit = 50) {
    return this.store.latest(conversationId, limit);
  }

  /** A conversation's record: last, peerAck, peerRead, myRead (zeros when unknown). @param {string} conversationId */
  async cursors(conversationId) {
    return (await this.store.conversation(conversationId)) || newRecord(conversationId);
  }

  /** Every conversation this user's SDK follows (IndexedDB records). */
  async followed() {
    return this.store.conversations();
  }

  /** Follow a conversation from its start (after opening it, or picking it in a list). @param {string} conversationId */
  async follow(conversationId) {
    const rec = await this.store.conversation(conversationId);
    if (!rec) await this.store.updateConversation(conversationId, {});
    else if (rec.paused) await this.store.updateConversation(conversationId, { paused: false });
    this._publish({ t: "req", op: "follow", cid: conversationId });
  }

  /** Tell the other participants this user is typing (relayed by the leader tab). @param {string} conversationId */
  typing(conversationId) {
    this._publish({ t: "req", op: "typing", cid: conversationId });
  }

  /**
   * This user has read the conversation up to `seq` (cumulative; every device and the peers learn it).
   * @param {string} conversationId
   * @param {number} seq
   */
  markRead(conversationId, seq) {
    this._publish({ t: "req", op: "read", cid: conversationId, seq });
  }

  /**
   * The UI state of an own message: queued, sent, delivered or read.
   * @param {{seq?: number | null}} message
   * @param {{peerAck: number, peerRead: number} | null} [record]
   * @returns {MessageState}
   */
  static stateOf(message, record) {
    if (message.seq == null) return "queued";
    if (record && message.seq <= record.peerRead) return "read";
    if (record && message.seq <= record.peerAck) return "delivered";
    return "sent";
  }

  // ------------------------------------------------------------------- REST

  /**
   * One REST call with the Bearer token; the JSON answer, or RestError.
   * @param {string} method @param {string} path @param {unknown} [body] @param {Record<string, string>} [headers]
   */
  rest(method, path, body, headers = {}) {
    return this.api.call(method, path, body, headers);
  }

  /** `POST /conversations` with an Idempotency-Key (a retry answers the same conversation). @param {string} [idempotencyKey] */
  openConversation(idempotencyKey) {
    return this.api.openConversation(idempotencyKey);
  }

  /** @param {string} conversationId */
  conversation(conversationId) {
    return this.api.conversation(conversationId);
  }

  /** @param {string} [status] */
  conversations(status) {
    return this.api.conversations(status);
  }

  /**
   * A page of history: `{before: N}` (the latest ones below N) or `{after: N}`.
   * @param {string} conversationId
   * @param {{before?: number | null, after?: number | null, limit?: number}} [page]
   */
  history(conversationId, page) {
    return this.api.history(conversationId, page);
  }

  /** @param {string} conversationId */
  closeConversation(conversationId) {
    return this.api.closeConversation(conversationId);
  }

  /** @param {string} conversationId @param {string} agentId */
  transfer(conversationId, agentId) {
    return this.api.transfer(conversationId, agentId);
  }

  /** @param {{status?: string, capacity?: number}} changes */
  setStatus(changes) {
    return this.api.setStatus(changes);
  }

  agents() {
    return this.api.agents();
  }

  queue() {
    return this.api.queue();
  }

  // ------------------------------------------------------------ tabs (bus)

  /** @param {BusMessage} msg */
  _publish(msg) {
    this._bus?.publish(msg);
  }

  /** @param {BusMessage} msg @param {boolean} _local */
  _onBus(msg, _local) {
    switch (msg.t) {
      case "hello":
        if (this._session) this._bus?.post({ t: "connection", state: this._session.state });
        break;
      case "connection":
        this.connectionState = msg.state;
        this._emit("connection", { state: msg.state, leader: this.leader });
        break;
      case "outbox":
        this.store.outbox().then((entries) => {
          this._emit("outbox", entries);
          this._session?.adoptOutbox(entries);
        });
        break;
      case "committed":
        this._deliverUpTo(msg.cid, msg.seq);
        break;
      case "accepted":
        this._emit("accepted", msg.detail);
        break;
      case "rejected":
        this._emit("rejected", msg.detail);
        break;
      case "cursors":
        this._emit("cursors", msg.record);
        break;
      case "frame":
        this._emit(msg.frame.type, msg.frame);
        break;
      case "req":
        this._session?.request(msg);
        break;
      default:
        break;
    }
  }

  /**
   * Hand processed messages to the app: each (conversation, seq) once per tab, in order.
   * @param {string} cid
   * @param {number} seq
   */
  _deliverUpTo(cid, seq) {
    this._delivering = this._delivering.then(async () => {
      const from = (this._emitted.get(cid) || 0) + 1;
      if (seq < from) return;
      const messages = await this.store.range(cid, from, seq);
      for (const m of messages) {
        if (m.seq !== (this._emitted.get(cid) || 0) + 1) break; // never skip one
        this._emitted.set(cid, m.seq);
        this._emit("message", m);
      }
    }).catch((err) => console.error("oncechat: delivering messages failed", err));
  }

  /** @param {string} type @param {unknown} detail */
  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}
