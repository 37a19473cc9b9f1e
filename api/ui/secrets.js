// rdev web console: a project's secrets page (`#/projects/{name}/secrets`).
// An ES module of the console (no framework, no build step); besides the
// rules all of its modules keep (app.js):
// - A value is typed into a password input, sent once in a PUT body and
//   cleared from the page right after; no endpoint ever returns it, so the
//   page never shows one. The list holds names, versions, who set them, when.
// - Text from the API goes into the page as text nodes only.

import { api, can, enc, needs, query } from './api.js';
import { clear, h, timeCell } from './dom.js';
import { pagedTable, showProblem } from './widgets.js';

/** Renders the secrets page of project `name` into `ctx.main`. */
export function secretsPage(ctx, name) {
  const { main, signal } = ctx;
  const base = `/v1/projects/${enc(name)}/secrets`;
  main.append(
    h('div', { class: 'crumbs' }, h('a', { href: '#/projects' }, 'Projects'), ' / ',
      h('a', { href: `#/projects/${enc(name)}` }, name), ' / secrets'),
    h('h1', null, `Secrets of ${name}`));
  if (!can('secrets:manage')) {
    main.append(h('div', { id: 'secrets-denied', class: 'notice' },
      'Listing and setting secrets needs the secrets:manage scope.'));
    return;
  }
  const result = h('div', { id: 'secret-result' });

  function deleteButton(secret) {
    const b = h('button', { type: 'button', class: 'delete' }, 'Delete');
    let armed = false;
    b.addEventListener('click', async () => {
      // Two clicks: the first asks, the second deletes.
      if (!armed) {
        armed = true;
        b.textContent = 'Delete for good?';
        return;
      }
      b.disabled = true;
      try {
        await api('DELETE', `${base}/${enc(secret)}`, { signal });
        clear(result).append(h('div', { class: 'notice' }, `Deleted ${secret}.`));
        list.reload();
      } catch (e) {
        if (e.name !== 'AbortError') showProblem(result, e);
        b.disabled = false;
      }
    });
    return b;
  }

  const list = pagedTable({
    head: ['Name', 'Version', 'Set by', 'Set at', ''],
    empty: 'No secrets yet.',
    signal,
    key: (s) => s.name,
    load: (cursor, sig) => api('GET', `${base}${query({ cursor, limit: 50 })}`, { signal: sig }),
    row: (s) => h('tr', { class: 'secret', 'data-name': s.name, 'data-version': s.version },
      h('td', { class: 'mono' }, s.name),
      h('td', { class: 'num' }, s.version),
      h('td', null, s.set_by),
      timeCell(s.set_at),
      h('td', null, deleteButton(s.name))),
  });

  const nameInput = h('input', {
    id: 'secret-name', required: true, maxlength: 128, autocomplete: 'off', spellcheck: 'false',
    pattern: '[A-Za-z_][A-Za-z0-9_]*', placeholder: 'NPM_TOKEN',
  });
  // Never shown back: a password input, emptied after every attempt.
  const valueInput = h('input', {
    id: 'secret-value', type: 'password', required: true, minlength: 6, autocomplete: 'new-password',
    spellcheck: 'false',
  });
  const submit = needs(h('button', { id: 'secret-set', class: 'primary', type: 'submit' }, 'Set'), 'secrets:manage');
  const form = h('form', { id: 'secret-form' },
    h('label', null, 'Name', nameInput),
    h('label', null, 'Value (6 bytes or more; never shown again)', valueInput),
    h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const value = valueInput.value;
    valueInput.value = '';
    submit.disabled = true;
    try {
      const s = await api('PUT', `${base}/${enc(nameInput.value.trim())}`, { body: { value }, signal });
      nameInput.value = '';
      clear(result).append(h('div', { class: 'notice' }, `Set ${s.name} (version ${s.version}).`));
      list.reload();
    } catch (e) {
      if (e.name !== 'AbortError') showProblem(result, e);
    } finally {
      submit.disabled = false;
    }
  });

  main.append(
    h('div', { class: 'panel' }, h('h2', null, 'Set a secret'), form, result),
    h('h2', null, 'Secrets'),
    list.el);
  list.reload();
}
