// rdev web console: how commands and statuses read to people.
// An ES module of the console (no framework, no build step); the rules all
// of its modules keep are in app.js.

export const TERMINAL = new Set(['succeeded', 'failed', 'timed_out', 'cancelled']);
export const COMMAND_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled'];
export const DELIVERY_STATUSES = ['pending', 'succeeded', 'failed', 'dead'];

export function commandDuration(c) {
  if (!c.started_at) return null;
  const end = c.finished_at ? Date.parse(c.finished_at) : Date.now();
  return end - Date.parse(c.started_at);
}

export function commandText(c) {
  if (typeof c.command === 'string') return c.command;
  if (Array.isArray(c.argv)) return c.argv.map((a) => (/^[\w./:=@%+-]+$/.test(a) ? a : JSON.stringify(a))).join(' ');
  return '';
}

export function executorText(x) {
  if (!x) return '';
  if (x.kind === 'kubernetes') return `kubernetes ${x.namespace}/${x.selector}`;
  return `local ${x.workdir || ''}`.trim();
}

// Why a command ended, for people: `memory_limit` → "memory limit".
export function reasonText(c) {
  if (!c.reason) return '–';
  const words = c.reason.replace(/_/g, ' ');
  return c.signal === null || c.signal === undefined ? words : `${words} (signal ${c.signal})`;
}
