// The web view's entry point: login, then one watch per kind feeding the store, and the
// current page re-rendered whenever the store or the route changes.
//
//   api.js     token, requests, list-then-watch into the store
//   store.js   the cluster as the page knows it; coalesced change notifications
//   router.js  #/ overview, #/service/<name>, #/node/<name>, #/network/<name>
//   views.js   pages as functions of the store
//   dom.js     the element helper the views use (text only, never innerHTML)

import * as api from './api.js';
import { Store, KINDS } from './store.js';
import * as router from './router.js';
import * as views from './views.js';
import { h, link } from './dom.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const nav = document.getElementById('nav');

let store = null;
let stop = null;
/** What the pages need besides the store. */
const page = { canReadLogs: false, logs: null, showLogs };

/** Opens the watches; `identity` (a promise of `{name, role}`, from whoami) fills the
 *  header and the role's choices when it arrives: the lists do not wait for it. */
function start(identity) {
  page.canReadLogs = false;
  page.logs = null;
  nav.replaceChildren(link('', 'Overview'));
  store = new Store();
  stop = new AbortController();
  store.subscribe(render);
  for (const kind of KINDS) api.keepInSync(kind, store, stop.signal);
  render();
  const session = stop;
  identity.then((me) => {
    if (stop !== session) return; // signed out (or in again) meanwhile
    page.canReadLogs = me.role === 'admin';
    who.replaceChildren(
      h('span', { id: 'role', class: `badge role-${me.role}` }, me.role),
      ' ', me.name || '',
      ' ', h('button', { type: 'button', id: 'logout', onclick: logout }, 'sign out'));
    render();
  }, (err) => {
    if (stop !== session) return;
    if (err.status === 401) logout('The server no longer accepts the saved token (401): sign in again.');
    else logout(`Could not reach the API: ${err.message}`);
  });
}

function logout(message) {
  if (stop) stop.abort();
  store = null;
  api.forgetToken();
  who.replaceChildren();
  nav.replaceChildren();
  showLogin(typeof message === 'string' ? message : '');
}

function showLogin(error) {
  main.dataset.page = 'login';
  main.replaceChildren(views.loginPage(login, error));
}

async function login(token) {
  if (!token) { showLogin('Enter a token.'); return; }
  try {
    const identity = await api.whoami(token);
    api.setToken(token);
    start(Promise.resolve(identity));
  } catch (err) {
    showLogin(err.status === 401 ? `The server refused this token (401): ${err.message}` : `Could not check the token: ${err.message}`);
  }
}

function render() {
  if (!store) return;
  const began = performance.now();
  const route = router.current();
  let content;
  if (!store.ready() && route.page === 'overview') content = h('p', { class: 'muted' }, 'Loading…');
  else if (route.page === 'service') content = views.servicePage(store, route.name, page);
  else if (route.page === 'node') content = views.nodePage(store, route.name, page);
  else if (route.page === 'network') content = views.networkPage(store, route.name);
  else content = views.overview(store);
  main.dataset.page = store.ready() ? route.page : 'loading';
  main.replaceChildren(...[content].flat(Infinity).filter(Boolean));
  // For the browser test and anyone profiling: when each render finished, with how many
  // task cards it shows (performance.getEntriesByName('shoal-render')).
  // (`ms`: how long this render took).
  const cards = main.getElementsByClassName('task-card').length;
  performance.mark('shoal-render', { detail: { cards, page: main.dataset.page, ms: performance.now() - began } });
}

async function showLogs(task) {
  page.logs = { task, loading: true };
  render();
  try {
    const text = await api.taskLogs(task, 50);
    if (page.logs && page.logs.task === task) page.logs = { task, text };
  } catch (err) {
    if (page.logs && page.logs.task === task) page.logs = { task, error: `Could not read the logs: ${err.message}` };
  }
  render();
}

router.onChange(() => { page.logs = null; render(); });
api.whenUnauthorized(() => logout('The server no longer accepts this token (401): sign in again.'));

if (api.token()) {
  // A saved token: list and check it at once (a refused one signs out).
  start(api.whoami(api.token()));
} else {
  showLogin('');
}
