// Unit tests of web/sdk/core.js, the browser SDK's pure core: the seq rule,
// voids, gaps, duplicates, the outbox schedule, retryable errors, acks, the
// resume state machine. tests/js/vectors.test.js runs the cases shared with
// the Python core.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  AckTracker, Backoff, Inbox, MAX_BODY_BYTES, MAX_RESUME_CONVERSATIONS, Outbox, ResumeState,
  acceptedFromFrame, isShown, messageFromFrame, sendErrorAction, validateSend,
} from "../../web/sdk/core.js";

/** @param {number} seq @param {string} [cid] */
function msg(seq, cid = "c") {
  return { conversationId: cid, seq, messageId: `m${seq}`, senderId: "u", senderRole: "customer", body: `body ${seq}`, sentAt: "" };
}

/** @param {{conversationId: string, seq: number}[]} released */
const seqs = (released) => released.map((m) => m.seq);

/** A seeded generator (mulberry32), so a failing shuffle can be replayed. @param {number} seed */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe("Inbox: the seq rule", () => {
  test("seq == last + 1 is processed, seq <= last dropped, a gap buffered until filled", () => {
    const inbox = new Inbox({ c: 4 });
    assert.deepEqual(seqs(inbox.receive(msg(5))), [5]);
    assert.deepEqual(inbox.receive(msg(5)), []);
    assert.deepEqual(inbox.receive(msg(7)), []);
    assert.deepEqual(inbox.buffered("c"), [7]);
    assert.deepEqual(inbox.behind(), { c: 5 });
    assert.deepEqual(seqs(inbox.receive(msg(6))), [6, 7]);
    assert.deepEqual(inbox.behind(), {});
    assert.equal(inbox.last.get("c"), 7);
  });

  test("the first copy of a buffered seq is kept; later copies are the same message", () => {
    const inbox = new Inbox();
    const first = { ...msg(2), body: "first" };
    inbox.receive(first);
    inbox.receive({ ...msg(2), body: "second" });
    const released = inbox.receive(msg(1));
    assert.equal(released[1], first);
  });

  test("every message is released once, in order, whatever the duplicates and the order of arrival", () => {
    for (let seed = 1; seed <= 200; seed += 1) {
      const random = rng(seed);
      const n = 1 + Math.floor(random() * 30);
      const copies = [];
      for (let s = 1; s <= n; s += 1) for (let k = 0; k <= Math.floor(random() * 3); k += 1) copies.push(s);
      for (let i = copies.length - 1; i > 0; i -= 1) {
        const j = Math.floor(random() * (i + 1));
        [copies[i], copies[j]] = [copies[j], copies[i]];
      }
      const inbox = new Inbox();
      const out = copies.flatMap((s) => seqs(inbox.receive(msg(s))));
      assert.deepEqual(out, Array.from({ length: n }, (_, i) => i + 1), `seed ${seed}`);
      assert.deepEqual(inbox.behind(), {}, `seed ${seed}`);
    }
  });

  test("a pause keeps the cursor, drops the buffer and leaves resumes; track follows again", () => {
    const inbox = new Inbox({ c: 3, d: 0 });
    inbox.receive(msg(5));
    inbox.pause("c");
    assert.deepEqual(inbox.buffered("c"), []);
    assert.deepEqual(inbox.cursors(), { d: 0 });
    assert.deepEqual(inbox.behind(), {});
    inbox.track("c", 99);
    assert.deepEqual(inbox.cursors(), { c: 3, d: 0 }, "the cursor kept, not reset by track");
  });

  test("noteLatest learns conversations and ignores values that are not seqs", () => {
    const inbox = new Inbox({ c: 1 });
    assert.deepEqual(inbox.noteLatest({ c: 4, d: 0, e: true, f: "2", g: -1, h: 2 ** 53 }), ["d"]);
    assert.deepEqual(inbox.behind(), { c: 1 });
    assert.deepEqual(Object.keys(inbox.cursors()).sort(), ["c", "d"]);
  });

  test("a resume lists at most 100 conversations, the ones behind first", () => {
    /** @type {Record<string, number>} */
    const cursors = {};
    for (let i = 0; i < 250; i += 1) cursors[`c${i}`] = 0;
    const inbox = new Inbox(cursors);
    inbox.receive(msg(3, "c240"));
    inbox.noteLatest({ c200: 1 });
    const listed = inbox.cursors();
    assert.equal(Object.keys(listed).length, MAX_RESUME_CONVERSATIONS);
    assert.deepEqual(Object.keys(listed).slice(0, 2).sort(), ["c200", "c240"]);
  });

  test("progress grows with every processed message, paused conversations included", () => {
    const inbox = new Inbox({ a: 2, b: 5 });
    inbox.pause("b");
    assert.equal(inbox.progress(), 7);
    inbox.receive(msg(3, "a"));
    assert.equal(inbox.progress(), 8);
  });
});

