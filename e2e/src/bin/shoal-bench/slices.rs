//! Figure 10, sliced endpoints: one service of many replicas (20,000 by default) on one
//! overlay network, on a hollow fleet. Timed from the service's creation until every task
//! runs and until its Endpoints slices list every task ready; then the slices are read
//! back raw from etcd (count, largest stored value against etcd's default request limit)
//! and fed to the agent's DNS record builder, which must answer `tasks.<svc>` with every
//! task (the agents read all slices of a service as one).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use shoal_api_types::endpoints::{parse_slice_name, MAX_SLICE_TASKS};
use shoal_api_types::{
    EndpointsSpec, Network, NetworkAttachmentConfig, NetworkSpec, Service, ServiceSpec,
};
use shoal_node_agent::dns::{Answer, QueryKind, RecordStore};

use crate::common::*;
use crate::control::{wait, ControlPlane, NodeDowns};

/// etcd's default `--max-request-bytes` (the bench's etcd runs with the default).
const ETCD_REQUEST_LIMIT: usize = 1_572_864;
const NETWORK: &str = "slicenet";
const SERVICE: &str = "sliced";

/// The stored slices of the service: (slice number, stored size in bytes, spec).
async fn slices(cp: &ControlPlane) -> Result<Vec<(u32, usize, EndpointsSpec)>> {
    let prefix = cp.store.keys().network_endpoints(NETWORK);
    let (kvs, _) = cp.store.list_raw(&prefix).await?;
    let mut out = Vec::new();
    for kv in kvs {
        let obj: shoal_api_types::Endpoints = serde_json::from_slice(&kv.value)?;
        if obj.spec.service != SERVICE {
            continue;
        }
        let Some((_, _, n)) = parse_slice_name(&obj.metadata.name) else {
            bail!("Endpoints {} has no slice name", obj.metadata.name);
        };
        out.push((n, kv.value.len(), obj.spec));
    }
    out.sort_by_key(|s| s.0);
    Ok(out)
}

/// Runs figure 10: `replicas` tasks of one service on `nodes` hollow nodes.
pub async fn sliced_endpoints(
    bin: &std::path::Path,
    replicas: usize,
    nodes: usize,
    dir: &std::path::Path,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let target = "converges and resolves; every slice < etcd's request limit";
    let label = format!(
        "10 sliced endpoints: {} replicas on {nodes} hollow nodes",
        thousands(replicas as f64)
    );
    eprintln!("bench: {label}");
    let name = format!("{}-slices-{nodes}-{replicas}", run_id());
    let (cp, mut fleet) =
        ControlPlane::with_fleet(bin, &name, dir, nodes, Security::Secured).await?;
    let downs = NodeDowns::start(&cp.store).await?;
    // A subnet with room for every replica (the default /24s hold 253).
    let prefix_len = 32
        - (replicas as u32 + 16)
            .next_power_of_two()
            .trailing_zeros()
            .max(8);
    let mut net = Network::new(
        NETWORK,
        NetworkSpec {
            subnet: Some(format!("10.128.0.0/{prefix_len}")),
            ..Default::default()
        },
    );
    net.apply_defaults();
    cp.store.create(&net).await?;
    wait(
        Duration::from_secs(60),
        "the network to be ready",
        || async {
            Ok(cp
                .store
                .get_named::<NetworkSpec>(NETWORK)
                .await?
                .is_some_and(|n| n.status.phase == "Ready"))
        },
    )
    .await?;

    let mut svc = Service::new(
        SERVICE,
        ServiceSpec {
            image: "busybox".into(),
            replicas: Some(replicas as i64),
            networks: vec![NetworkAttachmentConfig {
                name: NETWORK.into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    svc.apply_defaults();
    let start = Instant::now();
    cp.store.create(&svc).await?;
    let limit = Duration::from_secs((replicas as u64 / 200).max(180));
    let mut last_print = Instant::now();
    let running_after = loop {
        let r = cp.running(SERVICE).await? as usize;
        if r >= replicas {
            break start.elapsed();
        }
        fleet.check_alive()?;
        if start.elapsed() > limit {
            bail!(
                "only {r} of {replicas} running after {:.0} s; {} false node-downs",
                limit.as_secs_f64(),
                downs.false_downs(&[]).len()
            );
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "bench:   {r}/{replicas} running after {:.0} s; {} false node-downs",
                start.elapsed().as_secs_f64(),
                downs.false_downs(&[]).len()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Then every task listed ready in some slice.
    let listed_after = loop {
        let s = slices(&cp).await?;
        let ready: usize = s
            .iter()
            .map(|(_, _, e)| e.tasks.iter().filter(|t| t.ready).count())
            .sum();
        if ready >= replicas {
            break start.elapsed();
        }
        if start.elapsed() > limit {
            bail!("only {ready} of {replicas} listed ready in the Endpoints slices");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let s = slices(&cp).await?;
    let (largest_n, largest_bytes) = s
        .iter()
        .map(|(n, bytes, _)| (*n, *bytes))
        .max_by_key(|(_, b)| *b)
        .unwrap_or_default();
    let most_tasks = s.iter().map(|(_, _, e)| e.tasks.len()).max().unwrap_or(0);
    // What an agent answers: the DNS tables built from every slice.
    let records = RecordStore::new();
    records.set_from_endpoints(NETWORK, s.iter().map(|(_, _, e)| e));
    let resolved = match records
        .view(&[NETWORK])
        .answer(&format!("tasks.{SERVICE}"), QueryKind::A)
    {
        Answer::Addrs(a) => a.into_iter().collect::<BTreeSet<_>>().len(),
        _ => 0,
    };
    let false_downs = downs.false_downs(&[]);
    let controller_rss = cp.controller.peak_rss_mib()?;
    fleet.stop();

    let ok = resolved == replicas
        && largest_bytes < ETCD_REQUEST_LIMIT
        && most_tasks <= MAX_SLICE_TASKS
        && false_downs.is_empty();
    let shoal = format!(
        "{} slices, largest {} B (slice {largest_n}, {:.0}% of {} B); all running after {:.1} s, all listed ready after {:.1} s; tasks.{SERVICE} answers {}",
        s.len(),
        thousands(largest_bytes as f64),
        100.0 * largest_bytes as f64 / ETCD_REQUEST_LIMIT as f64,
        thousands(ETCD_REQUEST_LIMIT as f64),
        running_after.as_secs_f64(),
        listed_after.as_secs_f64(),
        thousands(resolved as f64),
    );
    eprintln!("bench:   {label}: {shoal}");
    rows.push(Row {
        figure: label,
        shoal,
        baseline: format!("one object: ~{} B", thousands((largest_bytes as f64 / most_tasks.max(1) as f64) * replicas as f64)),
        ratio: "-".into(),
        target: target.into(),
        met: met(ok),
        note: format!(
            "Endpoints sliced at most {MAX_SLICE_TASKS} tasks each (the controller's default); the baseline is the size one unsliced Endpoints object would have (largest slice's bytes per task × replicas), over etcd's default request limit of {} B above ~{} tasks; the DNS tables are built by the agent's own code from the slices read back from etcd; controller peak RSS {controller_rss:.0} MiB; {}",
            thousands(ETCD_REQUEST_LIMIT as f64),
            thousands((ETCD_REQUEST_LIMIT as f64 * most_tasks.max(1) as f64 / largest_bytes.max(1) as f64).floor()),
            if false_downs.is_empty() { "0 false node-downs".to_string() } else { format!("false node-downs: {}", false_downs.join(", ")) },
        ),
    });
    Ok(())
}
