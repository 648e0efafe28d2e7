// The agent console: presence and capacity, the waiting queue, my
// conversations with unread counts, a conversation view with history,
// typing, read receipts, transfer and close. Built on the browser SDK, so
// several tabs of one agent share one connection and the same states.

import { OnceChat, loadConfig, tokenFromEndpoint } from "../sdk/oncechat.js";
import { messageItem, setState, timeOf } from "../sdk/render.js";

const $ = (sel) => document.querySelector(sel);
const SIGNED_IN_KEY = "oncechat-console-agent";
const BASE_TITLE = "oncechat console";

let config;
let chat;
let me;
const convs = new Map(); // cid -> {id, customerId, status, agentId, messages: Map(seq -> m), record}
let selected = null;
let outbox = [];
const acceptedLimbo = new Set();
let newAssignments = 0;
let team; // BroadcastChannel between this agent's console tabs

function conv(cid) {
  let c = convs.get(cid);
  if (!c) {
    c = { id: cid, customerId: null, status: null, agentId: null, messages: new Map(), record: null, mine: false };
    convs.set(cid, c);
  }
  return c;
}

function banner(text) {
  $(".banner").hidden = !text;
  $(".banner").textContent = text || "";
}

function announce(text) {
  $(".announce").textContent = text;
}

// ------------------------------------------------------------------ sign in

async function main() {
  config = await loadConfig(new URL("../config.json", import.meta.url).href);
  const tokenUrl = config.tokenUrl && new URL(config.tokenUrl, new URL("../config.json", import.meta.url)).href;
  document.querySelectorAll(".dev-only").forEach((el) => (el.hidden = !config.devSignIn));
  const signin = $(".signin");
  const saved = localStorage.getItem(SIGNED_IN_KEY);
  window.addEventListener("storage", (e) => {
    if (e.key === SIGNED_IN_KEY) location.reload(); // signed in or out in another tab
  });
  if (saved !== null) return start(tokenUrl, saved);
  signin.hidden = false;
  $("#agent-id").focus();
  signin.addEventListener("submit", (e) => {
    e.preventDefault();
    const sub = config.devSignIn ? $("#agent-id").value.trim() : "";
    localStorage.setItem(SIGNED_IN_KEY, sub);
    signin.hidden = true;
    start(tokenUrl, sub);
  });
}

async function start(tokenUrl, sub) {
  // Local stage: the local cloud's development sign-in mints a token for
  // any agent id. Elsewhere the configured token endpoint answers for the
  // signed-in session (docs/web.md, "Tokens").
  const token = config.devSignIn ? tokenFromEndpoint(tokenUrl, { sub, role: "agent" }) : tokenFromEndpoint(tokenUrl, { role: "agent" });
  chat = new OnceChat({ restUrl: config.restUrl, websocketUrl: config.websocketUrl, token });
  listen();
  try {
    await chat.start();
  } catch (err) {
    localStorage.removeItem(SIGNED_IN_KEY);
    banner(`Sign-in failed: ${err.message}`);
    $(".signin").hidden = false;
    return;
  }
  me = chat.userId;
  document.body.dataset.agent = me;
  $(".whoami").textContent = me;
  $(".me").hidden = false;
  $(".desk").hidden = false;
  team = new BroadcastChannel(`oncechat-console-${me}`);
  team.onmessage = (e) => {
    if (e.data.t === "presence") showAgent(e.data.agent);
  };
  wire();
  for (const rec of await chat.followed()) {
    const c = conv(rec.conversationId);
    c.record = rec;
    for (const m of await chat.log(rec.conversationId, 50)) addMessage(m, true);
  }
  outbox = await chat.pending();
  await refreshMine();
  refreshQueue();
  refreshAgents();
  setInterval(refreshQueue, 3000);
  setInterval(refreshAgents, 5000);
  renderLists();
}

