//! Owns [`RecordingLb`], the [`LoadBalancer`] that only remembers (for tests and the
//! `test-util` feature; not in the product binaries). Like the kernel, it refuses an
//! [`LoadBalancer::update`] whose `from` is not what it holds; tests can make it drift
//! ([`RecordingLb::set_entries`]), refuse every update ([`RecordingLb::refuse_updates`]) or
//! make updates take time ([`RecordingLb::slow_updates`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::entries::{normalize, LbError, LoadBalancer, VipEntry};

/// What a [`RecordingLb`] holds per namespace.
type Programmed = BTreeMap<PathBuf, Vec<VipEntry>>;

/// A [`LoadBalancer`] that only remembers: the state per namespace and the calls made.
#[derive(Debug, Default)]
pub struct RecordingLb {
    state: std::sync::Mutex<(Programmed, Vec<String>)>,
    refuse: std::sync::atomic::AtomicBool,
    /// Each update takes this long (like the kernel's transaction), in ms.
    update_ms: std::sync::atomic::AtomicU64,
    /// Updates under way now, and the most ever under way at once.
    in_flight: std::sync::Mutex<(usize, usize)>,
}

impl RecordingLb {
    /// Make `netns` hold `entries` without a call being recorded (drift made behind the
    /// agent's back); `None` removes them.
    pub fn set_entries(&self, netns: &Path, entries: Option<Vec<VipEntry>>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match entries {
            Some(e) => st.0.insert(netns.to_owned(), normalize(e)),
            None => st.0.remove(netns),
        };
    }
    /// Refuse (or accept again) every [`LoadBalancer::update`].
    pub fn refuse_updates(&self, refuse: bool) {
        self.refuse
            .store(refuse, std::sync::atomic::Ordering::Relaxed);
    }
    /// Make every [`LoadBalancer::update`] take `ms` before it answers.
    pub fn slow_updates(&self, ms: u64) {
        self.update_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }
    /// The most updates that were ever under way at once.
    pub fn most_updates_at_once(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).1
    }
    /// The calls so far, as `program <netns> <n entries>` / `update <netns> <n entries>` /
    /// `remove <netns>` (a refused update too).
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
    async fn update(
        &self,
        netns: &Path,
        from: &[VipEntry],
        to: &[VipEntry],
    ) -> Result<(), LbError> {
        let ms = self.update_ms.load(std::sync::atomic::Ordering::Relaxed);
        if ms > 0 {
            {
                let mut f = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
                f.0 += 1;
                f.1 = f.1.max(f.0);
            }
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            self.in_flight.lock().unwrap_or_else(|e| e.into_inner()).0 -= 1;
        }
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.1.push(format!("update {} {}", netns.display(), to.len()));
        let holds = st.0.get(netns).map(Vec::as_slice) == Some(from);
        if !holds || self.refuse.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(LbError::Parse(format!(
                "{}: refused update (holds {} entries)",
                netns.display(),
                st.0.get(netns).map_or(0, Vec::len)
            )));
        }
        st.0.insert(netns.to_owned(), normalize(to.iter().cloned()));
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
        assert_eq!(lb.programmed(ns).await.unwrap(), Some(vec![e.clone()]));
        let f = VipEntry {
            backends: vec![ip("10.0.0.6")],
            ..e.clone()
        };
        lb.update(ns, std::slice::from_ref(&e), std::slice::from_ref(&f))
            .await
            .unwrap();
        assert_eq!(lb.programmed(ns).await.unwrap(), Some(vec![f.clone()]));
        // Like nft, an update from a state it does not hold is refused and changes nothing.
        assert!(lb.update(ns, &[e], &[]).await.is_err());
        assert_eq!(lb.programmed(ns).await.unwrap(), Some(vec![f.clone()]));
        lb.refuse_updates(true);
        assert!(lb.update(ns, std::slice::from_ref(&f), &[]).await.is_err());
        lb.remove(ns).await.unwrap();
        assert_eq!(lb.programmed(ns).await.unwrap(), None);
        assert_eq!(
            lb.calls(),
            vec![
                "program /run/netns/t1 1",
                "update /run/netns/t1 1",
                "update /run/netns/t1 0",
                "update /run/netns/t1 0",
                "remove /run/netns/t1"
            ]
        );
    }
}
