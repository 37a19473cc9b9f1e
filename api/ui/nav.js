// rdev web console: the location hash: which page, with which filters.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

import { enc, query } from './api.js';

export function parseHash() {
  const raw = location.hash.replace(/^#/, '') || '/projects';
  const [path, qs] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(qs || '') };
}

/** Replaces the hash's query string (filters) without reloading the view. */
export function setParams(params) {
  const { parts } = parseHash();
  const path = `#/${parts.map(enc).join('/')}`;
  history.replaceState(null, '', `${path}${query(params)}`);
}
