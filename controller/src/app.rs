//! Build then run: flags, the subcommands that write the data dir (`init`, `cert etcd`,
//! see [`crate::identity`]), the etcd connection, the API server and the manager (leader
//! election + reconcilers), with graceful shutdown on SIGTERM/SIGINT.
//!
//! Secure by default: the controller loads its data dir (`--data-dir`), serves HTTPS with
//! `api.crt` (client certificates from the cluster CA optional, for node renewal) and
//! reaches etcd and agents with `controller.crt`. `--insecure` keeps plain HTTP and
//! plaintext etcd, and is refused unless `--listen` is a loopback address.
//!
//! The secrets key (`crate::secrets_key`): `--secrets-key FILE`, else `<data-dir>/secrets.key`
//! (created when missing), else with `--insecure` the key kept in etcd. At start the
//! controller checks that it opens the Secret payloads etcd holds, and stops if not.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use shoal_store::{Connect, Store};
use tokio::sync::watch;

use crate::api::agent::AgentTls;
use crate::api::state::Cluster;
use crate::config::parse_duration;
use crate::identity::{self, DataDir, Identity};
use crate::secrets_key::{self, KeySource, SecretsKey};

/// The command line of `shoal-controller`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "shoal-controller",
    about = "Shoal's API server and reconcilers",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// A one-off command instead of running the controller.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags of the running controller.
    #[command(flatten)]
    pub config: Config,
}

/// One-off commands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create the cluster identity (CA, API and controller certificates, admin token) in
    /// the data dir.
    Init(InitArgs),
    /// Issue certificates from the cluster CA.
    Cert {
        /// What to issue.
        #[command(subcommand)]
        what: CertCommand,
    },
}

/// `shoal-controller init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Where to write the identity (made 0700).
    #[arg(long, default_value = identity::DEFAULT_DATA_DIR, env = "SHOAL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Another name of the API server (IP address or DNS name); repeatable. localhost,
    /// 127.0.0.1 and ::1 are always included.
    #[arg(long = "api-san")]
    pub api_sans: Vec<String>,
    /// The cluster's name, in the CA's CN (`shoal-ca <name>`).
    #[arg(long, default_value = "shoal")]
    pub cluster_name: String,
    /// Replace an existing CA (every node must join again).
    #[arg(long)]
    pub force: bool,
}

/// `shoal-controller cert …`.
#[derive(Debug, Clone, Subcommand)]
pub enum CertCommand {
    /// An etcd member certificate (server and client: for clients and peers), written to
    /// `<data dir>/etcd/<name>.{crt,key}`.
    Etcd {
        /// The data dir holding the CA.
        #[arg(long, default_value = identity::DEFAULT_DATA_DIR, env = "SHOAL_DATA_DIR")]
        data_dir: PathBuf,
        /// The member's name (its certificate's CN).
        #[arg(long)]
        name: String,
        /// An IP address or DNS name of the member; repeatable.
        #[arg(long = "san", required = true)]
        sans: Vec<String>,
    },
}

/// Flags of the running `shoal-controller`.
#[derive(Debug, Clone, Args)]
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
    /// PEM CA certificate for etcd TLS (default: the data dir's ca.crt).
    #[arg(long)]
    pub etcd_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for etcd TLS, with --etcd-key (default: the data dir's
    /// controller.crt).
    #[arg(long, requires = "etcd_key")]
    pub etcd_cert: Option<std::path::PathBuf>,
    /// PEM client key for etcd TLS.
    #[arg(long, requires = "etcd_cert")]
    pub etcd_key: Option<std::path::PathBuf>,
    /// The cluster identity written by `shoal-controller init`.
    #[arg(long, default_value = identity::DEFAULT_DATA_DIR, env = "SHOAL_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Plain HTTP API without TLS and plaintext etcd without certificates: benchmarks'
    /// baseline and tests only; refused unless --listen is a loopback address.
    #[arg(long)]
    pub insecure: bool,
    /// etcd endpoints joining nodes are told, comma-separated (default: --etcd).
    #[arg(long, value_delimiter = ',')]
    pub advertise_etcd: Vec<String>,
    /// Lifetime of node certificates (agents renew at 50–80 % of it).
    #[arg(long, default_value = "90d", value_parser = parse_duration)]
    pub node_cert_lifetime: Duration,
    /// The secrets key file (64 hex digits; created 0600 when missing): it seals Secret
    /// payloads in etcd, so every controller of a cluster must use the same one. Default:
    /// `<data-dir>/secrets.key`; with --insecure and no file, a key kept in etcd itself.
    #[arg(long, env = "SHOAL_SECRETS_KEY")]
    pub secrets_key: Option<PathBuf>,
    /// Serve the API only; never run the reconcilers.
    #[arg(long)]
    pub api_only: bool,
    #[command(flatten)]
    /// Reconciler settings.
    pub manager: crate::config::ManagerConfig,
}

