//! The networking layer's errors: [`NetError`] for netlink, namespaces and files, and
//! [`NftError`] for the one nft runner ([`super::nft`]), wrapped by it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

use super::names;

/// Errors of the networking layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request failed.
    #[error("netlink: {op} {object}: {source}")]
    Netlink {
        /// What we were doing.
        op: &'static str,
        /// The link, address or entry.
        object: String,
        /// The kernel's answer.
        #[source]
        source: rtnetlink::Error,
    },
    /// A namespace syscall failed.
    #[error("{op} {path}: {source}")]
    Netns {
        /// The syscall.
        op: &'static str,
        /// The namespace path.
        path: PathBuf,
        /// errno.
        #[source]
        source: nix::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` refused or could not run.
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    /// A task attachment names an overlay that is not set up on this node.
    #[error("overlay with VNI {vni} is not set up on this node (call ensure_overlay first)")]
    OverlayMissing {
        /// The VNI.
        vni: u32,
    },
    /// A task wants egress but the gateway bridge is missing.
    #[error(
        "gateway bridge {} is not set up on this node (call ensure_gateway first)",
        names::GW_BRIDGE
    )]
    GatewayMissing,
    /// No free address left on the gateway bridge.
    #[error("gateway subnet {0} has no free address")]
    GatewayExhausted(Ipv4Network),
    /// The underlay address is on no interface of the home netns.
    #[error("underlay address {0} is on no interface of the node's namespace")]
    NoUnderlay(Ipv4Addr),
    /// The overlay's fast path (`fastpath`) could not be loaded or updated.
    #[error("overlay fast path: {0}")]
    FastPath(String),
    /// Bad input (a name, a VNI).
    #[error("invalid: {0}")]
    Invalid(String),
}

impl NetError {
    /// Whether trying again later may succeed (the reconciler requeues with backoff) rather
    /// than the input being wrong. Missing prerequisites are retryable: the agent creates the
    /// overlay or gateway and comes back.
    pub fn is_temporary(&self) -> bool {
        !matches!(self, NetError::Invalid(_) | NetError::GatewayExhausted(_))
    }
}

/// Why nft could not do what we asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The namespace could not be opened or entered.
    #[error("enter network namespace {path}: {reason}")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// nft could not be started or fed.
    #[error(
        "run nft ({what}) in {netns}: {source}; is nftables installed? (apt-get install nftables)"
    )]
    Spawn {
        /// What we were doing.
        what: &'static str,
        /// The namespace, or `-` for our own.
        netns: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// nft ran and refused.
    #[error("nft ({what}) failed in {netns}: {stderr}")]
    Refused {
        /// What we were doing.
        what: &'static str,
        /// The namespace, or `-` for our own.
        netns: String,
        /// nft's complaint.
        stderr: String,
    },
}

impl NftError {
    /// Whether retrying later may help; a missing namespace or an nft that rejects our
    /// document will not fix itself.
    pub fn is_temporary(&self) -> bool {
        match self {
            NftError::Spawn { .. } => true,
            NftError::Refused { stderr, .. } => {
                stderr.contains("Resource busy") || stderr.contains("Interrupted")
            }
            NftError::Netns { .. } => false,
        }
    }
}
