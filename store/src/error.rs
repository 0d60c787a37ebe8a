//! Store errors, with the key or object they concern, and their retry classification.
//!
//! etcd's refusals (the client certificate's user may not touch a key, or no longer
//! exists) are [`StoreError::PermissionDenied`], never temporary: retrying will not help,
//! so reconcilers must not retry them hot.

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
    /// No etcd endpoint answered in time.
    #[error("etcd is unreachable: {0}")]
    Unreachable(String),
    /// The watch stream ended (etcd restarted, the connection broke).
    #[error("watch on {prefix} ended: {reason}")]
    WatchEnded {
        /// The watched prefix.
        prefix: String,
        /// Why.
        reason: String,
    },
    /// etcd refused the request: the etcd user of this connection (its client
    /// certificate's CN) has no permission for it, or no longer exists (a removed node).
    #[error(
        "permission denied: etcd refused to {op}{} ({reason}); the etcd user of this client \
         certificate lacks that permission or was removed",
        on_key(.key)
    )]
    PermissionDenied {
        /// What was attempted: `read`, `write`, `watch`, `transaction on`...
        op: &'static str,
        /// The key or prefix (empty when unknown).
        key: String,
        /// etcd's message.
        reason: String,
    },
    /// Managing etcd users, roles or authentication failed.
    #[error("etcd auth: cannot {what}: {source}")]
    Auth {
        /// What failed, with the user or role (`add role shoal-node-a`).
        what: String,
        /// etcd's error.
        #[source]
        source: etcd_client::Error,
    },
    /// Connection settings that cannot be used ([`crate::Store::set_connect`]).
    #[error("invalid etcd connection settings: {0}")]
    InvalidConnect(String),
    /// etcd failed or was unreachable.
    #[error("etcd: {0}")]
    Etcd(etcd_client::Error),
}

fn on_key(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" {key}")
    }
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        StoreError::from_etcd(e, "access", "")
    }
}

impl StoreError {
    /// Whether the error is temporary: trying again later may succeed (transport trouble,
    /// lost races), as opposed to errors that will repeat (not found, bad data, permission
    /// denied).
    pub fn is_temporary(&self) -> bool {
        match self {
            StoreError::Conflict(_)
            | StoreError::Etcd(_)
            | StoreError::Unreachable(_)
            | StoreError::WatchEnded { .. }
            | StoreError::Compacted { .. } => true,
            StoreError::Auth { source, .. } => match source {
                // etcd answered: a refusal or a bad request repeats, an overloaded or
                // leaderless etcd does not.
                etcd_client::Error::GRpcStatus(s) => {
                    matches!(i32::from(s.code()), 4 | 8 | 10 | 14)
                }
                // Our own refusal to ask (a reserved or invalid name).
                etcd_client::Error::InvalidArgs(_) => false,
                _ => true,
            },
            _ => false,
        }
    }

    /// Whether etcd said the lease the request named does not exist (expired or revoked):
    /// the lease is gone for good, so retrying with it is pointless; grant a new one.
    pub fn is_lease_gone(&self) -> bool {
        let e = match self {
            StoreError::Etcd(e) => e,
            _ => return false,
        };
        match e {
            etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
            _ => false,
        }
    }

    /// Whether etcd refused the request for lack of permission.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, StoreError::PermissionDenied { .. })
    }

    /// Classifies an etcd error of the request `op` on `key`: etcd's refusals become
    /// [`StoreError::PermissionDenied`], everything else [`StoreError::Etcd`].
    pub(crate) fn from_etcd(e: etcd_client::Error, op: &'static str, key: &str) -> StoreError {
        match refusal(&e) {
            Some(reason) => StoreError::PermissionDenied {
                op,
                key: key.to_string(),
                reason,
            },
            None => StoreError::Etcd(e),
        }
    }
}

/// etcd's message if `e` is a refusal for lack of permission or identity: "permission
/// denied" (the user may not, or no longer exists), "user name is empty" (no identity with
/// auth enabled), an invalid token (gRPC `Unauthenticated`).
pub(crate) fn refusal(e: &etcd_client::Error) -> Option<String> {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return None;
    };
    const PERMISSION_DENIED: i32 = 7;
    const UNAUTHENTICATED: i32 = 16;
    let code = i32::from(status.code());
    let msg = status.message();
    let refused = code == PERMISSION_DENIED
        || code == UNAUTHENTICATED
        || msg.contains("permission denied")
        || msg.contains("user name is empty");
    refused.then(|| msg.to_string())
}

/// Adds the request and key to an etcd error (see [`StoreError::from_etcd`]).
pub(crate) trait At<T> {
    /// The error of request `op` on `key`.
    fn at(self, op: &'static str, key: &str) -> Result<T, StoreError>;
}

impl<T> At<T> for Result<T, etcd_client::Error> {
    fn at(self, op: &'static str, key: &str) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::from_etcd(e, op, key))
    }
}