impl Config {
    /// Refuses what must not run: plain HTTP on a non-loopback address.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.insecure && !self.listen.ip().is_loopback() {
            anyhow::bail!(
                "--insecure serves the API in plain HTTP without authentication, so it only \
                 listens on loopback; --listen {} is not (use 127.0.0.1:PORT, or run \
                 `shoal-controller init` and drop --insecure)",
                self.listen
            );
        }
        Ok(())
    }

    /// The etcd connection settings: explicit --etcd-* files first, else (secure) the
    /// data dir's CA and controller certificate.
    pub fn connect(&self, identity: Option<&Identity>) -> anyhow::Result<Connect> {
        let read = |p: &std::path::PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
        };
        let ca_cert = match (&self.etcd_ca, identity) {
            (Some(p), _) => Some(read(p)?),
            (None, Some(id)) => Some(id.ca.cert_pem().to_string()),
            (None, None) => None,
        };
        let client_cert = match (&self.etcd_cert, &self.etcd_key, identity) {
            (Some(c), Some(k), _) => Some((read(c)?, read(k)?)),
            (_, _, Some(id)) => Some((
                id.controller.cert_pem.clone(),
                id.controller.key_pem.clone(),
            )),
            _ => None,
        };
        Ok(Connect {
            endpoints: self.etcd.clone(),
            root: Some(self.etcd_root.clone()),
            ca_cert,
            client_cert,
            ..Connect::default()
        })
    }

    /// Where the secrets key comes from: `--secrets-key`, else (secure) the data dir's
    /// `secrets.key`, both loaded or created now; else (insecure) etcd.
    pub fn secrets_key(&self) -> anyhow::Result<KeySource> {
        let path = match (&self.secrets_key, self.insecure) {
            (Some(p), _) => p.clone(),
            (None, false) => self.data_dir.join(secrets_key::KEY_FILE),
            (None, true) => return Ok(KeySource::in_etcd()),
        };
        let key = SecretsKey::load_or_create(&path).context("loading the secrets key")?;
        Ok(KeySource::Ready(Arc::new(key)))
    }

    /// The cluster identity from --data-dir (`None` with --insecure).
    pub fn identity(&self) -> anyhow::Result<Option<Identity>> {
        if self.insecure {
            return Ok(None);
        }
        Ok(Some(identity::load(&DataDir::new(&self.data_dir))?))
    }

    /// The secure API's settings over `identity`.
    pub fn secure(
        &self,
        identity: Identity,
        secrets_key: KeySource,
    ) -> anyhow::Result<crate::api::Secure> {
        let tls = shoal_pki::server_config(
            &identity.api.cert_pem,
            &identity.api.key_pem,
            shoal_pki::ClientAuth::Optional {
                ca_pem: identity.ca.cert_pem().to_string(),
            },
        )
        .with_context(|| format!("{}: api.crt and api.key", self.data_dir.display()))?;
        let agents = AgentTls {
            ca_pem: identity.ca.cert_pem().to_string(),
            cert_pem: identity.controller.cert_pem.clone(),
            key_pem: identity.controller.key_pem.clone(),
        };
        let etcd_endpoints = if self.advertise_etcd.is_empty() {
            self.etcd.clone()
        } else {
            self.advertise_etcd.clone()
        };
        Ok(crate::api::Secure {
            cluster: Arc::new(Cluster {
                ca: identity.ca,
                etcd_endpoints,
                node_cert_lifetime: self.node_cert_lifetime,
            }),
            agents,
            tls: shoal_pki::Reloadable::new(tls),
            admin_token: crate::api::auth::read_admin_token(&self.data_dir)
                .with_context(|| format!("{}: admin.token", self.data_dir.display()))?,
            secrets_key,
        })
    }
}

