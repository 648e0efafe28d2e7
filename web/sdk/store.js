// IndexedDB persistence of the browser SDK: the outbox, the processed
// messages and the per-conversation cursors of one user on one origin.
//
// Every tab of the user opens the same database; only the leader tab writes
// messages and cursors, any tab may add to the outbox (see session.js).

/** @typedef {import("./core.js").Message} Message */

/**
 * A message in the outbox, kept until the server's `accepted`.
 * @typedef {object} OutboxEntry
 * @property {string} messageId
 * @property {string} conversationId
 * @property {string} body
 * @property {string | null} senderId
 * @property {number} order the outbox's order (time of `send`, made unique within a tab)
 * @property {string} createdAt
 */

/**
 * A followed conversation's record. last: processed (the seq rule);
 * peerAck / peerRead: the other side's cursors (delivered / read marks);
 * myRead: this user's read cursor; paused: no longer resumed (transferred
 * away); ownMax: the highest seq of an own message.
 * @typedef {object} ConversationRecord
 * @property {string} conversationId
 * @property {number} last
 * @property {number} peerAck
 * @property {number} peerRead
 * @property {number} myRead
 * @property {boolean} paused
 * @property {number} [ownMax]
 */

const VERSION = 1;

/**
 * @template T
 * @param {IDBRequest<T>} r
 * @returns {Promise<T>}
 */
function request(r) {
  return new Promise((resolve, reject) => {
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

/** @param {IDBTransaction} tx @returns {Promise<void>} */
function completion(tx) {
  return new Promise((resolve, reject) => {
    tx.oncomplete = () => resolve();
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("transaction aborted"));
  });
}

/** The SDK's database: `outbox`, `messages` ([conversationId, seq]) and `conversations`. */
export class Store {
  /** @param {string} name */
  static async open(name) {
    const r = indexedDB.open(name, VERSION);
    r.onupgradeneeded = () => {
      const db = r.result;
      db.createObjectStore("outbox", { keyPath: "messageId" });
      db.createObjectStore("messages", { keyPath: ["conversationId", "seq"] });
      db.createObjectStore("conversations", { keyPath: "conversationId" });
    };
    const db = await request(r);
    // Another tab upgrading the schema: step aside rather than block it.
    db.onversionchange = () => db.close();
    return new Store(db);
  }

  /** @param {IDBDatabase} db */
  constructor(db) {
    this.db = db;
  }

  /** Every unaccepted message, oldest first. @returns {Promise<OutboxEntry[]>} */
  async outbox() {
    const tx = this.db.transaction("outbox", "readonly");
    /** @type {OutboxEntry[]} */
    const all = await request(tx.objectStore("outbox").getAll());
    return all.sort((a, b) => a.order - b.order);
  }

  /** Keep a message until `accepted`; resolves once it is durable. @param {OutboxEntry} entry */
  async addOutbox(entry) {
    const tx = this.db.transaction("outbox", "readwrite");
    tx.objectStore("outbox").put(entry);
    await completion(tx);
  }

  /** @param {string} messageId */
  async deleteOutbox(messageId) {
    const tx = this.db.transaction("outbox", "readwrite");
    tx.objectStore("outbox").delete(messageId);
    await completion(tx);
  }

  /** Every followed conversation's record (cursors and peer cursors). @returns {Promise<ConversationRecord[]>} */
  async conversations() {
    const tx = this.db.transaction("conversations", "readonly");
    return request(tx.objectStore("conversations").getAll());
  }

  /** @param {string} conversationId @returns {Promise<ConversationRecord | undefined>} */
  async conversation(conversationId) {
    const tx = this.db.transaction("conversations", "readonly");
    return request(tx.objectStore("conversations").get(conversationId));
  }

  /**
   * Merge `changes` into a conversation's record (created when absent).
   * @param {string} conversationId
   * @param {Partial<ConversationRecord>} changes
   * @returns {Promise<ConversationRecord>}
   */
  async updateConversation(conversationId, changes) {
    const tx = this.db.transaction("conversations", "readwrite");
    const os = tx.objectStore("conversations");
    /** @type {ConversationRecord} */
    const current = (await request(os.get(conversationId))) || newRecord(conversationId);
    const next = { ...current, ...changes };
    os.put(next);
    await completion(tx);
    return next;
  }

  /**
   * Store processed messages and move the cursor in one transaction: a
   * crash leaves either both or neither, and the cursor never moves back.
   * @param {string} conversationId
   * @param {Message[]} messages
   * @param {number} last
   */
  async commit(conversationId, messages, last) {
    const tx = this.db.transaction(["messages", "conversations"], "readwrite");
    const ms = tx.objectStore("messages");
    for (const m of messages) ms.put(m);
    const cs = tx.objectStore("conversations");
    /** @type {ConversationRecord} */
    const current = (await request(cs.get(conversationId))) || newRecord(conversationId);
    if (last > current.last) cs.put({ ...current, last });
    await completion(tx);
  }

  /**
   * Messages of a conversation with `from <= seq <= to`, in seq order.
   * @param {string} conversationId @param {number} from @param {number} to
   * @returns {Promise<Message[]>}
   */
  async range(conversationId, from, to) {
    const tx = this.db.transaction("messages", "readonly");
    const keys = IDBKeyRange.bound([conversationId, from], [conversationId, to]);
    return request(tx.objectStore("messages").getAll(keys));
  }

  /**
   * The latest `limit` stored messages of a conversation, in seq order.
   * @param {string} conversationId @param {number} limit
   * @returns {Promise<Message[]>}
   */
  async latest(conversationId, limit) {
    const tx = this.db.transaction("messages", "readonly");
    const keys = IDBKeyRange.bound([conversationId, 0], [conversationId, Number.MAX_SAFE_INTEGER]);
    /** @type {Message[]} */
    const out = [];
    await new Promise((resolve, reject) => {
      const r = tx.objectStore("messages").openCursor(keys, "prev");
      r.onerror = () => reject(r.error);
      r.onsuccess = () => {
        const cursor = r.result;
        if (!cursor || out.length >= limit) return resolve(undefined);
        out.push(cursor.value);
        cursor.continue();
      };
    });
    return out.reverse();
  }
}

/** @param {string} conversationId @returns {ConversationRecord} */
export function newRecord(conversationId) {
  // last: processed (the seq rule); peerAck / peerRead: the other side's
  // cursors (delivered / read marks); myRead: this user's read cursor.
  return { conversationId, last: 0, peerAck: 0, peerRead: 0, myRead: 0, paused: false };
}
