// oncechat browser SDK: an ES module, no build step, no dependency.
//
//   import { OnceChat } from "./sdk/oncechat.js";
//   const chat = new OnceChat({ restUrl, websocketUrl, token: async () => myToken });
//   chat.addEventListener("message", (e) => show(e.detail));
//   await chat.start();
//   await chat.send(conversationId, "hello");
//
// It keeps the protocol's promise (docs/protocol.md) in a browser:
// * an outbox in IndexedDB holds each message with its messageId until the
//   server `accepted` it, across reloads, crashes and offline spells, and
//   sends it again with the same messageId (one in flight per conversation,
//   so messages are stored in the order typed);
// * the seq rule per conversation (process seq == last + 1, drop seq <= last,
//   gap -> resume), cursors persisted in IndexedDB with the messages, and
//   cumulative acks sent only once what they cover is stored;
// * reconnects with exponential backoff and full jitter;
// * one connection per user and origin: the tabs elect a leader with Web
//   Locks; the leader alone talks to the server and writes IndexedDB, every
//   tab hears about it on a BroadcastChannel and reads the same database, so
//   no message is sent twice and all tabs show the same states.
//
// docs/web.md is the manual; client/sdk.py is the Python twin.

import { Store } from "./store.js";

export const MAX_BODY_BYTES = 16384;
const MESSAGE_ID_RE = /^[A-Za-z0-9_-]{1,64}$/;
const RETRYABLE_SEND_CODES = new Set(["internal", "rate_limited"]);

/** Exponential backoff with full jitter: uniform(0, min(cap, base * 2^attempt)) ms. */
export class Backoff {
  constructor({ base = 500, cap = 30000, random = Math.random } = {}) {
    this.base = base;
    this.cap = cap;
    this.random = random;
  }
  ceiling(attempt) {
    return Math.min(this.cap, this.base * 2 ** Math.min(attempt, 30));
  }
  delay(attempt) {
    return this.random() * this.ceiling(attempt);
  }
}

