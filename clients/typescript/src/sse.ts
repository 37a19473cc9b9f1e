/**
 * A `text/event-stream` parser (the WHATWG rules: CRLF, LF or CR end a
 * line, `:` starts a comment, `data` lines join with `\n`, an event is
 * dispatched at a blank line) and the reconnect state of a command's event
 * stream.
 *
 * Exactly-once output rests on the server numbering chunks (`seq`, sent as
 * the event id): after a drop the stream is reopened with `Last-Event-ID`
 * set to the last `seq` handed out, and any chunk at or below it is
 * skipped. An event cut by the drop lacks its blank line, so it is never
 * dispatched; the server sends it again.
 */

import type { Command, CommandEvent } from "./types.js";

export interface RawEvent {
  event: string;
  data: string;
  id: string | undefined;
  retry: number | undefined;
}

export class SseParser {
  #decoder = new TextDecoder("utf-8");
  #text = "";
  #afterCr = false;
  #started = false;
  #data: string[] = [];
  #event = "";
  #id: string | undefined;
  #retry: number | undefined;

  /** Feeds bytes as they arrive; returns the events they completed. */
  feed(chunk: Uint8Array): RawEvent[] {
    let text = this.#decoder.decode(chunk, { stream: true });
    if (this.#afterCr && text.startsWith("\n")) text = text.slice(1); // CRLF split between reads
    this.#afterCr = false;
    this.#text += text;
    const out: RawEvent[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.#text);
      if (!m) break;
      if (m[0] === "\r" && m.index + 1 === this.#text.length) this.#afterCr = true;
      let line = this.#text.slice(0, m.index);
      this.#text = this.#text.slice(m.index + m[0].length);
      if (!this.#started) {
        this.#started = true;
        if (line.startsWith("\ufeff")) line = line.slice(1);
      }
      const ev = this.#line(line);
      if (ev) out.push(ev);
    }
    return out;
  }

  #line(line: string): RawEvent | undefined {
    if (line === "") {
      if (this.#data.length === 0) {
        this.#event = "";
        return undefined;
      }
      const ev = { event: this.#event || "message", data: this.#data.join("\n"), id: this.#id, retry: this.#retry };
      this.#data = [];
      this.#event = "";
      this.#retry = undefined;
      return ev;
    }
    if (line.startsWith(":")) return undefined;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") this.#data.push(value);
    else if (name === "event") this.#event = value;
    else if (name === "id" && !value.includes("\0")) this.#id = value;
    else if (name === "retry" && /^\d+$/.test(value)) this.#retry = Number(value);
    return undefined;
  }
}

const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 5000;
/** A connection that stayed up this long was healthy: back off from scratch. */
const HEALTHY_CONNECTION_MS = 5000;

/** Where a command's event stream stands: last `seq`, backoff, last sign of life. */
export class Follow {
  lastSeq: number;
  reconnects = 0;
  done = false;
  #backoff = BACKOFF_MIN_MS;
  #serverRetry: number | undefined;
  #alive = Date.now();
  #opened = Date.now();
  #progressed = false;

  constructor(
    afterSeq: number,
    readonly giveUpAfterMs: number,
  ) {
    this.lastSeq = afterSeq;
  }

  headers(): Record<string, string> {
    const h: Record<string, string> = { accept: "text/event-stream" };
    if (this.lastSeq > 0) h["last-event-id"] = String(this.lastSeq);
    return h;
  }

  opened(): void {
    this.#opened = Date.now();
    this.#progressed = false;
    this.touch();
  }

  touch(): void {
    this.#alive = Date.now();
  }

  /** The typed event to hand out, or undefined (a duplicate, an unknown type). */
  onEvent(raw: RawEvent): CommandEvent | undefined {
    if (raw.event === "reconnect") {
      // The API closes this stream on purpose (shutdown, maximum lifetime)
      // and says when to come back.
      this.#serverRetry = raw.retry;
      return undefined;
    }
    let data: Record<string, unknown>;
    try {
      const parsed: unknown = JSON.parse(raw.data);
      if (!parsed || typeof parsed !== "object") return undefined;
      data = parsed as Record<string, unknown>;
    } catch {
      return undefined;
    }
    switch (raw.event) {
      case "output": {
        const seq = Number(data.seq);
        if (!(seq > this.lastSeq)) return undefined; // already handed out before a reconnect
        this.lastSeq = seq;
        this.#progressed = true;
        return { type: "output", seq, stream: String(data.stream), data: String(data.data ?? "") };
      }
      case "gap": {
        const toSeq = Number(data.to_seq);
        if (!(toSeq > this.lastSeq)) return undefined;
        this.lastSeq = toSeq;
        this.#progressed = true;
        return { type: "gap", fromSeq: Number(data.from_seq), toSeq };
      }
      case "status":
        return { type: "status", command: data as Command };
      case "end":
        this.done = true;
        return { type: "end", command: data as Command };
      default:
        return undefined;
    }
  }

  /** Milliseconds to wait before reconnecting; undefined when it is time to give up. */
  nextDelay(retryAfterMs?: number): number | undefined {
    if (Date.now() - this.#alive > this.giveUpAfterMs) return undefined;
    if (this.#progressed || Date.now() - this.#opened >= HEALTHY_CONNECTION_MS) {
      this.#backoff = BACKOFF_MIN_MS;
    }
    const delay = Math.max(this.#backoff, this.#serverRetry ?? 0, retryAfterMs ?? 0);
    this.#serverRetry = undefined;
    this.#backoff = Math.min(this.#backoff * 2, BACKOFF_MAX_MS);
    this.reconnects += 1;
    // Jitter, so many clients cut at once do not come back at once.
    return delay * (0.8 + 0.4 * Math.random());
  }
}
