//! Errors of the reconcilers, with the retry classification the error policy uses.

use shoal_store::StoreError;

/// What went wrong in a reconcile or in the machinery that runs it.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A store operation failed (etcd unreachable, a lost race, a fenced write refused).
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
    /// Whether the error is temporary: retrying later may succeed (lost races, transport
    /// trouble).
    pub fn is_temporary(&self) -> bool {
        match self {
            ControllerError::Conflict(_) => true,
            ControllerError::Store(e) => e.is_temporary(),
            ControllerError::Decode { .. } | ControllerError::NotLeader => false,
        }
    }
}
