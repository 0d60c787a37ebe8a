// Talks to the Shoal API of the server that served the page, with the bearer token the
// user typed in (kept in sessionStorage: it lives as long as the tab, never in a cookie,
// so no other site can make the browser send it).
//
// `keepInSync(plural, store)` is the page's only source of data: list, then watch from
// the list's resourceVersion over a fetch() stream of newline-delimited JSON events
// (EventSource cannot send an Authorization header). A dropped stream resumes from the
// last revision seen (bookmarks keep it fresh); a 410 Gone, before or during the stream,
// lists again and replaces the kind whole. Nothing is polled.

const TOKEN_KEY = 'shoal.token';
const API = '/apis/shoal/v1/';

/** An HTTP answer that was not 2xx: `status` and the API's `Status` message. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }
export function setToken(t) { sessionStorage.setItem(TOKEN_KEY, t); }
export function forgetToken() { sessionStorage.removeItem(TOKEN_KEY); }

/** Called with the error when the server refuses the token (401): the app logs out. */
let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

async function request(path, signal) {
  const resp = await fetch(path, {
    headers: { Authorization: `Bearer ${token()}` },
    cache: 'no-store',
    signal,
  });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { message = (await resp.json()).message || message; } catch (_) { /* not JSON */ }
    const err = new ApiError(resp.status, message);
    if (resp.status === 401) onUnauthorized(err);
    throw err;
  }
  return resp;
}

/** `GET /v1/whoami` with token `t`: `{name, role}`; throws ApiError (401: bad token). */
export async function whoami(t) {
  const resp = await fetch('/v1/whoami', { headers: { Authorization: `Bearer ${t}` }, cache: 'no-store' });
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try { message = (await resp.json()).message || message; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, message);
  }
  return resp.json();
}

/** The last `tail` lines of a task's container output (admin tokens only). */
export async function taskLogs(task, tail) {
  const resp = await request(`${API}tasks/${encodeURIComponent(task)}/logs?tail=${tail}`);
  return resp.text();
}

/** Keeps `store`'s copy of `plural` equal to the server's until `signal` aborts. */
export async function keepInSync(plural, store, signal) {
  let rv = '';
  let delay = 250;
  while (!signal.aborted) {
    try {
      if (!rv) {
        const list = await (await request(API + plural, signal)).json();
        store.replace(plural, list.items || []);
        rv = list.metadata.resourceVersion;
      }
      rv = await follow(plural, rv, store, signal);
      delay = 250;
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status === 410) { rv = ''; continue; }
      if (err instanceof ApiError && err.status === 401) return;
      store.problem(plural, err.message);
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }
}

/** Reads one watch stream from `rv` into the store; returns the last revision seen when
 *  the stream ends; throws ApiError(410) when the revision is gone. */
async function follow(plural, rv, store, signal) {
  const resp = await request(`${API}${plural}?watch=true&resourceVersion=${rv}&bookmarkSeconds=5`, signal);
  store.problem(plural, '');
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return rv;
    buf += value;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line) continue;
      const ev = JSON.parse(line);
      if (ev.type === 'ERROR') {
        throw new ApiError(ev.object.code || 500, ev.object.message || 'watch error');
      }
      const seen = ev.object && ev.object.metadata && ev.object.metadata.resourceVersion;
      if (seen) rv = seen;
      if (ev.type === 'ADDED' || ev.type === 'MODIFIED') store.put(plural, ev.object);
      else if (ev.type === 'DELETED') store.remove(plural, ev.object);
    }
  }
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }
