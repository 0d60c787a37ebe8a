//! The reconcilers' settings ([`ManagerConfig`], flattened into the binary's flags; durations
//! in `shoal_api_types::duration`'s syntax). See docs/architecture.md ("Controller").

use std::time::Duration;

use ipnetwork::Ipv4Network;
pub use shoal_api_types::duration::parse_duration;
use shoal_api_types::endpoints::MAX_SLICE_TASKS;
use shoal_api_types::settings::{default_reserved_ports, ReservedPort};

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
    /// Published ports no service may take (either mode), comma-separated `PORT/PROTOCOL`:
    /// what the nodes themselves use. The leader publishes the list (ClusterSettings) for
    /// the API and the agents.
    #[arg(
        long,
        value_delimiter = ',',
        value_parser = parse_reserved_port,
        default_value = "4789/udp,2379/tcp,2380/tcp,7777/tcp,7800/tcp,22/tcp"
    )]
    pub reserved_ports: Vec<ReservedPort>,
    /// Most tasks in one Endpoints slice (1 to 1000). Only tests lower it, to see a few
    /// tasks spread over several slices.
    #[arg(long, default_value_t = MAX_SLICE_TASKS, value_parser = parse_slice_size, hide = true)]
    pub endpoints_slice_size: usize,
}

fn parse_slice_size(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (1..=MAX_SLICE_TASKS).contains(&n) => Ok(n),
        _ => Err(format!(
            "must be a number from 1 to {MAX_SLICE_TASKS} (got {s:?})"
        )),
    }
}

fn parse_reserved_port(s: &str) -> Result<ReservedPort, String> {
    s.parse()
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
            reserved_ports: default_reserved_ports(),
            endpoints_slice_size: MAX_SLICE_TASKS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        config: ManagerConfig,
    }

    fn parse(args: &[&str]) -> ManagerConfig {
        Flags::try_parse_from(std::iter::once("c").chain(args.iter().copied()))
            .unwrap()
            .config
    }

    #[test]
    fn reserved_ports_default_to_what_the_nodes_use_and_are_configurable() {
        let mut defaults = default_reserved_ports();
        let mut parsed = parse(&[]).reserved_ports;
        defaults.sort();
        parsed.sort();
        assert_eq!(parsed, defaults);
        assert_eq!(
            parse(&[
                "--reserved-ports",
                "4789/udp,23790/tcp",
                "--reserved-ports=22"
            ])
            .reserved_ports,
            [
                ReservedPort::udp(4789),
                ReservedPort::tcp(23790),
                ReservedPort::tcp(22)
            ]
        );
        assert!(Flags::try_parse_from(["c", "--reserved-ports", "53/sctp"]).is_err());
    }

    #[test]
    fn the_endpoints_slice_size_defaults_to_1000_and_takes_1_to_1000() {
        assert_eq!(parse(&[]).endpoints_slice_size, 1000);
        assert_eq!(parse(&["--endpoints-slice-size=2"]).endpoints_slice_size, 2);
        for bad in ["0", "1001", "x"] {
            assert!(Flags::try_parse_from(["c", "--endpoints-slice-size", bad]).is_err());
        }
    }
}
