//! Store errors, with the key or object they concern, and their retry classification.

/// What went wrong talking to etcd or with an object in it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object at the key.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// Create of an object that exists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// Kind of the object.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The object changed since it was read (or a precondition of a batch failed).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The revision asked for was compacted away; relist.
    #[error("revision {requested} was compacted (oldest available is {compacted}); list again")]
    Compacted {
        /// Revision asked for.
        requested: i64,
        /// The compaction revision.
        compacted: i64,
    },
    /// A stored value is not a valid object.
    #[error("cannot decode {key}: {source}")]
    Decode {
        /// The key.
        key: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The watch stream ended (etcd restarted, the connection broke).
    #[error("watch on {prefix} ended: {reason}")]
    WatchEnded {
        /// The watched prefix.
        prefix: String,
        /// Why.
        reason: String,
    },
    /// Connection settings that cannot be used ([`crate::Store::set_connect`]).
    #[error("invalid etcd connection settings: {0}")]
    InvalidConnect(String),
    /// etcd failed or was unreachable.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

impl StoreError {
    /// Whether the error is temporary: trying again later may succeed (transport trouble,
    /// lost races), as opposed to errors that will repeat (not found, bad data).
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_)
                | StoreError::Etcd(_)
                | StoreError::WatchEnded { .. }
                | StoreError::Compacted { .. }
        )
    }
}
