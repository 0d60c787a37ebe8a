// Client-side routes in the URL's #hash: `#/` overview, `#/service/<name>`, `#/node/<name>`,
// `#/network/<name>`. `current()` parses the hash; `onChange(fn)` calls fn on every change.

/** The route of the current hash: `{ page, name }`. Unknown hashes are the overview. */
export function current() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  const [page, name] = parts;
  if (['service', 'node', 'network'].includes(page) && name) return { page, name };
  return { page: 'overview', name: '' };
}

/** Calls `fn(route)` whenever the hash changes. */
export function onChange(fn) {
  window.addEventListener('hashchange', () => fn(current()));
}
