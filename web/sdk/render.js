// The message list item the widget and the console both show: one place for
// its markup, its delivery state and its time, so the two pages cannot drift.
// Text only: bodies and names are set as textContent, never as HTML.

/** @typedef {"queued" | "sent" | "delivered" | "read" | "failed"} ItemState */

/** @type {Record<ItemState, string>} */
export const STATE_TEXT = { queued: "Queued", sent: "Sent", delivered: "Delivered", read: "Read", failed: "Not sent" };
/** @type {Record<ItemState, string>} */
export const STATE_MARK = { queued: "◷", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "!" };

/** A clock time (hours:minutes, the reader's locale) of an ISO timestamp; "" if there is none. @param {string | null | undefined} iso */
export function timeOf(iso) {
  const d = new Date(iso ?? "");
  return iso && !Number.isNaN(d.getTime()) ? d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

/** Show a delivery state on an own message's item. @param {HTMLElement} li @param {ItemState} state */
export function setState(li, state) {
  li.dataset.state = state;
  const span = li.querySelector(".state");
  if (span) {
    span.textContent = `${STATE_MARK[state]} ${STATE_TEXT[state]}`;
  }
}

/**
 * The `<li>` of one message: sender (not for system messages), body, time,
 * and for the viewer's own messages a delivery state (`state`, e.g. from
 * `OnceChat.stateOf`).
 * @param {{seq?: number | null, messageId: string, senderId: string, senderRole: string, body: string, sentAt?: string}} m
 * @param {{own: boolean, state?: ItemState}} how
 */
export function messageItem(m, { own, state }) {
  const li = document.createElement("li");
  li.className = m.senderRole === "system" ? "msg system" : own ? "msg own" : "msg peer";
  if (m.seq != null) li.dataset.seq = String(m.seq);
  li.dataset.messageId = m.messageId;
  if (m.senderRole !== "system") {
    const who = document.createElement("span");
    who.className = "sender";
    who.textContent = own ? "You" : m.senderId;
    li.append(who);
  }
  const body = document.createElement("p");
  body.className = "body";
  body.textContent = m.body;
  li.append(body);
  const meta = document.createElement("span");
  meta.className = "meta";
  const time = document.createElement("time");
  time.dateTime = m.sentAt || "";
  time.textContent = timeOf(m.sentAt);
  meta.append(time);
  li.append(meta);
  if (own && m.senderRole !== "system") {
    const span = document.createElement("span");
    span.className = "state";
    meta.append(" ", span);
    setState(li, state ?? "sent");
  }
  return li;
}
