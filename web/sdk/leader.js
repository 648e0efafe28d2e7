// The tabs of one user on one origin: a Web Lock elects the leader (the one
// tab that talks to the server and writes IndexedDB), a BroadcastChannel
// carries what the tabs tell each other.

/**
 * What the tabs tell each other (`t` names the kind).
 * @typedef {{t: "hello"}
 *   | {t: "connection", state: string}
 *   | {t: "outbox"}
 *   | {t: "committed", cid: string, seq: number}
 *   | {t: "accepted", detail: object}
 *   | {t: "rejected", detail: object}
 *   | {t: "cursors", record: object}
 *   | {t: "frame", frame: {type: string, [field: string]: unknown}}
 *   | {t: "req", op: "follow" | "typing", cid: string}
 *   | {t: "req", op: "read", cid: string, seq: number}} BusMessage
 */

/** A BroadcastChannel between the tabs of one user that also hands each message to this tab. */
export class TabBus {
  /**
   * @param {string} name
   * @param {(msg: BusMessage, local: boolean) => void} onMessage
   */
  constructor(name, onMessage) {
    this.onMessage = onMessage;
    this.closed = false;
    this._channel = new BroadcastChannel(name);
    this._channel.onmessage = (e) => onMessage(e.data, false);
  }

  /** Tell this tab and the others (a channel does not echo to its sender). @param {BusMessage} msg */
  publish(msg) {
    this.onMessage(msg, true);
    this.post(msg);
  }

  /** Tell only the other tabs. @param {BusMessage} msg */
  post(msg) {
    if (!this.closed) this._channel.postMessage(msg);
  }

  close() {
    this.closed = true;
    this._channel.close();
  }
}

/**
 * Run `lead` once this tab holds the lock `name` (at once without Web Locks,
 * e.g. an insecure context: then each tab acts alone). The returned function
 * gives the lock up (another tab then takes over).
 * @param {string} name
 * @param {() => void} lead
 * @param {() => boolean} stopped whether the tab has stopped meanwhile
 * @returns {() => void}
 */
export function electLeader(name, lead, stopped) {
  /** @type {(() => void) | null} */
  let release = null;
  let resigned = false;
  if (!navigator.locks) {
    lead();
    return () => {};
  }
  navigator.locks.request(name, () => {
    if (stopped() || resigned) return undefined;
    lead();
    return new Promise((resolve) => {
      release = () => resolve(undefined);
    });
  });
  return () => {
    resigned = true;
    if (release) release();
  };
}
