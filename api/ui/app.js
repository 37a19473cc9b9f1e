// rdev web console: a single page, no framework, no build step.
//
// Rules this file keeps (see docs/API.md, "Web console"):
// - The API key lives only in this tab's sessionStorage and is sent only in
//   the Authorization header; it never appears in a URL.
// - Text from the API is put into the page as text nodes (textContent),
//   never parsed as HTML.
// - The Content-Security-Policy forbids inline script and style: behaviour
//   is attached here with addEventListener, looks are classes in app.css.
'use strict';

(() => {
  const KEY_ITEM = 'rdev.key';
  const TERMINAL = new Set(['succeeded', 'failed', 'timed_out', 'cancelled']);
  const COMMAND_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled'];
  const DELIVERY_STATUSES = ['pending', 'succeeded', 'failed', 'dead'];
  const PAGE = 50;

  // ---------------------------------------------------------------- DOM --

  /** Builds an element: h('td', {class: 'num', title: 'x'}, 'text', child). */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false || k === 'value') continue;
      if (k === 'class') el.className = v;
      else if (k === 'on') for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      else if (k === 'disabled' || k === 'hidden' || k === 'checked' || k === 'selected') el[k] = true;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    append(el, children);
    // After `type`, so the value is sanitised for the right input type.
    if (attrs && attrs.value !== undefined && attrs.value !== null) el.value = attrs.value;
    return el;
  }

  function append(el, children) {
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  function clear(el) {
    el.replaceChildren();
    return el;
  }

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------ session --

  const session = {
    key: sessionStorage.getItem(KEY_ITEM),
    me: null, // GET /v1/whoami
  };

  /** Whether the signed-in key holds `scope` (admin holds every scope). */
  function can(scope) {
    const s = (session.me && session.me.scopes) || [];
    return s.includes('admin') || s.includes(scope);
  }

  /** Disables `button` with an explanation when the key lacks `scope`. */
  function needs(button, scope, extra) {
    if (!can(scope)) {
      button.disabled = true;
      button.title = `Needs the ${scope} scope; this key has ${(session.me.scopes || []).join(', ')}`;
    } else if (extra) {
      button.disabled = true;
      button.title = extra;
    }
    return button;
  }

  function signOut(message) {
    sessionStorage.removeItem(KEY_ITEM);
    session.key = null;
    session.me = null;
    render(message);
  }

  // ---------------------------------------------------------------- API --

  /** An API error answer (problem+json, RFC 9457), or a network failure. */
  class ApiError extends Error {
    constructor(p) {
      super(p.detail || p.title || 'request failed');
      this.status = p.status || 0;
      this.title = p.title || 'Request failed';
      this.detail = p.detail || '';
      this.errors = Array.isArray(p.errors) ? p.errors : [];
      this.type = p.type || '';
    }
  }

  async function problemOf(resp) {
    let p = null;
    try {
      const text = await resp.text();
      p = JSON.parse(text);
    } catch (_) { /* not JSON */ }
    if (!p || typeof p !== 'object') p = {};
    return new ApiError({
      status: resp.status,
      title: typeof p.title === 'string' ? p.title : `HTTP ${resp.status}`,
      detail: typeof p.detail === 'string' ? p.detail : resp.statusText,
      errors: p.errors,
      type: p.type,
    });
  }

  /** Calls the API with the session's key; resolves to the JSON body (or null). */
  async function api(method, path, { body, raw, signal, headers } = {}) {
    const h = { Accept: 'application/json', ...(headers || {}) };
    if (session.key) h.Authorization = `Bearer ${session.key}`;
    if (raw !== undefined) h['Content-Type'] = 'application/octet-stream';
    else if (body !== undefined) h['Content-Type'] = 'application/json';
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers: h,
        body: raw !== undefined ? raw : body === undefined ? undefined : JSON.stringify(body),
        signal,
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError({ title: 'Network error', detail: `${e.message || e}` });
    }
    if (!resp.ok) {
      const err = await problemOf(resp);
      if (resp.status === 401 && session.key) {
        signOut(err);
      }
      throw err;
    }
    if (resp.status === 204) return null;
    const type = resp.headers.get('content-type') || '';
    return type.includes('json') ? resp.json() : resp.text();
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  const enc = encodeURIComponent;

  // ---------------------------------------------------------- rendering --

  /** A readable error box: title, status, detail, field errors. */
  function problemBox(err) {
    if (!(err instanceof ApiError)) err = new ApiError({ title: 'Error', detail: String(err && err.message || err) });
    const box = h('div', { class: 'problem', role: 'alert' },
      h('div', { class: 'title' }, err.title, err.status ? ` (${err.status})` : ''),
      err.detail ? h('div', { class: 'detail' }, err.detail) : null);
    if (err.errors.length) {
      box.append(h('ul', null, err.errors.map((e) => h('li', null, h('code', null, e.field || ''), ': ', e.message || ''))));
    }
    return box;
  }

  /** Shows `err` in `slot` (replacing what was there); null clears it. */
  function showProblem(slot, err) {
    clear(slot);
    if (err) slot.append(problemBox(err));
  }

  function badge(status) {
    return h('span', { class: `badge s-${status}` }, String(status).replace('_', ' '));
  }

  function pad(n) {
    return String(n).padStart(2, '0');
  }

  function when(ts) {
    if (!ts) return '–';
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return ts;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  function timeCell(ts) {
    return h('td', { title: ts || '' }, when(ts));
  }

  function duration(ms) {
    if (ms === null || ms === undefined || ms < 0) return '–';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} m`;
  }

  function commandDuration(c) {
    if (!c.started_at) return null;
    const end = c.finished_at ? Date.parse(c.finished_at) : Date.now();
    return end - Date.parse(c.started_at);
  }

  function commandText(c) {
    if (typeof c.command === 'string') return c.command;
    if (Array.isArray(c.argv)) return c.argv.map((a) => (/^[\w./:=@%+-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
    return '';
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  /**
   * A cursor-paginated list (docs/API.md, Pagination): `load(cursor)` answers
   * {items, next_cursor}; "Load more" appends the next page. `reload()`
   * fetches the first page again and keeps the row elements whose item did
   * not change (`sig`), so a periodic refresh neither flickers nor replaces
   * a button under the pointer.
   */
  function pagedTable({ head, row, load, empty, signal, key, sig }) {
    const tbody = h('tbody');
    const more = h('button', { type: 'button', class: 'more', hidden: true }, 'Load more');
    const errors = h('div');
    const none = h('div', { class: 'empty', hidden: true }, empty || 'Nothing here yet.');
    const signature = sig || ((item) => JSON.stringify(item));
    let cursor = null;
    let seen = 0;
    let pages = 0;
    let generation = 0; // a reload makes answers to earlier requests stale
    function build(item) {
      const tr = row(item);
      tr.dataset.key = key(item);
      tr.dataset.sig = signature(item);
      return tr;
    }
    async function page(reset) {
      const gen = reset ? ++generation : generation;
      more.disabled = true;
      try {
        const r = await load(reset ? null : cursor, signal);
        if (gen !== generation) return null;
        if (reset) {
          const old = new Map([...tbody.children].map((tr) => [tr.dataset.key, tr]));
          tbody.replaceChildren(...r.items.map((item) => {
            const prev = old.get(key(item));
            return prev && prev.dataset.sig === signature(item) ? prev : build(item);
          }));
          seen = 0;
          pages = 0;
        } else {
          for (const item of r.items) tbody.append(build(item));
        }
        seen += r.items.length;
        pages += 1;
        cursor = r.next_cursor;
        more.hidden = !cursor;
        none.hidden = seen > 0;
        showProblem(errors, null);
        return r.items;
      } catch (e) {
        if (e.name !== 'AbortError' && gen === generation) showProblem(errors, e);
        return null;
      } finally {
        more.disabled = false;
      }
    }
    more.addEventListener('click', () => page(false));
    const el = h('div', null, errors,
      h('table', null, h('thead', null, h('tr', null, head.map((t) => h('th', null, t)))), tbody),
      none, more);
    return {
      el,
      reload: () => page(true),
      /** Whether the reader paged past the first page (then don't refresh it away). */
      pagedOn: () => pages > 1,
    };
  }

  // -------------------------------------------------------------- router --

  let view = null; // {abort: AbortController} of the page shown

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/projects';
    const [path, qs] = raw.split('?');
    const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
    return { parts, params: new URLSearchParams(qs || '') };
  }

  /** Replaces the hash's query string (filters) without reloading the view. */
  function setParams(params) {
    const { parts } = parseHash();
    const path = `#/${parts.map(enc).join('/')}`;
    history.replaceState(null, '', `${path}${query(params)}`);
  }

  function render(message) {
    if (view) view.abort.abort();
    view = { abort: new AbortController() };
    const main = clear($('main'));
    const signedIn = Boolean(session.key && session.me);
    $('nav').hidden = !signedIn;
    $('who').hidden = !signedIn;
    if (!signedIn) {
      signInPage(main, message);
      return;
    }
    const { parts, params } = parseHash();
    const section = parts[0] || 'projects';
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('current', a.dataset.section === section);
    }
    const ctx = { main, signal: view.abort.signal, params };
    if (section === 'projects' && parts[2] === 'secrets') {
      import('./secrets.js').then((m) => m.secretsPage(ctx, parts[1], {
        h, api, enc, clear, query, showProblem, timeCell, pagedTable, can, needs,
      }));
    } else if (section === 'projects' && parts[1]) projectPage(ctx, parts[1]);
    else if (section === 'projects') projectsPage(ctx);
    else if (section === 'commands' && parts[1]) commandPage(ctx, parts[1]);
    else if (section === 'webhooks' && parts[1]) webhookPage(ctx, parts[1]);
    else if (section === 'webhooks') webhooksPage(ctx);
    else if (section === 'audit') auditPage(ctx);
    else main.append(h('h1', null, 'Not found'), h('p', null, 'No such page. ', h('a', { href: '#/projects' }, 'Projects')));
  }

  // ------------------------------------------------------------- sign in --

  function signInPage(main, message) {
    const input = h('input', {
      id: 'signin-key', type: 'password', autocomplete: 'off', spellcheck: 'false',
      placeholder: 'rdev_…', required: true,
    });
    const errors = h('div');
    if (message) errors.append(message instanceof ApiError ? problemBox(message) : h('div', { class: 'notice' }, message));
    const submit = h('button', { id: 'signin-submit', class: 'primary', type: 'submit' }, 'Sign in');
    const form = h('form', { id: 'signin' },
      h('label', null, 'API key', input),
      h('div', { class: 'actions' }, submit));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      submit.disabled = true;
      session.key = key;
      try {
        await whoami();
        sessionStorage.setItem(KEY_ITEM, key);
        render();
      } catch (e) {
        session.key = null;
        showProblem(errors, e);
      } finally {
        submit.disabled = false;
      }
    });
    main.append(h('div', { class: 'signin panel' },
      h('h1', null, 'Sign in'),
      h('p', null, 'Paste an API key. It is kept only in this browser tab (sessionStorage) and sent in the Authorization header; closing the tab or signing out forgets it.'),
      errors, form));
    input.focus();
  }

  async function whoami() {
    const me = await api('GET', '/v1/whoami');
    session.me = me;
    clear($('who-name')).append(
      h('span', { title: `scopes: ${me.scopes.join(', ')}${me.projects ? `; projects: ${me.projects.join(', ')}` : ''}` },
        me.name, ' · ', me.scopes.join(', ')));
    return me;
  }

  // ----------------------------------------------------------- projects --

  function projectsPage(ctx) {
    const { main, signal } = ctx;
    const restricted = session.me.projects ? 'A key restricted to projects cannot create projects' : null;
    const name = h('input', { id: 'project-name', required: true, placeholder: 'my-project', autocomplete: 'off' });
    const description = h('input', { id: 'project-description', placeholder: 'optional' });
    const workdir = h('input', { id: 'project-workdir', placeholder: 'defaults to the name' });
    const create = needs(h('button', { id: 'project-create', class: 'primary', type: 'submit' }, 'Create project'),
      'projects:write', restricted);
    const result = h('div');
    const form = h('form', { class: 'inline', id: 'project-form' },
      h('label', null, 'Name', name),
      h('label', { class: 'grow' }, 'Description', description),
      h('label', null, 'Work directory (local executor)', workdir),
      create);
    const list = pagedTable({
      head: ['Name', 'Description', 'Executor', 'Default timeout', 'Created'],
      empty: 'No projects yet.',
      signal,
      load: (cursor) => api('GET', `/v1/projects${query({ limit: PAGE, cursor })}`, { signal }),
      key: (p) => p.name,
      row: (p) => h('tr', { 'data-project': p.name },
        h('td', null, h('a', { href: `#/projects/${enc(p.name)}` }, p.name)),
        h('td', null, p.description || ''),
        h('td', null, executorText(p.executor)),
        h('td', { class: 'num' }, `${p.default_timeout_s} s`),
        timeCell(p.created_at)),
    });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (create.disabled) return;
      const body = { name: name.value.trim(), description: description.value, executor: { kind: 'local' } };
      if (workdir.value.trim()) body.executor.workdir = workdir.value.trim();
      await busy(create, result, async () => {
        const p = await api('POST', '/v1/projects', { body, signal });
        clear(result).append(h('div', { class: 'notice' }, 'Created project ', h('a', { href: `#/projects/${enc(p.name)}` }, p.name), '.'));
        form.reset();
        list.reload();
      });
    });
    main.append(h('h1', null, 'Projects'),
      h('div', { class: 'panel' }, h('h2', null, 'New project'), form, result),
      list.el);
    list.reload();
  }

  // Runs an action with its button disabled; an API problem is shown in
  // `result` (a navigation away aborts it quietly).
  async function busy(button, result, action) {
    button.disabled = true;
    try {
      await action();
    } catch (e) {
      if (e.name !== 'AbortError') showProblem(result, e);
    } finally {
      button.disabled = false;
    }
  }

  function executorText(x) {
    if (!x) return '';
    if (x.kind === 'kubernetes') return `kubernetes ${x.namespace}/${x.selector}`;
    return `local ${x.workdir || ''}`.trim();
  }

  function projectPage(ctx, name) {
    const { main, signal, params } = ctx;
    const info = h('div', { class: 'hint' });
    // Run form.
    const cmd = h('input', { id: 'run-command', required: true, placeholder: 'make test', autocomplete: 'off', spellcheck: 'false' });
    const priority = h('input', { id: 'run-priority', type: 'number', min: 0, max: 9, value: '5' });
    const timeout = h('input', { id: 'run-timeout', type: 'number', min: 1, placeholder: 'project default' });
    const run = needs(h('button', { id: 'run-submit', class: 'primary', type: 'submit' }, 'Run'), 'commands:run');
    const runResult = h('div');
    const form = h('form', { class: 'inline', id: 'run-form' },
      h('label', { class: 'grow' }, 'Command (sh -c)', cmd),
      h('label', null, 'Priority (0–9)', priority),
      h('label', null, 'Timeout (s)', timeout),
      run);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (run.disabled) return;
      const body = { command: cmd.value };
      if (priority.value !== '') body.priority = Number(priority.value);
      if (timeout.value !== '') body.timeout_s = Number(timeout.value);
      await busy(run, runResult, async () => {
        const c = await api('POST', `/v1/projects/${enc(name)}/commands`, { body, signal });
        location.hash = `#/commands/${enc(c.id)}`;
      });
    });
    // Filters and list.
    const status = h('select', { id: 'filter-status' },
      h('option', { value: '' }, 'any status'),
      COMMAND_STATUSES.map((s) => h('option', { value: s, selected: params.get('status') === s }, s.replace('_', ' '))));
    const refresh = h('button', { type: 'button', id: 'commands-refresh' }, 'Refresh');
    const list = pagedTable({
      head: ['Command', 'Status', 'Exit', 'Duration', 'Priority', 'Created', 'Id'],
      empty: 'No commands match.',
      signal,
      load: (cursor) => api('GET', `/v1/commands${query({ project: name, status: status.value, limit: PAGE, cursor })}`, { signal }),
      key: (c) => c.id,
      // A running command's duration changes every second.
      sig: (c) => JSON.stringify(c) + (TERMINAL.has(c.status) ? '' : Math.floor(Date.now() / 1000)),
      row: commandRow,
    });
    status.addEventListener('change', () => {
      setParams({ status: status.value });
      list.reload();
    });
    refresh.addEventListener('click', () => list.reload());
    main.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/projects' }, 'Projects'), ' / ', name),
      h('h1', null, name), info,
      can('secrets:manage') ? h('p', null, h('a', { id: 'secrets-link', href: `#/projects/${enc(name)}/secrets` }, 'Secrets')) : null,
      h('div', { class: 'panel' }, h('h2', null, 'Run a command'), form, runResult),
      h('h2', null, 'Commands'),
      h('div', { class: 'actions' }, h('label', null, 'Status', status), refresh),
      list.el);
    if (can('projects:read')) {
      api('GET', `/v1/projects/${enc(name)}`, { signal }).then((p) => {
        info.append(p.description ? `${p.description} · ` : '', executorText(p.executor),
          ` · default timeout ${p.default_timeout_s} s`);
      }).catch((e) => { if (e.name !== 'AbortError') info.append(problemBox(e)); });
    }
    // Keep the first page fresh while something on it is still going.
    (async () => {
      let items = await list.reload();
      while (!signal.aborted) {
        const active = (items || []).some((c) => !TERMINAL.has(c.status));
        await sleep(active ? 2000 : 10000, signal);
        if (signal.aborted || document.hidden || list.pagedOn()) continue;
        items = await list.reload();
      }
    })();
  }

  function commandRow(c) {
    return h('tr', { 'data-command': c.id },
      h('td', { class: 'cmd mono', title: commandText(c) }, h('a', { href: `#/commands/${enc(c.id)}` }, commandText(c) || '(argv)')),
      h('td', null, badge(c.status)),
      h('td', { class: 'num', title: reasonText(c) }, c.exit_code === null || c.exit_code === undefined ? '–' : String(c.exit_code)),
      h('td', { class: 'num' }, duration(commandDuration(c))),
      h('td', { class: 'num' }, String(c.priority)),
      timeCell(c.created_at),
      h('td', { class: 'mono hint' }, c.id.slice(0, 8)));
  }

  // Why a command ended, for people: `memory_limit` → "memory limit".
  function reasonText(c) {
    if (!c.reason) return '–';
    const words = c.reason.replace(/_/g, ' ');
    return c.signal === null || c.signal === undefined ? words : `${words} (signal ${c.signal})`;
  }

  // ------------------------------------------------------------ command --

  function commandPage(ctx, id) {
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
  class InputPanel {
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
  function keyBytes(e) {
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

  /**
   * Follows GET /v1/commands/{id}/events with fetch streaming (so the key
   * goes in the Authorization header, which EventSource cannot send).
   *
   * Resuming: every `output` event has `id: seq`. After a dropped connection
   * (or a `reconnect` event) it reconnects with `Last-Event-ID: <last seq>`,
   * and drops any chunk with seq ≤ the last one shown, so a chunk is never
   * shown twice. It stops at `end`, or when the page is left (`signal`).
   */
  async function followEvents(id, signal, on) {
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
  class SseParser {
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
  class Terminal {
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

  function run(cls, text) {
    const span = document.createElement('span');
    if (cls) span.className = cls;
    span.textContent = text;
    return span;
  }

  function countNewlines(s) {
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
  class Sgr {
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

  // ------------------------------------------------------------ webhooks --

  function webhooksPage(ctx) {
    const { main, signal } = ctx;
    const url = h('input', { id: 'webhook-url', type: 'url', required: true, placeholder: 'https://ci.example.com/rdev', autocomplete: 'off' });
    const events = h('input', { id: 'webhook-events', value: '*', placeholder: 'command.failed, command.timed_out' });
    const project = h('input', { id: 'webhook-project', placeholder: 'all projects' });
    const create = needs(h('button', { id: 'webhook-create', class: 'primary', type: 'submit' }, 'Add endpoint'), 'webhooks:manage');
    const result = h('div');
    const form = h('form', { class: 'inline', id: 'webhook-form' },
      h('label', { class: 'grow' }, 'URL', url),
      h('label', null, 'Events (comma-separated, * = all)', events),
      h('label', null, 'Project', project),
      create);
    const list = pagedTable({
      head: ['URL', 'Events', 'Project', 'State', 'Created'],
      empty: 'No webhook endpoints.',
      signal,
      load: (cursor) => api('GET', `/v1/webhooks${query({ limit: PAGE, cursor })}`, { signal }),
      key: (w) => w.id,
      row: (w) => h('tr', { 'data-webhook': w.id },
        h('td', { class: 'mono' }, h('a', { href: `#/webhooks/${enc(w.id)}` }, w.url)),
        h('td', null, w.events.join(', ')),
        h('td', null, w.project || 'all'),
        h('td', null, w.enabled ? badge('enabled') : h('span', { title: w.disabled_reason || '' }, badge('disabled'), ' ', w.disabled_reason || '')),
        timeCell(w.created_at)),
    });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (create.disabled) return;
      const body = {
        url: url.value.trim(),
        events: events.value.split(',').map((s) => s.trim()).filter(Boolean),
      };
      if (project.value.trim()) body.project = project.value.trim();
      await busy(create, result, async () => {
        const w = await api('POST', '/v1/webhooks', { body, signal });
        clear(result).append(h('div', { class: 'notice', id: 'webhook-secret' },
          'Endpoint added. Its signing secret, shown only now: ', h('code', null, w.secret), ' ',
          h('a', { href: `#/webhooks/${enc(w.id)}` }, 'Deliveries →')));
        form.reset();
        list.reload();
      });
    });
    main.append(h('h1', null, 'Webhooks'),
      h('div', { class: 'panel' }, h('h2', null, 'New endpoint'), form, result),
      list.el);
    list.reload();
  }

  function webhookPage(ctx, id) {
    const { main, signal, params } = ctx;
    const info = h('div');
    const errors = h('div');
    const test = needs(h('button', { id: 'webhook-test', type: 'button' }, 'Send test event'), 'webhooks:manage');
    const refresh = h('button', { id: 'deliveries-refresh', type: 'button' }, 'Refresh');
    const status = h('select', { id: 'filter-delivery-status' },
      h('option', { value: '' }, 'any status'),
      DELIVERY_STATUSES.map((s) => h('option', { value: s, selected: params.get('status') === s }, s)));
    let wakeUp = () => {};
    const list = pagedTable({
      head: ['Event', 'Status', 'Attempts', 'Next attempt', 'Created', ''],
      empty: 'No deliveries.',
      signal,
      load: (cursor) => api('GET', `/v1/webhooks/${enc(id)}/deliveries${query({ status: status.value, limit: PAGE, cursor })}`, { signal }),
      key: (d) => d.id,
      row: (d) => deliveryRow(d, id, errors, () => wakeUp()),
    });
    status.addEventListener('change', () => { setParams({ status: status.value }); list.reload(); });
    refresh.addEventListener('click', () => list.reload());
    test.addEventListener('click', () => busy(test, errors, async () => {
      await api('POST', `/v1/webhooks/${enc(id)}/test`, { signal });
      showProblem(errors, null);
      wakeUp();
    }));
    main.append(
      h('div', { class: 'crumbs' }, h('a', { href: '#/webhooks' }, 'Webhooks'), ' / ', id),
      h('h1', null, 'Webhook endpoint'), info, errors,
      h('div', { class: 'actions' }, h('label', null, 'Status', status), refresh, test),
      h('h2', null, 'Deliveries'), list.el);
    api('GET', `/v1/webhooks/${enc(id)}`, { signal }).then((w) => {
      info.append(h('div', { class: 'facts' },
        h('div', null, h('span', { class: 'k' }, 'URL'), h('span', { class: 'mono' }, w.url)),
        h('div', null, h('span', { class: 'k' }, 'Events'), h('span', null, w.events.join(', '))),
        h('div', null, h('span', { class: 'k' }, 'Project'), h('span', null, w.project || 'all')),
        h('div', null, h('span', { class: 'k' }, 'State'), h('span', null, w.enabled ? 'enabled' : `disabled: ${w.disabled_reason || ''}`))));
    }).catch((e) => { if (e.name !== 'AbortError') showProblem(errors, e); });
    // Refresh while deliveries are pending, and soon after an action.
    (async () => {
      let items = await list.reload();
      let burst = 0;
      for (;;) {
        const pending = (items || []).some((d) => d.status === 'pending');
        const woken = new Promise((resolve) => { wakeUp = () => { burst = 6; resolve(); }; });
        await Promise.race([sleep(burst > 0 || pending ? 1000 : 15000, signal), woken]);
        if (signal.aborted) return;
        if (burst > 0) burst -= 1;
        if (document.hidden || list.pagedOn()) continue;
        items = await list.reload();
      }
    })();
  }

  function deliveryRow(d, webhookId, errors, changed) {
    const redeliver = needs(h('button', { type: 'button', class: 'redeliver' }, 'Redeliver'), 'webhooks:manage');
    redeliver.addEventListener('click', async () => {
      redeliver.disabled = true;
      try {
        await api('POST', `/v1/webhooks/${enc(webhookId)}/deliveries/${enc(d.id)}/redeliver`);
        showProblem(errors, null);
        changed();
      } catch (e) {
        showProblem(errors, e);
        redeliver.disabled = false;
      }
    });
    const attempts = h('table', { class: 'attempts' },
      h('thead', null, h('tr', null, ['At', 'HTTP status', 'Duration', 'Error / answer'].map((t) => h('th', null, t)))),
      h('tbody', null, d.attempts.map((a) => h('tr', { class: 'attempt' },
        timeCell(a.at),
        h('td', { class: 'num' }, a.status_code === null || a.status_code === undefined ? '–' : String(a.status_code)),
        h('td', { class: 'num' }, a.duration_ms === null || a.duration_ms === undefined ? '–' : `${a.duration_ms} ms`),
        h('td', { class: 'excerpt' }, a.error || a.response_excerpt || '')))));
    return h('tr', { class: 'delivery', 'data-delivery': d.id, 'data-status': d.status, 'data-attempts': String(d.attempts.length) },
      h('td', null, h('div', { class: 'mono' }, d.event_type), h('div', { class: 'hint mono' }, d.event_id), d.attempts.length ? attempts : null),
      h('td', null, badge(d.status)),
      h('td', { class: 'num attempt-count' }, String(d.attempts.length)),
      timeCell(d.next_attempt_at),
      timeCell(d.created_at),
      h('td', null, redeliver));
  }

  // --------------------------------------------------------------- audit --

  function auditPage(ctx) {
    const { main, signal, params } = ctx;
    const field = (id, label, attrs) => {
      const input = h('input', { id: `audit-${id}`, value: params.get(id) || '', autocomplete: 'off', ...attrs });
      return [input, h('label', null, label, input)];
    };
    const [actor, actorL] = field('actor', 'Actor (key name or id)');
    const [action, actionL] = field('action', 'Action', { placeholder: 'e.g. command.create' });
    const [project, projectL] = field('project', 'Project');
    const [since, sinceL] = field('since', 'Since (local time)', { type: 'datetime-local', step: 1, value: localInput(params.get('since')) });
    const [until, untilL] = field('until', 'Until (local time)', { type: 'datetime-local', step: 1, value: localInput(params.get('until')) });
    const apply = h('button', { type: 'submit', class: 'primary', id: 'audit-apply' }, 'Filter');
    const form = h('form', { class: 'inline', id: 'audit-form' }, actorL, actionL, projectL, sinceL, untilL, apply);
    const filters = () => ({
      actor: actor.value.trim(),
      action: action.value.trim(),
      project: project.value.trim(),
      since: rfc3339(since.value),
      until: rfc3339(until.value),
    });
    const list = pagedTable({
      head: ['At', 'Actor', 'IP', 'Action', 'Target', 'Project', 'Outcome', 'Details'],
      empty: 'No entries match.',
      signal,
      load: (cursor) => api('GET', `/v1/audit${query({ ...filters(), limit: PAGE, cursor })}`, { signal }),
      key: (e) => String(e.id),
      row: (e) => h('tr', { class: 'audit-entry' },
        timeCell(e.at),
        h('td', { title: e.actor_key_id || '' }, e.actor || '–'),
        h('td', { class: 'mono' }, e.ip || '–'),
        h('td', { class: 'mono' }, e.action),
        h('td', { class: 'mono' }, `${e.target_type || ''} ${e.target_id || ''}`.trim()),
        h('td', null, e.project || ''),
        h('td', null, badge(e.outcome)),
        h('td', { class: 'details mono' }, e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : '')),
    });
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      setParams(filters());
      list.reload();
    });
    main.append(h('h1', null, 'Audit log'), h('div', { class: 'panel' }, form), list.el);
    list.reload();
  }

  /** A datetime-local value (local time) as RFC 3339 UTC; '' stays ''. */
  function rfc3339(local) {
    if (!local) return '';
    const d = new Date(local);
    return Number.isNaN(d.getTime()) ? '' : d.toISOString();
  }

  /** RFC 3339 → a datetime-local value. */
  function localInput(ts) {
    if (!ts) return '';
    const d = new Date(ts);
    if (Number.isNaN(d.getTime())) return '';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }

  // ---------------------------------------------------------------- start --

  $('sign-out').addEventListener('click', () => signOut('Signed out. The key was removed from this tab.'));
  window.addEventListener('hashchange', () => render());
  // Report policy violations loudly: they mean the page is broken.
  document.addEventListener('securitypolicyviolation', (e) => {
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline code'}`);
  });

  (async () => {
    if (!session.key) {
      render();
      return;
    }
    try {
      await whoami();
      render();
    } catch (e) {
      // A 401 has signed out already (and said why). Otherwise keep the key
      // (the server may be restarting) and show what went wrong.
      if (e.status === 401) return;
      session.me = null;
      render(e);
    }
  })();
})();
