// rdev web console: the output pane: batched rendering and ANSI colours.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

/**
 * The output pane. Writes are queued and appended once per animation
 * frame as one DocumentFragment (one span per colour run, not per line),
 * so a 10,000-line replay costs a handful of layouts. Each frame spends
 * about 8 ms building; the rest waits for the next frame, keeping the page
 * responsive while a large output arrives.
 *
 * Each frame's text goes into a new block (`span.blk`, display: block)
 * holding whole lines: appending a block lays out only that block, not
 * everything above it. A line still open at the end of a frame is
 * continued in the same block by the next frame.
 *
 * ANSI SGR sequences (colours, bold, …) become classes; other escape
 * sequences are removed. stderr text has the `err` class.
 *
 * Auto-scroll follows the end while the view is at the bottom; scrolling up
 * stops it (a "Follow output" button appears), scrolling back down resumes.
 */
export class Terminal {
  constructor(pre, followButton) {
    this.pre = pre;
    this.followButton = followButton;
    this.queue = [];
    this.scheduled = false;
    this.following = true;
    this.lines = 0;
    this.open = null; // the last block, while its last line has no newline yet
    this.maxRuns = 256; // runs appended per frame; adapted to the measured cost
    this.sgr = { stdout: new Sgr(), stderr: new Sgr() };
    pre.dataset.lines = '0';
    pre.addEventListener('scroll', () => {
      const atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 8;
      if (atBottom !== this.following) {
        this.following = atBottom;
        this.followButton.hidden = atBottom;
      }
    }, { passive: true });
    followButton.addEventListener('click', () => {
      this.following = true;
      this.followButton.hidden = true;
      pre.scrollTop = pre.scrollHeight;
    });
  }

  write(stream, text) {
    // A terminal's line endings (`\r\n`) and carriage returns: the pane
    // shows lines, not a screen.
    if (this.tty) text = text.replace(/\r+\n/g, '\n').replace(/\r/g, '').replace(/\x07/g, '');
    if (!text) return;
    this.queue.push({ stream: stream === 'stderr' ? 'stderr' : 'stdout', text, marker: false, runs: null });
    this.schedule();
  }

  marker(text) {
    this.queue.push({ stream: 'stdout', text, marker: true, runs: null });
    this.schedule();
  }

  schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.scheduled = false;
    const start = performance.now();
    const frag = document.createDocumentFragment();
    let block = null;
    let open = this.open;
    const emit = (cls, text) => {
      if (open) {
        // Finish the open line in its own block.
        const nl = text.indexOf('\n');
        const head = nl < 0 ? text : text.slice(0, nl + 1);
        open.append(run(cls, head));
        if (nl < 0) return;
        open = null;
        text = text.slice(nl + 1);
        if (!text) return;
      }
      if (!block) {
        block = document.createElement('span');
        block.className = 'blk';
        frag.append(block);
      }
      block.append(run(cls, text));
      if (!text.endsWith('\n')) open = block;
    };
    // Within the frame's budget (at most `maxRuns` runs, ~8 ms of script),
    // in slices: a 64 KiB chunk of coloured lines is thousands of runs and
    // may take several frames.
    let emitted = 0;
    while (this.queue.length && emitted < this.maxRuns && (emitted === 0 || performance.now() - start < 8)) {
      const item = this.queue[0];
      if (!item.runs) {
        const base = item.stream === 'stderr' ? 'err' : '';
        item.runs = item.marker
          ? [['marker', item.text]]
          : this.sgr[item.stream].split(item.text).map(([cls, part]) => [base && cls ? `${base} ${cls}` : base || cls, part]);
        item.pos = 0;
      }
      const end = Math.min(item.runs.length, item.pos + Math.min(256, this.maxRuns - emitted));
      for (; item.pos < end; item.pos += 1) {
        const [cls, part] = item.runs[item.pos];
        emit(cls, part);
        this.lines += countNewlines(part);
        emitted += 1;
      }
      if (item.pos === item.runs.length) this.queue.shift();
    }
    if (block) this.pre.append(frag);
    this.open = open;
    this.pre.dataset.lines = String(this.lines);
    if (this.following) {
      // Reading scrollHeight lays the new block out now, so `cost` below
      // includes style and layout, not just building the nodes.
      this.pre.scrollTop = this.pre.scrollHeight;
      const cost = performance.now() - start;
      // Aim at ~12 ms a frame on this machine: fewer runs next frame when
      // this one was slow, more when it was quick.
      if (emitted >= 64) this.maxRuns = Math.min(8192, Math.max(64, Math.round((emitted * 12) / Math.max(cost, 1))));
    }
    if (this.queue.length) this.schedule();
    else this.idle();
  }

  /** Calls `fn` once everything written so far is on the page. */
  whenIdle(fn) {
    this.waiting = (this.waiting || []).concat(fn);
    if (!this.scheduled) this.idle();
  }

  idle() {
    const fns = this.waiting || [];
    this.waiting = [];
    for (const fn of fns) fn();
  }
}

