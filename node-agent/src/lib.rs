//! The Shoal node agent: registers its Node with a lease, watches its own tasks (and every
//! Network and Endpoints object) in etcd, and converges the host to them: containerd
//! containers (`runtime`), namespaces, veths, bridges and VXLAN links (`net`), the embedded DNS
//! server at 127.0.0.11 in each task namespace (`dns`), nftables VIP load balancing (`lb`) and
//! the routing mesh and host-mode ports in the node's namespace (`mesh`), wired together in `agent::network`. It reports task status (with health checks) back to
//! etcd, and serves `exec` and logs to the API server (`server`). `hollow` is a testing
//! runtime that starts no containers.

pub mod agent;
pub mod dns;
pub mod hollow;
pub mod lb;
pub mod mesh;
pub mod net;
pub mod runtime;
pub mod server;
