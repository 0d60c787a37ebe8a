//! The node's cluster identity: joining with a join token, the files it lives in, and its
//! renewal. Declares and re-exports only; see docs/architecture.md ("Node agent",
//! "Identity").
//!
//! - [`files`]: the `--pki-dir` layout (`ca.crt`, `node.crt`, `node.key`, `join.json`) and
//!   its atomic replacement;
//! - [`schedule`]: when to renew (pure).

pub mod error;
pub mod files;
pub mod schedule;

pub use error::IdentityError;
pub use files::{FleetIdentity, JoinInfo, NodeIdentity, PkiDir, DEFAULT_PKI_DIR};
pub use schedule::{delay_until, random_renewal_point, renewal_point};