describe("frames", () => {
  test("a void is processed, not shown; only void: true makes one", () => {
    const v = messageFromFrame({ ...msg(3), void: true });
    assert.ok(v && !isShown(v));
    const s = messageFromFrame({ ...msg(3), void: "true" });
    assert.ok(s && isShown(s));
    const inbox = new Inbox({ c: 2 });
    assert.deepEqual(seqs(inbox.receive(/** @type {any} */ (v))), [3]);
  });

  test("a message frame without a seq of at least 1 or a conversationId is refused", () => {
    for (const seq of [0, -1, 1.5, "1", true, null, 2 ** 53]) {
      assert.equal(messageFromFrame({ ...msg(1), seq }), null, String(seq));
    }
    assert.equal(messageFromFrame({ ...msg(1), conversationId: 7 }), null);
    assert.equal(messageFromFrame("message"), null);
  });

  test("a message frame keeps the system fields and nothing unknown", () => {
    const m = messageFromFrame({ ...msg(1), event: "assigned", status: "active", agentId: "a-1", extra: "x" });
    assert.deepEqual(m, { ...msg(1), event: "assigned", status: "active", agentId: "a-1" });
  });

  test("an accepted frame needs a messageId and a seq", () => {
    assert.deepEqual(acceptedFromFrame({ conversationId: "c", messageId: "m1", seq: 3, sentAt: "t", duplicate: true }),
      { conversationId: "c", messageId: "m1", seq: 3, sentAt: "t", duplicate: true });
    assert.equal(acceptedFromFrame({ conversationId: "c", messageId: "m1", seq: "3" }), null);
    assert.equal(acceptedFromFrame({ conversationId: "c", seq: 3 }), null);
  });

  test("send errors: internal and rate_limited retry, unauthorized reconnects, the rest reject", () => {
    assert.equal(sendErrorAction("internal"), "retry");
    assert.equal(sendErrorAction("rate_limited"), "retry");
    assert.equal(sendErrorAction("unauthorized"), "reconnect");
    for (const code of ["conflict", "bad_request", "forbidden", "not_found", "payload_too_large", "conversation_closed", "new_code"]) {
      assert.equal(sendErrorAction(code), "reject", code);
    }
  });

  test("validateSend refuses what the server would", () => {
    assert.equal(validateSend("hi", "m-1_A"), null);
    assert.equal(validateSend("hi", "bad id")?.[0], "bad_request");
    assert.equal(validateSend("hi", "x".repeat(65))?.[0], "bad_request");
    assert.equal(validateSend("", "m1")?.[0], "bad_request");
    assert.equal(validateSend("é".repeat(MAX_BODY_BYTES / 2), "m1"), null);
    assert.equal(validateSend("é".repeat(MAX_BODY_BYTES / 2 + 1), "m1")?.[0], "payload_too_large");
  });
});

