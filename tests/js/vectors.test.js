// The shared cases of tests/vectors/client_core.json, driven through
// web/sdk/core.js. client/core.py runs the same file
// (tests/sdk/test_core_vectors.py): the two SDK cores decide every case
// alike, or one of these suites fails.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  AckTracker, Backoff, Inbox, Outbox, acceptedFromFrame, isShown, messageFromFrame, sendErrorAction,
} from "../../web/sdk/core.js";

/** @typedef {import("../../web/sdk/core.js").Message} Message */

const VECTORS = JSON.parse(readFileSync(new URL("../vectors/client_core.json", import.meta.url), "utf8"));

/** What web/sdk/session.js does with the core's parts, minus the socket: frames in, decisions out. */
class Driver {
  /** @param {any} c */
  constructor(c) {
    const opts = { ...VECTORS.defaults, ...(c.options || {}) };
    this.user = opts.user;
    this.role = opts.role;
    this.autoStore = opts.autoStore;
    const cursors = c.cursors || {};
    /** @type {Inbox<Message>} */
    this.inbox = new Inbox(cursors, c.paused || []);
    this.outbox = new Outbox({ sendTimeout: opts.sendTimeout, ordered: opts.ordered });
    for (const e of c.outbox || []) this.outbox.add(e, 0);
    this.acks = new AckTracker({ every: opts.ackEvery, delay: opts.ackDelay }, cursors);
    // Full jitter at its ceiling, so delays are exact.
    this.backoff = new Backoff({ base: opts.backoff.base, cap: opts.backoff.cap, random: () => 1 });
    /** @type {Message[]} */
    this.unstored = [];
  }

  /** @param {any} s */
  step(s) {
    const now = s.at;
    /** @type {Record<string, any>} */
    const got = {};
    /** @type {Message[]} */
    let released = [];
    if (s.connect) this.outbox.connectionChanged(now);
    if ("pause" in s) this.inbox.pause(s.pause);
    if ("track" in s) this.inbox.track(s.track);
    if ("frame" in s) [got.outcome, released] = this.frame(s.frame, now);
    this.unstored.push(...released);
    if (this.autoStore || s.store) {
      for (const m of this.unstored) this.acks.processed(m.conversationId, m.seq, now); // stored: only now may it be acked
      this.unstored = [];
    }
    got.processed = released.map((m) => [m.conversationId, m.seq]);
    got.shown = released.filter(isShown).map((m) => [m.conversationId, m.seq]);
    got.sends = this.outbox.due(now).map((e) => e.messageId);
    for (const mid of got.sends) this.outbox.markSent(mid, now);
    got.acks = this.acks.due(now);
    this.acks.sent(got.acks);
    const resume = Object.keys(this.inbox.behind()).length ? this.inbox.cursors() : null;
    got.resume = resume;
    got.resume_size = Object.keys(resume || {}).length;
    got.resume_includes = resume || {};
    got.followed = Object.keys(this.inbox.cursors()).sort();
    got.last = Object.fromEntries(this.inbox.last);
    got.buffered = Object.fromEntries([...this.inbox.last.keys()].map((cid) => [cid, this.inbox.buffered(cid)]));
    return got;
  }

  /**
   * @param {any} frame
   * @param {number} now
   * @returns {[string, Message[]]}
   */
  frame(frame, now) {
    switch (frame.type) {
      case "message": {
        const m = messageFromFrame(frame);
        if (!m) return ["invalid", []];
        const before = this.inbox.last.get(m.conversationId) ?? 0;
        const released = this.inbox.receive(m);
        return [m.seq <= before ? "dropped" : released.length ? "processed" : "buffered", released];
      }
      case "accepted": {
        const acc = acceptedFromFrame(frame);
        if (!acc) return ["invalid", []];
        const entry = this.outbox.accepted(acc.messageId);
        if (!entry) return ["ignored", []];
        const own = {
          conversationId: acc.conversationId, seq: acc.seq, messageId: acc.messageId,
          senderId: this.user, senderRole: this.role, body: entry.body, sentAt: acc.sentAt,
        };
        return ["accepted", this.inbox.receive(own)];
      }
      case "error": {
        const entry = typeof frame.messageId === "string" ? this.outbox.get(frame.messageId) : undefined;
        if (!entry) return ["ignored", []];
        const action = sendErrorAction(String(frame.code ?? "internal"));
        if (action === "retry") this.outbox.retryAfter(entry.messageId, now, this.backoff.delay(entry.failures));
        if (action === "reject") this.outbox.reject(entry.messageId);
        return [action === "reject" ? "rejected" : action, []];
      }
      case "resumed":
        this.inbox.noteLatest(frame.conversations || {});
        return ["noted", []];
      default:
        throw new Error(`no such frame in the vectors: ${frame.type}`);
    }
  }
}

for (const c of VECTORS.cases) {
  test(`the JS core decides the shared case ${c.name} as the vectors say`, () => {
    const driver = new Driver(c);
    c.steps.forEach((/** @type {any} */ s, /** @type {number} */ i) => {
      const got = driver.step(s);
      for (const [key, want] of Object.entries(s.expect)) {
        let have = got[key];
        if (["last", "buffered", "resume_includes"].includes(key)) {
          have = Object.fromEntries(Object.keys(/** @type {object} */ (want)).map((cid) => [cid, have[cid] ?? null]));
        }
        assert.deepEqual(have, want, `${c.name} step ${i} (${c.why}): ${key}`);
      }
    });
  });
}

test("the vectors cover every decision of the client rule", () => {
  const outcomes = new Set(VECTORS.cases.flatMap((/** @type {any} */ c) => c.steps.map((/** @type {any} */ s) => s.expect.outcome)));
  for (const o of ["processed", "dropped", "buffered", "invalid", "noted", "accepted", "ignored", "retry", "rejected", "reconnect"]) {
    assert.ok(outcomes.has(o), o);
  }
});
