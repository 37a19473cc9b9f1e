// rdev web console: a single page, no framework, no build step: ES modules
// loaded by the browser (index.html loads this one; it imports the rest).
//
// Rules this file keeps (see docs/API.md, "Web console"):
// - The API key lives only in this tab's sessionStorage and is sent only in
//   the Authorization header; it never appears in a URL.
// - Text from the API is put into the page as text nodes (textContent),
//   never parsed as HTML.
// - The Content-Security-Policy forbids inline script and style: behaviour
//   is attached here with addEventListener, looks are classes in app.css.

import { api, ApiError, KEY_ITEM, session, signOut } from './api.js';
import { auditPage } from './audit.js';
import { commandPage } from './command.js';
import { $, clear, h } from './dom.js';
import { parseHash } from './nav.js';
import { projectPage, projectsPage } from './projects.js';
import { secretsPage } from './secrets.js';
import { webhookPage, webhooksPage } from './webhooks.js';
import { problemBox, showProblem } from './widgets.js';

// -------------------------------------------------------------- router --

let view = null; // {abort: AbortController} of the page shown
session.rerender = render;

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
  if (section === 'projects' && parts[2] === 'secrets') secretsPage(ctx, parts[1]);
  else if (section === 'projects' && parts[1]) projectPage(ctx, parts[1]);
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
