//! Certificate renewal: at a random point between 50 % and 80 % of the certificate's
//! lifetime ([`super::schedule`]), a new key and `POST /v1/renew {"csr"}` to the controller
//! of `join.json` over mutual TLS with the current certificate; then the new certificate
//! goes to disk ([`PkiDir::save_certificate`], atomic), to the exec/logs server
//! ([`Reloadable::set`]: connections from then on) and to the etcd client
//! ([`Store::set_connect`]: requests from then on; the node lease's keep-alive moves over at
//! once) and to the client of the controller ([`ControllerClient::set_identity`]). Tasks,
//! watches and the lease are not interrupted. A failed renewal is retried with
//! backoff until it succeeds or the agent stops; once the certificate has expired the
//! controller refuses it and the node must join again (logged as such).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use shoal_pki::Reloadable;
use shoal_store::{Backoff, Connect, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::error::IdentityError;
use super::files::{NodeIdentity, PkiDir};
use shoal_api_types::join::RenewRequest;

use super::controller::ControllerClient;
use super::http;
use super::join::{check_issued, controller_url};
use super::schedule::{delay_until, random_renewal_point};

/// The longest single sleep while waiting for the renewal point: the wall clock is
/// compared again after it (suspends, clock steps).
const RECHECK: Duration = Duration::from_secs(3600);

/// Renews a node's certificate and hands it to what uses it.
pub struct Renewer {
    dir: PkiDir,
    identity: NodeIdentity,
    store: Option<(Store, Connect)>,
    server: Option<Arc<Reloadable>>,
    controller: Option<Arc<ControllerClient>>,
    retry: Backoff,
}

impl std::fmt::Debug for Renewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewer")
            .field("dir", &self.dir)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Renewer {
    /// Renews `identity`, kept in `dir`.
    pub fn new(dir: PkiDir, identity: NodeIdentity) -> Renewer {
        Renewer {
            dir,
            identity,
            store: None,
            server: None,
            controller: None,
            retry: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
        }
    }

    /// After each renewal, reconnects `store` with `base` and the new identity
    /// ([`NodeIdentity::etcd_connect`]).
    pub fn with_store(mut self, store: Store, base: Connect) -> Self {
        self.store = Some((store, base));
        self
    }

    /// After each renewal, serves new connections of the exec/logs server with the new
    /// certificate.
    pub fn with_server(mut self, tls: Arc<Reloadable>) -> Self {
        self.server = Some(tls);
        self
    }

    /// After each renewal, sends the controller requests of `client` with the new
    /// certificate.
    pub fn with_controller(mut self, client: Arc<ControllerClient>) -> Self {
        self.controller = Some(client);
        self
    }

    /// How failed renewals are retried (default: from 1 s, doubling, at most 5 min).
    pub fn with_retry(mut self, retry: Backoff) -> Self {
        self.retry = retry;
        self
    }

    /// The identity in use.
    pub fn identity(&self) -> &NodeIdentity {
        &self.identity
    }

    /// Renews now: a new key and certificate, written to disk and put to use.
    pub async fn renew_now(&mut self) -> Result<(), IdentityError> {
        let current = &self.identity;
        let controller = controller_url(&current.join.controller)?;
        let (csr, key_pem) = shoal_pki::csr(&current.join.name)?;
        let client =
            http::pinned_client(&current.ca_pem, Some((&current.cert_pem, &current.key_pem)))?;
        let url = http::endpoint(&controller, "/v1/renew");
        let issued = http::post_issued(
            &client,
            &url,
            "the certificate renewal",
            &RenewRequest { csr: csr.clone() },
        )
        .await?;
        check_issued(&url, &current.join.name, &issued.certificate)?;

        let mut next = current.clone();
        next.cert_pem = issued.certificate;
        next.key_pem = key_pem;
        let ca_changed = !issued.ca.trim().is_empty() && issued.ca != next.ca_pem;
        if ca_changed {
            next.ca_pem = issued.ca;
        }
        let endpoints_changed =
            !issued.etcd_endpoints.is_empty() && issued.etcd_endpoints != next.join.etcd_endpoints;
        if endpoints_changed {
            next.join.etcd_endpoints = issued.etcd_endpoints;
        }
        // Fails on a certificate and key that do not go together, before anything is
        // replaced.
        let server_config = next.server_config()?;

        if ca_changed {
            self.dir.save_ca(&next.ca_pem)?;
        }
        if endpoints_changed {
            self.dir.save_join(&next.join)?;
        }
        self.dir.save_certificate(&next.cert_pem, &next.key_pem)?;
        if let Some(tls) = &self.server {
            tls.set(server_config);
        }
        if let Some(client) = &self.controller {
            // Cannot fail where `server_config` did not (same certificate and key); if it
            // does, the old certificate serves until it expires.
            if let Err(e) = client.set_identity(&next) {
                tracing::warn!(error = %e, "the controller client keeps the old certificate");
            }
        }
        let connect = self
            .store
            .as_ref()
            .map(|(store, base)| (store.clone(), next.etcd_connect(base)));
        self.identity = next;
        if let Some((store, connect)) = connect {
            store.set_connect(connect).await?;
        }
        Ok(())
    }

    /// Renews at each scheduled point until `shutdown` turns true; `renewals` counts the
    /// renewals done.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>, renewals: watch::Sender<u64>) {
        loop {
            let point = match shoal_pki::inspect(&self.identity.cert_pem) {
                Ok(info) => {
                    let point = random_renewal_point(info.not_before, info.not_after);
                    tracing::info!(
                        not_after = %timestamp(info.not_after),
                        renew_at = %timestamp(point),
                        "node certificate renewal scheduled"
                    );
                    point
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the node certificate; renewing now");
                    SystemTime::now()
                }
            };
            loop {
                let wait = delay_until(point, SystemTime::now());
                if wait.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(RECHECK)) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            self.retry.reset();
            loop {
                match self.renew_now().await {
                    Ok(()) => {
                        tracing::info!("node certificate renewed");
                        renewals.send_modify(|n| *n += 1);
                        break;
                    }
                    Err(e) => {
                        let expired = shoal_pki::inspect(&self.identity.cert_pem)
                            .is_ok_and(|i| i.not_after <= SystemTime::now());
                        if expired {
                            tracing::error!(
                                error = %e,
                                "the node certificate has expired and cannot be renewed: join \
                                 this node again with `shoal-agent join`"
                            );
                        } else {
                            tracing::warn!(error = %e, "node certificate renewal failed; retrying");
                        }
                    }
                }
                let wait = self.retry.next().unwrap_or(Duration::from_secs(60));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
        }
    }

    /// Runs [`Renewer::run`] in the background.
    pub fn spawn(self) -> RenewalHandle {
        let (shutdown, rx) = watch::channel(false);
        let (renewals_tx, renewals) = watch::channel(0);
        let task = tokio::spawn(self.run(rx, renewals_tx));
        RenewalHandle {
            shutdown,
            renewals,
            task: Some(task),
        }
    }
}

fn timestamp(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A running renewal loop; dropping it stops the loop.
#[derive(Debug)]
pub struct RenewalHandle {
    shutdown: watch::Sender<bool>,
    renewals: watch::Receiver<u64>,
    task: Option<JoinHandle<()>>,
}

impl RenewalHandle {
    /// The number of renewals done so far (changes with each).
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewals.clone()
    }

    /// Stops the loop, after the renewal in flight if there is one.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RenewalHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