function wire() {
  $(".signout").addEventListener("click", () => {
    localStorage.removeItem(SIGNED_IN_KEY);
    location.reload();
  });
  $("#presence").addEventListener("change", () => setPresence({ status: $("#presence").value }));
  $("#capacity").addEventListener("change", () => {
    const n = Number($("#capacity").value);
    if (Number.isInteger(n) && n >= 0 && n <= 100) setPresence({ capacity: n });
  });
  $(".composer").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  $("#input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
  $("#input").addEventListener("input", () => {
    const now = Date.now();
    if (selected && now - (wire.typedAt || 0) > 3000) {
      wire.typedAt = now;
      chat.typing(selected);
    }
  });
  $(".transfer").addEventListener("click", transfer);
  $(".close").addEventListener("click", closeSelected);
  $(".earlier").addEventListener("click", earlier);
  document.addEventListener("visibilitychange", markRead);
  window.addEventListener("focus", markRead);
}

function listen() {
  chat.addEventListener("connection", (e) => {
    const state = e.detail.state;
    document.body.dataset.connection = state;
    $(".conn").textContent = state === "open" ? "Connected" : state === "offline" ? "Offline" : state === "reconnecting" ? "Reconnecting…" : "Connecting…";
    banner(state === "open" ? null : state === "offline" ? "You are offline. Replies will be sent when you are back online." : state === "reconnecting" ? "Reconnecting…" : null);
    if (state === "open") refreshAgents();
  });
  chat.addEventListener("message", (e) => addMessage(e.detail, false));
  chat.addEventListener("outbox", (e) => {
    outbox = e.detail;
    renderPending();
  });
  chat.addEventListener("accepted", (e) => {
    acceptedLimbo.add(e.detail.messageId);
    renderPending();
  });
  chat.addEventListener("rejected", (e) => banner(`A reply was refused (${e.detail.code}): ${e.detail.message || ""}`));
  chat.addEventListener("cursors", (e) => {
    const c = conv(e.detail.conversationId);
    c.record = e.detail;
    if (selected === c.id) refreshStates();
    renderLists();
  });
  chat.addEventListener("typing", (e) => {
    const f = e.detail;
    if (f.conversationId !== selected || f.userId === me) return;
    $(".typing").textContent = `${f.userId} is typing…`;
    clearTimeout(listen.typingTimer);
    listen.typingTimer = setTimeout(() => ($(".typing").textContent = ""), 4000);
  });
  chat.addEventListener("conversation", (e) => {
    const f = e.detail;
    const c = conv(f.conversationId);
    c.customerId = f.customerId || c.customerId;
    applyLifecycle(c, f.event, f.status, f.agentId, true);
    refreshQueue();
    refreshAgents();
  });
}

// ----------------------------------------------------------------- messages

function addMessage(m, fromLog) {
  if (m.void) return; // protocol 1.1: a seq that holds no message; nothing to show
  const c = conv(m.conversationId);
  if (c.messages.has(m.seq)) return;
  c.messages.set(m.seq, m);
  if (m.senderRole === "customer") c.customerId = m.senderId;
  if (m.senderRole === "system") applyLifecycle(c, m.event, m.status, m.agentId, !fromLog);
  if (m.senderRole === "customer" && !fromLog && c.mine && (selected !== c.id || document.visibilityState !== "visible")) {
    announce(`New message from ${m.senderId}`);
  }
  if (selected === c.id) {
    insertItem(m);
    acceptedLimbo.delete(m.messageId);
    renderPending();
    if (m.senderId !== me) $(".typing").textContent = "";
    markRead();
    scrollToEnd();
  }
  renderLists();
}

function applyLifecycle(c, event, status, agentId, live) {
  const wasMine = c.mine;
  if (status) c.status = status;
  if (agentId !== undefined) c.agentId = agentId;
  c.mine = c.agentId === me && c.status !== "waiting";
  if (c.mine && !wasMine && live && c.status === "active") {
    chat.follow(c.id);
    newAssignments += 1;
    announce(`New conversation assigned${c.customerId ? ` from ${c.customerId}` : ""}`);
  }
  if (selected === c.id) renderView();
  renderLists();
}

function unread(c) {
  const read = (c.record && c.record.myRead) || 0;
  let n = 0;
  for (const m of c.messages.values()) if (m.seq > read && m.senderRole === "customer") n += 1;
  return n;
}

async function refreshMine() {
  try {
    const page = await chat.conversations("active");
    for (const v of page.conversations) {
      const c = conv(v.conversationId);
      c.customerId = v.customerId;
      c.status = v.status;
      c.agentId = v.agentId;
      c.mine = v.agentId === me;
      if (!c.record || c.record.paused) chat.follow(c.id);
    }
  } catch (err) {
    banner(`Could not load conversations: ${err.message}`);
  }
  renderLists();
}

// -------------------------------------------------------------------- lists

function renderLists() {
  const mine = $(".mine");
  const items = [...convs.values()].filter((c) => c.mine || (c.agentId === me && c.status === "closed"));
  items.sort((a, b) => (a.status === "closed") - (b.status === "closed") || latestSeqTime(b) - latestSeqTime(a));
  mine.replaceChildren(...items.map((c) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "pick";
    button.dataset.conversationId = c.id;
    if (selected === c.id) button.setAttribute("aria-current", "true");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.customerId || c.id.slice(0, 8);
    button.append(name);
    const last = [...c.messages.values()].pop();
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = c.status === "closed" ? "closed" : last ? last.body : "";
    button.append(preview);
    const n = unread(c);
    if (n && c.status !== "closed") {
      const badge = document.createElement("span");
      badge.className = "count unread";
      badge.textContent = String(n);
      badge.setAttribute("aria-label", `${n} unread`);
      button.append(badge);
    }
    button.addEventListener("click", () => select(c.id));
    li.append(button);
    return li;
  }));
  const total = items.filter((c) => c.status !== "closed").reduce((sum, c) => sum + unread(c), 0) + newAssignments;
  document.title = total ? `(${total}) ${BASE_TITLE}` : BASE_TITLE;
}

