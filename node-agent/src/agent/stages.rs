//! Where a task start spends its time: [`Stages`] records named, consecutive stages of one
//! start (from the controller's placement to the agent's `running` write) and renders them
//! as one log line, `task started task=<id> stages=<name>=<ms> …`, that `shoal-bench`
//! reads back from the agents' logs to explain its slowest convergence runs.
//!
//! Invariants: stage names are fixed words without spaces or `=`; every value is in
//! milliseconds with one decimal; a stage is recorded once per start, in the order the
//! stages happened, so the sum of the stages after `assigned` is the agent's share of the
//! start. Steps that ran concurrently inside one stage (container create and task
//! networking inside `setup`) follow it as *inner* entries, rendered with a [`WITHIN`]
//! prefix (`setup=41.0 +network=40.2 +create=12.5`): they explain the stage before them and
//! are not part of the sum ([`is_within`]). [`parse`] is the inverse of [`Stages::render`].

use std::time::Duration;

use tokio::time::Instant;

/// The log message of the per-stage line.
pub const STARTED_MESSAGE: &str = "task started";

/// The prefix of an inner entry: a step that ran inside the stage before it, concurrently
/// with its other inner entries; not part of the sum of the stages.
pub const WITHIN: char = '+';

/// Whether a parsed stage name is an inner entry (see [`WITHIN`]).
pub fn is_within(name: &str) -> bool {
    name.starts_with(WITHIN)
}

/// Named stage durations of one task start, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stages {
    /// (name, microseconds, inner entry)
    stages: Vec<(&'static str, u64, bool)>,
}

impl Stages {
    /// No stages yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `name` as having taken `took`.
    pub fn push(&mut self, name: &'static str, took: Duration) {
        self.stages.push((name, micros(took), false));
    }

    /// Records `name` as a step that took `took` inside the last stage (see [`WITHIN`]).
    pub fn push_within(&mut self, name: &'static str, took: Duration) {
        self.stages.push((name, micros(took), true));
    }

    /// Records `name` as having taken `ms` milliseconds (negative clock skew counts 0).
    pub fn push_ms(&mut self, name: &'static str, ms: f64) {
        self.stages
            .push((name, (ms.max(0.0) * 1000.0) as u64, false));
    }

    /// Appends `other`'s stages after these.
    pub fn extend(&mut self, other: &Stages) {
        self.stages.extend(other.stages.iter().cloned());
    }

    /// The stages in milliseconds, in order (without the inner entries).
    pub fn get(&self) -> Vec<(&'static str, f64)> {
        self.stages
            .iter()
            .filter(|s| !s.2)
            .map(|(n, us, _)| (*n, *us as f64 / 1000.0))
            .collect()
    }

    /// The inner entries in milliseconds, in order.
    pub fn within(&self) -> Vec<(&'static str, f64)> {
        self.stages
            .iter()
            .filter(|s| s.2)
            .map(|(n, us, _)| (*n, *us as f64 / 1000.0))
            .collect()
    }

    /// `name=1.2 name=3.4 +inner=2.0 …` (milliseconds).
    pub fn render(&self) -> String {
        self.stages
            .iter()
            .map(|(n, us, inner)| {
                let prefix = if *inner {
                    WITHIN.to_string()
                } else {
                    String::new()
                };
                format!("{prefix}{n}={:.1}", *us as f64 / 1000.0)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX)
}

/// Times consecutive stages: each [`Lap::lap`] records the time since the previous one.
#[derive(Debug)]
pub struct Lap {
    last: Instant,
    stages: Stages,
}

impl Lap {
    /// Starts timing now.
    pub fn start() -> Self {
        Lap {
            last: Instant::now(),
            stages: Stages::new(),
        }
    }

    /// Ends stage `name` now.
    pub fn lap(&mut self, name: &'static str) {
        let now = Instant::now();
        self.stages.push(name, now - self.last);
        self.last = now;
    }

    /// Records `name` as a step that took `took` inside the stage just ended (see
    /// [`WITHIN`]); the clock of the next stage is not touched.
    pub fn within(&mut self, name: &'static str, took: Duration) {
        self.stages.push_within(name, took);
    }

    /// The stages so far.
    pub fn stages(&self) -> &Stages {
        &self.stages
    }

    /// The stages, consumed.
    pub fn into_stages(self) -> Stages {
        self.stages
    }
}

/// The stages of a rendered line (anything before the first `name=value` is ignored, and
/// so are ANSI colour codes a log may carry). Values that are not numbers are skipped.
pub fn parse(line: &str) -> Vec<(String, f64)> {
    let clean = strip_ansi(line);
    let tail = clean
        .split_once("stages=")
        .map(|(_, t)| t)
        .unwrap_or(clean.as_str());
    tail.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.trim_matches('"').parse().ok()?))
        })
        .collect()
}