/// Runs `cli`: a one-off command, or the controller until SIGTERM or SIGINT.
pub async fn main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Init(args)) => {
            let dir = DataDir::new(&args.data_dir);
            identity::init(
                &dir,
                &identity::InitOptions {
                    cluster: args.cluster_name,
                    api_sans: args.api_sans,
                    force: args.force,
                },
            )?;
            print!("{}", identity::next_steps(&dir));
            Ok(())
        }
        Some(Command::Cert {
            what:
                CertCommand::Etcd {
                    data_dir,
                    name,
                    sans,
                },
        }) => {
            let (crt, key) = identity::cert_etcd(&DataDir::new(&data_dir), &name, &sans)?;
            println!("wrote {} and {}", crt.display(), key.display());
            Ok(())
        }
        None => run(cli.config).await,
    }
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    config.check()?;
    let identity = config.identity()?;
    let connect = config.connect(identity.as_ref())?;
    let secrets_key = config.secrets_key()?;
    let store = connect_waiting(&connect)
        .await
        .with_context(|| format!("connecting to etcd at {}", config.etcd.join(",")))?;
    if identity.is_some() {
        bootstrap_etcd_auth(&store).await?;
    }
    check_secrets_key(&store, &secrets_key).await?;
    let (secure, plain_key) = match identity {
        Some(id) => (Some(config.secure(id, secrets_key)?), None),
        None => (None, Some(secrets_key)),
    };
    let (shutdown_tx, shutdown) = watch::channel(false);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    tracing::info!(
        listen = %config.listen,
        etcd = %config.etcd.join(","),
        tls = secure.is_some(),
        "shoal-controller started"
    );
    let mut api = match secure {
        Some(secure) => tokio::spawn(crate::api::serve_tls(
            listener,
            store.clone(),
            secure,
            shutdown.clone(),
        )),
        None => tokio::spawn(crate::api::serve_plain(
            listener,
            store.clone(),
            shutdown.clone(),
            crate::api::Auth::Off,
            plain_key.unwrap_or_else(KeySource::in_etcd),
        )),
    };
    let manager = (!config.api_only).then(|| {
        tokio::spawn(crate::manager::run(
            store.clone(),
            config.manager.clone(),
            shutdown.clone(),
        ))
    });
    // The API ending on its own is fatal: a controller that cannot serve must not linger
    // (its supervisor restarts it).
    tokio::select! {
        _ = wait_for_signal() => {}
        ended = &mut api => {
            let _ = shutdown_tx.send(true);
            if let Some(m) = manager {
                let _ = m.await;
            }
            return match ended {
                Ok(Ok(())) => Err(anyhow::anyhow!("the API server stopped")),
                Ok(Err(e)) => Err(e.context("the API server failed")),
                Err(e) => Err(anyhow::anyhow!("the API server panicked: {e}")),
            };
        }
    }
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    api.await??;
    if let Some(m) = manager {
        m.await??;
    }
    Ok(())
}

/// Connects to etcd, waiting up to 30 s while it is unreachable (started together with
/// the controller, or restarting).
async fn connect_waiting(connect: &shoal_store::Connect) -> Result<Store, shoal_store::StoreError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match Store::connect(connect).await {
            Err(e) if e.is_temporary() && tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for etcd");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            other => return other,
        }
    }
}

/// Stops the start when the secrets key does not open the Secret payloads etcd holds (a
/// replaced data dir, a replica with another key file): better than failing every task
/// that needs a secret later.
async fn check_secrets_key(store: &Store, source: &KeySource) -> anyhow::Result<()> {
    let key = source
        .key(store)
        .await
        .context("reading the secrets key from etcd")?;
    match secrets_key::check_stored(store, &key).await {
        Ok(n) => {
            tracing::info!(stored_secrets = n, "the secrets key opens the stored secrets");
            Ok(())
        }
        Err(e @ secrets_key::KeyError::Open { .. }) => Err(anyhow::anyhow!(
            "{e}: this controller's secrets key (--secrets-key, else <data-dir>/secrets.key) is              not the one the cluster's secrets were written with; start every controller with              the same key file (copy it from the data dir the cluster was made with)"
        )),
        Err(e) => Err(e).context("checking the secrets key against the stored secrets"),
    }
}

/// Turns on etcd's authentication (users `root` and `shoal-controller`), retrying while
/// etcd is still starting. Idempotent: every controller does it at every start.
async fn bootstrap_etcd_auth(store: &Store) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match shoal_store::auth::bootstrap(store).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_temporary() && tokio::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for etcd to turn on authentication");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("turning on etcd authentication"),
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("shoal-controller").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn insecure_is_refused_on_a_non_loopback_listen() {
        let cli = parse(&["--insecure", "--listen", "0.0.0.0:7777"]);
        let err = cli.config.check().unwrap_err().to_string();
        assert!(err.contains("--insecure"), "{err}");
        assert!(parse(&["--insecure"]).config.check().is_ok());
        assert!(parse(&["--listen", "0.0.0.0:7777"]).config.check().is_ok());
    }

    #[test]
    fn a_missing_data_dir_says_to_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let cli = parse(&["--data-dir", missing.to_str().unwrap()]);
        let err = cli.config.identity().unwrap_err().to_string();
        assert!(err.contains("shoal-controller init"), "{err}");
    }

    #[test]
    fn subcommands_parse() {
        let cli = parse(&[
            "init",
            "--data-dir",
            "/tmp/x",
            "--api-san",
            "10.0.0.1",
            "--force",
        ]);
        assert!(
            matches!(cli.command, Some(Command::Init(ref a)) if a.force && a.api_sans == ["10.0.0.1"])
        );
        let cli = parse(&["cert", "etcd", "--name", "etcd-1", "--san", "10.0.0.1"]);
        assert!(matches!(cli.command, Some(Command::Cert { .. })));
        assert_eq!(
            parse(&[]).config.node_cert_lifetime,
            Duration::from_secs(90 * 86400)
        );
    }
}
