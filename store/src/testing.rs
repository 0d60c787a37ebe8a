//! Test helpers (feature `test-util`): a real etcd for integration tests.
//!
//! With `SHOAL_TEST_ETCD` set (as `.ci/run` does), tests share that etcd and each gets a key
//! root of its own. Otherwise each [`TestEtcd`] starts a private `etcd` process on free
//! loopback ports in a temporary directory and kills it when dropped, also when the test
//! panics. A private etcd can be stopped and started again on the same ports and data
//! ([`TestEtcd::stop`], [`TestEtcd::resume`]) for tests of etcd outages: the one restartable
//! etcd of the test suites.
//!
//! A secured etcd ([`TestEtcd::start_secured`], [`TestEtcd::start_tls`]) is always private:
//! a cluster CA of its own (`shoal-pki`), TLS on an `https://` client URL with
//! `--client-cert-auth`, and client certificates issued on demand for any etcd user
//! ([`TestEtcd::connect_as`], [`TestEtcd::identity_files`] for `etcdctl`). Its
//! [`TestEtcd::connect`] is the controllers' identity (`shoal-controller`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_api_types::keys::CONTROLLER_USER;
use shoal_pki::{Ca, Profile, Usage};

use crate::connect::Connect;
use crate::store::Store;

/// How long test certificates live.
const TEST_CERT_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// A real etcd for one test, and a store rooted at a unique prefix in it.
pub struct TestEtcd {
    /// The client URL.
    pub endpoint: String,
    /// The unique key root of this test.
    pub root: String,
    child: Option<Child>,
    /// Data directory and peer port of a private etcd.
    private: Option<(tempfile::TempDir, u16)>,
    /// The CA of a secured etcd.
    ca: Option<Ca>,
    /// The controllers' certificate and key on a secured etcd (issued once).
    controller: Option<(String, String)>,
}

impl TestEtcd {
    /// The shared etcd from `SHOAL_TEST_ETCD`, or a private one.
    pub async fn start() -> TestEtcd {
        match std::env::var("SHOAL_TEST_ETCD") {
            Ok(endpoint) if !endpoint.is_empty() => TestEtcd::with_endpoint(endpoint, None, None),
            _ => TestEtcd::private().await,
        }
    }

    /// Always a private etcd (for tests that compact history, or stop and resume etcd).
    pub async fn private() -> TestEtcd {
        let mut etcd = TestEtcd::unstarted(false);
        etcd.resume().await;
        etcd
    }

    /// A private etcd secured as a cluster's is: TLS with client certificates of its own CA
    /// (`--client-cert-auth`), users and roles bootstrapped ([`crate::auth::bootstrap`]) and
    /// authentication on. [`TestEtcd::connect`] is the controllers' identity.
    pub async fn start_secured() -> TestEtcd {
        let etcd = TestEtcd::start_tls().await;
        crate::auth::bootstrap(&etcd.store().await)
            .await
            .expect("bootstrap etcd's users and roles");
        etcd
    }

    /// A private etcd with TLS and `--client-cert-auth` but authentication not yet enabled
    /// (tests of [`crate::auth::bootstrap`] itself).
    pub async fn start_tls() -> TestEtcd {
        let mut etcd = TestEtcd::unstarted(true);
        etcd.resume().await;
        etcd
    }

    /// A private etcd's directory and ports, and with `secured` its CA and the server's
    /// certificate in that directory.
    fn unstarted(secured: bool) -> TestEtcd {
        // etcd fsyncs every write; on a busy disk that takes seconds, so keep test data in
        // memory when a tmpfs is there.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let (client, peer) = (shoal_testkit::free_port(), shoal_testkit::free_port());
        let scheme = if secured { "https" } else { "http" };
        let endpoint = format!("{scheme}://127.0.0.1:{client}");
        let mut etcd = TestEtcd::with_endpoint(endpoint, None, Some((dir, peer)));
        if secured {
            let ca = Ca::generate("shoal-test").expect("generate a test CA");
            let server = ca
                .issue(&Profile {
                    common_name: "shoal-test-etcd".into(),
                    dns_names: vec!["localhost".into()],
                    ips: vec![[127, 0, 0, 1].into()],
                    usage: Usage::Both,
                    lifetime: TEST_CERT_LIFETIME,
                })
                .expect("issue the test etcd's certificate");
            let pki = etcd.pki_dir();
            std::fs::create_dir_all(&pki).expect("create the test pki directory");
            std::fs::write(pki.join("ca.crt"), ca.cert_pem()).expect("write ca.crt");
            std::fs::write(pki.join("etcd.crt"), &server.cert_pem).expect("write etcd.crt");
            std::fs::write(pki.join("etcd.key"), &server.key_pem).expect("write etcd.key");
            etcd.ca = Some(ca);
            let controller = etcd.issue(CONTROLLER_USER);
            etcd.controller = Some((controller.cert_pem, controller.key_pem));
        }
        etcd
    }

    /// Where a private etcd's certificates live.
    fn pki_dir(&self) -> PathBuf {
        let (dir, _) = self.private.as_ref().expect("a private etcd");
        dir.path().join("pki")
    }

