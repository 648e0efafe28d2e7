// The leader tab's connection to the server: one WebSocket at a time,
// reconnected with exponential backoff and full jitter, frames in and out.
// Every decision (the seq rule, the outbox schedule, acks, resumes) is
// core.js's; this module does the I/O around it: the socket, the timers,
// IndexedDB (store.js) and the tab bus (leader.js).

import { AckTracker, Inbox, Outbox, ResumeState, acceptedFromFrame, isSeq, messageFromFrame, sendErrorAction } from "./core.js";
import { newRecord } from "./store.js";

/** @typedef {import("./core.js").Message} Message */
/** @typedef {import("./core.js").Backoff} Backoff */
/** @typedef {import("./store.js").Store} Store */
/** @typedef {import("./store.js").OutboxEntry} OutboxEntry */
/** @typedef {import("./store.js").ConversationRecord} ConversationRecord */
/** @typedef {import("./leader.js").BusMessage} BusMessage */

/** How soon in-flight requests are resent after an error that names none (ms). */
const ERROR_RESEND_TIMEOUT = 1000;
/** A handshake that takes longer than this (ms) is given up. */
const OPEN_TIMEOUT = 15000;
/** The third unanswered attempt of a message recycles the connection. */
const MAX_SEND_ATTEMPTS = 3;

/** @param {number} ms */
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * @typedef {object} SessionOptions
 * @property {string} websocketUrl
 * @property {Backoff} backoff
 * @property {number} sendTimeout
 * @property {number} resumeTimeout
 * @property {number} gapDelay
 * @property {number} ackDelay
 * @property {number} ackEvery
 * @property {number} peerPollInterval
 * @property {number} keepAliveInterval
 * @property {boolean} ordered
 */

/**
 * @typedef {object} SessionHost what the session needs from the tab that leads
 * @property {string} userId
 * @property {string} role
 * @property {Store} store
 * @property {(force?: boolean) => Promise<string>} token a fresh token
 * @property {(cid: string) => Promise<import("./rest.js").Conversation>} conversation `GET /conversations/{id}`
 * @property {(msg: BusMessage) => void} publish tell this tab and the others
 * @property {() => boolean} stopped
 */

/** The leader's side of the protocol: the connection loop, the pump, the frames. */
export class Session {
  /**
   * @param {SessionHost} host
   * @param {SessionOptions} options
   */
  constructor(host, options) {
    this.host = host;
    this.options = options;
    this.userId = host.userId;
    this.store = host.store;
    /** @type {string} connecting, open, reconnecting, offline or stopped */
    this.state = "connecting";
    /** @type {Inbox<Message>} */
    this.inbox = new Inbox();
    /** @type {Outbox<OutboxEntry>} */
    this.outbox = new Outbox({ sendTimeout: options.sendTimeout, ordered: options.ordered, maxAttempts: MAX_SEND_ATTEMPTS });
    this.acks = new AckTracker({ every: options.ackEvery, delay: options.ackDelay });
    this.resume = new ResumeState({ timeout: options.resumeTimeout });
    /** @type {Map<string, ConversationRecord>} */
    this.records = new Map();
    /** @type {Map<string, number>} highest seq of an own message, per conversation */
    this.ownMax = new Map();
    /** @type {Map<string, number>} read cursors to send */
    this.reads = new Map();
    /** @type {WebSocket | null} */
    this.ws = null;
    this.healthy = false;
    this.everOpen = false;
    this.announced = false;
    this.lastFrameAt = 0;
    /** @type {Promise<unknown>} */
    this.writes = Promise.resolve();
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.pumpTimer = undefined;
    /** @type {(() => void) | null} */
    this.wake = null;
    /** @type {(() => void) | null} */
    this.endSession = null;
  }

