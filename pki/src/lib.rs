//! Shoal's cluster identity, shared by the controller and the node agent: the cluster CA
//! and the certificates it issues ([`Ca`], [`Profile`], [`csr`], [`inspect`]; rcgen and
//! x509-parser, no hand-written ASN.1), join and API tokens ([`JoinToken`],
//! [`new_api_token`], [`sha256_hex`], [`constant_time_eq`]), rustls configurations
//! ([`server_config`], [`client_config`], [`Reloadable`]) and the TLS serving loop
//! ([`serve`]) that hands each request the verified client certificate ([`PeerIdentity`]).
//!
//! Invariants: every rustls object is built with the `ring` provider explicitly (never the
//! process default); a certificate's subject, SANs, usages and lifetime always come from a
//! [`Profile`] chosen by the signer, never from the request; secrets are compared in
//! constant time. This crate depends on no other Shoal crate. See docs/architecture.md
//! ("Cluster identity").

mod ca;
mod error;
mod serve;
mod tls;
mod token;

pub use ca::{ca_digest, csr, inspect, inspect_der, Ca, CertInfo, Issued, Profile, Usage};
pub use error::{PkiError, Result};
pub use serve::{serve, PeerIdentity};
pub use tls::{client_config, client_config_revoking, server_config, ClientAuth, Reloadable};
pub use token::{constant_time_eq, new_api_token, new_join_secret, sha256_hex, JoinToken};
