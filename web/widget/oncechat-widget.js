// <oncechat-widget>: the customer's chat, embeddable on any page with one
// script tag and one element:
//
//   <script type="module" src="https://chat.example.com/widget/oncechat-widget.js"></script>
//   <oncechat-widget token-url="/oncechat/token"></oncechat-widget>
//
// Attributes: `config` (URL of a JSON {restUrl, websocketUrl, tokenUrl};
// default: config.json next to the widget's folder), or `rest-url`,
// `websocket-url` and `token-url` one by one (they win over the file);
// `open` (start with the panel open); `heading`. Instead of a token URL a
// page may set `element.tokenProvider = async () => jwt` before adding it.
// docs/web.md describes it all.

import { Backoff, OnceChat, RestError, loadConfig, newMessageId, tokenFromEndpoint } from "../sdk/oncechat.js";
import { messageItem, setState } from "../sdk/render.js";

const TEMPLATE = `
<link rel="stylesheet" href="${new URL("./widget.css", import.meta.url)}">
<button class="launcher" type="button" aria-expanded="false" aria-controls="panel">
  <span aria-hidden="true">💬</span> <span class="launcher-text">Chat with us</span>
  <span class="badge" hidden></span>
</button>
<section class="panel" id="panel" role="dialog" aria-labelledby="heading" hidden>
  <header>
    <div>
      <h2 id="heading">Support</h2>
      <p class="who" role="status"></p>
    </div>
    <button class="minimise" type="button" aria-label="Minimise the chat">✕</button>
  </header>
  <div class="banner" role="status" hidden></div>
  <p class="queue" role="status" hidden></p>
  <div class="scroller">
    <div class="welcome" hidden>
      <p class="welcome-text"></p>
      <p class="reply-time"></p>
    </div>
    <button class="earlier" type="button" hidden>Show earlier messages</button>
    <ol class="log" aria-label="Messages" aria-live="polite" aria-relevant="additions"></ol>
    <ol class="pending" aria-label="Messages being sent"></ol>
  </div>
  <p class="typing" aria-live="polite"></p>
  <p class="closed-note" role="status" hidden>This conversation is closed. Write again to reopen it, or start a new one.</p>
  <form class="composer">
    <label class="sr-only" for="input">Your message</label>
    <textarea id="input" rows="2" placeholder="Write a message…" autocomplete="off"></textarea>
    <button class="send" type="submit">Send</button>
  </form>
  <footer>
    <button class="end" type="button">End chat</button>
    <button class="new" type="button" hidden>New conversation</button>
  </footer>
</section>`;


