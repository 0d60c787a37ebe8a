//! [`Follow`]: the local cluster's objects as the API's watch streams deliver them
//! (`?watch=true`, NDJSON, one `curl -N` per kind), so a figure waits for a condition
//! without polling: every event is applied to a [`World`] the moment it is read, and the
//! condition is checked after each one. The streams start with an ADDED event per existing
//! object (a list), so nothing applied before the stream connected is missed.
//!
//! Invariants: the world holds exactly the objects the streams reported, keyed by kind and
//! name (DELETED removes); the instant a condition held is when the event that made it hold
//! was read. The curl processes stop when the value is dropped.

use std::collections::HashMap;
use std::io::BufRead;
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::Value;

use crate::cluster::Dev;
use crate::common::check_stop;

/// Objects by kind (the stream's path, e.g. `tasks`) and name.
#[derive(Debug, Default)]
pub(crate) struct World {
    objects: HashMap<String, HashMap<String, Value>>,
}

impl World {
    /// Applies one watch event of `kind`; bookmarks, errors and lines that do not parse
    /// change nothing.
    pub(crate) fn apply(&mut self, kind: &str, line: &str) {
        let Ok(ev) = serde_json::from_str::<Value>(line) else {
            return;
        };
        let Some(name) = ev["object"]["metadata"]["name"].as_str() else {
            return;
        };
        let objects = self.objects.entry(kind.to_string()).or_default();
        match ev["type"].as_str() {
            Some("ADDED" | "MODIFIED") => {
                objects.insert(name.to_string(), ev["object"].clone());
            }
            Some("DELETED") => {
                objects.remove(name);
            }
            _ => {}
        }
    }

    /// The objects of `kind`.
    pub(crate) fn all(&self, kind: &str) -> impl Iterator<Item = &Value> {
        self.objects.get(kind).into_iter().flat_map(|m| m.values())
    }

    /// One object of `kind`.
    pub(crate) fn get(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects.get(kind)?.get(name)
    }

    /// Names of the tasks of service `svc` that run and should.
    pub(crate) fn running(&self, svc: &str) -> Vec<String> {
        self.all("tasks")
            .filter(|t| {
                t["spec"]["service"] == svc
                    && t["status"]["state"] == "running"
                    && t["spec"]["desiredState"] == "running"
            })
            .filter_map(|t| Some(t["metadata"]["name"].as_str()?.to_string()))
            .collect()
    }

    /// The first virtual IP of service `svc`, without its prefix length.
    pub(crate) fn vip(&self, svc: &str) -> Option<String> {
        self.get("services", svc)?["status"]["virtualIps"]
            .as_array()?
            .iter()
            .find_map(|v| v["addr"].as_str())
            .map(|a| a.split('/').next().unwrap_or_default().to_string())
    }
}

/// Watch streams of some kinds, applied to a [`World`] (see the module docs).
pub(crate) struct Follow {
    children: Vec<Child>,
    events: mpsc::Receiver<(Instant, String, String)>,
    /// The objects as of the last event applied.
    pub(crate) world: World,
}

impl Follow {
    /// Starts one watch per kind (`tasks`, `services`), without bookmarks.
    pub(crate) fn start(dev: &Dev, kinds: &[&str]) -> Result<Follow> {
        let (tx, events) = mpsc::channel();
        let mut children = Vec::new();
        for kind in kinds {
            let (child, out) = dev.watch_curl(&format!("{kind}?watch=true&bookmarkSeconds=0"))?;
            children.push(child);
            let (tx, kind) = (tx.clone(), kind.to_string());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send((Instant::now(), kind.clone(), line)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Follow {
            children,
            events,
            world: World::default(),
        })
    }

    /// Applies events until `done` holds (checked first on the world as it is, then after
    /// every event); returns its value and when the event that made it hold was read.
    pub(crate) fn until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut done: impl FnMut(&World) -> Option<T>,
    ) -> Result<(T, Instant)> {
        let deadline = Instant::now() + timeout;
        // Events already read are applied first: the condition may hold since.
        while let Ok((at, kind, line)) = self.events.try_recv() {
            self.world.apply(&kind, &line);
            if let Some(v) = done(&self.world) {
                return Ok((v, at));
            }
        }
        if let Some(v) = done(&self.world) {
            return Ok((v, Instant::now()));
        }
        loop {
            check_stop()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            // Woken at least every second to notice Ctrl-C; otherwise by events only.
            match self.events.recv_timeout(left.min(Duration::from_secs(1))) {
                Ok((at, kind, line)) => {
                    self.world.apply(&kind, &line);
                    if let Some(v) = done(&self.world) {
                        return Ok((v, at));
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("the watch streams ended while waiting for {what}")
                }
            }
        }
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, svc: &str, state: &str) -> String {
        serde_json::json!({"type": "MODIFIED", "object": {"metadata": {"name": name},
            "spec": {"service": svc, "desiredState": "running"}, "status": {"state": state}}})
        .to_string()
    }

    #[test]
    fn the_world_should_follow_added_modified_and_deleted_events() {
        let mut w = World::default();
        w.apply("tasks", &task("a.1", "a", "starting"));
        w.apply("tasks", &task("a.2", "a", "running"));
        w.apply("tasks", &task("b.1", "b", "running"));
        w.apply(
            "tasks",
            "{\"type\":\"BOOKMARK\",\"object\":{\"metadata\":{\"resourceVersion\":\"9\"}}}",
        );
        w.apply("tasks", "not json");
        assert_eq!(w.running("a"), ["a.2"]);
        w.apply("tasks", &task("a.1", "a", "running"));
        let mut running = w.running("a");
        running.sort();
        assert_eq!(running, ["a.1", "a.2"]);
        w.apply(
            "tasks",
            &serde_json::json!({"type": "DELETED", "object": {"metadata": {"name": "a.2"}}})
                .to_string(),
        );
        assert_eq!(w.running("a"), ["a.1"]);
        w.apply(
            "services",
            &serde_json::json!({"type": "ADDED", "object": {"metadata": {"name": "a"},
                "status": {"virtualIps": [{"network": "bench", "addr": "10.0.1.2/24"}]}}})
            .to_string(),
        );
        assert_eq!(w.vip("a").as_deref(), Some("10.0.1.2"));
        assert_eq!(w.vip("b"), None);
    }
}