  /** Load the stored records and outbox, then run the connection, the peer poll and the keep-alive. */
  async start() {
    /** @type {Record<string, number>} */
    const cursors = {};
    const paused = [];
    for (const rec of await this.store.conversations()) {
      this.records.set(rec.conversationId, rec);
      cursors[rec.conversationId] = rec.last;
      if (rec.paused) paused.push(rec.conversationId);
      if (rec.ownMax) this.ownMax.set(rec.conversationId, rec.ownMax);
    }
    this.inbox = new Inbox(cursors, paused);
    // What is stored was acked, or is safe to ack: the keep-alive may repeat it.
    this.acks = new AckTracker({ every: this.options.ackEvery, delay: this.options.ackDelay }, cursors);
    this.adoptOutbox(await this.store.outbox());
    this.runConnection();
    this.pollPeers();
    this.keepAlive();
  }

  get running() {
    return !this.host.stopped();
  }

  // ------------------------------------------------------ from the tabs

  /** The stored outbox changed: take what is new. @param {OutboxEntry[]} entries */
  adoptOutbox(entries) {
    if (this.outbox.adopt(entries, performance.now())) this.pump();
  }

  /** A tab asked for something only the leader does. @param {Extract<BusMessage, {t: "req"}>} msg */
  request(msg) {
    const cid = msg.cid;
    if (msg.op === "follow") {
      this.record(cid);
      this.inbox.track(cid);
      if (this.record(cid).paused) this.updateRecord(cid, { paused: false });
      this.wantResume(0);
    } else if (msg.op === "typing") {
      this.sendFrame({ action: "typing", conversationId: cid });
    } else if (msg.op === "read") {
      const rec = this.record(cid);
      if (msg.seq > rec.myRead) {
        this.reads.set(cid, Math.max(this.reads.get(cid) ?? 0, msg.seq));
        this.updateRecord(cid, { myRead: msg.seq });
        this.pump();
      }
    }
  }

  // ------------------------------------------------------------ records

  /** @param {string} cid */
  record(cid) {
    let rec = this.records.get(cid);
    if (!rec) {
      rec = newRecord(cid);
      this.records.set(cid, rec);
    }
    return rec;
  }

  /**
   * Change a record in memory and in IndexedDB, and tell every tab.
   * @param {string} cid
   * @param {Partial<ConversationRecord>} changes never `last`: it moves only with its messages (Store.commit)
   */
  updateRecord(cid, changes) {
    const rec = Object.assign(this.record(cid), changes);
    this.queueWrite(async () => {
      const stored = await this.store.updateConversation(cid, changes);
      const last = Math.max(stored.last, this.inbox.last.get(cid) ?? 0);
      this.host.publish({ t: "cursors", record: { ...stored, ...changes, last } });
    });
    return rec;
  }

  /** @param {() => Promise<unknown>} fn */
  queueWrite(fn) {
    this.writes = this.writes.then(fn).catch((err) => console.error("oncechat: storage write failed", err));
    return this.writes;
  }

  // --------------------------------------------------------- connection

  /** @param {string} state */
  setConnection(state) {
    if (this.state !== state || !this.announced) {
      this.announced = true;
      this.state = state;
      this.host.publish({ t: "connection", state });
    }
  }

  async runConnection() {
    let failures = 0;
    while (this.running) {
      if (!navigator.onLine) {
        this.setConnection("offline");
        await this.waitFor(() => navigator.onLine, 60000);
        continue;
      }
      this.setConnection(failures > 0 || this.everOpen ? "reconnecting" : "connecting");
      let healthy = false;
      try {
        healthy = await this.connection(await this.host.token(failures > 0));
      } catch {
        healthy = false;
      }
      if (!this.running) break;
      let delay;
      if (healthy) {
        failures = 0;
        delay = this.options.backoff.delay(0);
      } else {
        failures += 1;
        delay = this.options.backoff.delay(failures - 1);
      }
      this.setConnection(navigator.onLine ? "reconnecting" : "offline");
      await this.waitFor(() => false, delay);
    }
  }

