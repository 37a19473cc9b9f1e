// rdev web console: the audit log page.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { api, query } from './api.js';
import { badge, h, pad, timeCell } from './dom.js';
import { setParams } from './nav.js';
import { PAGE, pagedTable } from './widgets.js';

// --------------------------------------------------------------- audit --

export function auditPage(ctx) {
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
export function rfc3339(local) {
  if (!local) return '';
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

/** RFC 3339 → a datetime-local value. */
export function localInput(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
