//! [`serve`]: an axum router over TLS (tokio-rustls + hyper-util, in the shape of axum's
//! low-level-rustls example), with the verified client certificate of each connection in
//! every request's extensions as [`PeerIdentity`].
//!
//! A connection whose handshake fails or takes over 10 s is dropped without a response.
//! On shutdown the listener closes, open connections finish their in-flight requests (the
//! router's own long streams must end on the same signal) and `serve` returns.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::ca::info;
use crate::tls::Reloadable;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The verified client certificate of a TLS connection, put into every request's
/// extensions by [`serve`] (absent when the client sent none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Subject CN (a node's name, `shoal-controller`…).
    pub common_name: String,
    /// Start of the certificate's validity (revocation compares it).
    pub not_before: SystemTime,
    /// End of its validity.
    pub not_after: SystemTime,
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves. Each connection is
/// handshaken with the config current at accept time.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    router: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning (as axum::serve).
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        let acceptor = TlsAcceptor::from(tls.current());
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|leaf| info(leaf).ok())
                .map(|i| PeerIdentity {
                    common_name: i.common_name,
                    not_before: i.not_before,
                    not_after: i.not_after,
                });
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    if let Some(identity) = &identity {
                        request.extensions_mut().insert(identity.clone());
                    }
                    router.clone().oneshot(request)
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
