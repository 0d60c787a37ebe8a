// The only way views make DOM: `h(tag, attrs, ...children)`. Text always goes in through
// text nodes (never innerHTML), so nothing the API returns can become markup.

/** Makes an element. `attrs`: `class`, `data-*`, `href`, `on<event>` handlers, any
 *  attribute; `null`/`false` values are left out. Children: nodes, strings, numbers,
 *  arrays of those; `null`/`false` are skipped. */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** A link to a page of the web view (`#/service/api`). */
export function link(path, text, attrs) {
  return h('a', { href: '#/' + path, ...(attrs || {}) }, text);
}

/** A `<table>` with a header row and one row per item, made by `row(item)` (a `<tr>`). */
export function table(headers, items, row, empty) {
  if (items.length === 0) return h('p', { class: 'muted' }, empty || 'None.');
  return h('table', {},
    h('thead', {}, h('tr', {}, headers.map((t) => h('th', {}, t)))),
    h('tbody', {}, items.map(row)));
}

/** A small coloured label, its class naming the state (`badge state-running`). */
export function badge(text, kind) {
  return h('span', { class: `badge state-${kind || text}` }, text);
}
