// rdev web console: a command's page: facts, cancel, live output, interactive input.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { api, can, enc, needs, query } from './api.js';
import { append, badge, clear, duration, h, sleep, when } from './dom.js';
import { followEvents } from './events.js';
import { commandDuration, commandText, reasonText, TERMINAL } from './format.js';
import { Terminal } from './terminal.js';
import { showProblem } from './widgets.js';

// ------------------------------------------------------------ command --

export function commandPage(ctx, id) {
  const { main, signal } = ctx;
  const crumbs = h('div', { class: 'crumbs' }, h('a', { href: '#/projects' }, 'Projects'));
  const title = h('div', { class: 'command-line mono', id: 'command-line' });
  const status = h('span', { id: 'status' });
  const facts = h('div', { class: 'facts' });
  const errors = h('div');
  const cancel = needs(h('button', { id: 'cancel', class: 'danger', type: 'button', disabled: true }, 'Cancel'), 'commands:run');
  const streamState = h('span', { class: 'stream-state', id: 'stream-state' }, 'connecting…');
  const out = h('pre', { class: 'output', id: 'output', tabindex: '0', 'aria-live': 'off' });
  const follow = h('button', { type: 'button', class: 'follow', id: 'follow', hidden: true }, '↓ Follow output');
  let cmd = null;
  let cancelling = false; // asked; the stream reports when it took effect
  let took = null; // the Duration fact, updated every second while running

  function show(c) {
    // Terminal states are final: a late answer (e.g. to Cancel) showing
    // the command still running must not undo what the stream reported.
    if (cmd && TERMINAL.has(cmd.status) && !TERMINAL.has(c.status)) return;
    cmd = c;
    clear(crumbs).append(h('a', { href: '#/projects' }, 'Projects'), ' / ',
      h('a', { href: `#/projects/${enc(c.project)}` }, c.project), ' / ', c.id);
    if (title.textContent !== commandText(c)) clear(title).append(commandText(c));
    clear(status).append(badge(c.status));
    status.dataset.status = c.status;
    const fact = (k, v) => h('div', null, h('span', { class: 'k' }, k), h('span', null, v));
    took = h('span', null, duration(commandDuration(c)));
    append(clear(facts), [
      fact('Exit code', c.exit_code === null || c.exit_code === undefined ? '–' : String(c.exit_code)),
      fact('Reason', reasonText(c)),
      h('div', null, h('span', { class: 'k' }, 'Duration'), took),
      fact('Priority', String(c.priority)),
      fact('Timeout', `${c.timeout_s} s`),
      fact('Created', when(c.created_at)),
      fact('Started', when(c.started_at)),
      fact('Finished', when(c.finished_at)),
      fact('Worker', c.worker_id || '–'),
      fact('Output', `${c.output_bytes} bytes${c.truncated ? ' (truncated)' : ''}`),
      c.error ? fact('Error', c.error) : null]);
    if (can('commands:run')) cancel.disabled = TERMINAL.has(c.status) || cancelling;
    if (cancelling && !TERMINAL.has(c.status)) cancel.textContent = 'Cancelling…';
    else cancel.textContent = 'Cancel';
    if (c.tty) term.tty = true;
    if (c.stdin === 'pipe' && !interactive) interactive = new InputPanel(input, out, id, c, errors, signal);
    if (interactive) interactive.update(c);
  }

  cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    cancelling = true;
    try {
      show(await api('POST', `/v1/commands/${enc(id)}/cancel`, { signal }));
    } catch (e) {
      cancelling = false;
      if (e.name !== 'AbortError') showProblem(errors, e);
      if (cmd) show(cmd);
    }
  });

  const input = h('div', { class: 'input-panel', id: 'input-panel', hidden: true });
  main.append(crumbs, h('h1', null, 'Command ', status), title, facts,
    h('div', { class: 'actions' }, cancel, streamState), errors,
    h('div', { class: 'term-wrap' }, out, follow), input);

  const term = new Terminal(out, follow);
  let interactive = null;
  // The duration of a running command ticks.
  (async () => {
    while (!signal.aborted) {
      await sleep(1000, signal);
      if (cmd && cmd.started_at && !cmd.finished_at && took) took.textContent = duration(commandDuration(cmd));
    }
  })();
  followEvents(id, signal, {
    onStatus: show,
    onOutput: (stream, text) => term.write(stream, text),
    onGap: (from, to) => term.marker(`[rdev: output truncated; chunks ${from}-${to} were not kept]\n`),
    onState: (text, cls) => { streamState.textContent = text; streamState.className = `stream-state ${cls || ''}`; },
    onConnected: (n) => { streamState.dataset.connections = String(n); },
    onProblem: (e) => showProblem(errors, e),
    // A User Timing mark for profiling (and the browser tests): the whole
    // output is on the page.
    onEnd: () => term.whenIdle(() => performance.mark('rdev:output-complete')),
  });
}

/**
 * Input for an interactive command (`stdin: "pipe"`, maybe a `tty`): a
 * line to send (Enter sends it with a newline, `\r` on a terminal), end of
 * input, Ctrl-C. With a terminal the output pane takes key presses too
 * (click it, then type: keys, Ctrl-letters, arrows go to the program), and
 * the terminal's size follows the pane (on load and on window resize).
 * Input is sent in order: one request at a time, keys typed meanwhile
 * go together in the next.
 */