/** A REST answer other than 2xx: `status`, and the protocol's `code`. */
export class RestError extends Error {
  constructor(status, code, message) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

/** The claims of a JWT, decoded without verifying it (only to learn sub and role). */
export function tokenClaims(token) {
  const part = token.split(".")[1] || "";
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/") + "===".slice((part.length + 3) % 4);
  return JSON.parse(atob(b64));
}

/** A new messageId: time-ordered, random, within the protocol's alphabet and length. */
export function newMessageId() {
  const bytes = crypto.getRandomValues(new Uint8Array(9));
  const rand = Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
  return `w${Date.now().toString(36)}-${rand}`;
}

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

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
    this.backoff = backoff;
    this.sendTimeout = sendTimeout;
    this.resumeTimeout = resumeTimeout;
    this.gapDelay = gapDelay;
    this.ackDelay = ackDelay;
    this.ackEvery = ackEvery;
    this.peerPollInterval = peerPollInterval;
    this.keepAliveInterval = keepAliveInterval;
    this.ordered = ordered;
    this.databasePrefix = databasePrefix;
    this.userId = null;
    this.role = null;
    this.leader = false;
    this.connectionState = "connecting";
    this._token = null;
    this._tokenExp = 0;
    this._stopped = false;
    this._emitted = new Map(); // per tab: highest seq handed to the app, per conversation
    this._delivering = Promise.resolve();
    // Leader only:
    this._ws = null;
    this._outbox = new Map(); // messageId -> entry with its send schedule
    this._accepted = new Set(); // messageIds accepted on this leadership (late copies of the outbox)
    this._records = new Map(); // conversationId -> record (last, peer cursors, paused)
    this._buffer = new Map(); // conversationId -> Map(seq -> message) waiting for a gap to fill
    this._latest = new Map(); // conversationId -> highest seq known to exist
    this._ownMax = new Map(); // conversationId -> highest seq of an own message
    this._acks = new Map(); // conversationId -> {seq, count, first}
    this._acked = new Map();
    this._reads = new Map();
    this._writes = Promise.resolve();
    this._pumpTimer = null;
    this._wake = null;
  }

  // ------------------------------------------------------------------ start

  /** Learn who we are from a token, open the database, join the tabs. */
  async start() {
    const claims = tokenClaims(await this._freshToken());
    this.userId = claims.sub;
    this.role = claims.role;
    this.store = await Store.open(`${this.databasePrefix}-${this.userId}`);
    for (const rec of await this.store.conversations()) this._emitted.set(rec.conversationId, rec.last);
    this._bus = new BroadcastChannel(`${this.databasePrefix}-${this.userId}`);
    this._bus.onmessage = (e) => this._onBus(e.data, false);
    this._onOnline = () => this._wakeUp();
    this._onOffline = () => this._dropConnection("offline");
    window.addEventListener("online", this._onOnline);
    window.addEventListener("offline", this._onOffline);
    this._elect();
    this._bus.postMessage({ t: "hello" });
    return this;
  }

  /** Leave: close the connection, give up leadership (another tab takes over). */
  stop() {
    this._stopped = true;
    window.removeEventListener("online", this._onOnline);
    window.removeEventListener("offline", this._onOffline);
    this._dropConnection("stopped");
    if (this._resign) this._resign();
    this._bus?.close();
  }

  // --------------------------------------------------------------- messages

  /**
   * Queue a message; resolves with its messageId once it is in the
   * IndexedDB outbox (it is then sent, and re-sent, until accepted).
   */
  async send(conversationId, body) {
    if (typeof body !== "string" || body.length === 0) throw new RangeError("body must be non-empty text");
    if (utf8Length(body) > MAX_BODY_BYTES) throw new RangeError(`body over ${MAX_BODY_BYTES} bytes`);
    const entry = {
      messageId: newMessageId(),
      conversationId,
      body,
      senderId: this.userId,
      order: Date.now() + (this._orderTick = ((this._orderTick || 0) + 1) % 1000) / 1000,
      createdAt: new Date().toISOString(),
    };
    await this.store.addOutbox(entry);
    this._publish({ t: "outbox" });
    return entry.messageId;
  }

  /** Unaccepted messages (all, or of one conversation), oldest first. */
  async pending(conversationId) {
    const all = await this.store.outbox();
    return conversationId ? all.filter((e) => e.conversationId === conversationId) : all;
  }

  /** The latest `limit` processed messages of a conversation from IndexedDB, in seq order. */
  async log(conversationId, limit = 50) {
    return this.store.latest(conversationId, limit);
  }

  /** A conversation's record: last, peerAck, peerRead, myRead (zeros when unknown). */
  async cursors(conversationId) {
    return (await this.store.conversation(conversationId)) ||
      { conversationId, last: 0, peerAck: 0, peerRead: 0, myRead: 0, paused: false };
  }

  /** Every conversation this user's SDK follows (IndexedDB records). */
  async followed() {
    return this.store.conversations();
  }

  /** Follow a conversation from its start (after opening it, or picking it in a list). */
  async follow(conversationId) {
    const rec = await this.store.conversation(conversationId);
    if (!rec) await this.store.updateConversation(conversationId, {});
    else if (rec.paused) await this.store.updateConversation(conversationId, { paused: false });
    this._publish({ t: "req", op: "follow", cid: conversationId });
  }

  /** Tell the other participants this user is typing (relayed by the leader tab). */
  typing(conversationId) {
    this._publish({ t: "req", op: "typing", cid: conversationId });
  }

  /** This user has read the conversation up to `seq` (cumulative; every device and the peers learn it). */
  markRead(conversationId, seq) {
    this._publish({ t: "req", op: "read", cid: conversationId, seq });
  }

  /** The UI state of an own message: queued, sent, delivered or read. */
  static stateOf(message, record) {
    if (message.seq == null) return "queued";
    if (record && message.seq <= record.peerRead) return "read";
    if (record && message.seq <= record.peerAck) return "delivered";
    return "sent";
  }

  // ------------------------------------------------------------------- REST

  /** One REST call with the Bearer token; the JSON answer, or RestError. */
  async rest(method, path, body, headers = {}) {
    const token = await this._freshToken();
    let response;
    try {
      response = await fetch(this.restUrl + path, {
        method,
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", ...headers },
        body: body === undefined ? (method === "GET" ? undefined : "{}") : JSON.stringify(body),
      });
    } catch (err) {
      throw new RestError(0, "network", String(err && err.message ? err.message : err));
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

  /** `POST /conversations` with an Idempotency-Key (a retry answers the same conversation). */
  openConversation(idempotencyKey) {
    return this.rest("POST", "/conversations", undefined, idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {});
  }
  conversation(conversationId) {
    return this.rest("GET", `/conversations/${encodeURIComponent(conversationId)}`);
  }
  conversations(status) {
    return this.rest("GET", "/conversations" + (status ? `?status=${encodeURIComponent(status)}` : ""));
  }
  /** A page of history: `{before: N}` (the latest ones below N) or `{after: N}`. */
  history(conversationId, { before, after, limit = 30 } = {}) {
    const q = new URLSearchParams({ limit: String(limit) });
    if (before != null) q.set("before", String(before));
    if (after != null) q.set("after", String(after));
    return this.rest("GET", `/conversations/${encodeURIComponent(conversationId)}/messages?${q}`);
  }
  closeConversation(conversationId) {
    return this.rest("POST", `/conversations/${encodeURIComponent(conversationId)}/close`);
  }
  transfer(conversationId, agentId) {
    return this.rest("POST", `/conversations/${encodeURIComponent(conversationId)}/transfer`, { agentId });
  }
  setStatus(changes) {
    return this.rest("PUT", "/agents/me/status", changes);
  }
  agents() {
    return this.rest("GET", "/agents");
  }
  queue() {
    return this.rest("GET", "/queue");
  }

  // ------------------------------------------------------------ tabs (bus)

  _publish(msg) {
    // The bus does not echo to the sender: handle it here, then tell the others.
    this._onBus(msg, true);
    if (!this._stopped) this._bus.postMessage(msg);
  }

  _onBus(msg, local) {
    switch (msg.t) {
      case "hello":
        if (this.leader) this._bus.postMessage({ t: "connection", state: this.connectionState });
        break;
      case "connection":
        this.connectionState = msg.state;
        this._emit("connection", { state: msg.state, leader: this.leader });
        break;
      case "outbox":
        this.store.outbox().then((entries) => {
          this._emit("outbox", entries);
          if (this.leader) this._adoptOutbox(entries);
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
        if (this.leader) this._onRequest(msg);
        break;
      default:
        break;
    }
  }

  /** Hand processed messages to the app: each (conversation, seq) once per tab, in order. */
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

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  // -------------------------------------------------------- leader election

  _elect() {
    if (!navigator.locks) {
      // No Web Locks (an insecure context): assume this is the only tab.
      this._becomeLeader();
      return;
    }
    navigator.locks.request(`${this.databasePrefix}-leader-${this.userId}`, () => {
      if (this._stopped) return undefined;
      this._becomeLeader();
      return new Promise((resolve) => (this._resign = resolve));
    });
  }

  async _becomeLeader() {
    this.leader = true;
    for (const rec of await this.store.conversations()) {
      this._records.set(rec.conversationId, rec);
      if (rec.ownMax) this._ownMax.set(rec.conversationId, rec.ownMax);
      if (rec.last) this._acked.set(rec.conversationId, rec.last); // stored, so acked or safe to ack
    }
    this._adoptOutbox(await this.store.outbox());
    this._runConnection();
    this._pollPeers();
    this._keepAlive();
  }

  /**
   * API Gateway closes a connection with no client frame for 10 minutes.
   * Every 4 minutes of quiet the leader repeats an ack it already sent
   * (the stored cursor only moves forward: the server changes nothing and
   * answers nothing), so an idle chat keeps its connection.
   */
  async _keepAlive() {
    while (this.leader && !this._stopped) {
      await sleep(this.keepAliveInterval);
      if (performance.now() - (this._lastFrameAt || 0) < this.keepAliveInterval) continue;
      const [cid, seq] = [...this._acked].find(([, s]) => s > 0) || [];
      if (cid) this._sendFrame({ action: "ack", conversationId: cid, seq });
    }
  }

  _onRequest(msg) {
    const { op, cid } = msg;
    if (op === "follow") {
      // A conversation known in memory is ahead of (or equal to) its stored record.
      if (this._record(cid).paused) this._updateRecord(cid, { paused: false });
      this._wantResume(0);
    } else if (op === "typing") {
      this._sendFrame({ action: "typing", conversationId: cid });
    } else if (op === "read") {
      const rec = this._record(cid);
      if (msg.seq > rec.myRead) {
        this._reads.set(cid, Math.max(this._reads.get(cid) || 0, msg.seq));
        this._updateRecord(cid, { myRead: msg.seq });
        this._pump();
      }
    }
  }

  _record(cid) {
    let rec = this._records.get(cid);
    if (!rec) {
      rec = { conversationId: cid, last: 0, peerAck: 0, peerRead: 0, myRead: 0, paused: false };
      this._records.set(cid, rec);
    }
    return rec;
  }

  /** Change a record in memory and in IndexedDB, and tell every tab. */
  _updateRecord(cid, changes) {
    const rec = Object.assign(this._record(cid), changes);
    this._queueWrite(async () => {
      const { last, ...rest } = changes; // `last` moves only with its messages (commit)
      const stored = await this.store.updateConversation(cid, rest);
      this._publish({ t: "cursors", record: { ...stored, ...rest, last: Math.max(stored.last, rec.last) } });
    });
    return rec;
  }

  _queueWrite(fn) {
    this._writes = this._writes.then(fn).catch((err) => console.error("oncechat: storage write failed", err));
    return this._writes;
  }

  // ---------------------------------------------------------- connection

  _setConnection(state) {
    if (this.connectionState !== state || !this._announced) {
      this._announced = true;
      this._publish({ t: "connection", state });
    }
  }

  async _runConnection() {
    let failures = 0;
    while (this.leader && !this._stopped) {
      if (!navigator.onLine) {
        this._setConnection("offline");
        await this._waitFor(() => navigator.onLine, 60000);
        continue;
      }
      this._setConnection(failures > 0 || this._everOpen ? "reconnecting" : "connecting");
      let healthy = false;
      try {
        const token = await this._freshToken(failures > 0);
        healthy = await this._session(token);
      } catch (err) {
        healthy = false;
      }
      if (this._stopped) break;
      let delay;
      if (healthy) {
        failures = 0;
        delay = this.backoff.delay(0);
      } else {
        failures += 1;
        delay = this.backoff.delay(failures - 1);
      }
      this._setConnection(navigator.onLine ? "reconnecting" : "offline");
      await this._waitFor(() => false, delay);
    }
  }

  /** Sleep up to `ms`, or until `ready()` holds; the browser coming back online ends it at once. */
  _waitFor(ready, ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        clearInterval(poll);
        if (this._wake === done) this._wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      // `online` events are the fast path; a slow check covers a missed one.
      const poll = setInterval(() => (ready() || this._stopped) && done(), 1000);
      this._wake = done;
    });
  }

  _wakeUp() {
    if (navigator.onLine && this._wake) this._wake();
  }

  /** One WebSocket until it closes; resolves whether it became healthy (a resume answered). */
  _session(token) {
    return new Promise((resolve) => {
      const sep = this.websocketUrl.includes("?") ? "&" : "?";
      const ws = new WebSocket(`${this.websocketUrl}${sep}token=${encodeURIComponent(token)}`);
      this._ws = ws;
      this._healthy = false;
      const openTimer = setTimeout(() => this._dropConnection("timeout"), 15000);
      const finish = () => {
        clearTimeout(openTimer);
        if (ws.readyState < 2) ws.close();
        if (this._ws === ws) this._ws = null;
        clearTimeout(this._pumpTimer);
        resolve(this._healthy);
      };
      this._endSession = finish;
      ws.onopen = () => {
        clearTimeout(openTimer);
        this._onOpen();
      };
      ws.onmessage = (e) => {
        if (this._ws === ws) this._dispatch(e.data);
      };
      ws.onclose = finish;
      ws.onerror = () => {};
    });
  }

  /** Stop using the current connection at once (offline, stuck, stopped). */
  _dropConnection(reason) {
    const end = this._endSession;
    this._endSession = null;
    if (reason === "offline" && this.leader) this._setConnection("offline");
    if (end) end();
  }

  _onOpen() {
    const now = performance.now();
    this._resumeWantedAt = now;
    this._resumeAnswerBy = null;
    this._resumeSent = null;
    this._resumeProgress = -1;
    this._resumeFailures = 0;
    this._probes = [];
    this._stuck = 0;
    // Everything in flight on the old connection is due again, same messageId.
    for (const e of this._outbox.values()) {
      if (e.answerBy != null || e.dueAt === Infinity) {
        e.dueAt = now;
        e.answerBy = null;
      }
    }
    this._pump();
  }

  _sendFrame(frame) {
    const ws = this._ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    this._lastFrameAt = performance.now();
    return true;
  }

  // ----------------------------------------------------------------- pump

  /** Write what is due (resume, outbox, acks, reads), then sleep until the next deadline. */
  _pump() {
    clearTimeout(this._pumpTimer);
    const ws = this._ws;
    if (!this.leader || !ws || ws.readyState !== WebSocket.OPEN) return;
    const now = performance.now();
    if (this._resumeAnswerBy != null && now >= this._resumeAnswerBy) {
      // No `resumed` in time: the resume (or the connection) is lost.
      this._resumeAnswerBy = null;
      this._resumeSent = null;
      this._resumeWantedAt = now;
      if (++this._stuck >= 2) return this._dropConnection("stuck");
    }
    if (this._resumeAnswerBy == null && this._resumeWantedAt != null && now >= this._resumeWantedAt) {
      this._sendResume(now);
    }
    const blocked = new Set();
    for (const e of [...this._outbox.values()].sort((a, b) => a.order - b.order)) {
      if (e.answerBy != null && now >= e.answerBy) {
        e.dueAt = now; // no answer in time: the send may be lost
        e.answerBy = null;
        if (e.attempts >= 3) return this._dropConnection("stuck"); // a silently dead socket
      }
      if (this.ordered && blocked.has(e.conversationId)) continue;
      if (e.answerBy == null && e.dueAt <= now) {
        this._sendFrame({ action: "send", conversationId: e.conversationId, messageId: e.messageId, body: e.body });
        const factor = Math.min(2 ** e.attempts, 8);
        e.attempts += 1;
        e.dueAt = Infinity;
        e.answerBy = now + this.sendTimeout * factor;
      }
      if (this.ordered) blocked.add(e.conversationId); // later ones wait for this one's accepted
    }
    for (const [cid, a] of this._acks) {
      if (a.count >= this.ackEvery || now >= a.first + this.ackDelay) {
        this._sendFrame({ action: "ack", conversationId: cid, seq: a.seq });
        this._acked.set(cid, a.seq);
        this._acks.delete(cid);
      }
    }
    for (const [cid, seq] of this._reads) {
      this._sendFrame({ action: "read", conversationId: cid, seq });
      this._reads.delete(cid);
    }
    const deadlines = [];
    for (const e of this._outbox.values()) deadlines.push(e.answerBy != null ? e.answerBy : e.dueAt);
    for (const a of this._acks.values()) deadlines.push(a.count >= this.ackEvery ? now : a.first + this.ackDelay);
    if (this._resumeAnswerBy != null) deadlines.push(this._resumeAnswerBy);
    else if (this._resumeWantedAt != null) deadlines.push(this._resumeWantedAt);
    const next = Math.min(...deadlines.filter((d) => Number.isFinite(d)));
    if (Number.isFinite(next)) this._pumpTimer = setTimeout(() => this._pump(), Math.max(0, next - performance.now()) + 5);
  }

  _cursorsToResume() {
    const out = {};
    let n = 0;
    for (const rec of this._records.values()) {
      if (rec.paused || n >= 100) continue;
      out[rec.conversationId] = rec.last;
      n += 1;
    }
    return out;
  }

  _sendResume(now) {
    let cursors;
    if (this._probes.length) {
      const cid = this._probes[0];
      cursors = { [cid]: this._record(cid).last };
    } else {
      cursors = this._cursorsToResume();
      this._resumeProgress = Object.values(cursors).reduce((a, b) => a + b, 0);
    }
    this._resumeSent = cursors;
    this._resumeWantedAt = null;
    this._resumeAnswerBy = now + this.resumeTimeout;
    this._sendFrame({ action: "resume", cursors });
  }

  _wantResume(delay) {
    if (this._resumeWantedAt == null && this._resumeAnswerBy == null) {
      this._resumeWantedAt = performance.now() + delay;
      this._pump();
    }
  }

  // ---------------------------------------------------------------- outbox

  _adoptOutbox(entries) {
    const now = performance.now();
    let added = false;
    for (const e of entries) {
      if (this._outbox.has(e.messageId) || this._accepted.has(e.messageId)) continue;
      this._outbox.set(e.messageId, { ...e, attempts: 0, failures: 0, dueAt: now, answerBy: null });
      added = true;
    }
    if (added) this._pump();
  }

  _onAccepted(frame) {
    const entry = this._outbox.get(frame.messageId);
    if (!entry) return; // a late answer to a retry
    this._outbox.delete(frame.messageId);
    this._accepted.add(frame.messageId);
    const cid = frame.conversationId;
    this._ownMax.set(cid, Math.max(this._ownMax.get(cid) || 0, frame.seq));
    this._updateRecord(cid, { ownMax: this._ownMax.get(cid) });
    this._queueWrite(async () => {
      await this.store.deleteOutbox(frame.messageId);
      this._publish({ t: "accepted", detail: { conversationId: cid, messageId: frame.messageId, seq: frame.seq, sentAt: frame.sentAt } });
      this._publish({ t: "outbox" });
    });
    // The server never echoes a message to the connection it came from: put
    // it in the sequence here; a copy from a resume is dropped by the rule.
    this._receive({
      type: "message", conversationId: cid, seq: frame.seq, messageId: frame.messageId,
      senderId: this.userId, senderRole: this.role, body: entry.body, sentAt: frame.sentAt,
    });
    this._pump();
  }

  _onSendError(frame) {
    const entry = this._outbox.get(frame.messageId);
    if (!entry) return;
    const now = performance.now();
    if (RETRYABLE_SEND_CODES.has(frame.code)) {
      entry.failures += 1;
      entry.dueAt = now + this.backoff.delay(entry.failures);
      entry.answerBy = null;
      this._pump();
      return;
    }
    this._outbox.delete(frame.messageId);
    this._queueWrite(async () => {
      await this.store.deleteOutbox(frame.messageId);
      this._publish({ t: "rejected", detail: { conversationId: entry.conversationId, messageId: entry.messageId, body: entry.body, code: frame.code, message: frame.message } });
      this._publish({ t: "outbox" });
    });
  }

  // ----------------------------------------------------------------- inbox

  /** The seq rule: process seq == last + 1 (and buffered successors), drop older, buffer gaps. */
  _receive(m) {
    const cid = m.conversationId;
    const rec = this._record(cid);
    if (rec.paused) this._updateRecord(cid, { paused: false });
    this._latest.set(cid, Math.max(this._latest.get(cid) || 0, m.seq));
    if (m.senderId === this.userId) this._ownMax.set(cid, Math.max(this._ownMax.get(cid) || 0, m.seq));
    if (m.seq <= rec.last) return;
    let buffer = this._buffer.get(cid);
    if (!buffer) this._buffer.set(cid, (buffer = new Map()));
    if (!buffer.has(m.seq)) buffer.set(m.seq, stripMessage(m));
    const released = [];
    while (buffer.has(rec.last + 1)) {
      rec.last += 1;
      released.push(buffer.get(rec.last));
      buffer.delete(rec.last);
    }
    if (!buffer.size) this._buffer.delete(cid);
    if (released.length) {
      const last = rec.last;
      this._queueWrite(async () => {
        await this.store.commit(cid, released, last);
        // Ack only what is stored: an ack is a promise not to need it again.
        const a = this._acks.get(cid);
        if (last > (this._acked.get(cid) || 0)) {
          this._acks.set(cid, { seq: last, count: (a ? a.count : 0) + released.length, first: a ? a.first : performance.now() });
        }
        this._publish({ t: "committed", cid, seq: last });
        this._pump();
      });
    }
    if (this._behind()) this._wantResume(this.gapDelay);
  }

  _behind() {
    for (const rec of this._records.values()) {
      if (rec.paused) continue;
      if (this._buffer.has(rec.conversationId) || (this._latest.get(rec.conversationId) || 0) > rec.last) return true;
    }
    return false;
  }

  _onResumed(latest) {
    const now = performance.now();
    for (const [cid, seq] of Object.entries(latest || {})) {
      if (!Number.isInteger(seq)) continue;
      if (!this._records.has(cid)) {
        this._record(cid);
        this._queueWrite(() => this.store.updateConversation(cid, {}));
      }
      this._latest.set(cid, Math.max(this._latest.get(cid) || 0, seq));
    }
    this._resumeAnswerBy = null;
    this._stuck = 0;
    const sent = this._resumeSent;
    this._resumeSent = null;
    if (this._probes.length && sent && Object.keys(sent)[0] === this._probes[0] && Object.keys(sent).length === 1) {
      this._probes.shift();
      if (this._probes.length) {
        this._resumeWantedAt = now;
        return this._pump();
      }
    }
    if (!this._healthy) {
      this._healthy = true;
      this._everOpen = true;
      this._setConnection("open");
    }
    if (this._behind()) {
      const progress = Object.values(this._cursorsToResume()).reduce((a, b) => a + b, 0);
      if (progress > this._resumeProgress) {
        this._resumeFailures = 0;
        this._resumeWantedAt = now;
      } else {
        this._resumeWantedAt = now + this.backoff.delay(this._resumeFailures++);
      }
    } else {
      this._resumeFailures = 0;
      this._resumeWantedAt = null;
    }
    this._pump();
  }

  _onError(frame) {
    const code = String(frame.code || "internal");
    if (code === "unauthorized") return this._dropConnection("unauthorized");
    if (typeof frame.messageId === "string") return this._onSendError(frame);
    const now = performance.now();
    if (this._resumeAnswerBy != null && (code === "forbidden" || code === "not_found")) {
      // A resume listing a conversation we may no longer read is refused
      // whole: find it by resuming one conversation at a time, then pause it.
      const sent = this._resumeSent;
      this._resumeSent = null;
      this._resumeAnswerBy = null;
      const keys = sent ? Object.keys(sent) : [];
      if (this._probes.length && keys.length === 1 && keys[0] === this._probes[0]) {
        const gone = this._probes.shift();
        this._updateRecord(gone, { paused: true });
        this._buffer.delete(gone);
        this._latest.delete(gone);
      } else if (keys.length) {
        this._probes = keys;
      }
      this._resumeWantedAt = now;
      return this._pump();
    }
    this._someRequestFailed();
  }

  /** An error naming no request (e.g. API Gateway's "Internal server error"): retry soon. */
  _someRequestFailed() {
    const soon = performance.now() + 1000;
    for (const e of this._outbox.values()) if (e.answerBy != null) e.answerBy = Math.min(e.answerBy, soon);
    if (this._resumeAnswerBy != null) this._resumeAnswerBy = Math.min(this._resumeAnswerBy, soon);
    this._pump();
  }

  _dispatch(raw) {
    let frame;
    try {
      frame = JSON.parse(raw);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "message":
        if (typeof frame.conversationId === "string" && Number.isInteger(frame.seq) && frame.seq >= 1) this._receive(frame);
        break;
      case "accepted":
        this._onAccepted(frame);
        break;
      case "resumed":
        this._onResumed(frame.conversations);
        break;
      case "error":
        this._onError(frame);
        break;
      case "conversation":
        this._onConversationFrame(frame);
        break;
      case "read":
        this._onReadFrame(frame);
        break;
      case "typing":
        this._publish({ t: "frame", frame });
        break;
      default:
        if (frame.type === undefined && "message" in frame) this._someRequestFailed();
    }
  }

  _onConversationFrame(frame) {
    const cid = frame.conversationId;
    if (frame.agentId === this.userId || frame.customerId === this.userId) {
      if (!this._records.has(cid) || this._record(cid).paused) {
        this._updateRecord(cid, { paused: false });
        this._wantResume(0);
      }
      if ((this._latest.get(cid) || 0) < frame.seq) {
        this._latest.set(cid, frame.seq);
        if (this._behind()) this._wantResume(this.gapDelay);
      }
    } else if (frame.previousAgentId === this.userId) {
      this._updateRecord(cid, { paused: true }); // transferred away: keep the cursor, stop resuming it
      this._buffer.delete(cid);
      this._latest.delete(cid);
    }
    this._publish({ t: "frame", frame });
  }

  _onReadFrame(frame) {
    const cid = frame.conversationId;
    const rec = this._record(cid);
    if (frame.userId === this.userId) {
      if (frame.seq > rec.myRead) this._updateRecord(cid, { myRead: frame.seq });
    } else if (frame.seq > rec.peerRead) {
      this._updateRecord(cid, { peerRead: frame.seq, peerAck: Math.max(rec.peerAck, frame.seq) });
    }
    this._publish({ t: "frame", frame });
  }

  // -------------------------------------------------- delivered (peer acks)

  /**
   * The protocol tells a sender when the other side *read* (a `read` frame)
   * but not when its device *processed* a message: that is its ack cursor,
   * in `GET /conversations/{id}`. While an own message is not yet known
   * delivered, the leader asks now and then.
   */
  async _pollPeers() {
    while (this.leader && !this._stopped) {
      await sleep(this.peerPollInterval);
      if (this.connectionState !== "open") continue;
      for (const [cid, own] of this._ownMax) {
        const rec = this._record(cid);
        if (rec.paused || own <= rec.peerAck) continue;
        try {
          const conv = await this.conversation(cid);
          const others = (conv.participants || []).filter((p) => p.userId !== this.userId);
          const ack = Math.max(0, ...others.map((p) => p.ackSeq || 0));
          const read = Math.max(0, ...others.map((p) => p.readSeq || 0));
          if (ack > rec.peerAck || read > rec.peerRead) {
            this._updateRecord(cid, { peerAck: Math.max(rec.peerAck, ack, read), peerRead: Math.max(rec.peerRead, read) });
          }
        } catch {
          // offline or refused: ask again later
        }
      }
    }
  }

  // ----------------------------------------------------------------- token

  async _freshToken(force = false) {
    const now = Date.now() / 1000;
    if (!force && this._token && now < this._tokenExp - 60) return this._token;
    const token = await this.tokenProvider();
    if (typeof token !== "string" || !token) throw new Error("the token callback returned no token");
    let exp = now + 300;
    try {
      exp = tokenClaims(token).exp || exp;
    } catch {
      // not a JWT we can read: use it for five minutes
    }
    this._token = token;
    this._tokenExp = exp;
    return token;
  }
}

function stripMessage(m) {
  const out = {
    conversationId: m.conversationId, seq: m.seq, messageId: m.messageId, senderId: m.senderId,
    senderRole: m.senderRole, body: m.body, sentAt: m.sentAt,
  };
  for (const k of ["event", "status", "agentId", "previousAgentId", "void"]) if (k in m) out[k] = m[k];
  return out;
}

/**
 * A token callback for a token endpoint: POSTs `payload` as JSON (with the
 * page's cookies, for a real sign-in) and expects `{"token": "..."}`.
 */
export function tokenFromEndpoint(url, payload = {}) {
  return async () => {
    const response = await fetch(url, {
      method: "POST",
      credentials: "include",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(payload),
    });
    if (!response.ok) throw new RestError(response.status, "token", `token endpoint answered ${response.status}`);
    const data = await response.json();
    return data.token;
  };
}

/** The pages' configuration: `{restUrl, websocketUrl, tokenUrl, ...}` from a JSON file. */
export async function loadConfig(url) {
  const response = await fetch(url, { cache: "no-cache" });
  if (!response.ok) throw new Error(`configuration ${url}: HTTP ${response.status}`);
  return response.json();
}
