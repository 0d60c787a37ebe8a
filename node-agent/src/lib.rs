//! The Shoal node agent (`shoal-agent`). Each module owns one concern; the whole, the files
//! and which module uses which are in docs/architecture.md ("Node agent"):
//! `agent` (registration, watches, the converge loop, task networking's wiring), `runtime`
//! (the container runtime: containerd), `net` (namespaces, links, overlays, nft), `dns` (the
//! embedded DNS server), `lb` (VIP tables), `mesh` (routing-mesh rules), `server` (exec and
//! logs for the API server, over mutual TLS), `identity` (joining the cluster, the node's
//! certificate and its renewal), `taskfiles` (secrets, configs, volumes and mounts of task
//! containers) and `hollow` (a testing runtime that starts no containers).

pub mod agent;
pub mod check;
pub mod dns;
pub mod hollow;
pub mod identity;
pub mod lb;
pub mod memory;
pub mod mesh;
pub mod net;
pub mod runtime;
pub mod server;
pub mod taskfiles;
