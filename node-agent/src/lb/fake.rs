//! Owns [`RecordingLb`], the [`LoadBalancer`] that only remembers (for tests and the
//! `test-util` feature; not in the product binaries).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::entries::{normalize, LbError, LoadBalancer, VipEntry};

/// What a [`RecordingLb`] holds per namespace.
type Programmed = BTreeMap<PathBuf, Vec<VipEntry>>;

/// A [`LoadBalancer`] that only remembers: the state per namespace and the calls made.
#[derive(Debug, Default)]
pub struct RecordingLb {
    state: std::sync::Mutex<(Programmed, Vec<String>)>,
}

impl RecordingLb {
    /// The calls so far, as `program <netns> <n entries>` / `remove <netns>`.
    pub fn calls(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }
    /// What is "programmed" in `netns`.
    pub fn entries(&self, netns: &Path) -> Option<Vec<VipEntry>> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .get(netns)
            .cloned()
    }
}

#[async_trait::async_trait]
impl LoadBalancer for RecordingLb {
    async fn program(&self, netns: &Path, entries: &[VipEntry]) -> Result<(), LbError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!("program {} {}", netns.display(), entries.len()));
        st.0.insert(netns.to_owned(), normalize(entries.iter().cloned()));
        Ok(())
    }
    async fn programmed(&self, netns: &Path) -> Result<Option<Vec<VipEntry>>, LbError> {
        Ok(self.entries(netns))
    }
    async fn remove(&self, netns: &Path) -> Result<(), LbError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!("remove {}", netns.display()));
        st.0.remove(netns);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_api_types::service::Protocol;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn recording_lb_remembers_state_and_calls() {
        let lb = RecordingLb::default();
        let ns = Path::new("/run/netns/t1");
        let e = VipEntry {
            vip: ip("10.0.0.2"),
            protocol: Protocol::Tcp,
            port: None,
            backends: vec![ip("10.0.0.5")],
        };
        lb.program(ns, std::slice::from_ref(&e)).await.unwrap();
        assert_eq!(lb.programmed(ns).await.unwrap(), Some(vec![e]));
        lb.remove(ns).await.unwrap();
        assert_eq!(lb.programmed(ns).await.unwrap(), None);
        assert_eq!(
            lb.calls(),
            vec!["program /run/netns/t1 1", "remove /run/netns/t1"]
        );
    }
}
