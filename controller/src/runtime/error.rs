//! Errors of the reconcilers, with the retry classification the error policy uses.

use shoal_store::StoreError;

/// What went wrong in a reconcile or in the runtime.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// etcd failed or was unreachable.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// A typed store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A precondition of a write failed: something changed since the cache was read, or
    /// this replica is no longer the leader. Read again and retry.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored value could not be decoded.
    #[error("cannot decode {key}: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// This replica lost the leader lease; it must stop reconciling.
    #[error("not the leader any more")]
    NotLeader,
}

impl ControllerError {
    /// Whether retrying later may succeed (lost races, transport trouble).
    pub fn is_retryable(&self) -> bool {
        match self {
            ControllerError::Etcd(_) | ControllerError::Conflict(_) => true,
            ControllerError::Store(e) => e.is_retryable(),
            ControllerError::Decode { .. } | ControllerError::NotLeader => false,
        }
    }
}
