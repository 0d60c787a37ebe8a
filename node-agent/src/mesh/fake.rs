//! Owns [`RecordingMesh`], the [`Mesh`] that only remembers (for tests and the `test-util`
//! feature; not in the product binaries).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::health::HealthError;
use super::types::{Mesh, MeshRules};
use crate::net::nft::NftError;

/// A [`Mesh`] that only remembers what it was asked to program.
#[derive(Debug, Default)]
pub struct RecordingMesh {
    state: std::sync::Mutex<(Option<MeshRules>, usize)>,
    listed: std::sync::Mutex<Option<String>>,
    health: std::sync::Mutex<Option<(Ipv4Addr, BTreeMap<u16, u32>)>>,
}

impl RecordingMesh {
    /// What is "programmed" (`None`: nothing, or removed).
    pub fn rules(&self) -> Option<MeshRules> {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }
    /// Sets what [`Mesh::programmed`] answers (an `nft -j list table` document), for
    /// tests of `shoal system check`; `None` (the default): no table.
    pub fn set_listed(&self, json: Option<String>) {
        *self.listed.lock().unwrap_or_else(|e| e.into_inner()) = json;
    }
    /// The health ports last "served" and their address (`None`: never asked).
    pub fn health(&self) -> Option<(Ipv4Addr, BTreeMap<u16, u32>)> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
    /// How many times it was programmed.
    pub fn programs(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

#[async_trait::async_trait]
impl Mesh for RecordingMesh {
    async fn program(&self, rules: &MeshRules) -> Result<(), NftError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.0 = Some(rules.clone());
        st.1 += 1;
        Ok(())
    }
    async fn remove(&self) -> Result<(), NftError> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).0 = None;
        Ok(())
    }
    async fn programmed(&self) -> Result<Option<String>, NftError> {
        Ok(self
            .listed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone())
    }
    async fn serve_health(
        &self,
        address: Ipv4Addr,
        answers: &BTreeMap<u16, u32>,
    ) -> Result<(), HealthError> {
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = Some((address, answers.clone()));
        Ok(())
    }
}
