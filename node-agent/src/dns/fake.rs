//! Owns [`RecordingDns`], the [`DnsServers`] that only remembers (for tests and the
//! `test-util` feature; not in the product binaries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::error::DnsError;
use super::host::DnsServers;

/// What a [`RecordingDns`] "runs": key → (namespace, networks).
type Servers = BTreeMap<String, (PathBuf, Vec<String>)>;

/// A [`DnsServers`] that only remembers: the servers it would run and the calls made.
#[derive(Debug, Default)]
pub struct RecordingDns {
    state: Mutex<(Servers, Vec<String>)>,
}

impl RecordingDns {
    /// The calls so far: `ensure <key> <netns> <net,net>` / `stop <key>`.
    pub fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
    /// The namespace and networks of the server of `key`, if "running".
    pub fn server(&self, key: &str) -> Option<(PathBuf, Vec<String>)> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(key)
            .cloned()
    }
}

#[async_trait::async_trait]
impl DnsServers for RecordingDns {
    async fn ensure(&self, key: &str, netns: &Path, networks: &[String]) -> Result<(), DnsError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!(
            "ensure {key} {} {}",
            netns.display(),
            networks.join(",")
        ));
        st.0.insert(key.to_owned(), (netns.to_owned(), networks.to_vec()));
        Ok(())
    }
    async fn stop(&self, key: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!("stop {key}"));
        st.0.remove(key);
    }
    async fn keys(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .keys()
            .cloned()
            .collect()
    }
}
