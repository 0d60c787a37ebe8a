//! Rolling updates: the policy a service is changed with (`spec.updateConfig`,
//! `spec.rollbackConfig`, Swarm's fields and defaults) and the progress the controller's
//! updater records (`status.updateStatus`). Pure; the updater itself is the controller's
//! `orchestrator::update`.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::duration::parse_duration;
use crate::validation::FieldError;

/// A duration written the way users type it (`10s`, `500ms`, `1m30s`, or a number of
/// seconds); serialised in humantime's form (`10s`, `1m 30s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    /// `secs` seconds.
    pub const fn from_secs(secs: u64) -> Self {
        HumanDuration(Duration::from_secs(secs))
    }

    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_zero() {
            return f.write_str("0s");
        }
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(HumanDuration)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) if s.is_finite() && s >= 0.0 => {
                Ok(HumanDuration(Duration::from_secs_f64(s)))
            }
            Raw::Seconds(s) => Err(serde::de::Error::custom(format!(
                "{s} is not a duration (use e.g. 500ms, 10s or 1m30s)"
            ))),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl JsonSchema for HumanDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: \"500ms\", \"10s\", \"1m30s\", or a number of seconds",
            "type": ["number", "string"]
        })
    }
}

/// A fraction from 0 to 1. Validation refuses anything else (so never NaN, which is why
/// equality is total).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, PartialOrd, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct Ratio(pub f64);

impl Eq for Ratio {}

/// What the updater does when too many new tasks fail.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FailureAction {
    /// Stop replacing tasks; the update stays paused until the next one.
    #[default]
    Pause,
    /// Go on replacing tasks.
    Continue,
    /// Go back to the previous spec (updates only).
    Rollback,
}

impl fmt::Display for FailureAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureAction::Pause => "pause",
            FailureAction::Continue => "continue",
            FailureAction::Rollback => "rollback",
        })
    }
}

/// Whether a replacement starts before or after the task it replaces stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (never more tasks than replicas).
    #[default]
    StopFirst,
    /// Start the new task, and stop the old one once the new one runs, is healthy and takes
    /// traffic (no gap in service).
    StartFirst,
}

impl fmt::Display for UpdateOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpdateOrder::StopFirst => "stop-first",
            UpdateOrder::StartFirst => "start-first",
        })
    }
}

/// Default time each new task is watched for failure.
pub const DEFAULT_MONITOR: HumanDuration = HumanDuration::from_secs(5);

/// How tasks are replaced when the spec changes (`updateConfig`) or goes back
/// (`rollbackConfig`). Swarm's fields and defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateConfig {
    /// Tasks replaced at once (default 1; 0 = all at once).
    #[serde(default = "one")]
    pub parallelism: u64,
    /// Wait between batches (default 0).
    #[serde(default)]
    pub delay: HumanDuration,
    /// What happens when too many new tasks fail (default pause).
    #[serde(default)]
    pub failure_action: FailureAction,
    /// How long each new task is watched for failure (default 5s).
    #[serde(default = "default_monitor")]
    pub monitor: HumanDuration,
    /// Failed ÷ updated tasks tolerated before the failure action runs (default 0).
    #[serde(default)]
    pub max_failure_ratio: Ratio,
    /// stop-first (default) or start-first.
    #[serde(default)]
    pub order: UpdateOrder,
}

fn one() -> u64 {
    1
}

fn default_monitor() -> HumanDuration {
    DEFAULT_MONITOR
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay: HumanDuration::default(),
            failure_action: FailureAction::Pause,
            monitor: DEFAULT_MONITOR,
            max_failure_ratio: Ratio(0.0),
            order: UpdateOrder::StopFirst,
        }
    }
}

/// Longest delay or monitor period accepted.
pub const MAX_UPDATE_PERIOD: Duration = Duration::from_secs(3600);

impl UpdateConfig {
    /// Checks the policy; `path` is `spec.updateConfig` or `spec.rollbackConfig`.
    pub fn validate(&self, path: &str, rollback: bool, errs: &mut Vec<FieldError>) {
        let ratio = self.max_failure_ratio.0;
        if !(0.0..=1.0).contains(&ratio) {
            errs.push(FieldError::new(
                format!("{path}.maxFailureRatio"),
                format!("must be between 0 and 1 (got {ratio})"),
            ));
        }
        for (field, d) in [("delay", self.delay), ("monitor", self.monitor)] {
            if d.get() > MAX_UPDATE_PERIOD {
                errs.push(FieldError::new(
                    format!("{path}.{field}"),
                    format!("must be at most 1h (got {d})"),
                ));
            }
        }
        if rollback && self.failure_action == FailureAction::Rollback {
            errs.push(FieldError::new(
                format!("{path}.failureAction"),
                "a rollback cannot roll back: use pause or continue",
            ));
        }
    }
}