describe("Outbox", () => {
  const entry = (/** @type {string} */ id, cid = "c") => ({ conversationId: cid, messageId: id, body: id });

  test("ordered: one in flight per conversation, in send order", () => {
    const ob = new Outbox({ sendTimeout: 5, ordered: true });
    ["a1", "a2"].forEach((id) => ob.add(entry(id, "a"), 0));
    ob.add(entry("b1", "b"), 0);
    assert.deepEqual(ob.due(0).map((e) => e.messageId), ["a1", "b1"]);
    ob.markSent("a1", 0);
    ob.markSent("b1", 0);
    assert.deepEqual(ob.due(1), []);
    ob.accepted("a1");
    assert.deepEqual(ob.due(1).map((e) => e.messageId), ["a2"]);
  });

  test("a messageId already pending is refused; adopt skips pending and settled ones", () => {
    const ob = new Outbox();
    ob.add(entry("m1"), 0);
    assert.throws(() => ob.add(entry("m1"), 0));
    ob.add(entry("m2"), 0);
    ob.accepted("m2");
    ob.add(entry("m3"), 0);
    ob.reject("m3");
    assert.equal(ob.adopt([entry("m1"), entry("m2"), entry("m3"), entry("m4")], 0), 1);
    assert.deepEqual(ob.entries().map((e) => e.messageId), ["m1", "m4"]);
  });

  test("a late accepted of a settled message returns nothing", () => {
    const ob = new Outbox();
    ob.add(entry("m1"), 0);
    assert.equal(ob.accepted("m1")?.messageId, "m1");
    assert.equal(ob.accepted("m1"), undefined);
  });

  test("the answer timeout doubles up to eight times; the third unanswered attempt is hopeless", () => {
    const ob = new Outbox({ sendTimeout: 5, maxAttempts: 3 });
    ob.add(entry("m1"), 0);
    const sentAt = [];
    for (let t = 0; t <= 200; t += 0.5) {
      if (ob.hopeless(t)) {
        sentAt.push(`hopeless@${t}`);
        break;
      }
      for (const e of ob.due(t)) {
        ob.markSent(e.messageId, t);
        sentAt.push(t);
      }
    }
    assert.deepEqual(sentAt, [0, 5, 15, "hopeless@35"]);
  });

  test("a retryable error delays the message; a new connection keeps that delay but resends what was in flight", () => {
    const ob = new Outbox({ sendTimeout: 5 });
    ob.add(entry("m1", "a"), 0);
    ob.add(entry("m2", "b"), 0);
    ob.due(0).forEach((e) => ob.markSent(e.messageId, 0));
    ob.retryAfter("m2", 1, 2);
    assert.equal(ob.get("m2")?.failures, 1);
    ob.connectionChanged(1.5);
    assert.deepEqual(ob.due(1.5).map((e) => e.messageId), ["m1"]);
    assert.deepEqual(ob.due(3).map((e) => e.messageId), ["m1", "m2"]);
  });

  test("an error naming no request shortens every deadline in flight", () => {
    const ob = new Outbox({ sendTimeout: 5 });
    ob.add(entry("m1"), 0);
    ob.markSent("m1", 0);
    assert.equal(ob.nextDeadline(), 5);
    ob.shortenDeadlines(1, 1);
    assert.equal(ob.nextDeadline(), 2);
    assert.deepEqual(ob.due(2).map((e) => e.messageId), ["m1"]);
  });

  test("nextDeadline is null when nothing is pending", () => {
    assert.equal(new Outbox().nextDeadline(), null);
  });
});

describe("AckTracker", () => {
  test("cumulative, after `every` messages or `delay` after the first, never at or below what was acked", () => {
    const acks = new AckTracker({ every: 3, delay: 5 }, { c: 2 });
    acks.processed("c", 2, 0);
    assert.deepEqual(acks.pending(), {});
    acks.processed("c", 3, 0);
    acks.processed("c", 4, 1);
    assert.deepEqual(acks.due(4.9), {});
    assert.equal(acks.nextDeadline(), 5);
    assert.deepEqual(acks.due(5), { c: 4 });
    acks.sent({ c: 4 });
    assert.deepEqual(acks.pending(), {});
    acks.processed("c", 7, 6, 3);
    assert.deepEqual(acks.due(6), { c: 7 }, "three messages at once reach `every`");
  });

  test("an ack written below a newer pending one keeps the newer pending", () => {
    const acks = new AckTracker({ every: 10, delay: 5 });
    acks.processed("c", 3, 0);
    acks.sent({ c: 2 });
    assert.deepEqual(acks.pending(), { c: 3 });
  });

  test("anyAcked names a cursor to repeat as a keep-alive", () => {
    assert.equal(new AckTracker().anyAcked(), null);
    assert.deepEqual(new AckTracker({}, { c: 0, d: 4 }).anyAcked(), ["d", 4]);
  });
});

