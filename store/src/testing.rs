//! Test helpers (feature `test-util`): a real etcd for integration tests.
//!
//! With `SHOAL_TEST_ETCD` set (as `.ci/run` does), tests share that etcd and each gets a key
//! root of its own. Otherwise each [`TestEtcd`] starts a private `etcd` process on free
//! loopback ports in a temporary directory and kills it when dropped, also when the test
//! panics.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::store::{Connect, Store};

/// A real etcd for one test, and a store rooted at a unique prefix in it.
pub struct TestEtcd {
    /// The client URL.
    pub endpoint: String,
    /// The unique key root of this test.
    pub root: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl TestEtcd {
    /// The shared etcd from `SHOAL_TEST_ETCD`, or a private one.
    pub async fn start() -> TestEtcd {
        match std::env::var("SHOAL_TEST_ETCD") {
            Ok(endpoint) if !endpoint.is_empty() => TestEtcd::with_endpoint(endpoint, None, None),
            _ => TestEtcd::private().await,
        }
    }

    /// Always a private etcd (for tests that compact history or kill etcd).
    pub async fn private() -> TestEtcd {
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
        let endpoint = format!("http://127.0.0.1:{client}");
        let child = Command::new("etcd")
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is installed (apt-get install etcd-server)");
        let etcd = TestEtcd::with_endpoint(endpoint, Some(child), Some(dir));
        for _ in 0..100 {
            if etcd.try_store().await.is_some() {
                return etcd;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("etcd did not start on {}", etcd.endpoint);
    }

    fn with_endpoint(
        endpoint: String,
        child: Option<Child>,
        dir: Option<tempfile::TempDir>,
    ) -> TestEtcd {
        let root = format!("/shoal-test-{}/v1", uuid::Uuid::new_v4().simple());
        TestEtcd {
            endpoint,
            root,
            child,
            _dir: dir,
        }
    }

    /// How to connect to this test's root.
    pub fn connect(&self) -> Connect {
        Connect {
            endpoints: vec![self.endpoint.clone()],
            root: Some(self.root.clone()),
            ..Default::default()
        }
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