export class InputPanel {
  constructor(panel, pane, id, c, errors, signal) {
    this.id = id;
    this.errors = errors;
    this.signal = signal;
    this.tty = Boolean(c.tty);
    this.pending = '';
    this.sending = false;
    this.size = c.tty ? `${c.tty.cols}x${c.tty.rows}` : null;
    const allowed = can('commands:input') || can('commands:run');
    this.line = h('input', { id: 'stdin-line', class: 'mono', placeholder: this.tty ? 'Type a line; Enter sends it (or click the terminal and type)' : 'Type a line; Enter sends it', autocomplete: 'off', spellcheck: 'false' });
    this.sendButton = needs(h('button', { id: 'stdin-send', type: 'submit' }, 'Send'), 'commands:input');
    this.eofButton = needs(h('button', { id: 'stdin-eof', type: 'button' }, this.tty ? 'Ctrl-D' : 'End input'), 'commands:input');
    this.intButton = needs(h('button', { id: 'signal-int', type: 'button' }, 'Ctrl-C'), 'commands:input');
    if (allowed) [this.sendButton, this.eofButton, this.intButton].forEach((b) => { b.disabled = false; b.title = ''; });
    this.line.disabled = !allowed;
    const form = h('form', { class: 'stdin-form', id: 'stdin-form' }, this.line, this.sendButton);
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      this.send(`${this.line.value}${this.tty ? '\r' : '\n'}`);
      this.line.value = '';
    });
    this.eofButton.addEventListener('click', () => (this.tty ? this.send('\x04') : this.post('?eof=true', '')));
    this.intButton.addEventListener('click', () => this.control('signal', { signal: 'INT' }));
    append(panel, [form, h('div', { class: 'actions' }, this.eofButton, this.intButton)]);
    panel.hidden = false;
    if (this.tty && allowed) {
      pane.classList.add('tty');
      pane.addEventListener('keydown', (e) => {
        const bytes = keyBytes(e);
        if (bytes === null) return;
        e.preventDefault();
        this.send(bytes);
      });
      pane.addEventListener('paste', (e) => {
        e.preventDefault();
        this.send(e.clipboardData.getData('text'));
      });
      this.pane = pane;
      const fit = () => this.fit();
      let timer = null;
      window.addEventListener('resize', () => { clearTimeout(timer); timer = setTimeout(fit, 150); }, { signal });
      fit();
    }
  }

  update(c) {
    if (TERMINAL.has(c.status)) {
      [this.line, this.sendButton, this.eofButton, this.intButton].forEach((el) => { el.disabled = true; });
      if (this.pane) this.pane.classList.remove('tty');
    }
  }

  /** Queues bytes for standard input; sent in order. */
  send(text) {
    this.pending += text;
    this.pump();
  }

  async pump() {
    if (this.sending || !this.pending) return;
    this.sending = true;
    try {
      while (this.pending) {
        const text = this.pending;
        this.pending = '';
        await this.post('', text);
      }
    } finally {
      this.sending = false;
    }
  }

  async post(query, text) {
    try {
      await api('POST', `/v1/commands/${enc(this.id)}/stdin${query}`, { raw: new TextEncoder().encode(text), signal: this.signal });
    } catch (e) {
      if (e.name !== 'AbortError') showProblem(this.errors, e);
    }
  }

  async control(what, body) {
    try {
      await api('POST', `/v1/commands/${enc(this.id)}/${what}`, { body, signal: this.signal });
    } catch (e) {
      if (e.name !== 'AbortError') showProblem(this.errors, e);
    }
  }

  /** Sets the terminal's size to what fits in the pane. */
  fit() {
    const probe = h('span', { class: 'probe' }, 'MMMMMMMMMM');
    this.pane.append(probe);
    const cw = probe.getBoundingClientRect().width / 10;
    const lh = probe.getBoundingClientRect().height;
    probe.remove();
    if (!cw || !lh) return;
    const style = getComputedStyle(this.pane);
    const innerW = this.pane.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
    const innerH = this.pane.clientHeight - parseFloat(style.paddingTop) - parseFloat(style.paddingBottom);
    const cols = Math.max(1, Math.min(1000, Math.floor(innerW / cw)));
    const rows = Math.max(1, Math.min(1000, Math.floor(innerH / lh)));
    const size = `${cols}x${rows}`;
    if (size === this.size) return;
    this.size = size;
    this.pane.dataset.size = size;
    this.control('resize', { cols, rows });
  }
}

/** The bytes a key press sends to a terminal (null: not ours to take). */
export function keyBytes(e) {
  if (e.metaKey || e.isComposing) return null;
  const special = {
    Enter: '\r', Backspace: '\x7f', Tab: '\t', Escape: '\x1b',
    ArrowUp: '\x1b[A', ArrowDown: '\x1b[B', ArrowRight: '\x1b[C', ArrowLeft: '\x1b[D',
    Home: '\x1b[H', End: '\x1b[F', Delete: '\x1b[3~', PageUp: '\x1b[5~', PageDown: '\x1b[6~',
  };
  if (special[e.key] !== undefined) return special[e.key];
  if (e.ctrlKey && !e.altKey && e.key.length === 1) {
    const c = e.key.toUpperCase().charCodeAt(0);
    if (c >= 64 && c <= 95) return String.fromCharCode(c - 64);
    return null;
  }
  if (e.key.length === 1) return e.altKey ? `\x1b${e.key}` : e.key;
  return null;
}
