//! Owns following containerd's task exit events, which wake the agent's converge loop.

use std::time::Duration;

/// Follows containerd's `/tasks/exit` events of `namespace`, bumping `changes` on each (and
/// when the stream breaks, since exits may have been missed). Resubscribes after a second.
pub(super) async fn follow_exits(
    client: containerd_client::Client,
    namespace: String,
    changes: tokio::sync::watch::Sender<u64>,
) {
    let filter = format!("namespace=={namespace:?},topic==\"/tasks/exit\"");
    loop {
        let stream = client
            .events()
            .subscribe(containerd_client::services::v1::SubscribeRequest {
                filters: vec![filter.clone()],
            })
            .await;
        if let Ok(stream) = stream {
            let mut stream = stream.into_inner();
            while let Ok(Some(_envelope)) = stream.message().await {
                changes.send_modify(|n| *n += 1);
            }
        }
        changes.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