function latestSeqTime(c) {
  const last = [...c.messages.values()].pop();
  return last ? Date.parse(last.sentAt) || 0 : 0;
}

async function refreshQueue() {
  if (!chat || document.visibilityState === "hidden" && refreshQueue.loaded) return;
  try {
    const data = await chat.queue();
    refreshQueue.loaded = true;
    $(".queue-count").textContent = String(data.conversations.length);
    $(".queue").replaceChildren(...data.conversations.map((v) => {
      const li = document.createElement("li");
      li.dataset.conversationId = v.conversationId;
      const since = timeOf(v.queuedAt);
      li.textContent = `#${v.position} ${v.customerId} · waiting since ${since}`;
      return li;
    }));
  } catch {
    // offline: keep the last list
  }
}

async function refreshAgents() {
  if (!chat) return;
  try {
    const data = await chat.agents();
    refreshAgents.all = data.agents;
    const mine = data.agents.find((a) => a.agentId === me);
    if (mine) showAgent(mine);
    renderTransferTargets();
  } catch {
    // offline
  }
}

function showAgent(agent) {
  if (document.activeElement !== $("#presence") && agent.status !== "offline") $("#presence").value = agent.status;
  if (document.activeElement !== $("#capacity")) $("#capacity").value = String(agent.capacity);
  $(".load").textContent = `${agent.activeCount} of ${agent.capacity} active · ${agent.status}`;
  document.body.dataset.presence = agent.status;
}

async function setPresence(changes) {
  try {
    const agent = await chat.setStatus(changes);
    showAgent(agent);
    team.postMessage({ t: "presence", agent }); // the other tabs of this agent
    refreshQueue();
  } catch (err) {
    banner(`Could not change the status: ${err.message}`);
  }
}

function renderTransferTargets() {
  const select = $("#transfer-to");
  const current = select.value;
  const others = (refreshAgents.all || []).filter((a) => a.agentId !== me && a.status === "online" && a.activeCount < a.capacity);
  select.replaceChildren(...others.map((a) => {
    const o = document.createElement("option");
    o.value = a.agentId;
    o.textContent = `${a.agentId} (${a.activeCount}/${a.capacity})`;
    return o;
  }));
  if (others.some((a) => a.agentId === current)) select.value = current;
  $(".transfer").disabled = others.length === 0;
}

// --------------------------------------------------------------------- view

async function select(cid) {
  selected = cid;
  document.body.dataset.selected = cid;
  newAssignments = 0;
  const c = conv(cid);
  if (!c.record) c.record = await chat.cursors(cid);
  renderView();
  renderLists();
  $("#input").focus();
}

function renderView() {
  const c = convs.get(selected);
  if (!c) return;
  $("#view-title").textContent = c.customerId ? `Conversation with ${c.customerId}` : `Conversation ${c.id.slice(0, 8)}`;
  const status = c.status === "active" && c.agentId !== me ? `transferred to ${c.agentId}` : c.status || "";
  $(".view-status").textContent = status;
  $(".view").dataset.status = c.status || "";
  const canAct = c.status === "active" && c.agentId === me;
  $(".actions").hidden = !canAct;
  $(".composer").hidden = !canAct;
  const log = $(".log");
  if (log.dataset.conversationId !== c.id) {
    log.dataset.conversationId = c.id;
    log.replaceChildren();
    for (const m of [...c.messages.values()].sort((a, b) => a.seq - b.seq)) insertItem(m);
    renderPending();
    markRead();
    scrollToEnd();
  }
  refreshEarlier();
}