export function run(cls, text) {
  const span = document.createElement('span');
  if (cls) span.className = cls;
  span.textContent = text;
  return span;
}

export function countNewlines(s) {
  let n = 0;
  let i = -1;
  while ((i = s.indexOf('\n', i + 1)) !== -1) n += 1;
  return n;
}

/**
 * ANSI escape handling for one stream: keeps the SGR state (and an escape
 * sequence cut at a chunk boundary) across chunks, and splits text into
 * [class, text] runs.
 */
export class Sgr {
  constructor() {
    this.fg = null;
    this.bg = null;
    this.bold = false;
    this.dim = false;
    this.italic = false;
    this.underline = false;
    this.carry = '';
  }

  cls() {
    const c = [];
    if (this.bold) c.push('b');
    if (this.dim) c.push('dim');
    if (this.italic) c.push('i');
    if (this.underline) c.push('u');
    if (this.fg !== null) c.push(`f${this.fg}`);
    if (this.bg !== null) c.push(`g${this.bg}`);
    return c.join(' ');
  }

  split(input) {
    let text = this.carry + input;
    this.carry = '';
    const runs = [];
    if (text.indexOf('\x1b') < 0) {
      runs.push([this.cls(), text]);
      return runs;
    }
    // CSI (ESC [ params final), OSC (ESC ] … BEL or ESC \), other ESC x.
    const re = /\x1b(?:\[([0-9;?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])/g;
    let at = 0;
    let m;
    while ((m = re.exec(text)) !== null) {
      if (m.index > at) runs.push([this.cls(), text.slice(at, m.index)]);
      at = re.lastIndex;
      if (m[2] === 'm') this.apply(m[1]);
    }
    let rest = text.slice(at);
    // An escape sequence cut by the chunk boundary: keep it for the next chunk.
    const esc = rest.lastIndexOf('\x1b');
    if (esc >= 0 && rest.length - esc < 64 && /^\x1b(\[[0-9;?]*|\][^\x07\x1b]*)?$/.test(rest.slice(esc))) {
      this.carry = rest.slice(esc);
      rest = rest.slice(0, esc);
    }
    if (rest) runs.push([this.cls(), rest.replace(/\x1b/g, '')]);
    return runs.filter((r) => r[1] !== '');
  }

  apply(params) {
    const p = params === '' ? [0] : params.split(';').map((x) => (x === '' ? 0 : Number(x)));
    for (let i = 0; i < p.length; i += 1) {
      const n = p[i];
      if (n === 0) { this.fg = null; this.bg = null; this.bold = false; this.dim = false; this.italic = false; this.underline = false; }
      else if (n === 1) this.bold = true;
      else if (n === 2) this.dim = true;
      else if (n === 3) this.italic = true;
      else if (n === 4) this.underline = true;
      else if (n === 22) { this.bold = false; this.dim = false; }
      else if (n === 23) this.italic = false;
      else if (n === 24) this.underline = false;
      else if (n >= 30 && n <= 37) this.fg = n - 30;
      else if (n >= 90 && n <= 97) this.fg = n - 90 + 8;
      else if (n === 39) this.fg = null;
      else if (n >= 40 && n <= 47) this.bg = n - 40;
      else if (n >= 100 && n <= 107) this.bg = n - 100 + 8;
      else if (n === 49) this.bg = null;
      else if (n === 38 || n === 48) {
        // 38;5;N (256 colours: the first 16 map to classes, others are
        // dropped) and 38;2;R;G;B (true colour: dropped).
        let colour = null;
        if (p[i + 1] === 5) { colour = p[i + 2] < 16 ? p[i + 2] : null; i += 2; }
        else if (p[i + 1] === 2) i += 4;
        if (n === 38) this.fg = colour;
        else this.bg = colour;
      }
    }
  }
}
