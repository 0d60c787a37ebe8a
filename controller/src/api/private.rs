//! Records below `<root>/private/` that the join and node APIs own: the current join secret
//! and node revocations. Only controllers read that prefix (no node role can); the API
//! serves neither record as an object.
//!
//! Invariant: a certificate of node N whose notBefore is at or before N's `revokedAt` is
//! refused everywhere the controller meets it (renewal, the exec/logs hop); a node that joins
//! again after its removal gets a certificate made later, which is accepted.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use shoal_api_types::Status;
use shoal_store::Store;

use super::error::store_status;

/// `<root>/private/join-token`: the secret of the current join token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinSecret {
    /// 25 characters `[a-z0-9]`.
    pub secret: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

/// `<root>/private/revoked/<node>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Certificates of the node made at or before this instant are refused.
    pub revoked_at: DateTime<Utc>,
}

impl Revocation {
    /// Whether a certificate valid from `not_before` is revoked by this record.
    pub fn refuses(&self, not_before: SystemTime) -> bool {
        not_before <= SystemTime::from(self.revoked_at)
    }
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, raw: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(raw)
        .map_err(|e| Status::internal(format!("{key} holds an unreadable record: {e}")))
}

fn fresh_secret() -> JoinSecret {
    JoinSecret {
        secret: shoal_pki::new_join_secret(),
        created_at: Utc::now(),
    }
}

/// The current join secret, made (create-if-absent) by the first controller that needs it.
pub async fn join_secret(store: &Store) -> Result<JoinSecret, Status> {
    let key = store.keys().join_token();
    let value = serde_json::to_vec(&fresh_secret()).expect("a join secret serializes");
    let raw = store
        .get_or_create_raw(&key, value)
        .await
        .map_err(|e| store_status(&e))?;
    decode(&key, &raw)
}

/// Replaces the join secret: tokens with the old one no longer admit nodes.
pub async fn rotate_join_secret(store: &Store) -> Result<JoinSecret, Status> {
    let key = store.keys().join_token();
    let secret = fresh_secret();
    store
        .put_raw(
            &key,
            serde_json::to_vec(&secret).expect("a join secret serializes"),
        )
        .await
        .map_err(|e| store_status(&e))?;
    Ok(secret)
}

/// The revocation record of `node`, if it was ever removed.
pub async fn revocation(store: &Store, node: &str) -> Result<Option<Revocation>, Status> {
    let key = store.keys().revoked(node);
    match store.get_raw(&key).await.map_err(|e| store_status(&e))? {
        None => Ok(None),
        Some(kv) => decode(&key, &kv.value).map(Some),
    }
}

/// Records that `node`'s certificates made until now are refused.
pub async fn revoke(store: &Store, node: &str) -> Result<Revocation, Status> {
    let record = Revocation {
        revoked_at: Utc::now(),
    };
    store
        .put_raw(
            &store.keys().revoked(node),
            serde_json::to_vec(&record).expect("a revocation serializes"),
        )
        .await
        .map_err(|e| store_status(&e))?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_revocation_refuses_certificates_made_until_then() {
        let r = Revocation {
            revoked_at: Utc::now(),
        };
        let at = SystemTime::from(r.revoked_at);
        assert!(r.refuses(at));
        assert!(r.refuses(at - Duration::from_secs(60)));
        assert!(!r.refuses(at + Duration::from_secs(1)));
    }
}
