//! Moving a store between etcd endpoints when the one in use dies.
//!
//! etcd-client balances requests over every endpoint it is given and fails the requests
//! it sends to an endpoint that is down (etcdv3/etcd-client#39), so a 3-member cluster
//! with one member stopped would fail a third of Shoal's requests. Instead, as etcd's own
//! Go client did before its gRPC balancer, a store talks to one endpoint at a time: it is
//! pinned to the first that answers ([`first_answering`]), and a monitor (started by
//! `Store::connect`) probes it every [`PROBE_EVERY`] ([`healthy`]); when it does not
//! answer within [`PROBE_TIMEOUT`], the store moves to the next endpoint that does. Moving
//! is `Store::set_connect`'s swap: new requests use the new client, watchers reopen on it,
//! lease keepers follow at once. Requests in flight on the dead endpoint fail as
//! temporary errors, which callers retry.
//!
//! Invariant: a store with one endpoint has no monitor and behaves as etcd-client does.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use shoal_api_types::keys::Keys;

use crate::connect::Connect;
use crate::error::{At, StoreError};
use crate::Result;

/// How often the monitor probes the pinned endpoint.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);

/// How long a probe may take before the endpoint counts as dead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads the count of the nodes' prefix, a key every identity may read (the controller's
/// and a node's).
async fn probe(client: &Client, keys: &Keys) -> Result<()> {
    let key = keys.prefix::<shoal_api_types::NodeSpec>();
    client
        .kv_client()
        .get(key.as_str(), Some(GetOptions::new().with_count_only()))
        .await
        .at("read", &key)?;
    Ok(())
}

/// Whether the pinned `client` answers a probe within [`PROBE_TIMEOUT`] (a refusal is an
/// answer).
pub(crate) async fn healthy(client: &Client, keys: &Keys) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe(client, keys)).await,
        Ok(Ok(())) | Ok(Err(StoreError::PermissionDenied { .. }))
    )
}

/// A client for `cfg`'s endpoint `index` alone (lazy: it connects on first use).
async fn client_for(cfg: &Connect, index: usize) -> Result<Client> {
    Connect {
        endpoints: vec![cfg.endpoints[index].clone()],
        ..cfg.clone()
    }
    .client()
    .await
}

/// The first endpoint of `cfg`, starting at `start` and wrapping around, whose client
/// answers a probe: the client and the endpoint's index. With one endpoint, that one (it
/// must answer); with none answering, the last error. A refusal (permission denied) is
/// returned at once: another member would refuse too.
pub(crate) async fn first_answering(
    cfg: &Connect,
    keys: &Keys,
    start: usize,
) -> Result<(Client, usize)> {
    if cfg.endpoints.len() <= 1 {
        let client = cfg.client().await?;
        probe(&client, keys).await?;
        return Ok((client, 0));
    }
    let n = cfg.endpoints.len();
    let mut last = None;
    for i in (0..n).map(|k| (start + k) % n) {
        let attempt = async {
            let client = client_for(cfg, i).await?;
            match tokio::time::timeout(PROBE_TIMEOUT * 3, probe(&client, keys)).await {
                Ok(r) => r.map(|()| client),
                Err(_) => Err(StoreError::Unreachable(format!(
                    "etcd at {} did not answer within {:?}",
                    cfg.endpoints[i],
                    PROBE_TIMEOUT * 3
                ))),
            }
        };
        match attempt.await {
            Ok(client) => return Ok((client, i)),
            Err(e @ StoreError::PermissionDenied { .. }) => return Err(e),
            Err(e) => {
                tracing::debug!(endpoint = %cfg.endpoints[i], error = %e, "etcd endpoint does not answer");
                last = Some(e);
            }
        }
    }
    Err(last.expect("several endpoints were tried"))
}