const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function visitorId() {
  // The demo's anonymous visitor: one id per browser profile and origin.
  let id = localStorage.getItem("oncechat-visitor");
  if (!id) {
    id = `visitor-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem("oncechat-visitor", id);
  }
  return id;
}

/** Run `fn` alone among this origin's tabs (Web Locks), or just run it. */
function exclusive(name, fn) {
  return navigator.locks ? navigator.locks.request(name, fn) : fn();
}

export class OnceChatWidget extends HTMLElement {
  constructor() {
    super();
    this.tokenProvider = null;
    this.root = this.attachShadow({ mode: "open" });
    this.root.innerHTML = TEMPLATE;
    this.$ = (sel) => this.root.querySelector(sel);
    this.items = new Map(); // seq -> <li>
    this.pendingItems = new Map(); // messageId -> <li>
    this.accepted = new Map(); // messageId -> seq, until its message is processed
    this.record = null;
    this.status = null;
    this.agentId = null;
    this.conversationId = null;
    this.unseen = 0;
  }

  connectedCallback() {
    if (this._started) return;
    this._started = true;
    this._wire();
    if (this.hasAttribute("open") || sessionStorage.getItem("oncechat-widget-open") === "1") this.toggle(true);
    this.start().catch((err) => this._fatal(err));
  }

  // ----------------------------------------------------------------- setup

  async start() {
    const heading = this.getAttribute("heading");
    if (heading) this.$("#heading").textContent = heading;
    const configUrl = this.getAttribute("config") || new URL("../config.json", import.meta.url).href;
    const needFile = !(this.getAttribute("rest-url") && this.getAttribute("websocket-url"));
    const file = needFile ? await loadConfig(configUrl) : {};
    const restUrl = this.getAttribute("rest-url") || file.restUrl;
    const websocketUrl = this.getAttribute("websocket-url") || file.websocketUrl;
    let tokenUrl = this.getAttribute("token-url") || file.tokenUrl;
    if (tokenUrl && !this.getAttribute("token-url")) tokenUrl = new URL(tokenUrl, configUrl).href;
    const token = this.tokenProvider || (tokenUrl && tokenFromEndpoint(tokenUrl, { role: "customer", sub: visitorId() }));
    if (!restUrl || !websocketUrl || !token) throw new Error("oncechat-widget: no REST/WebSocket URL or token source configured");
    this.chat = new OnceChat({ restUrl, websocketUrl, token });
    this._listen();
    await this.chat.start();
    this.dataset.user = this.chat.userId;
    window.addEventListener("storage", (e) => {
      // Another tab started a new conversation: follow it here too.
      if (e.key !== this._storageKey() || !e.newValue) return;
      const saved = JSON.parse(e.newValue);
      if (saved.conversationId && saved.conversationId !== this.conversationId) this._show(saved.conversationId);
    });
    // A conversation of this visitor goes on (after a reload, in another tab) even with the panel
    // closed; without one, the panel welcomes and the first message opens it.
    if (this._saved()) await this._resumeOpening();
    else this._welcome(true);
  }

  _fatal(err) {
    console.error(err);
    this._banner(`The chat is unavailable: ${err && err.message ? err.message : err}`);
  }

  _wire() {
    this.$(".launcher").addEventListener("click", () => this.toggle(!this.isOpen));
    this.$(".minimise").addEventListener("click", () => this.toggle(false));
    this.$(".panel").addEventListener("keydown", (e) => {
      if (e.key === "Escape") this.toggle(false);
    });
    const input = this.$("#input");
    this.$(".composer").addEventListener("submit", (e) => {
      e.preventDefault();
      this._submit();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this._submit();
      }
    });
    input.addEventListener("input", () => this._typing());
    this.$(".earlier").addEventListener("click", () => this._earlier());
    this.$(".end").addEventListener("click", () => this._end());
    this.$(".new").addEventListener("click", () => this._startNew());
    document.addEventListener("visibilitychange", () => this._markRead());
    window.addEventListener("focus", () => this._markRead());
  }

  get isOpen() {
    return !this.$(".panel").hidden;
  }

  /** Open or close the panel; opening starts (or finds) the conversation. */
  toggle(open) {
    this.$(".panel").hidden = !open;
    this.$(".launcher").setAttribute("aria-expanded", String(open));
    this.toggleAttribute("data-open", open);
    sessionStorage.setItem("oncechat-widget-open", open ? "1" : "0"); // a reload keeps it as it was
    if (open) {
      this.unseen = 0;
      this._badge();
      this.$("#input").focus();
      this._markRead();
    } else {
      this.$(".launcher").focus();
    }
  }

  _listen() {
    const chat = this.chat;
    chat.addEventListener("connection", (e) => this._connection(e.detail.state));
    chat.addEventListener("message", (e) => this._onMessage(e.detail));
    chat.addEventListener("outbox", (e) => this._onOutbox(e.detail));
    chat.addEventListener("accepted", (e) => {
      if (e.detail.conversationId !== this.conversationId) return;
      this.accepted.set(e.detail.messageId, e.detail.seq);
      const li = this.pendingItems.get(e.detail.messageId);
      if (li) setState(li, "sent");
    });
    chat.addEventListener("rejected", (e) => {
      const li = this.pendingItems.get(e.detail.messageId);
      if (li) {
        setState(li, "failed");
        li.title = e.detail.message || e.detail.code;
      }
    });
    chat.addEventListener("cursors", (e) => {
      if (e.detail.conversationId !== this.conversationId) return;
      this.record = e.detail;
      this._refreshStates();
    });
    chat.addEventListener("typing", (e) => this._onTyping(e.detail));
    chat.addEventListener("conversation", (e) => {
      const f = e.detail;
      if (f.conversationId !== this.conversationId) return;
      this._setStatus(f.status, f.agentId);
    });
  }

  // ---------------------------------------------------------- conversation

  _storageKey() {
    return `oncechat-conversation-${this.chat.userId}`;
  }

  /** This visitor's conversation as saved: `{key, conversationId?, first?}`, or null before the first message. */
  _saved() {
    return JSON.parse(localStorage.getItem(this._storageKey()) || "null");
  }

  /** Before the first message: the welcome text and the expected reply time, no conversation. */
  _welcome(show) {
    this.$(".welcome").hidden = !show;
    if (!show) return;
    this.$(".welcome-text").textContent = this.getAttribute("welcome") || "Hello! Ask us anything.";
    this.$(".reply-time").textContent = this.getAttribute("reply-time") || "We usually reply within a few minutes.";
    this.$(".who").textContent = "";
    this.$(".queue").hidden = true;
    this.$(".closed-note").hidden = true;
    this.$(".end").hidden = true;
    this.$(".new").hidden = true;
  }

  /**
   * The first message opens the conversation. Saved first, with its
   * Idempotency-Key and the message's own messageId, so a reload (or a
   * second tab) before the answer opens the same conversation and queues
   * the same message: one conversation, one message.
   */
  async _openWith(body) {
    const saved = { key: crypto.randomUUID(), first: { messageId: newMessageId(), body } };
    localStorage.setItem(this._storageKey(), JSON.stringify(saved));
    this._banner("");
    await this._resumeOpening();
  }

  /** Open (or find) the saved conversation, then queue a first message left waiting for it. */
  async _resumeOpening() {
    const cid = await this._ensureConversation();
    const saved = this._saved();
    if (saved && saved.first && saved.conversationId === cid) {
      await this.chat.send(cid, saved.first.body, saved.first.messageId);
      delete saved.first;
      localStorage.setItem(this._storageKey(), JSON.stringify(saved));
    }
    return cid;
  }

  /**
   * The conversation of this visitor: the saved one, or one opened with an
   * Idempotency-Key saved *before* the request, so a reload or a second tab
   * retrying it gets the same conversation, never a second one.
   */
  async _ensureConversation() {
    if (this._opening) return this._opening;
    this._opening = exclusive(`oncechat-open-${this.chat.userId}`, async () => {
      let saved = JSON.parse(localStorage.getItem(this._storageKey()) || "null");
      if (!saved) {
        saved = { key: crypto.randomUUID() };
        localStorage.setItem(this._storageKey(), JSON.stringify(saved));
      }
      const backoff = new Backoff({ base: 500, cap: 10000 });
      for (let attempt = 0; !saved.conversationId; attempt++) {
        try {
          const conv = await this.chat.openConversation(saved.key);
          saved.conversationId = conv.conversationId;
          localStorage.setItem(this._storageKey(), JSON.stringify(saved));
        } catch (err) {
          if (err instanceof RestError && err.status >= 400 && err.status < 500 && err.status !== 429) throw err;
          this._banner("Starting the conversation…");
          await sleep(backoff.delay(attempt));
        }
      }
      return saved.conversationId;
    }).then(async (cid) => {
      if (cid !== this.conversationId) await this._show(cid);
      this._welcome(false);
      return cid;
    }).finally(() => {
      this._opening = null;
    });
    return this._opening;
  }

  async _show(cid) {
    this.conversationId = cid;
    this.dataset.conversationId = cid;
    this._readSent = 0;
    this._floor = null;
    this.items.clear();
    this.pendingItems.clear();
    this.$(".log").replaceChildren();
    this.$(".pending").replaceChildren();
    await this.chat.follow(cid);
    this.record = await this.chat.cursors(cid);
    this._latestSystem = null;
    for (const m of await this.chat.log(cid, 30)) this._onMessage(m, true);
    if (this._latestSystem) this._setStatus(this._latestSystem.status, this._latestSystem.agentId);
    this._onOutbox(await this.chat.pending());
    this._refreshEarlier();
    this._refreshStatus();
    this._markRead();
  }

  async _refreshStatus() {
    try {
      const conv = await this.chat.conversation(this.conversationId);
      this._setStatus(conv.status, conv.agentId, conv.position);
    } catch {
      // offline: the system messages will tell
    }
  }

  _setStatus(status, agentId, position) {
    if (!status) return;
    this.status = status;
    this.agentId = agentId || null;
    this.dataset.status = status;
    const who = this.$(".who");
    if (status === "active" && agentId) who.textContent = `You are chatting with ${agentId}`;
    else if (status === "waiting") who.textContent = "Waiting for an agent";
    else if (status === "closed") who.textContent = "Conversation closed";
    const queue = this.$(".queue");
    if (status === "waiting") {
      queue.hidden = false;
      queue.textContent = position ? `You are number ${position} in the queue.` : "You are in the queue.";
      this._pollQueue();
    } else {
      queue.hidden = true;
    }
    this.$(".closed-note").hidden = status !== "closed";
    this.$(".end").hidden = status === "closed";
    this.$(".new").hidden = status !== "closed";
  }

  /** While waiting, ask for the queue position now and then. */
  _pollQueue() {
    if (this._queueTimer) return;
    this._queueTimer = setTimeout(async () => {
      this._queueTimer = null;
      if (this.status === "waiting") await this._refreshStatus();
    }, 3000);
  }

  async _end() {
    if (!this.conversationId) return;
    try {
      const conv = await this.chat.closeConversation(this.conversationId);
      this._setStatus(conv.status, conv.agentId);
    } catch (err) {
      if (err.code === "conflict") this._setStatus("closed", this.agentId);
      else this._banner(`Could not end the chat: ${err.message}`);
    }
  }

  /** After a close: back to the welcome; the next message opens a new conversation. */
  async _startNew() {
    localStorage.removeItem(this._storageKey());
    this.conversationId = null;
    delete this.dataset.conversationId;
    delete this.dataset.status;
    this.status = null;
    this.items.clear();
    this.pendingItems.clear();
    this.$(".log").replaceChildren();
    this.$(".pending").replaceChildren();
    this.$(".earlier").hidden = true;
    this._welcome(true);
    this.$("#input").focus();
  }

  // -------------------------------------------------------------- messages

  async _submit() {
    const input = this.$("#input");
    const body = input.value.trim();
    if (!body) return;
    input.value = ""; // at once: the next message may be typed while this one is stored
    this._typedAt = 0; // the next keystroke is news again
    try {
      if (this.conversationId) await this.chat.send(this.conversationId, body);
      else if (this._saved()) await this.chat.send(await this._resumeOpening(), body);
      else await this._openWith(body);
    } catch (err) {
      if (!input.value) input.value = body;
      this._banner(err.message);
    }
  }

  _typing() {
    const now = Date.now();
    if (!this.conversationId || this.status === "closed" || now - (this._typedAt || 0) < 3000) return;
    this._typedAt = now;
    this.chat.typing(this.conversationId);
  }

  _onMessage(m, fromLog = false) {
    if (m.conversationId !== this.conversationId || this.items.has(m.seq)) return;
    if (m.void) return; // protocol 1.1: a seq that holds no message; nothing to show
    const li = this._item(m);
    this._insert(li, m.seq);
    const pending = this.pendingItems.get(m.messageId);
    if (pending && m.senderId === this.chat.userId) {
      pending.remove();
      this.pendingItems.delete(m.messageId);
      this.accepted.delete(m.messageId);
    }
    if (m.senderRole === "system" && !fromLog) this._setStatus(m.status, m.agentId);
    if (m.senderRole === "system" && fromLog) this._latestSystem = m;
    if (!fromLog && m.senderId !== this.chat.userId) {
      this.$(".typing").textContent = "";
      if (!this.isOpen || document.visibilityState !== "visible") {
        this.unseen += 1;
        this._badge();
      }
      this._markRead();
    }
    this._scrollToEnd();
  }

  _item(m) {
    const own = m.senderId === this.chat.userId;
    const state = own && m.senderRole !== "system" ? OnceChat.stateOf(m, this.record) : undefined;
    return messageItem(m, { own, state });
  }

  _refreshStates() {
    for (const li of this.items.values()) {
      if (!li.classList.contains("own")) continue;
      setState(li, OnceChat.stateOf({ seq: Number(li.dataset.seq) }, this.record));
    }
  }

  _insert(li, seq) {
    const log = this.$(".log");
    let before = null;
    for (const [s, el] of this.items) if (s > seq && (!before || s < Number(before.dataset.seq))) before = el;
    log.insertBefore(li, before);
    this.items.set(seq, li);
  }

  _onOutbox(entries) {
    const mine = entries.filter((e) => e.conversationId === this.conversationId);
    const ids = new Set(mine.map((e) => e.messageId));
    for (const [id, li] of this.pendingItems) {
      if (!ids.has(id) && !this.accepted.has(id) && li.dataset.state !== "failed") {
        // Accepted in another tab and already processed, or gone: drop it.
        if ([...this.items.values()].some((el) => el.dataset.messageId === id)) {
          li.remove();
          this.pendingItems.delete(id);
        }
      }
    }
    for (const e of mine) {
      if (this.pendingItems.has(e.messageId)) continue;
      if ([...this.items.values()].some((el) => el.dataset.messageId === e.messageId)) continue;
      const li = this._item({ ...e, seq: undefined, senderId: this.chat.userId, senderRole: this.chat.role, sentAt: e.createdAt });
      li.removeAttribute("data-seq");
      setState(li, "queued");
      this.$(".pending").append(li);
      this.pendingItems.set(e.messageId, li);
    }
    this._scrollToEnd();
  }

  _onTyping(frame) {
    if (frame.conversationId !== this.conversationId || frame.userId === this.chat.userId) return;
    const el = this.$(".typing");
    el.textContent = `${frame.userId} is typing…`;
    clearTimeout(this._typingTimer);
    this._typingTimer = setTimeout(() => (el.textContent = ""), 4000);
  }

  /** Read receipts: everything shown is read while the panel is open and the page visible. */
  _markRead() {
    if (!this.conversationId || !this.isOpen || document.visibilityState !== "visible") return;
    const last = Math.max(0, ...this.items.keys());
    if (last > ((this.record && this.record.myRead) || 0) && last > (this._readSent || 0)) {
      this._readSent = last;
      this.chat.markRead(this.conversationId, last);
    }
  }

  _refreshEarlier() {
    const first = Math.min(...this.items.keys(), this._floor || Infinity);
    this.$(".earlier").hidden = !(Number.isFinite(first) && first > 1);
  }

  /** Scroll back: the page of history before the oldest message shown (REST `before`). */
  async _earlier() {
    const first = Math.min(...this.items.keys(), this._floor || Infinity);
    if (!Number.isFinite(first) || first <= 1) return;
    try {
      const page = await this.chat.history(this.conversationId, { before: first, limit: 20 });
      const scroller = this.$(".scroller");
      const fromBottom = scroller.scrollHeight - scroller.scrollTop;
      for (const m of page.messages) if (!m.void && !this.items.has(m.seq)) this._insert(this._item(m), m.seq);
      // The oldest seq fetched, voids included: seq 1 reached when there is no earlier page.
      this._floor = page.prev == null ? 1 : Math.min(this._floor || Infinity, ...page.messages.map((m) => m.seq));
      scroller.scrollTop = scroller.scrollHeight - fromBottom;
    } catch (err) {
      this._banner(`Could not load earlier messages: ${err.message}`);
    }
    this._refreshEarlier();
  }

  // -------------------------------------------------------------------- UI

  _connection(state) {
    this.dataset.connection = state;
    if (state === "open") return this._banner(null);
    if (state === "offline") return this._banner("You are offline. Messages will be sent when you are back online.");
    if (state === "reconnecting") return this._banner("Reconnecting…");
    if (state === "connecting") return this._banner("Connecting…");
    return undefined;
  }

  _banner(text) {
    const banner = this.$(".banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  _badge() {
    const badge = this.$(".badge");
    badge.hidden = this.unseen === 0;
    badge.textContent = String(this.unseen);
    badge.setAttribute("aria-label", `${this.unseen} new`);
  }

  _scrollToEnd() {
    const scroller = this.$(".scroller");
    scroller.scrollTop = scroller.scrollHeight;
  }
}

if (!customElements.get("oncechat-widget")) customElements.define("oncechat-widget", OnceChatWidget);