/// Where an update is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced.
    #[default]
    Updating,
    /// Too many new tasks failed; nothing more is replaced until the next update.
    Paused,
    /// Every task runs the new spec and the monitor period passed.
    Completed,
    /// Going back to the previous spec (asked for, or the failure action).
    RollbackStarted,
    /// A rollback's new tasks failed too; nothing more is replaced.
    RollbackPaused,
    /// Every task runs the previous spec again.
    RollbackCompleted,
}

impl UpdateState {
    /// Whether tasks are still being replaced (or watched).
    pub fn is_active(self) -> bool {
        matches!(self, UpdateState::Updating | UpdateState::RollbackStarted)
    }

    /// Whether this is a rollback (the rollback policy applies).
    pub fn is_rollback(self) -> bool {
        matches!(
            self,
            UpdateState::RollbackStarted
                | UpdateState::RollbackPaused
                | UpdateState::RollbackCompleted
        )
    }

    /// Whether the update stopped because of failures.
    pub fn is_paused(self) -> bool {
        matches!(self, UpdateState::Paused | UpdateState::RollbackPaused)
    }
}

impl fmt::Display for UpdateState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        })
    }
}

/// The progress of the latest update (or rollback) of a service. Everything the updater
/// needs to resume after a leader change is here or in the tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateStatus {
    /// Where the update is.
    pub state: UpdateState,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// When it completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
    /// A human message, e.g. `update paused due to failure of task api.3: exit 1`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// New tasks that failed within their monitor period so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u64,
    /// The failed tasks counted in `failures` that are still kept as history (so none is
    /// counted twice).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_tasks: Vec<String>,
    /// When the last batch of new tasks was running and healthy (unset while a batch is
    /// starting); the next batch waits `delay` from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_ready_at: Option<DateTime<Utc>>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_config_should_take_swarm_defaults_when_empty() {
        let c: UpdateConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, UpdateConfig::default());
        assert_eq!(c.parallelism, 1);
        assert_eq!(c.monitor.get(), Duration::from_secs(5));
        assert_eq!(c.failure_action, FailureAction::Pause);
        assert_eq!(c.order, UpdateOrder::StopFirst);
    }

    #[test]
    fn durations_should_read_text_or_seconds_and_write_text() {
        let c: UpdateConfig = serde_json::from_str(
            r#"{"delay":"10s","monitor":1.5,"order":"start-first","failureAction":"rollback","maxFailureRatio":0.5,"parallelism":0}"#,
        )
        .unwrap();
        assert_eq!(c.delay.get(), Duration::from_secs(10));
        assert_eq!(c.monitor.get(), Duration::from_millis(1500));
        assert_eq!(c.max_failure_ratio, Ratio(0.5));
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["delay"], "10s");
        assert_eq!(back["monitor"], "1s 500ms");
        assert_eq!(back["order"], "start-first");
        let err = serde_json::from_str::<UpdateConfig>(r#"{"delay":"soon"}"#).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }

    #[test]
    fn validation_should_name_the_field() {
        let mut errs = vec![];
        let c = UpdateConfig {
            max_failure_ratio: Ratio(1.5),
            delay: HumanDuration(Duration::from_secs(7200)),
            failure_action: FailureAction::Rollback,
            ..Default::default()
        };
        c.validate("spec.rollbackConfig", true, &mut errs);
        let paths: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.rollbackConfig.maxFailureRatio",
                "spec.rollbackConfig.delay",
                "spec.rollbackConfig.failureAction"
            ]
        );
        errs.clear();
        c.validate("spec.updateConfig", false, &mut errs);
        assert_eq!(errs.len(), 2, "rollback is a valid update failure action");
    }

    #[test]
    fn states_should_serialise_as_swarm_names() {
        assert_eq!(
            serde_json::to_value(UpdateState::RollbackCompleted).unwrap(),
            "rollback_completed"
        );
        assert_eq!(UpdateState::RollbackPaused.to_string(), "rollback_paused");
        assert!(UpdateState::RollbackStarted.is_active());
        assert!(!UpdateState::Paused.is_active());
    }
}