describe("ResumeState", () => {
  const backoff = new Backoff({ base: 1, cap: 8, random: () => 1 });

  test("a connection resumes at once with every followed cursor; one resume in flight", () => {
    const inbox = new Inbox({ c: 3, d: 0 });
    const rs = new ResumeState({ timeout: 10 });
    rs.connected(0);
    assert.deepEqual(rs.poll(0, inbox), { send: { c: 3, d: 0 } });
    rs.want(0, 0);
    assert.equal(rs.poll(1, inbox), null, "no second resume while one is in flight");
  });

  test("still behind after a resumed: again at once after progress, paced by the backoff without", () => {
    const inbox = new Inbox({ c: 0 });
    const rs = new ResumeState({ timeout: 10 });
    rs.connected(0);
    rs.poll(0, inbox);
    inbox.noteLatest({ c: 5 });
    inbox.receive(msg(1));
    assert.equal(rs.resumed(1, inbox, backoff), true);
    assert.equal(rs.wantedAt, 1, "progress: at once");
    assert.deepEqual(rs.poll(1, inbox), { send: { c: 1 } });
    assert.equal(rs.resumed(2, inbox, backoff), true);
    assert.equal(rs.wantedAt, 3, "no progress: after backoff.delay(0)");
    rs.poll(3, inbox);
    rs.resumed(4, inbox, backoff);
    assert.equal(rs.wantedAt, 6, "no progress again: after backoff.delay(1)");
    inbox.receive(msg(2));
    inbox.receive(msg(3));
    inbox.receive(msg(4));
    inbox.receive(msg(5));
    rs.poll(6, inbox);
    rs.resumed(7, inbox, backoff);
    assert.equal(rs.wantedAt, null, "caught up: nothing more");
  });

  test("an unanswered resume is sent again; the second unanswered one drops the connection", () => {
    const inbox = new Inbox({ c: 0 });
    const rs = new ResumeState({ timeout: 10, maxUnanswered: 2 });
    rs.connected(0);
    rs.poll(0, inbox);
    assert.equal(rs.nextDeadline(), 10);
    assert.deepEqual(rs.poll(10, inbox), { send: { c: 0 } });
    assert.deepEqual(rs.poll(20, inbox), { drop: true });
  });

  test("a refused resume is probed one conversation at a time and the culprit paused", () => {
    const inbox = new Inbox({ a: 1, b: 2, c: 3 });
    const rs = new ResumeState();
    rs.connected(0);
    rs.poll(0, inbox);
    assert.equal(rs.refused(1, inbox), null);
    assert.deepEqual(rs.probes, ["a", "b", "c"]);
    assert.deepEqual(rs.poll(1, inbox), { send: { a: 1 } });
    assert.equal(rs.resumed(2, inbox, backoff), false, "probing goes on");
    assert.deepEqual(rs.poll(2, inbox), { send: { b: 2 } });
    assert.equal(rs.refused(3, inbox), "b");
    assert.ok(inbox.isPaused("b"));
    assert.deepEqual(rs.poll(3, inbox), { send: { c: 3 } });
    assert.equal(rs.resumed(4, inbox, backoff), true, "the last probe ends the round");
    assert.deepEqual(inbox.cursors(), { a: 1, c: 3 });
  });

  test("an error naming no request shortens the resume's deadline", () => {
    const rs = new ResumeState({ timeout: 10 });
    rs.connected(0);
    rs.poll(0, new Inbox());
    rs.requestFailed(2, 1);
    assert.equal(rs.nextDeadline(), 3);
  });
});

describe("Backoff", () => {
  test("full jitter under min(cap, base * 2^attempt)", () => {
    const top = new Backoff({ base: 500, cap: 30000, random: () => 1 });
    assert.deepEqual([0, 1, 2, 6, 7, 100].map((a) => top.delay(a)), [500, 1000, 2000, 30000, 30000, 30000]);
    assert.equal(new Backoff({ random: () => 0 }).delay(5), 0);
  });
});
