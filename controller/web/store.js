// The page's copy of the cluster: one Map (name -> object) per kind, filled by api.js's
// watches. Changes are coalesced: listeners run once per animation frame after any number
// of events, so a burst of 300 task events re-renders once.

export const KINDS = ['nodes', 'services', 'tasks', 'networks', 'endpoints'];

export class Store {
  constructor() {
    this.objects = Object.fromEntries(KINDS.map((k) => [k, new Map()]));
    /** Kinds whose first list arrived. */
    this.synced = new Set();
    /** Per kind, the last connection problem ('' when the watch is up). */
    this.problems = {};
    this.listeners = [];
    this.pending = false;
  }

  /** Runs `fn()` after changes (at most once per frame). */
  subscribe(fn) { this.listeners.push(fn); }

  replace(kind, items) {
    this.objects[kind] = new Map(items.map((o) => [o.metadata.name, o]));
    this.synced.add(kind);
    this.changed();
  }

  put(kind, obj) { this.objects[kind].set(obj.metadata.name, obj); this.changed(); }

  remove(kind, obj) { this.objects[kind].delete(obj.metadata.name); this.changed(); }

  problem(kind, message) {
    if ((this.problems[kind] || '') === message) return;
    this.problems[kind] = message;
    this.changed();
  }

  /** Whether every kind has been listed once. */
  ready() { return KINDS.every((k) => this.synced.has(k)); }

  /** The objects of a kind, sorted by name. */
  list(kind) {
    return [...this.objects[kind].values()].sort((a, b) => cmp(a.metadata.name, b.metadata.name));
  }

  get(kind, name) { return this.objects[kind].get(name); }

  changed() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => {
      this.pending = false;
      for (const fn of this.listeners) fn();
    });
  }
}

// One collator for every comparison: `localeCompare` with options builds a new one per
// call, which made sorting 300 tasks take a third of a second.
const collator = new Intl.Collator(undefined, { numeric: true });

/** Natural order: `node-2` before `node-10`. */
export function cmp(a, b) {
  return collator.compare(String(a), String(b));
}
