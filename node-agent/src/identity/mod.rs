//! The node's cluster identity: joining with a join token, the files it lives in, and its
//! renewal. Declares and re-exports only; see docs/architecture.md ("Node agent",
//! "Identity").
//!
//! - [`files`]: the `--pki-dir` layout (`ca.crt`, `node.crt`, `node.key`, `join.json`) and
//!   its atomic replacement;
//! - [`schedule`]: when to renew (pure);
//! - [`join`](mod@join): the join protocol (pin the CA by the token's digest, then send the
//!   secret and a CSR);
//! - [`renew`]: renewal over mutual TLS and handing the new identity to the etcd client and
//!   the exec/logs server;
//! - [`tls`]: what the identity means for etcd ([`shoal_store::Connect`]) and for the
//!   agent's server (a rustls config requiring the cluster's client certificates);
//! - [`security`]: `--pki-dir` or `--insecure`, and what each means for etcd, the server
//!   and renewal;
//! - [`controller`]: requests to the controller while the agent runs (a task's secrets and
//!   configs), renewed with the certificate;
//! - `http`: the HTTPS clients toward the controller and the wire types.

pub mod controller;
pub mod error;
pub mod files;
mod http;
pub mod join;
pub mod renew;
pub mod schedule;
pub mod security;
pub mod tls;

pub use controller::ControllerClient;
pub use error::IdentityError;
pub use files::{FleetIdentity, JoinInfo, NodeIdentity, PkiDir, DEFAULT_PKI_DIR};
pub use join::{controller_url, join, JoinRequest};
pub use renew::{RenewalHandle, Renewer};
pub use schedule::{delay_until, random_renewal_point, renewal_point};
pub use security::{fleet_connect, Security, INSECURE_DEFAULT_ETCD};
