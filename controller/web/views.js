// The pages, as pure functions of the store (and a little page state) to DOM: `overview`,
// `servicePage`, `nodePage`, `networkPage`, `loginPage`. They never fetch; the app
// re-renders the current page whenever the store changes. Secrets and Configs are not
// watched, so no payload can ever be shown; exec is not offered.

import { h, link, table, badge } from './dom.js';
import { cmp } from './store.js';

const TERMINAL = ['complete', 'failed', 'rejected', 'shutdown', 'orphaned'];

// ---- helpers over API objects ----------------------------------------------------------

/** `api.2` (replicated) or `api.node-1` (global), as the CLI names tasks. */
export function taskName(t) {
  const s = t.spec;
  return s.slot !== undefined && s.slot !== null ? `${s.service}.${s.slot}` : `${s.service}.${s.node || t.metadata.name.slice(0, 8)}`;
}

function state(t) { return (t.status && t.status.state) || 'new'; }

/** Tasks that are, or are meant to be, alive (what the overview shows). */
function isActive(t) {
  return t.spec.desiredState === 'running' || !TERMINAL.includes(state(t));
}

function health(t) {
  if (!t.spec.healthcheck || state(t) !== 'running') return '';
  return t.status.healthy ? 'healthy' : 'unhealthy';
}

function byServiceSlot(a, b) {
  return cmp(a.spec.service, b.spec.service) || (a.spec.slot || 0) - (b.spec.slot || 0) || cmp(a.metadata.name, b.metadata.name);
}

function newestFirst(a, b) {
  return cmp(b.status && b.status.timestamp || '', a.status && a.status.timestamp || '');
}

function ports(spec) {
  return (spec.ports || []).map((p) => `${p.published}:${p.target}/${p.protocol || 'tcp'}${p.mode === 'host' ? ' (host)' : ''}`).join(', ');
}

function updateState(svc) {
  const u = svc.status && svc.status.updateStatus;
  return u ? badge(u.state.replace(/_/g, ' '), u.state) : h('span', { class: 'muted' }, '—');
}

function when(ts) { return ts ? new Date(ts).toLocaleTimeString() : ''; }

function labels(obj) {
  const l = (obj.spec && obj.spec.labels) || {};
  const items = Object.entries(l);
  return items.length ? h('ul', { class: 'labels' }, items.map(([k, v]) => h('li', {}, `${k}=${v}`))) : null;
}

function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(([, v]) => v !== '' && v !== null && v !== undefined)
    .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function problems(store) {
  const msgs = Object.entries(store.problems).filter(([, m]) => m).map(([k, m]) => `${k}: ${m}`);
  return msgs.length ? h('p', { class: 'problem', id: 'problems' }, `Reconnecting to the API (${msgs.join('; ')})`) : null;
}

// ---- task card -------------------------------------------------------------------------

function taskCard(t) {
  const hl = health(t);
  return h('div', {
    class: `task-card state-${state(t)}`,
    'data-task': t.metadata.name,
    'data-service': t.spec.service,
    'data-state': state(t),
    title: t.status && (t.status.err || t.status.message) || '',
  },
  link(`service/${encodeURIComponent(t.spec.service)}`, taskName(t), { class: 'task-name' }),
  h('span', { class: 'task-state' }, state(t)),
  hl ? h('span', { class: `task-health ${hl}` }, hl) : null);
}

// ---- overview --------------------------------------------------------------------------

export function overview(store) {
  const tasks = store.list('tasks').filter(isActive).sort(byServiceSlot);
  const byNode = new Map();
  for (const t of tasks) {
    const n = t.spec.node || '';
    if (!byNode.has(n)) byNode.set(n, []);
    byNode.get(n).push(t);
  }
  const columns = store.list('nodes').map((n) => nodeColumn(n, byNode.get(n.metadata.name) || []));
  const unassigned = byNode.get('') || [];
  if (unassigned.length) {
    columns.push(h('section', { class: 'node-col unassigned', 'data-node': '' },
      h('header', {}, h('strong', {}, 'not scheduled')),
      unassigned.map(taskCard)));
  }
  return [
    problems(store),
    h('h2', {}, 'Nodes'),
    h('div', { class: 'nodes' }, columns),
    h('h2', {}, 'Services'),
    servicesTable(store.list('services')),
    h('h2', {}, 'Networks'),
    networksTable(store.list('networks')),
  ];
}

