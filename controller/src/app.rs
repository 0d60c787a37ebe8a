//! Build then run: flags, the etcd connection, the API server and the manager (leader
//! election + reconcilers), with graceful shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use shoal_store::{Connect, Store};
use tokio::sync::watch;

/// Flags of `shoal-controller`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "shoal-controller",
    about = "Shoal's API server and reconcilers"
)]
pub struct Config {
    /// Address the HTTP API listens on.
    #[arg(long, default_value = "127.0.0.1:7777", env = "SHOAL_LISTEN")]
    pub listen: SocketAddr,
    /// etcd endpoints, comma-separated.
    #[arg(
        long,
        default_value = "http://127.0.0.1:2379",
        env = "SHOAL_ETCD",
        value_delimiter = ','
    )]
    pub etcd: Vec<String>,
    /// Key root in etcd.
    #[arg(long, default_value = shoal_api_types::keys::DEFAULT_ROOT)]
    pub etcd_root: String,
    /// PEM CA certificate for etcd TLS.
    #[arg(long)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd TLS (with --etcd-key).
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// PEM client key for etcd TLS.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// Serve the API only; never run the reconcilers.
    #[arg(long)]
    pub api_only: bool,
    #[command(flatten)]
    /// Reconciler settings.
    pub manager: crate::config::ManagerConfig,
}

impl Config {
    /// The etcd connection settings.
    pub fn connect(&self) -> anyhow::Result<Connect> {
        let read = |p: &std::path::PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        Ok(Connect {
            endpoints: self.etcd.clone(),
            root: Some(self.etcd_root.clone()),
            ca_cert: self.etcd_ca.as_ref().map(read).transpose()?,
            client_cert: match (&self.etcd_cert, &self.etcd_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            },
            ..Connect::default()
        })
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = Store::connect(&config.connect()?)
        .await
        .with_context(|| format!("connecting to etcd at {}", config.etcd.join(",")))?;
    let (shutdown_tx, shutdown) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(listen = %config.listen, etcd = %config.etcd.join(","), "shoal-controller started");
    let api = tokio::spawn(crate::api::serve(listener, store.clone(), shutdown.clone()));
    let manager = (!config.api_only).then(|| {
        tokio::spawn(crate::manager::run(
            store.clone(),
            config.manager.clone(),
            shutdown.clone(),
        ))
    });
    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    api.await??;
    if let Some(m) = manager {
        m.await??;
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
