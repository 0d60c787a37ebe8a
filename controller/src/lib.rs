//! The Shoal controller: a stateless process that serves the HTTP API and, when it holds the
//! leader lease, reconciles Networks and Services stored in etcd into allocations, tasks
//! placed on nodes, and Endpoints.
//!
//! Pipeline (one module per stage, as swarmkit's manager): `allocator` (subnets, VNIs,
//! addresses) → `orchestrator` (task slots) → `scheduler` (task → node) → `nodes` (node
//! lifecycle) → `endpoints` (per network and service, for the agents). `runtime` is the
//! kube-runtime-style watcher/queue/runner they all run on; `leader` holds the etcd lease.

pub mod api;
pub mod app;
pub mod config;
pub mod context;
pub mod manager;

pub mod allocator;
pub mod endpoints;
pub mod ipam;
pub mod leader;
pub mod nodes;
pub mod orchestrator;
pub mod runtime;
pub mod scheduler;
