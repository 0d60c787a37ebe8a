//! The DNS layer's errors ([`DnsError`]): files and namespaces, and binding inside a task
//! namespace.

use std::path::PathBuf;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A file or namespace operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or namespace.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A socket could not be bound inside the namespace.
    #[error("bind {what} {addr} in namespace {netns}: {source}{hint}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The namespace.
        netns: PathBuf,
        /// `udp` or `tcp`.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
        /// What to check.
        hint: &'static str,
    },
}

impl DnsError {
    /// Whether retrying later may help (e.g. loopback not up yet, or the namespace is still
    /// being made). A bind conflict on 127.0.0.11:53 is not temporary.
    pub fn is_temporary(&self) -> bool {
        match self {
            DnsError::Io { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            DnsError::Bind { source, .. } => source.kind() == std::io::ErrorKind::AddrNotAvailable,
        }
    }
}