function nodeColumn(n, tasks) {
  const st = (n.status && n.status.state) || 'unknown';
  const av = (n.spec && n.spec.availability) || 'active';
  return h('section', { class: `node-col node-${st}`, 'data-node': n.metadata.name, 'data-state': st },
    h('header', {},
      link(`node/${encodeURIComponent(n.metadata.name)}`, n.metadata.name, { class: 'node-name' }),
      ' ', badge(st), ' ', badge(av),
      h('div', { class: 'muted' }, (n.status && n.status.address) || ''),
      labels(n),
      h('div', { class: 'muted count' }, `${tasks.length} task${tasks.length === 1 ? '' : 's'}`)),
    tasks.map(taskCard));
}

function servicesTable(services) {
  return table(['name', 'mode', 'running / desired', 'image', 'ports', 'update'], services, (s) => {
    const st = s.status || {};
    return h('tr', { 'data-service': s.metadata.name },
      h('td', {}, link(`service/${encodeURIComponent(s.metadata.name)}`, s.metadata.name)),
      h('td', {}, s.spec.mode || 'replicated'),
      h('td', { class: 'replicas' }, `${st.runningTasks || 0} / ${st.desiredTasks || 0}`),
      h('td', {}, s.spec.image),
      h('td', {}, ports(s.spec)),
      h('td', { class: 'update-state' }, updateState(s)));
  }, 'No services yet: create one with `shoal service create`.');
}

function networksTable(networks) {
  return table(['name', 'driver', 'scope', 'subnet', 'gateway', 'VNI'], networks, (n) => {
    const st = n.status || {};
    return h('tr', { 'data-network': n.metadata.name },
      h('td', {}, link(`network/${encodeURIComponent(n.metadata.name)}`, n.metadata.name)),
      h('td', {}, n.spec.driver || 'overlay'),
      h('td', {}, st.scope || 'swarm'),
      h('td', {}, st.subnet || n.spec.subnet || ''),
      h('td', {}, st.gateway || n.spec.gateway || ''),
      h('td', {}, st.vni === undefined || st.vni === null ? '' : String(st.vni)));
  });
}

// ---- service page ----------------------------------------------------------------------

/** `page.logs`: `{ task, text, error, loading }` of the chosen task; `page.canReadLogs`;
 *  `page.showLogs(taskName)` fetches them. */
export function servicePage(store, name, page) {
  const s = store.get('services', name);
  if (!s) return notFound('service', name, store);
  const st = s.status || {};
  const u = st.updateStatus;
  const tasks = store.list('tasks').filter((t) => t.spec.service === name)
    .sort((a, b) => (a.spec.slot || 0) - (b.spec.slot || 0) || cmp(a.spec.node, b.spec.node) || newestFirst(a, b));
  const endpoints = store.list('endpoints').filter((e) => e.spec.service === name);
  return [
    problems(store),
    h('h2', {}, 'Service ', h('span', { class: 'name' }, name)),
    dl([
      ['image', s.spec.image],
      ['mode', s.spec.mode || 'replicated'],
      ['running / desired', `${st.runningTasks || 0} / ${st.desiredTasks || 0}`],
      ['ports', ports(s.spec)],
      ['networks', (s.spec.networks || []).map((n) => n.name || n.target || n).join(', ')],
      ['generation', `${s.metadata.generation} (observed ${st.observedGeneration || 0})`],
    ]),
    h('h3', {}, 'Update'),
    u ? h('div', { class: 'update', id: 'update-status', 'data-state': u.state },
      updateState(s),
      dl([
        ['message', u.message],
        ['started', when(u.startedAt)],
        ['completed', when(u.completedAt)],
        ['failures', u.failures ? String(u.failures) : ''],
        ['failed tasks', (u.failedTasks || []).join(', ')],
      ])) : h('p', { class: 'muted', id: 'update-status' }, 'Never updated.'),
    h('h3', {}, 'Virtual IPs'),
    table(['network', 'address'], st.virtualIps || [], (v) => h('tr', {},
      h('td', {}, link(`network/${encodeURIComponent(v.network)}`, v.network)), h('td', {}, v.addr)), 'No virtual IPs.'),
    h('h3', {}, 'Endpoints'),
    endpoints.length ? endpoints.map((e) => h('div', { class: 'endpoints', 'data-network': e.spec.network },
      h('h4', {}, link(`network/${encodeURIComponent(e.spec.network)}`, e.spec.network),
        e.spec.vip ? ` VIP ${e.spec.vip}` : ` (${e.spec.endpointMode || 'dnsrr'})`),
      table(['task', 'IP', 'node', 'ready'], e.spec.tasks || [], (t) => h('tr', {},
        h('td', {}, t.name), h('td', {}, t.ip), h('td', {}, t.node), h('td', {}, t.ready ? 'yes' : 'no')), 'No tasks.'))) : h('p', { class: 'muted' }, 'No endpoints.'),
    h('h3', {}, 'Tasks'),
    tasksTable(tasks, page),
    h('h3', {}, 'Logs'),
    logsPanel(page),
  ];
}

