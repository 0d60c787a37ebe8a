//! Health checks of tasks (`spec.healthcheck`): the pure part. [`Health`] is the state of one
//! task's check — healthy or not, and the failures in a row — moved by [`Health::record`];
//! [`Probe`] holds the check with Swarm's defaults (every 5 s, 3 s timeout, 3 retries, no
//! start period). The loop that runs the command through the container runtime's `exec`
//! lives in [`super::containers`]; the result reaches the task's `status.healthy` through
//! the converge loop, and the controller's Endpoints then take an unhealthy task out of DNS
//! and the VIPs.
//!
//! Rules: a new task is unhealthy until a check passes; one success makes it healthy;
//! `retries` failures in a row make it unhealthy; failures inside the start period do not
//! count. A task whose checks are resumed after an agent restart starts as healthy (it ran
//! before), so a restart does not pull every checked task out of the load balancer.

use std::time::Duration;

use shoal_api_types::service::HealthCheck;

pub use crate::runtime::labels::LABEL_HEALTHCHECK;

/// A task's health check with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The command and its arguments; exit 0 = healthy.
    pub command: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Failures in a row before unhealthy.
    pub retries: u32,
    /// Time after start during which failures do not count.
    pub start_period: Duration,
}

impl Probe {
    /// The probe of `check`, with Swarm's defaults for what is unset; `None` without a
    /// command.
    pub fn new(check: &HealthCheck) -> Option<Probe> {
        if check.command.is_empty() {
            return None;
        }
        let secs =
            |v: Option<u32>, default: u32| Duration::from_secs(v.unwrap_or(default).max(1).into());
        Some(Probe {
            command: check.command.clone(),
            interval: secs(check.interval_seconds, 5),
            timeout: secs(check.timeout_seconds, 3),
            retries: check.retries.unwrap_or(3).max(1),
            start_period: Duration::from_secs(check.start_period_seconds.unwrap_or(0).into()),
        })
    }

    /// The probe stored in a container label.
    pub fn from_label(json: &str) -> Option<Probe> {
        serde_json::from_str::<HealthCheck>(json)
            .ok()
            .as_ref()
            .and_then(Probe::new)
    }
}

/// The label value for `check`.
pub fn label(check: &HealthCheck) -> String {
    serde_json::to_string(check).unwrap_or_default()
}

/// The health of one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Health {
    /// Whether the task takes traffic.
    pub healthy: bool,
    /// Failed checks in a row (outside the start period).
    pub failures: u32,
}

impl Health {
    /// A task that just started: unhealthy until a check passes.
    pub fn starting() -> Health {
        Health {
            healthy: false,
            failures: 0,
        }
    }

    /// A running task whose checks resume after an agent restart.
    pub fn resumed() -> Health {
        Health {
            healthy: true,
            failures: 0,
        }
    }

    /// Whether the task has just failed `retries` checks in a row outside its start period:
    /// then, as in Swarm, the task fails (its container is stopped) and its slot gets a
    /// replacement. True once per run of failures.
    pub fn just_failed(&self, retries: u32) -> bool {
        self.failures == retries.max(1)
    }

    /// Books one check; returns whether `healthy` changed.
    pub fn record(&mut self, passed: bool, in_start_period: bool, retries: u32) -> bool {
        let before = self.healthy;
        if passed {
            self.failures = 0;
            self.healthy = true;
        } else if !in_start_period {
            self.failures += 1;
            if self.failures >= retries.max(1) {
                self.healthy = false;
            }
        }
        before != self.healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_should_fail_the_task_once_when_retries_checks_fail_in_a_row() {
        let mut h = Health::starting();
        h.record(false, true, 2);
        assert!(
            !h.just_failed(2),
            "failures in the start period do not count"
        );
        h.record(false, false, 2);
        assert!(!h.just_failed(2));
        h.record(false, false, 2);
        assert!(
            h.just_failed(2),
            "the second failure in a row fails the task"
        );
        h.record(false, false, 2);
        assert!(!h.just_failed(2), "only once");
    }

    #[test]
    fn health_should_need_retries_failures_in_a_row_and_one_success() {
        let mut h = Health::resumed();
        assert!(!h.record(false, false, 3));
        assert!(!h.record(false, false, 3));
        assert!(!h.record(true, false, 3), "a success resets the count");
        assert!(!h.record(false, false, 3));
        assert!(!h.record(false, false, 3));
        assert!(h.record(false, false, 3));
        assert!(!h.healthy);
        assert!(h.record(true, false, 3));
        assert!(h.healthy);
    }

    #[test]
    fn health_should_start_unhealthy_and_ignore_failures_in_the_start_period() {
        let mut h = Health::starting();
        assert!(!h.healthy);
        for _ in 0..10 {
            assert!(!h.record(false, true, 1));
        }
        assert_eq!(h.failures, 0);
        assert!(h.record(true, true, 1));
        assert!(h.healthy);
    }

    #[test]
    fn probe_should_default_like_swarm_and_round_trip_through_the_label() {
        let check = HealthCheck {
            command: vec!["wget".into(), "-qO-".into(), "http://127.0.0.1/".into()],
            retries: Some(2),
            ..Default::default()
        };
        let p = Probe::new(&check).unwrap();
        assert_eq!(p.interval, Duration::from_secs(5));
        assert_eq!(p.timeout, Duration::from_secs(3));
        assert_eq!(p.retries, 2);
        assert_eq!(p.start_period, Duration::ZERO);
        assert_eq!(Probe::from_label(&label(&check)), Some(p));
        assert_eq!(Probe::new(&HealthCheck::default()), None);
        assert_eq!(Probe::from_label("{"), None);
    }
}
