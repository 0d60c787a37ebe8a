//! The reconcilers' settings ([`ManagerConfig`], flattened into the binary's flags) and
//! the duration syntax of their flags. See docs/architecture.md ("Controller").

use std::time::Duration;

use ipnetwork::Ipv4Network;

/// Parses a duration flag: a bare number of seconds (`5`, `0.5`) or [`humantime`]'s syntax
/// (`500ms`, `2s`, `1m`, `1m30s`, `1.5s`). clap names the flag in the error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    // humantime wants a unit; a bare number means seconds.
    let with_unit;
    let t = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        with_unit = format!("{t}s");
        &with_unit
    } else {
        t
    };
    humantime::parse_duration(t)
        .map_err(|e| format!("{s:?} is not a duration: {e} (use e.g. 500ms, 5s or 1m)"))
}

/// Reconciler settings.
#[derive(Debug, Clone, clap::Args)]
pub struct ManagerConfig {
    /// Pool that network subnets are carved from when a network sets none.
    #[arg(long, default_value = "10.0.0.0/8")]
    pub default_addr_pool: Ipv4Network,
    /// Prefix length of the subnets carved from the pool.
    #[arg(long, default_value_t = 24)]
    pub default_addr_pool_mask_length: u8,
    /// Subnet of the `ingress` (routing-mesh) network created at first start.
    #[arg(long, default_value = "10.255.0.0/16")]
    pub ingress_subnet: Ipv4Network,
    /// TTL of the leader lease: how long a dead leader blocks a new one at most.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub leader_lease_ttl: Duration,
    /// Extra time after a node's lease expired before it is declared down.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub node_lease_grace: Duration,
    /// Period of the full resync of every object.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Ended tasks kept per slot for `service ps`.
    #[arg(long, default_value_t = 3)]
    pub task_history_limit: usize,
    /// Services reconciled at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Most tasks one service reconcile creates; the rest follow in the next pass, so a
    /// huge scale-up neither holds the cache nor builds one enormous plan.
    #[arg(long, default_value_t = 2000)]
    pub task_create_batch: usize,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            default_addr_pool: "10.0.0.0/8".parse().expect("valid"),
            default_addr_pool_mask_length: 24,
            ingress_subnet: "10.255.0.0/16".parse().expect("valid"),
            leader_lease_ttl: Duration::from_secs(5),
            node_lease_grace: Duration::ZERO,
            resync: Duration::from_secs(300),
            task_history_limit: 3,
            concurrency: 16,
            task_create_batch: 2000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "1x", "-1s", "99999999999999999999"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