function tasksTable(tasks, page) {
  return table(['task', 'node', 'desired', 'state', 'health', 'since', 'error / message', ''], tasks, (t) => {
    const st = t.status || {};
    return h('tr', { class: isActive(t) ? 'active' : 'history', 'data-task': t.metadata.name, 'data-state': state(t) },
      h('td', { title: t.metadata.name }, taskName(t)),
      h('td', {}, t.spec.node ? link(`node/${encodeURIComponent(t.spec.node)}`, t.spec.node) : h('span', { class: 'muted' }, t.spec.pendingReason || 'unassigned')),
      h('td', {}, t.spec.desiredState),
      h('td', {}, badge(state(t))),
      h('td', {}, health(t)),
      h('td', {}, when(st.timestamp)),
      h('td', { class: st.err ? 'error' : '' }, st.err || st.message || ''),
      h('td', {}, page && page.canReadLogs && t.spec.node && st.containerId
        ? h('button', { type: 'button', class: 'logs-button', onclick: () => page.showLogs(t.metadata.name) }, 'logs')
        : null));
  }, 'No tasks.');
}

function logsPanel(page) {
  if (!page.canReadLogs) {
    return h('p', { class: 'muted', id: 'logs' }, 'Logs need an admin token: a read-only token may read objects but not container output.');
  }
  const l = page.logs;
  if (!l || !l.task) return h('p', { class: 'muted', id: 'logs' }, 'Choose a task (its "logs" button) to see its last lines.');
  return h('div', { id: 'logs', 'data-task': l.task },
    h('p', {}, `Last lines of task ${l.task} `, h('button', { type: 'button', onclick: () => page.showLogs(l.task) }, 'refresh')),
    l.error ? h('p', { class: 'error' }, l.error)
      : h('pre', { class: 'log' }, l.loading ? 'Loading…' : (l.text || '(no output)')));
}

// ---- node page -------------------------------------------------------------------------

export function nodePage(store, name, page) {
  const n = store.get('nodes', name);
  if (!n) return notFound('node', name, store);
  const st = n.status || {};
  const cap = st.capacity || {};
  const tasks = store.list('tasks').filter((t) => t.spec.node === name).sort((a, b) => byServiceSlot(a, b) || newestFirst(a, b));
  return [
    problems(store),
    h('h2', { 'data-node': name, 'data-state': st.state || 'unknown' }, 'Node ', h('span', { class: 'name' }, name), ' ', badge(st.state || 'unknown')),
    dl([
      ['availability', n.spec.availability || 'active'],
      ['address', st.address],
      ['ingress address', st.ingressAddress],
      ['agent', st.agentEndpoint],
      ['runtime', st.runtime],
      ['registered', st.registeredAt ? new Date(st.registeredAt).toLocaleString() : ''],
      ['message', st.message],
      ['capacity', Object.entries(cap).map(([k, v]) => `${k}=${v}`).join(', ')],
    ]),
    labels(n),
    h('h3', {}, 'Tasks'),
    h('div', { class: 'cards' }, tasks.filter(isActive).map(taskCard)),
    h('h3', {}, 'Task history'),
    tasksTable(tasks, page),
  ];
}

