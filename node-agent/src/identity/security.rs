//! [`Security`]: how an agent process is secured, from its flags — a node identity
//! (`--pki-dir`, written by `shoal-agent join`) or none (`--insecure`: plaintext etcd
//! without authentication and a plain-HTTP exec/logs server, for benchmarks' baseline and
//! old tests). There is no default: neither flag is an error that says to join.

use std::path::Path;
use std::sync::Arc;

use shoal_pki::Reloadable;
use shoal_store::{Connect, Store};

use super::controller::ControllerClient;
use super::error::IdentityError;
use super::files::{FleetIdentity, NodeIdentity, PkiDir, DEFAULT_PKI_DIR};
use super::renew::Renewer;
use crate::server::Transport;

/// The etcd endpoint of an insecure agent that was given none.
pub const INSECURE_DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

/// How an agent reaches etcd and serves exec/logs.
#[derive(Debug)]
pub enum Security {
    /// `--insecure`.
    Insecure,
    /// `--pki-dir`: the node's identity.
    Node {
        /// Where it lives (renewal replaces the files there).
        dir: PkiDir,
        /// The identity.
        identity: Box<NodeIdentity>,
    },
}

impl Security {
    /// From the flags: exactly one of `--pki-dir` and `--insecure`.
    pub fn from_flags(pki_dir: Option<&Path>, insecure: bool) -> Result<Security, IdentityError> {
        match (pki_dir, insecure) {
            (Some(_), true) => Err(IdentityError::Flags(
                "--pki-dir and --insecure exclude each other".into(),
            )),
            (None, true) => Ok(Security::Insecure),
            (Some(dir), false) => {
                let dir = PkiDir::new(dir);
                let identity = Box::new(dir.load()?);
                Ok(Security::Node { dir, identity })
            }
            (None, false) => Err(IdentityError::Flags(format!(
                "the agent needs its node identity: join the cluster with `shoal-agent join \
                 --token <join token> --controller https://<controller>:7777 --name <node> \
                 --address <ip>` (it writes {}), then start the agent with --pki-dir {}; or \
                 run a plaintext cluster with --insecure",
                DEFAULT_PKI_DIR, DEFAULT_PKI_DIR
            ))),
        }
    }

    /// The node name: `--name` if given, else the identity's; both must agree (the
    /// certificate's CN is the node's etcd user).
    pub fn node_name(&self, flag: Option<String>) -> Result<String, IdentityError> {
        match (self, flag) {
            (Security::Node { identity, dir }, Some(name)) if name != identity.join.name => {
                Err(IdentityError::Flags(format!(
                    "--name {name:?}, but the identity in {} is node {:?}'s (join again to \
                     change the node's name)",
                    dir.path().display(),
                    identity.join.name
                )))
            }
            (_, Some(name)) => Ok(name),
            (Security::Node { identity, .. }, None) => Ok(identity.join.name.clone()),
            (Security::Insecure, None) => Err(IdentityError::Flags(
                "--name is required with --insecure".into(),
            )),
        }
    }

    /// etcd settings: `base` (whose endpoints, if any, are `--etcd`) with this security.
    pub fn etcd_connect(&self, base: &Connect) -> Connect {
        match self {
            Security::Insecure if base.endpoints.is_empty() => Connect {
                endpoints: vec![INSECURE_DEFAULT_ETCD.to_string()],
                ..base.clone()
            },
            Security::Insecure => base.clone(),
            Security::Node { identity, .. } => identity.etcd_connect(base),
        }
    }

    /// The exec/logs server's transport, and the config handle renewal replaces.
    pub fn transport(&self) -> Result<Transport, IdentityError> {
        match self {
            Security::Insecure => Ok(Transport::Plain),
            Security::Node { identity, .. } => {
                Ok(Transport::Tls(Reloadable::new(identity.server_config()?)))
            }
        }
    }

    /// The client of the controller (a task's secrets and configs): with an identity,
    /// mutual TLS to `urls` or, when none are given, to the controller of `join.json`;
    /// insecure, plain HTTP to `urls`, or none without them.
    pub fn controller_client(
        &self,
        urls: &[String],
    ) -> Result<Option<Arc<ControllerClient>>, IdentityError> {
        match self {
            Security::Node { identity, .. } => {
                Ok(Some(Arc::new(ControllerClient::node(identity, urls)?)))
            }
            Security::Insecure if urls.is_empty() => Ok(None),
            Security::Insecure => Ok(Some(Arc::new(ControllerClient::plain(urls)?))),
        }
    }

    /// The renewal of this identity, feeding `store` (reconnected from `base`) and the
    /// server's `transport`; `None` when insecure.
    pub fn renewer(self, store: &Store, base: &Connect, transport: &Transport) -> Option<Renewer> {
        let Security::Node { dir, identity } = self else {
            return None;
        };
        let renewer = Renewer::new(dir, *identity).with_store(store.clone(), base.clone());
        Some(match transport {
            Transport::Tls(tls) => renewer.with_server(Arc::clone(tls)),
            Transport::Plain => renewer,
        })
    }
}

/// A hollow fleet's etcd settings: with `--pki-dir`, TLS with the fleet's certificate
/// (`fleet.crt`) and `--etcd` required; with `--insecure`, plaintext.
pub fn fleet_connect(
    pki_dir: Option<&Path>,
    insecure: bool,
    base: &Connect,
) -> Result<Connect, IdentityError> {
    match (pki_dir, insecure) {
        (Some(_), true) => Err(IdentityError::Flags(
            "--pki-dir and --insecure exclude each other".into(),
        )),
        (None, true) => Ok(Security::Insecure.etcd_connect(base)),
        (Some(dir), false) => {
            if base.endpoints.is_empty() {
                return Err(IdentityError::Flags(
                    "hollow-fleet --pki-dir needs --etcd (https://…)".into(),
                ));
            }
            let fleet: FleetIdentity = PkiDir::new(dir).load_fleet()?;
            Ok(fleet.etcd_connect(base))
        }
        (None, false) => Err(IdentityError::Flags(
            "hollow-fleet needs --pki-dir DIR (ca.crt, and fleet.crt/fleet.key: a \
             shoal-hollow-fleet certificate) or --insecure"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_without_identity_or_insecure_should_be_told_to_join() {
        let e = Security::from_flags(None, false).unwrap_err().to_string();
        assert!(
            e.contains("shoal-agent join") && e.contains("--insecure"),
            "{e}"
        );
        let e = Security::from_flags(Some(Path::new("/nonexistent/pki")), false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("shoal-agent join") && e.contains("/nonexistent/pki"),
            "{e}"
        );
        assert!(Security::from_flags(Some(Path::new("/x")), true).is_err());
        assert!(fleet_connect(None, false, &Connect::default()).is_err());
    }

    #[test]
    fn an_insecure_agent_should_default_to_plaintext_local_etcd() {
        let s = Security::from_flags(None, true).unwrap();
        assert_eq!(
            s.etcd_connect(&Connect::default()).endpoints,
            [INSECURE_DEFAULT_ETCD]
        );
        assert!(s.etcd_connect(&Connect::default()).ca_cert.is_none());
        assert!(matches!(s.transport().unwrap(), Transport::Plain));
        assert!(s.node_name(None).is_err());
        assert!(s.controller_client(&[]).unwrap().is_none());
        assert!(s
            .controller_client(&["http://127.0.0.1:7777".into()])
            .unwrap()
            .is_some());
        assert_eq!(s.node_name(Some("n".into())).unwrap(), "n");
    }
}