  /**
   * Sleep up to `ms`, or until `ready()` holds; the browser coming back online ends it at once.
   * @param {() => boolean} ready
   * @param {number} ms
   * @returns {Promise<void>}
   */
  waitFor(ready, ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        clearInterval(poll);
        if (this.wake === done) this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      // `online` events are the fast path; a slow check covers a missed one.
      const poll = setInterval(() => (ready() || !this.running) && done(), 1000);
      this.wake = done;
    });
  }

  /** The browser is online again: stop waiting. */
  wakeUp() {
    if (navigator.onLine && this.wake) this.wake();
  }

  /**
   * One WebSocket until it closes; resolves whether it became healthy (a resume answered).
   * @param {string} token
   * @returns {Promise<boolean>}
   */
  connection(token) {
    return new Promise((resolve) => {
      const url = this.options.websocketUrl;
      const sep = url.includes("?") ? "&" : "?";
      const ws = new WebSocket(`${url}${sep}token=${encodeURIComponent(token)}`);
      this.ws = ws;
      this.healthy = false;
      const openTimer = setTimeout(() => this.drop("timeout"), OPEN_TIMEOUT);
      const finish = () => {
        clearTimeout(openTimer);
        if (ws.readyState < 2) ws.close();
        if (this.ws === ws) this.ws = null;
        clearTimeout(this.pumpTimer);
        resolve(this.healthy);
      };
      this.endSession = finish;
      ws.onopen = () => {
        clearTimeout(openTimer);
        this.opened();
      };
      ws.onmessage = (e) => {
        if (this.ws === ws) this.dispatch(e.data);
      };
      ws.onclose = finish;
      ws.onerror = () => {};
    });
  }

  /** Stop using the current connection at once (offline, stuck, stopped). @param {string} reason */
  drop(reason) {
    const end = this.endSession;
    this.endSession = null;
    if (reason === "offline") this.setConnection("offline");
    if (end) end();
  }

  opened() {
    const now = performance.now();
    this.resume.connected(now);
    // Everything in flight on the old connection is due again, same messageId.
    this.outbox.connectionChanged(now);
    this.pump();
  }

  /** @param {object} frame */
  sendFrame(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    this.lastFrameAt = performance.now();
    return true;
  }

  /**
   * API Gateway closes a connection with no client frame for 10 minutes.
   * After `keepAliveInterval` of quiet the leader repeats an ack it already
   * sent (the stored cursor only moves forward: the server changes nothing
   * and answers nothing), so an idle chat keeps its connection.
   */
  async keepAlive() {
    while (this.running) {
      await sleep(this.options.keepAliveInterval);
      if (performance.now() - this.lastFrameAt < this.options.keepAliveInterval) continue;
      const acked = this.acks.anyAcked();
      if (acked) this.sendFrame({ action: "ack", conversationId: acked[0], seq: acked[1] });
    }
  }

  // --------------------------------------------------------------- pump

  /** Write what is due (resume, outbox, acks, reads), then sleep until the next deadline. */
  pump() {
    clearTimeout(this.pumpTimer);
    const ws = this.ws;
    if (!this.running || !ws || ws.readyState !== WebSocket.OPEN) return;
    const now = performance.now();
    const resume = this.resume.poll(now, this.inbox);
    if (resume && "drop" in resume) return this.drop("stuck");
    if (resume) this.sendFrame({ action: "resume", cursors: resume.send });
    if (this.outbox.hopeless(now)) return this.drop("stuck"); // a silently dead socket
    for (const e of this.outbox.due(now)) {
      this.sendFrame({ action: "send", conversationId: e.conversationId, messageId: e.messageId, body: e.body });
      this.outbox.markSent(e.messageId, now);
    }
    const acks = this.acks.due(now);
    for (const [cid, seq] of Object.entries(acks)) this.sendFrame({ action: "ack", conversationId: cid, seq });
    this.acks.sent(acks);
    for (const [cid, seq] of this.reads) this.sendFrame({ action: "read", conversationId: cid, seq });
    this.reads.clear();
    const deadlines = [this.outbox.nextDeadline(), this.acks.nextDeadline(), this.resume.nextDeadline()]
      .filter((d) => d !== null);
    if (deadlines.length) {
      const next = Math.min(...deadlines);
      this.pumpTimer = setTimeout(() => this.pump(), Math.max(0, next - performance.now()) + 5);
    }
  }

  /** @param {number} delay */
  wantResume(delay) {
    this.resume.want(performance.now(), delay);
    this.pump();
  }

  // ------------------------------------------------------------- frames

  /** @param {unknown} raw */
  dispatch(raw) {
    let frame;
    try {
      frame = JSON.parse(String(raw));
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    switch (frame.type) {
      case "message": {
        const m = messageFromFrame(frame);
        if (m) this.receive(m);
        break;
      }
      case "accepted":
        this.onAccepted(frame);
        break;
      case "resumed":
        this.onResumed(frame.conversations);
        break;
      case "error":
        this.onError(frame);
        break;
      case "conversation":
        if (typeof frame.conversationId === "string") this.onConversationFrame(frame);
        break;
      case "read":
        if (typeof frame.conversationId === "string" && isSeq(frame.seq)) this.onReadFrame(frame);
        break;
      case "typing":
        this.host.publish({ t: "frame", frame });
        break;
      default:
        // API Gateway's own "Internal server error": some request failed, it does not say which.
        if (frame.type === undefined && "message" in frame) this.someRequestFailed();
    }
  }

  /**
   * The seq rule (core.js's Inbox); what it releases is stored with the
   * cursor in one transaction, and only then acked and shown.
   * @param {Message} m
   */
  receive(m) {
    const cid = m.conversationId;
    this.record(cid);
    if (this.inbox.isPaused(cid) || this.record(cid).paused) this.updateRecord(cid, { paused: false });
    if (m.senderId === this.userId) this.ownMax.set(cid, Math.max(this.ownMax.get(cid) ?? 0, m.seq));
    const released = this.inbox.receive(m);
    if (released.length) {
      const last = released[released.length - 1].seq;
      this.queueWrite(async () => {
        await this.store.commit(cid, released, last);
        // Ack only what is stored: an ack is a promise not to need it again.
        this.acks.processed(cid, last, performance.now(), released.length);
        this.host.publish({ t: "committed", cid, seq: last });
        this.pump();
      });
    }
    // Not at once: the accepted of an own message in the gap is usually a
    // few milliseconds behind a live message that follows it.
    if (this.isBehind()) this.wantResume(this.options.gapDelay);
  }

  isBehind() {
    return Object.keys(this.inbox.behind()).length > 0;
  }

  /** @param {Record<string, unknown>} frame */
  onAccepted(frame) {
    const acc = acceptedFromFrame(frame);
    if (!acc) return;
    const entry = this.outbox.accepted(acc.messageId);
    if (!entry) return; // a late answer to a retry
    const cid = acc.conversationId;
    this.ownMax.set(cid, Math.max(this.ownMax.get(cid) ?? 0, acc.seq));
    this.updateRecord(cid, { ownMax: this.ownMax.get(cid) });
    this.queueWrite(async () => {
      await this.store.deleteOutbox(acc.messageId);
      this.host.publish({ t: "accepted", detail: { conversationId: cid, messageId: acc.messageId, seq: acc.seq, sentAt: acc.sentAt } });
      this.host.publish({ t: "outbox" });
    });
    // The server never echoes a message to the connection it came from: put
    // it in the sequence here; a copy from a resume is dropped by the rule.
    this.receive({
      conversationId: cid, seq: acc.seq, messageId: acc.messageId,
      senderId: this.userId, senderRole: this.host.role, body: entry.body, sentAt: acc.sentAt,
    });
    this.pump();
  }

  /** @param {unknown} latest */
  onResumed(latest) {
    const now = performance.now();
    const named = latest && typeof latest === "object" ? /** @type {Record<string, unknown>} */ (latest) : {};
    const paused = Object.keys(named).filter((cid) => this.inbox.isPaused(cid));
    for (const cid of this.inbox.noteLatest(named)) {
      this.record(cid);
      this.queueWrite(() => this.store.updateConversation(cid, {}));
    }
    // The server replayed it: the user holds it again (e.g. transferred back).
    for (const cid of paused) if (isSeq(named[cid])) this.updateRecord(cid, { paused: false });
    if (!this.resume.resumed(now, this.inbox, this.options.backoff)) return this.pump(); // still probing
    if (!this.healthy) {
      this.healthy = true;
      this.everOpen = true;
      this.setConnection("open");
    }
    this.pump();
  }

  /** @param {Record<string, unknown>} frame */
  onError(frame) {
    const code = String(frame.code || "internal");
    if (code === "unauthorized") return this.drop("unauthorized");
    const now = performance.now();
    if (frame.messageId != null) {
      const mid = String(frame.messageId);
      const entry = this.outbox.get(mid);
      if (!entry) return; // about a message no longer pending
      if (sendErrorAction(code) === "retry") {
        this.outbox.retryAfter(mid, now, this.options.backoff.delay(entry.failures));
        return this.pump();
      }
      this.outbox.reject(mid);
      this.queueWrite(async () => {
        await this.store.deleteOutbox(mid);
        this.host.publish({ t: "rejected", detail: { conversationId: entry.conversationId, messageId: mid, body: entry.body, code, message: frame.message } });
        this.host.publish({ t: "outbox" });
      });
      return;
    }
    if (this.resume.inFlight && (code === "forbidden" || code === "not_found")) {
      // A resume listing a conversation we may no longer read is refused
      // whole: find it by resuming one conversation at a time, then pause it.
      const gone = this.resume.refused(now, this.inbox);
      if (gone !== null) this.updateRecord(gone, { paused: true });
      return this.pump();
    }
    this.someRequestFailed();
  }

  /** An error naming no request (e.g. API Gateway's "Internal server error"): resend soon. */
  someRequestFailed() {
    const now = performance.now();
    this.outbox.shortenDeadlines(now, ERROR_RESEND_TIMEOUT);
    this.resume.requestFailed(now, ERROR_RESEND_TIMEOUT);
    this.pump();
  }

  /** @param {Record<string, any>} frame */
  onConversationFrame(frame) {
    const cid = frame.conversationId;
    if (frame.agentId === this.userId || frame.customerId === this.userId) {
      if (!this.records.has(cid) || this.inbox.isPaused(cid) || this.record(cid).paused) {
        this.inbox.track(cid);
        this.updateRecord(cid, { paused: false });
        this.wantResume(0);
      }
      if (isSeq(frame.seq)) {
        this.inbox.noteLatest({ [cid]: frame.seq });
        if (this.isBehind()) this.wantResume(this.options.gapDelay);
      }
    } else if (frame.previousAgentId === this.userId) {
      this.inbox.pause(cid); // transferred away: keep the cursor, stop resuming it
      this.updateRecord(cid, { paused: true });
    }
    this.host.publish({ t: "frame", frame: { ...frame, type: "conversation" } });
  }

  /** @param {Record<string, any>} frame */
  onReadFrame(frame) {
    const cid = frame.conversationId;
    const rec = this.record(cid);
    if (frame.userId === this.userId) {
      if (frame.seq > rec.myRead) this.updateRecord(cid, { myRead: frame.seq });
    } else if (frame.seq > rec.peerRead) {
      this.updateRecord(cid, { peerRead: frame.seq, peerAck: Math.max(rec.peerAck, frame.seq) });
    }
    this.host.publish({ t: "frame", frame: { ...frame, type: "read" } });
  }

  // ------------------------------------------------ delivered (peer acks)

  /**
   * The protocol tells a sender when the other side *read* (a `read` frame)
   * but not when its device *processed* a message: that is its ack cursor,
   * in `GET /conversations/{id}`. While an own message is not yet known
   * delivered, the leader asks now and then.
   */
  async pollPeers() {
    while (this.running) {
      await sleep(this.options.peerPollInterval);
      if (this.state !== "open") continue;
      for (const [cid, own] of this.ownMax) {
        const rec = this.record(cid);
        if (rec.paused || own <= rec.peerAck) continue;
        try {
          const conv = await this.host.conversation(cid);
          const others = (conv.participants || []).filter((p) => p.userId !== this.userId);
          const ack = Math.max(0, ...others.map((p) => p.ackSeq || 0));
          const read = Math.max(0, ...others.map((p) => p.readSeq || 0));
          if (ack > rec.peerAck || read > rec.peerRead) {
            this.updateRecord(cid, { peerAck: Math.max(rec.peerAck, ack, read), peerRead: Math.max(rec.peerRead, read) });
          }
        } catch {
          // offline or refused: ask again later
        }
      }
    }
  }
}