// ---- network page ----------------------------------------------------------------------

export function networkPage(store, name) {
  const n = store.get('networks', name);
  if (!n) return notFound('network', name, store);
  const st = n.status || {};
  const attached = store.list('tasks').filter(isActive)
    .map((t) => [t, (t.spec.attachments || []).find((a) => a.network === name)])
    .filter(([, a]) => a);
  const nodes = store.list('nodes').map((node) => node.metadata.name);
  for (const [t] of attached) if (t.spec.node && !nodes.includes(t.spec.node)) nodes.push(t.spec.node);
  const endpoints = store.list('endpoints').filter((e) => e.spec.network === name);
  return [
    problems(store),
    h('h2', {}, 'Network ', h('span', { class: 'name' }, name)),
    dl([
      ['driver', n.spec.driver || 'overlay'],
      ['scope', st.scope || 'swarm'],
      ['subnet', st.subnet || n.spec.subnet],
      ['gateway', st.gateway || n.spec.gateway],
      ['VNI', st.vni === undefined || st.vni === null ? '' : String(st.vni)],
      ['MTU', n.spec.mtu ? String(n.spec.mtu) : ''],
      ['flags', [n.spec.ingress && 'ingress', n.spec.internal && 'internal', n.spec.attachable && 'attachable'].filter(Boolean).join(', ')],
      ['phase', st.phase],
      ['message', st.message],
    ]),
    labels(n),
    h('h3', {}, 'Services'),
    table(['service', 'VIP', 'mode', 'tasks'], endpoints, (e) => h('tr', {},
      h('td', {}, link(`service/${encodeURIComponent(e.spec.service)}`, e.spec.service)),
      h('td', {}, e.spec.vip || ''),
      h('td', {}, e.spec.endpointMode || 'vip'),
      h('td', {}, String((e.spec.tasks || []).length))), 'No service is attached.'),
    h('h3', {}, 'Tasks on every node'),
    h('div', { class: 'nodes' }, nodes.map((node) => h('section', { class: 'node-col', 'data-node': node },
      h('header', {}, link(`node/${encodeURIComponent(node)}`, node, { class: 'node-name' })),
      attached.filter(([t]) => t.spec.node === node).sort(([a], [b]) => byServiceSlot(a, b))
        .map(([t, a]) => h('div', { class: 'attachment' }, taskCard(t), h('div', { class: 'muted ip' }, a.address)))))),
  ];
}

// ---- login and errors ------------------------------------------------------------------

/** The login form; `onSubmit(token)` checks it; `error` is shown under it. */
export function loginPage(onSubmit, error) {
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', placeholder: 'shoal_…', required: true });
  const form = h('form', { id: 'login', onsubmit: (e) => { e.preventDefault(); onSubmit(input.value.trim()); } },
    h('h2', {}, 'Sign in'),
    h('p', {}, 'Paste an API token: the admin token from `shoal dev up` (in the state directory\'s pki/admin.token), or one made with `shoal token create NAME --role read-only`.'),
    h('label', { for: 'token' }, 'API token'), input,
    h('button', { type: 'submit', id: 'login-button' }, 'Sign in'),
    error ? h('p', { class: 'error', id: 'login-error' }, error) : null,
    h('p', { class: 'muted' }, 'The token stays in this tab (sessionStorage) and is sent only to this server.'));
  setTimeout(() => input.focus(), 0);
  return form;
}

function notFound(kind, name, store) {
  if (!store.ready()) return h('p', { class: 'muted' }, 'Loading…');
  return [h('h2', {}, `No ${kind} ${name}`), h('p', {}, link('', 'Back to the overview'))];
}
