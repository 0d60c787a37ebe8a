//! Figure 5, rule scale: 10, 1,000 and 10,000 services (3 backends, TCP and UDP each) are
//! programmed with the agent's own `lb` functions into one namespace this tool creates: the
//! full sync is `lb::program` (the whole table, as at a task's start or a drift repair), a
//! one-service change is `lb::update` from the previous entries (the incremental path the
//! agent takes on an Endpoints change: one backend replaced, and one backend added, which
//! moves the service to a new counter chain), and the resync's read-back is
//! `lb::read_programmed`. All of them are nf_tables netlink batches or dumps.
//! Connection latency through one VIP (to a TCP echo backend on the namespace's loopback) is
//! compared at 10,000 vs 10 services.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use shoal_api_types::service::Protocol;
use shoal_node_agent::lb::{self, VipEntry};

use crate::common::*;

const ECHO_PORT: u16 = 7007;

fn entries(n: usize, changed: bool) -> Vec<VipEntry> {
    let mut v = Vec::with_capacity(2 * n);
    for i in 0..n {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
        // The measured service (the last one) has backends on loopback that answer.
        let backends: Vec<Ipv4Addr> = if i == n - 1 {
            (1..=3).map(|j| Ipv4Addr::new(172, 31, 255, j)).collect()
        } else {
            (0..3u32)
                .map(|j| {
                    let extra = if changed && i == 0 && j == 2 {
                        1_000_000
                    } else {
                        0
                    };
                    Ipv4Addr::from(
                        u32::from(Ipv4Addr::new(172, 16, 0, 0)) + 3 * i as u32 + j + extra,
                    )
                })
                .collect()
        };
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            v.push(VipEntry {
                vip,
                protocol,
                port: None,
                backends: backends.clone(),
            });
        }
    }
    v
}

fn vip_of(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n as u32)
}