function insertItem(m) {
  const log = $(".log");
  if (log.querySelector(`li[data-seq="${m.seq}"]`)) return;
  const li = item(m);
  let before = null;
  for (const el of log.children) {
    if (Number(el.dataset.seq) > m.seq) {
      before = el;
      break;
    }
  }
  log.insertBefore(li, before);
}

function item(m) {
  const own = m.senderId === me;
  const state = own && m.senderRole !== "system"
    ? (m.seq == null ? "queued" : OnceChat.stateOf(m, conv(m.conversationId).record)) : undefined;
  return messageItem(m, { own, state });
}

function refreshStates() {
  const record = conv(selected).record;
  for (const li of $(".log").querySelectorAll("li.own")) setState(li, OnceChat.stateOf({ seq: Number(li.dataset.seq) }, record));
}

function renderPending() {
  const pending = $(".pending");
  const c = convs.get(selected);
  if (!c) return pending.replaceChildren();
  const shown = new Set([...c.messages.values()].map((m) => m.messageId));
  const mine = outbox.filter((e) => e.conversationId === c.id && !shown.has(e.messageId));
  pending.replaceChildren(...mine.map((e) => {
    const li = item({ ...e, seq: null, senderId: me, senderRole: "agent", sentAt: e.createdAt });
    if (acceptedLimbo.has(e.messageId)) setState(li, "sent");
    return li;
  }));
}

async function submit() {
  const body = $("#input").value.trim();
  if (!body || !selected) return;
  $("#input").value = ""; // at once: the next reply may be typed while this one is stored
  wire.typedAt = 0; // the next keystroke is news again
  try {
    await chat.send(selected, body);
  } catch (err) {
    if (!$("#input").value) $("#input").value = body;
    banner(err.message);
  }
}

function markRead() {
  if (!selected || document.visibilityState !== "visible") return;
  const c = conv(selected);
  const last = Math.max(0, ...c.messages.keys());
  if (last > ((c.record && c.record.myRead) || 0) && last > (c.readSent || 0)) {
    c.readSent = last;
    chat.markRead(c.id, last);
  }
}

function refreshEarlier() {
  const c = convs.get(selected);
  const first = c ? Math.min(...c.messages.keys(), c.floor || Infinity) : Infinity;
  $(".earlier").hidden = !(Number.isFinite(first) && first > 1);
}

/** Scroll back through history with the REST `before` cursor. */
async function earlier() {
  const c = convs.get(selected);
  const first = Math.min(...c.messages.keys(), c.floor || Infinity);
  try {
    const page = await chat.history(c.id, { before: first, limit: 20 });
    // The oldest seq fetched, voids included: seq 1 reached when there is no earlier page.
    c.floor = page.prev == null ? 1 : Math.min(c.floor || Infinity, ...page.messages.map((m) => m.seq));
    for (const m of page.messages) {
      if (!m.void && !c.messages.has(m.seq)) {
        c.messages.set(m.seq, m);
        insertItem(m);
      }
    }
  } catch (err) {
    banner(`Could not load earlier messages: ${err.message}`);
  }
  refreshEarlier();
}

async function transfer() {
  const target = $("#transfer-to").value;
  if (!selected || !target) return;
  try {
    const v = await chat.transfer(selected, target);
    applyLifecycle(conv(selected), "transferred", v.status, v.agentId, false);
    announce(`Transferred to ${target}`);
  } catch (err) {
    banner(`Transfer failed: ${err.message}`);
  }
  refreshAgents();
}

async function closeSelected() {
  if (!selected) return;
  try {
    const v = await chat.closeConversation(selected);
    applyLifecycle(conv(selected), "closed", v.status, v.agentId, false);
  } catch (err) {
    banner(`Close failed: ${err.message}`);
  }
  refreshAgents();
}

function scrollToEnd() {
  const s = $(".scroller");
  s.scrollTop = s.scrollHeight;
}

main().catch((err) => {
  console.error(err);
  banner(`The console could not start: ${err.message}`);
});
