// rdev web console: shared widgets: problem boxes, busy buttons, paginated tables.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { ApiError } from './api.js';
import { clear, h } from './dom.js';

export const PAGE = 50;

// ---------------------------------------------------------- rendering --

/** A readable error box: title, status, detail, field errors. */
export function problemBox(err) {
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
export function showProblem(slot, err) {
  clear(slot);
  if (err) slot.append(problemBox(err));
}

/**
 * A cursor-paginated list (docs/API.md, Pagination): `load(cursor)` answers
 * {items, next_cursor}; "Load more" appends the next page. `reload()`
 * fetches the first page again and keeps the row elements whose item did
 * not change (`sig`), so a periodic refresh neither flickers nor replaces
 * a button under the pointer.
 */
export function pagedTable({ head, row, load, empty, signal, key, sig }) {
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

// Runs an action with its button disabled; an API problem is shown in
// `result` (a navigation away aborts it quietly).
export async function busy(button, result, action) {
  button.disabled = true;
  try {
    await action();
  } catch (e) {
    if (e.name !== 'AbortError') showProblem(result, e);
  } finally {
    button.disabled = false;
  }
}
