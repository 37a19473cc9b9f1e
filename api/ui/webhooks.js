// rdev web console: webhook endpoints and their deliveries.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { api, enc, needs, query } from './api.js';
import { badge, clear, h, sleep, timeCell } from './dom.js';
import { DELIVERY_STATUSES } from './format.js';
import { setParams } from './nav.js';
import { busy, PAGE, pagedTable, showProblem } from './widgets.js';

// ------------------------------------------------------------ webhooks --

export function webhooksPage(ctx) {
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

export function webhookPage(ctx, id) {
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

export function deliveryRow(d, webhookId, errors, changed) {
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
