//! The Shoal controller: a stateless process that serves the HTTP API and, when it holds the
//! leader lease, reconciles Networks and Services stored in etcd into allocations, tasks
//! placed on nodes, and Endpoints.
//!
//! One module per stage, as swarmkit's manager: `allocator` → `orchestrator` → `scheduler`,
//! `nodes` and `settings`; `manager` runs them on `reconcile` (cache, queues, runners) while it holds the leader lease. Every etcd
//! access — the watcher, fenced batches, leader election — goes through `shoal_store`. What
//! each stage owns, the data flow and the module graph: docs/architecture.md ("Controller").

pub mod api;
pub mod app;
pub mod config;
pub mod context;
pub mod identity;
pub mod manager;
pub mod secrets_key;

pub mod allocator;
pub mod endpoints;
pub mod ipam;
pub mod nodes;
pub mod orchestrator;
pub mod reconcile;
pub mod scheduler;
pub mod settings;