    /// Starts a private etcd again on the same ports and data after [`TestEtcd::stop`], and
    /// waits until it answers. Does nothing for a shared etcd or one that runs.
    pub async fn resume(&mut self) {
        let Some((dir, peer)) = &self.private else {
            return;
        };
        if self.child.is_some() {
            return;
        }
        let endpoint = &self.endpoint;
        let mut tls = vec![];
        if self.ca.is_some() {
            let pki = dir.path().join("pki");
            tls.extend([
                format!("--trusted-ca-file={}", pki.join("ca.crt").display()),
                format!("--cert-file={}", pki.join("etcd.crt").display()),
                format!("--key-file={}", pki.join("etcd.key").display()),
                "--client-cert-auth".to_string(),
            ]);
        }
        let child = Command::new("etcd")
            .envs(crate::ETCD_ENV.iter().copied())
            .arg("--name=test")
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
            ))
            .arg(format!("--initial-cluster=test=http://127.0.0.1:{peer}"))
            .arg("--log-level=error")
            // as `shoal dev` runs it: room for a stack with large payloads in one txn
            .arg("--max-request-bytes=8388608")
            .args(&tls)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server)");
        self.child = Some(child);
        for _ in 0..200 {
            if self.try_store().await.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not start on {}", self.endpoint);
    }

    fn with_endpoint(
        endpoint: String,
        child: Option<Child>,
        private: Option<(tempfile::TempDir, u16)>,
    ) -> TestEtcd {
        let root = format!("/shoal-test-{}/v1", uuid::Uuid::new_v4().simple());
        TestEtcd {
            endpoint,
            root,
            child,
            private,
            ca: None,
            controller: None,
        }
    }

    /// How to connect to this test's root; on a secured etcd as the controllers
    /// (`shoal-controller`, role `root`).
    pub fn connect(&self) -> Connect {
        if let Some(identity) = &self.controller {
            return Connect {
                client_cert: Some(identity.clone()),
                ..self.connect_without_certificate()
            };
        }
        Connect {
            endpoints: vec![self.endpoint.clone()],
            root: Some(self.root.clone()),
            ..Default::default()
        }
    }

    /// The CA of a secured etcd (`None` for a plain one).
    pub fn ca(&self) -> Option<&Ca> {
        self.ca.as_ref()
    }

    fn secured_ca(&self) -> &Ca {
        self.ca
            .as_ref()
            .expect("a secured test etcd (TestEtcd::start_secured)")
    }

    /// How to connect to a secured etcd verifying it with its CA but presenting no client
    /// certificate (etcd refuses the TLS handshake).
    pub fn connect_without_certificate(&self) -> Connect {
        Connect {
            endpoints: vec![self.endpoint.clone()],
            root: Some(self.root.clone()),
            ca_cert: Some(self.secured_ca().cert_pem().to_string()),
            ..Default::default()
        }
    }

    /// How to connect to a secured etcd as the etcd user `user`: a fresh client
    /// certificate of its CA with CN `user` (a node's name, `shoal-controller`...).
    pub fn connect_as(&self, user: &str) -> Connect {
        let issued = self.issue(user);
        Connect {
            client_cert: Some((issued.cert_pem, issued.key_pem)),
            ..self.connect_without_certificate()
        }
    }

    fn issue(&self, user: &str) -> shoal_pki::Issued {
        self.secured_ca()
            .issue(&Profile {
                common_name: user.to_string(),
                dns_names: vec![],
                ips: vec![],
                usage: Usage::Client,
                lifetime: TEST_CERT_LIFETIME,
            })
            .expect("issue a test client certificate")
    }

    /// The CA certificate's file of a secured etcd (`etcdctl --cacert`).
    pub fn ca_file(&self) -> PathBuf {
        self.secured_ca();
        self.pki_dir().join("ca.crt")
    }

    /// Files for tools such as `etcdctl` (`--cacert`, `--cert`, `--key`): the CA and a
    /// fresh client certificate and key of `user`, written next to the etcd's data.
    pub fn identity_files(&self, user: &str) -> (PathBuf, PathBuf, PathBuf) {
        let issued = self.issue(user);
        let pki = self.pki_dir();
        let (cert, key) = (
            pki.join(format!("{user}.crt")),
            pki.join(format!("{user}.key")),
        );
        std::fs::write(&cert, &issued.cert_pem).expect("write a client certificate");
        std::fs::write(&key, &issued.key_pem).expect("write a client key");
        (self.ca_file(), cert, key)
    }

    async fn try_store(&self) -> Option<Store> {
        Store::connect(&self.connect()).await.ok()
    }

    /// A store on this test's root.
    pub async fn store(&self) -> Store {
        Store::connect(&self.connect())
            .await
            .expect("connect to test etcd")
    }

    /// Stops a private etcd now (SIGKILL; tests of etcd failure); [`TestEtcd::resume`]
    /// starts it again.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Kills a private etcd now (tests of etcd failure).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every key below `store`'s root with the revision of its last change: for checking that
/// an operation wrote nothing. (Tests sharing an etcd move its revision, so comparing
/// etcd's revision before and after would see the other tests' writes.)
pub async fn own_keys(store: &Store) -> Vec<(String, i64)> {
    let (kvs, _) = store
        .list_raw(&format!("{}/", store.keys().root()))
        .await
        .expect("list the test's keys");
    kvs.into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect()
}
