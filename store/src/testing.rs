//! Test helpers (feature `test-util`): a real etcd for integration tests.
//!
//! With `SHOAL_TEST_ETCD` set (as `.ci/run` does), tests share that etcd and each gets a key
//! root of its own. Otherwise each [`TestEtcd`] starts a private `etcd` process on free
//! loopback ports in a temporary directory and kills it when dropped, also when the test
//! panics. A private etcd can be stopped and started again on the same ports and data
//! ([`TestEtcd::stop`], [`TestEtcd::resume`]) for tests of etcd outages: the one restartable
//! etcd of the test suites.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::connect::Connect;
use crate::store::Store;

/// A real etcd for one test, and a store rooted at a unique prefix in it.
pub struct TestEtcd {
    /// The client URL.
    pub endpoint: String,
    /// The unique key root of this test.
    pub root: String,
    child: Option<Child>,
    /// Data directory and peer port of a private etcd.
    private: Option<(tempfile::TempDir, u16)>,
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
        let mut etcd = TestEtcd::with_endpoint(endpoint, None, Some((dir, peer)));
        etcd.resume().await;
        etcd
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