/// The task id and stages of a [`STARTED_MESSAGE`] log line; `None` for other lines.
pub fn parse_started(line: &str) -> Option<(String, Vec<(String, f64)>)> {
    let clean = strip_ansi(line);
    if !clean.contains(STARTED_MESSAGE) {
        return None;
    }
    let task = clean
        .split_whitespace()
        .find_map(|w| w.strip_prefix("task="))?
        .to_string();
    Some((task, parse(&clean)))
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... final byte in @..~
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) && c != '[' {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_stages_should_parse_back_in_order() {
        let mut s = Stages::new();
        s.push("assigned", Duration::from_micros(12_340));
        s.push_ms("image", 3.0);
        s.push_ms("skew", -5.0);
        let line = format!(
            "2026-12-02T08:00:00Z  INFO shoal_node_agent::agent::apply: {STARTED_MESSAGE} task=web.1 stages={}",
            s.render()
        );
        assert_eq!(
            parse(&line),
            vec![
                ("assigned".to_string(), 12.3),
                ("image".to_string(), 3.0),
                ("skew".to_string(), 0.0)
            ]
        );
    }

    #[test]
    fn parse_should_ignore_ansi_colours_and_fields_before_the_stages() {
        let line = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m task started \u{1b}[3mtask\u{1b}[0m\u{1b}[2m=\u{1b}[0mx \u{1b}[3mstages\u{1b}[0m\u{1b}[2m=\u{1b}[0mhold=1.5 start=20.0";
        assert_eq!(
            parse(line),
            vec![("hold".to_string(), 1.5), ("start".to_string(), 20.0)]
        );
    }

    #[test]
    fn parse_started_should_find_the_task_and_skip_other_lines() {
        let line = format!("x INFO a: {STARTED_MESSAGE} task=web.1 stages=seen=2.0");
        assert_eq!(
            parse_started(&line),
            Some(("web.1".to_string(), vec![("seen".to_string(), 2.0)]))
        );
        assert_eq!(parse_started("x INFO a: operation failed task=web.1"), None);
    }

    #[test]
    fn inner_entries_should_render_with_their_prefix_and_stay_out_of_the_stages() {
        let mut s = Stages::new();
        s.push("setup", Duration::from_millis(41));
        s.push_within("network", Duration::from_millis(40));
        s.push_within("create", Duration::from_millis(12));
        s.push("start", Duration::from_millis(20));
        assert_eq!(
            s.render(),
            "setup=41.0 +network=40.0 +create=12.0 start=20.0"
        );
        assert_eq!(s.get(), vec![("setup", 41.0), ("start", 20.0)]);
        assert_eq!(s.within(), vec![("network", 40.0), ("create", 12.0)]);
        let parsed = parse(&format!("{STARTED_MESSAGE} task=a stages={}", s.render()));
        let summed: f64 = parsed
            .iter()
            .filter(|(n, _)| !is_within(n))
            .map(|(_, v)| v)
            .sum();
        assert_eq!(parsed[1], ("+network".to_string(), 40.0));
        assert_eq!(summed, 61.0);
    }

    #[tokio::test(start_paused = true)]
    async fn lap_should_time_each_stage_from_the_previous_one() {
        let mut lap = Lap::start();
        tokio::time::advance(Duration::from_millis(5)).await;
        lap.lap("a");
        tokio::time::advance(Duration::from_millis(7)).await;
        lap.lap("b");
        assert_eq!(lap.into_stages().get(), vec![("a", 5.0), ("b", 7.0)]);
    }
}
