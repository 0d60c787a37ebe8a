//! The health ports of `traffic: local` published ports ([`HealthListeners`]): on each, the
//! node answers HTTP for an external load balancer — `200 {"local":N}` while N > 0 of the
//! port's tasks are ready on this node (the backends its mesh rule DNATs to), else
//! `503 {"local":0}` — on any path and method, one JSON line, `Connection: close` semantics
//! left to hyper.
//!
//! Each listener is a TCP socket bound to `<node address>:<port>` inside the node's
//! namespace (on a thread of [`run_in`], so tokio workers keep the agent's own namespace),
//! served by axum on the agent's runtime. Invariants: one listener per health port; a port
//! that leaves the answers is closed at once (its task aborted, the socket dropped); a
//! changed count is seen by the next request without touching the socket; a changed node
//! address rebinds.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Router;

use crate::net::netns::run_in;

/// Why a health port could not be served.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The socket could not be bound (the port is in use, say).
    #[error("health port {addr} in namespace {netns:?}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The namespace (empty: the agent's own).
        netns: PathBuf,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// The namespace could not be entered.
    #[error("health port {addr}: cannot enter the node's namespace: {message}")]
    Netns {
        /// The address.
        addr: SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// The answer for a count: status and body.
pub fn answer(local: u32) -> (StatusCode, String) {
    let status = if local > 0 {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{{\"local\":{local}}}\n"))
}

async fn respond(State(count): State<Arc<AtomicU32>>) -> impl IntoResponse {
    let (status, body) = answer(count.load(Ordering::Relaxed));
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// One served health port.
#[derive(Debug)]
struct Listener {
    addr: SocketAddr,
    count: Arc<AtomicU32>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Stops serving and waits until the socket is closed.
    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The node's health listeners (see the module docs).
#[derive(Debug, Default)]
pub struct HealthListeners {
    home: Option<PathBuf>,
    served: tokio::sync::Mutex<BTreeMap<u16, Listener>>,
}

impl HealthListeners {
    /// Listeners in the namespace at `home` (`None`: the agent's own).
    pub fn new(home: Option<PathBuf>) -> Self {
        HealthListeners {
            home,
            served: tokio::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// The ports served now, with their counts.
    pub async fn served(&self) -> BTreeMap<u16, u32> {
        self.served
            .lock()
            .await
            .iter()
            .map(|(p, l)| (*p, l.count.load(Ordering::Relaxed)))
            .collect()
    }

    /// Serves exactly `answers` on `address` (see [`super::Mesh::serve_health`]). Every
    /// port is tried; the first error is returned after the others were served.
    pub async fn serve(
        &self,
        address: Ipv4Addr,
        answers: &BTreeMap<u16, u32>,
    ) -> Result<(), HealthError> {
        let mut served = self.served.lock().await;
        let stale: Vec<u16> = served
            .iter()
            .filter(|(port, l)| {
                !answers.contains_key(port) || l.addr != SocketAddr::from((address, **port))
            })
            .map(|(port, _)| *port)
            .collect();
        for port in stale {
            if let Some(l) = served.remove(&port) {
                tracing::info!(addr = %l.addr, "closing a health port");
                l.stop().await;
            }
        }
        let mut first_err = None;
        for (&port, &local) in answers {
            if let Some(l) = served.get(&port) {
                l.count.store(local, Ordering::Relaxed);
                continue;
            }
            let addr = SocketAddr::from((address, port));
            match bind(self.home.as_deref(), addr).await {
                Ok(listener) => {
                    let count = Arc::new(AtomicU32::new(local));
                    let app = Router::new().fallback(respond).with_state(count.clone());
                    let task = tokio::spawn(async move {
                        if let Err(e) = axum::serve(listener, app).await {
                            tracing::warn!(%addr, error = %e, "health port stopped");
                        }
                    });
                    tracing::info!(%addr, local, "serving a health port");
                    served.insert(port, Listener { addr, count, task });
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// A listening socket on `addr` inside the namespace at `netns` (our own when `None`).
async fn bind(
    netns: Option<&Path>,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, HealthError> {
    let label = netns.map(Path::to_owned).unwrap_or_default();
    let std_listener = run_in(netns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(l)
    })
    .await
    .map_err(|e| HealthError::Netns {
        addr,
        message: e.to_string(),
    })?
    .map_err(|source| HealthError::Bind {
        addr,
        netns: label.clone(),
        source,
    })?;
    tokio::net::TcpListener::from_std(std_listener).map_err(|source| HealthError::Bind {
        addr,
        netns: label,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        text
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn answer_should_be_200_with_the_count_or_503_at_zero() {
        assert_eq!(answer(2), (StatusCode::OK, "{\"local\":2}\n".into()));
        assert_eq!(
            answer(0),
            (StatusCode::SERVICE_UNAVAILABLE, "{\"local\":0}\n".into())
        );
    }

    #[tokio::test]
    async fn listeners_should_answer_the_current_count_and_close_removed_ports() {
        let h = HealthListeners::new(None);
        let lo = Ipv4Addr::LOCALHOST;
        let (a, b) = (free_port(), free_port());
        h.serve(lo, &BTreeMap::from([(a, 1), (b, 0)]))
            .await
            .unwrap();
        let got = get((lo, a).into()).await;
        assert!(
            got.starts_with("HTTP/1.0 200") || got.starts_with("HTTP/1.1 200"),
            "{got}"
        );
        assert!(
            got.contains("application/json") && got.ends_with("{\"local\":1}\n"),
            "{got}"
        );
        let got = get((lo, b).into()).await;
        assert!(
            got.contains(" 503 ") && got.ends_with("{\"local\":0}\n"),
            "{got}"
        );

        h.serve(lo, &BTreeMap::from([(b, 3)])).await.unwrap();
        assert_eq!(h.served().await, BTreeMap::from([(b, 3)]));
        assert!(get((lo, b).into()).await.ends_with("{\"local\":3}\n"));
        let closed = tokio::net::TcpStream::connect((lo, a)).await;
        assert!(closed.is_err(), "port {a} was removed and must be closed");
    }

    #[tokio::test]
    async fn a_port_in_use_should_fail_with_its_address_and_not_stop_the_others() {
        let h = HealthListeners::new(None);
        let lo = Ipv4Addr::LOCALHOST;
        let taken = std::net::TcpListener::bind((lo, 0)).unwrap();
        let busy = taken.local_addr().unwrap().port();
        let ok = free_port();
        let err = h
            .serve(lo, &BTreeMap::from([(busy, 1), (ok, 1)]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("127.0.0.1:{busy}")), "{err}");
        assert_eq!(h.served().await, BTreeMap::from([(ok, 1)]));
    }
}
