//! The errors of an nf_tables netlink batch or read-back, and whether a retry may help. A
//! leaf of [`super`] with no imports from the rest of `lb`, so [`super::super::entries`]'s
//! `LbError` can wrap it without a module cycle.

/// Errors of a batch or a read-back.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The netlink socket could not be opened or used.
    #[error("nf_tables netlink socket ({op}): {source}")]
    Socket {
        /// What we were doing.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the batch (nothing of it was applied).
    #[error("the kernel refused the VIP table change at \"{what}\": {}{}", std::io::Error::from_raw_os_error(*.errno), .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Refused {
        /// The message it refused.
        what: String,
        /// The errno.
        errno: i32,
        /// The kernel's extended ack message, when it gave one.
        message: Option<String>,
    },
    /// The kernel did not acknowledge the batch.
    #[error("the kernel did not acknowledge the VIP table change")]
    NoAck,
    /// The kernel's answer did not have the shape we expect.
    #[error("unexpected nf_tables answer: {0}")]
    Unexpected(String),
}

impl NetlinkError {
    /// Whether retrying later may help.
    pub fn is_temporary(&self) -> bool {
        match self {
            NetlinkError::Socket { .. } | NetlinkError::NoAck => true,
            NetlinkError::Unexpected(_) => false,
            NetlinkError::Refused { errno, .. } => [
                nix::libc::EBUSY,
                nix::libc::EINTR,
                nix::libc::EAGAIN,
                nix::libc::ENOBUFS,
            ]
            .contains(errno),
        }
    }
}
