// rdev web console: following a command's event stream (SSE over fetch), resuming by seq.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { enc, problemOf, session, signOut } from './api.js';
import { sleep } from './dom.js';

/**
 * Follows GET /v1/commands/{id}/events with fetch streaming (so the key
 * goes in the Authorization header, which EventSource cannot send).
 *
 * Resuming: every `output` event has `id: seq`. After a dropped connection
 * (or a `reconnect` event) it reconnects with `Last-Event-ID: <last seq>`,
 * and drops any chunk with seq ≤ the last one shown, so a chunk is never
 * shown twice. It stops at `end`, or when the page is left (`signal`).
 */
export async function followEvents(id, signal, on) {
  let last = 0; // highest output seq shown
  let lastGap = 0; // highest to_seq of a gap shown
  let retry = 2000; // server-suggested reconnection delay (`retry:` field)
  let failures = 0;
  let connections = 0;
  while (!signal.aborted) {
    let ended = false;
    let fatal = null;
    try {
      const headers = { Accept: 'text/event-stream', Authorization: `Bearer ${session.key}` };
      if (last > 0) headers['Last-Event-ID'] = String(last);
      const resp = await fetch(`/v1/commands/${enc(id)}/events`, { headers, signal, cache: 'no-store', credentials: 'omit' });
      if (!resp.ok) {
        const err = await problemOf(resp);
        if (resp.status === 401) { signOut(err); return; }
        // 429 (stream limits) and 5xx are worth retrying; others are not.
        if (resp.status !== 429 && resp.status < 500) fatal = err;
        else on.onProblem(err);
      } else {
        failures = 0;
        connections += 1;
        on.onConnected(connections);
        on.onProblem(null);
        on.onState(last > 0 ? 'live (resumed)' : 'live', 'live');
        const parser = new SseParser((ev) => {
          if (ev.retry !== null) retry = ev.retry;
          let data = null;
          try { data = ev.data ? JSON.parse(ev.data) : null; } catch (_) { return; }
          switch (ev.event) {
            case 'output':
              if (!data || typeof data.seq !== 'number' || data.seq <= last) return; // duplicate
              last = data.seq;
              on.onOutput(data.stream, data.data || '');
              break;
            case 'gap':
              if (data && data.to_seq > lastGap && data.to_seq > last) {
                lastGap = data.to_seq;
                on.onGap(data.from_seq, data.to_seq);
              }
              break;
            case 'status':
              if (data) on.onStatus(data);
              break;
            case 'end':
              if (data) on.onStatus(data);
              ended = true;
              break;
            case 'reconnect':
              on.onState(`reconnecting (${(data && data.reason) || 'server asked'})`, 'retrying');
              break;
            default:
              break; // unknown events are ignored, as EventSource does
          }
        });
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parser.push(value);
          if (ended) { reader.cancel().catch(() => {}); break; }
        }
      }
    } catch (e) {
      if (signal.aborted || e.name === 'AbortError') return;
      // A dropped connection: fall through and reconnect.
    }
    if (ended) {
      on.onState('ended', 'ended');
      on.onEnd();
      return;
    }
    if (fatal) { on.onProblem(fatal); on.onState('stopped', ''); return; }
    failures += 1;
    // The server's retry hint, growing on repeated failures (max 30 s).
    const wait = Math.min(30000, retry * 2 ** Math.max(0, failures - 1));
    on.onState(`disconnected; retrying in ${Math.round(wait / 100) / 10} s`, 'retrying');
    await sleep(wait, signal);
  }
}

/**
 * An incremental text/event-stream parser (the WHATWG "interpret an event
 * stream" rules): lines end with CRLF, LF or CR; `:` lines are comments;
 * a blank line dispatches {event, data, id, retry}.
 */
export class SseParser {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.buf = '';
    this.scanned = 0;
    this.reset();
  }

  reset() {
    this.event = '';
    this.data = [];
    this.id = null;
    this.retry = null;
  }

  push(text) {
    const buf = this.buf + text;
    const eol = /\r\n|\r|\n/g;
    eol.lastIndex = this.scanned; // the kept tail was already searched
    let start = 0;
    let m;
    while ((m = eol.exec(buf)) !== null) {
      // A CR at the very end may be the first half of a CRLF: wait for more.
      if (m[0] === '\r' && m.index + 1 === buf.length) break;
      this.line(buf.slice(start, m.index));
      start = eol.lastIndex;
    }
    this.buf = buf.slice(start);
    this.scanned = this.buf.endsWith('\r') ? this.buf.length - 1 : this.buf.length;
  }

  line(line) {
    if (line === '') {
      if (this.data.length || this.event) {
        this.dispatch({ event: this.event || 'message', data: this.data.join('\n'), id: this.id, retry: this.retry });
      }
      this.reset();
      return;
    }
    if (line[0] === ':') return;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value[0] === ' ') value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id' && !value.includes('\0')) this.id = value;
    else if (field === 'retry' && /^\d+$/.test(value)) this.retry = Number(value);
  }
}
