// rdev web console: the projects list and a project's page (run form, commands list).
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { api, can, enc, needs, query, session } from './api.js';
import { badge, clear, duration, h, sleep, timeCell } from './dom.js';
import { COMMAND_STATUSES, commandDuration, commandText, executorText, reasonText, TERMINAL } from './format.js';
import { setParams } from './nav.js';
import { busy, PAGE, pagedTable, problemBox } from './widgets.js';

// ----------------------------------------------------------- projects --

export function projectsPage(ctx) {
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

export function projectPage(ctx, name) {
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

export function commandRow(c) {
  return h('tr', { 'data-command': c.id },
    h('td', { class: 'cmd mono', title: commandText(c) }, h('a', { href: `#/commands/${enc(c.id)}` }, commandText(c) || '(argv)')),
    h('td', null, badge(c.status)),
    h('td', { class: 'num', title: reasonText(c) }, c.exit_code === null || c.exit_code === undefined ? '–' : String(c.exit_code)),
    h('td', { class: 'num' }, duration(commandDuration(c))),
    h('td', { class: 'num' }, String(c.priority)),
    timeCell(c.created_at),
    h('td', { class: 'mono hint' }, c.id.slice(0, 8)));
}