/// Runs figure 5.
pub async fn rule_scale(quick: bool, rows: &mut Vec<Row>) -> Result<()> {
    if !have("nft") {
        rows.push(Row::skipped(
            "5 rule scale",
            "full < 1 s, change < 50 ms, latency ≤ 1.1×",
            "nft is not installed",
        ));
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or("shoal-bench").to_string();
    let ns = Netns::create(&format!("{}-lb", run_id()))?;
    for j in 1..=3 {
        ns.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("172.31.255.{j}/32"),
            "dev",
            "lo",
        ])?;
    }
    // VIPs need a route (as a task's default route via eth0) before the nat hook sees them.
    ns.exec_ok(&[
        "ip", "link", "add", "vip0", "type", "veth", "peer", "name", "vip1",
    ])?;
    ns.exec_ok(&["ip", "addr", "add", "169.254.77.1/30", "dev", "vip0"])?;
    ns.exec_ok(&["ip", "link", "set", "vip0", "up"])?;
    ns.exec_ok(&["ip", "link", "set", "vip1", "up"])?;
    ns.exec_ok(&[
        "ip",
        "route",
        "add",
        "10.96.0.0/12",
        "via",
        "169.254.77.2",
        "dev",
        "vip0",
        "onlink",
    ])?;
    let _echo = Proc::spawn(
        "echo backend",
        &mut ns.command(&[&exe, "__echo", &format!("0.0.0.0:{ECHO_PORT}")]),
        &std::env::temp_dir().join(format!("{}-echo.log", run_id())),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    let conns = if quick { "1000" } else { "3000" };
    let path = ns.path();
    let mut lat = vec![];
    for n in [10usize, 1000, 10_000] {
        lb::remove(Some(&path)).await?;
        let full = lb::normalize(entries(n, false));
        let t = Instant::now();
        lb::program(Some(&path), &full).await?;
        let full_ms = ms(t.elapsed());
        let changed = lb::normalize(entries(n, true));
        let t = Instant::now();
        lb::update(Some(&path), &full, &changed).await?;
        let change_ms = ms(t.elapsed());
        // And back, a second sample of the same change.
        let t = Instant::now();
        lb::update(Some(&path), &changed, &full).await?;
        let change2_ms = ms(t.elapsed());
        lb::update(Some(&path), &full, &changed).await?;
        // A change of backend count: service 0 gains a fourth backend, so it gets a new
        // counter chain and its verdicts move there (the kernel then re-validates the
        // verdict map's jumps), and back.
        let mut grown = changed.clone();
        for e in grown.iter_mut().filter(|e| e.vip == vip_of(1)) {
            e.backends.push(Ipv4Addr::new(172, 30, 0, 1));
        }
        let grown = lb::normalize(grown);
        let t = Instant::now();
        lb::update(Some(&path), &changed, &grown).await?;
        let grow_ms = ms(t.elapsed());
        lb::update(Some(&path), &grown, &changed).await?;
        // What the resync's drift check costs (read back and parse).
        let t = Instant::now();
        let back = lb::read_programmed(Some(&path)).await?;
        let read_ms = ms(t.elapsed());
        anyhow::ensure!(
            back.as_ref() == Some(&changed),
            "{n} services: the table read back is not what was programmed"
        );
        // What encoding the full write costs, without the kernel.
        let t = Instant::now();
        let batch = lb::netlink::batch(&lb::netlink::table_messages(&changed));
        let build_ms = ms(t.elapsed());
        let t = Instant::now();
        let change_batch = lb::netlink::batch(&lb::netlink::messages(&lb::plan(&full, &changed)));
        let plan_us = t.elapsed().as_secs_f64() * 1e6;
        let doc_kib = batch.len() as f64 / 1024.0;
        let out = ns.exec_ok(&[&exe, "__rtt", &format!("{}:{ECHO_PORT}", vip_of(n)), conns])?;
        let direct = ns.exec_ok(&[&exe, "__rtt", &format!("172.31.255.1:{ECHO_PORT}"), conns])?;
        let p = parse_kv(&out);
        let d = parse_kv(&direct);
        let (p50, p99) = (p("p50_us"), p("p99_us"));
        lat.push((n, p50, d("p50_us")));
        eprintln!("bench:   {n} services: full {full_ms:.0} ms, change {change_ms:.1} / {change2_ms:.1} ms, new count {grow_ms:.1} ms, read back {read_ms:.0} ms, VIP connect+echo p50 {p50:.0} µs (direct {:.0} µs)", d("p50_us"));
        rows.push(Row {
            figure: format!("5 rule scale: {} services × 3 backends", thousands(n as f64)),
            shoal: format!("full {full_ms:.0} ms, change {change_ms:.1} ms"),
            baseline: format!("VIP p50 {p50:.0} µs / p99 {p99:.0} µs vs direct p50 {:.0} µs", d("p50_us")),
            ratio: "-".into(),
            target: "full < 1 s, change < 50 ms".into(),
            met: met(full_ms < 1000.0 && change_ms < 50.0),
            note: format!(
                "full: whole-table replace in one nf_tables netlink batch ({doc_kib:.0} KiB, {build_ms:.1} ms to encode); change: one service's backend replaced incrementally (`lb::update`: a {}-byte batch, {plan_us:.0} µs to plan and encode; a second sample {change2_ms:.1} ms; a new backend count, which adds a counter chain and moves the service's verdicts, {grow_ms:.1} ms); the resync's drift check reads the table back (netlink dumps) in {read_ms:.0} ms",
                change_batch.len()
            ),
        });
    }
    lb::remove(Some(&path)).await?;
    let (small, small_d) = lat
        .iter()
        .find(|l| l.0 == 10)
        .map(|l| (l.1, l.2))
        .unwrap_or((1.0, 1.0));
    let (big, big_d) = lat
        .iter()
        .find(|l| l.0 == 10_000)
        .map(|l| (l.1, l.2))
        .unwrap_or((0.0, 1.0));
    // Normalised by the direct (no VIP) latency measured right after each, so machine noise
    // between the two points cancels out.
    let r = (big / big_d.max(1.0)) / (small / small_d.max(1.0));
    rows.push(Row {
        figure: "5 rule scale: VIP connection latency 10,000 vs 10 services".into(),
        shoal: format!("p50 {big:.0} µs at 10,000 (direct {big_d:.0} µs)"),
        baseline: format!("p50 {small:.0} µs at 10 (direct {small_d:.0} µs)"),
        ratio: format!("{r:.2}"),
        target: "≤ 1.1".into(),
        met: met(r <= 1.1),
        note: format!("ratio = (VIP/direct at 10,000) / (VIP/direct at 10); raw p50 ratio {:.2}; new TCP connection + 1-byte echo per sample ({conns} per point), loopback backends; the verdict map lookup is O(1) in the number of services", big / small.max(1.0)),
    });
    Ok(())
}

/// A `key=value` reader for the hidden subcommands' output.
pub fn parse_kv(out: &str) -> impl Fn(&str) -> f64 + '_ {
    move |k: &str| {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}
