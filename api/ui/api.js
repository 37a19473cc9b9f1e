// rdev web console: the session (the API key in this tab) and calls to the API.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

export const KEY_ITEM = 'rdev.key';

// ------------------------------------------------------------ session --

export const session = {
  key: sessionStorage.getItem(KEY_ITEM),
  me: null, // GET /v1/whoami
  /** Shows the page again after a sign-out (set by app.js, the router). */
  rerender: () => {},
};

/** Whether the signed-in key holds `scope` (admin holds every scope). */
export function can(scope) {
  const s = (session.me && session.me.scopes) || [];
  return s.includes('admin') || s.includes(scope);
}

/** Disables `button` with an explanation when the key lacks `scope`. */
export function needs(button, scope, extra) {
  if (!can(scope)) {
    button.disabled = true;
    button.title = `Needs the ${scope} scope; this key has ${(session.me.scopes || []).join(', ')}`;
  } else if (extra) {
    button.disabled = true;
    button.title = extra;
  }
  return button;
}

export function signOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  session.key = null;
  session.me = null;
  session.rerender(message);
}

// ---------------------------------------------------------------- API --

/** An API error answer (problem+json, RFC 9457), or a network failure. */
export class ApiError extends Error {
  constructor(p) {
    super(p.detail || p.title || 'request failed');
    this.status = p.status || 0;
    this.title = p.title || 'Request failed';
    this.detail = p.detail || '';
    this.errors = Array.isArray(p.errors) ? p.errors : [];
    this.type = p.type || '';
  }
}

export async function problemOf(resp) {
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
export async function api(method, path, { body, raw, signal, headers } = {}) {
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

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== '') q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : '';
}

export const enc = encodeURIComponent;
