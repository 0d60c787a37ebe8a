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

function start(identity) {
  page.canReadLogs = identity.role === 'admin';
  page.logs = null;
  who.replaceChildren(
    h('span', { id: 'role', class: `badge role-${identity.role}` }, identity.role),
    ' ', identity.name || '',
    ' ', h('button', { type: 'button', id: 'logout', onclick: logout }, 'sign out'));
  nav.replaceChildren(link('', 'Overview'));
  store = new Store();
  stop = new AbortController();
  store.subscribe(render);
  for (const kind of KINDS) api.keepInSync(kind, store, stop.signal);
  render();
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
    start(identity);
  } catch (err) {
    showLogin(err.status === 401 ? `The server refused this token (401): ${err.message}` : `Could not check the token: ${err.message}`);
  }
}

function render() {
  if (!store) return;
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
  performance.mark('shoal-render', { detail: { cards: main.getElementsByClassName('task-card').length, page: main.dataset.page } });
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
  api.whoami(api.token()).then(start, (err) => {
    if (err.status === 401) logout('The server no longer accepts the saved token (401): sign in again.');
    else logout(`Could not reach the API: ${err.message}`);
  });
} else {
  showLogin('');
}
