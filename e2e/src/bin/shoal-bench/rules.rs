//! Figure 5, rule scale: 10, 1,000 and 10,000 services (3 backends, TCP and UDP each) are
//! programmed with the agent's own `lb` functions, each size into a namespace of its own that
//! this tool creates: the full sync is `lb::program` (the whole table, as at a task's start or
//! a drift repair), a one-service change is `lb::update` from the previous entries (the
//! incremental path the agent takes on an Endpoints change: one backend replaced, and one
//! backend added, which moves the service to a new counter chain), and the resync's read-back
//! is `lb::read_programmed`. All of them are nf_tables netlink batches or dumps.
//! Connection latency through one VIP (to a TCP echo backend on the namespace's loopback) is
//! compared at 10,000 vs 10 services, in rounds that interleave the sizes.

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

/// A namespace of the figure's own: echo backends on its loopback (the measured service's
/// three backends) and a route for the VIPs, as a task's default route via eth0.
struct LbNs {
    // Dropped first: the echo server is stopped before its namespace is deleted.
    _echo: Proc,
    ns: Netns,
}

impl LbNs {
    fn create(exe: &str, tag: &str) -> Result<LbNs> {
        let ns = Netns::create(&format!("{}-lb{tag}", run_id()))?;
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
        // VIPs need a route before the nat hook sees them.
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
        let echo = Proc::spawn(
            "echo backend",
            &mut ns.command(&[exe, "__echo", &format!("0.0.0.0:{ECHO_PORT}")]),
            &std::env::temp_dir().join(format!("{}-echo{tag}.log", run_id())),
        )?;
        Ok(LbNs { _echo: echo, ns })
    }

    /// Median connect + 1-byte echo time (µs, p50 and p99) over `conns` new connections.
    fn rtt(&self, exe: &str, to: Ipv4Addr, conns: &str) -> Result<(f64, f64)> {
        let out = self
            .ns
            .exec_ok(&[exe, "__rtt", &format!("{to}:{ECHO_PORT}"), conns])?;
        let p = parse_kv(&out);
        Ok((p("p50_us"), p("p99_us")))
    }
}

/// What one table size's writes cost, in ms (and the encoded sizes).
struct Writes {
    full_ms: f64,
    change_ms: f64,
    change2_ms: f64,
    grow_ms: f64,
    read_ms: f64,
    build_ms: f64,
    plan_us: f64,
    doc_kib: f64,
    change_bytes: usize,
}

/// Programs `n` services into `path` and times the full write, the incremental changes and
/// the read-back; leaves the table programmed.
async fn writes(path: &std::path::Path, n: usize) -> Result<Writes> {
    let path = Some(path);
    lb::remove(path).await?;
    let full = lb::normalize(entries(n, false));
    let t = Instant::now();
    lb::program(path, &full).await?;
    let full_ms = ms(t.elapsed());
    let changed = lb::normalize(entries(n, true));
    let t = Instant::now();
    lb::update(path, &full, &changed).await?;
    let change_ms = ms(t.elapsed());
    // And back, a second sample of the same change.
    let t = Instant::now();
    lb::update(path, &changed, &full).await?;
    let change2_ms = ms(t.elapsed());
    lb::update(path, &full, &changed).await?;
    // A change of backend count: service 0 gains a fourth backend, so it gets a new counter
    // chain and its verdicts move there (the kernel then re-validates the verdict map's
    // jumps), and back.
    let mut grown = changed.clone();
    for e in grown.iter_mut().filter(|e| e.vip == vip_of(1)) {
        e.backends.push(Ipv4Addr::new(172, 30, 0, 1));
    }
    let grown = lb::normalize(grown);
    let t = Instant::now();
    lb::update(path, &changed, &grown).await?;
    let grow_ms = ms(t.elapsed());
    lb::update(path, &grown, &changed).await?;
    // What the resync's drift check costs (read back and parse).
    let t = Instant::now();
    let back = lb::read_programmed(path).await?;
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
    Ok(Writes {
        full_ms,
        change_ms,
        change2_ms,
        grow_ms,
        read_ms,
        build_ms,
        plan_us,
        doc_kib: batch.len() as f64 / 1024.0,
        change_bytes: change_batch.len(),
    })
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
    let sizes = [10usize, 1000, 10_000];
    // One namespace per table size, all kept programmed, so the latency probes of the sizes
    // can be interleaved: load that comes and goes then hits every size alike.
    let mut spaces = vec![];
    for n in sizes {
        let lbns = LbNs::create(&exe, &n.to_string())?;
        let w = writes(&lbns.ns.path(), n).await?;
        eprintln!(
            "bench:   {n} services: full {:.0} ms, change {:.1} / {:.1} ms, new count {:.1} ms, read back {:.0} ms",
            w.full_ms, w.change_ms, w.change2_ms, w.grow_ms, w.read_ms
        );
        spaces.push((n, lbns, w));
    }
    // Latency: rounds of (VIP, direct) per size, interleaved.
    let (rounds, conns) = if quick { (3, "300") } else { (6, "500") };
    // Per size: VIP p50s, VIP p99s, direct p50s, one per round.
    let mut lat: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); sizes.len()];
    for _ in 0..rounds {
        for (i, (n, lbns, _)) in spaces.iter().enumerate() {
            let (p50, p99) = lbns.rtt(&exe, vip_of(*n), conns)?;
            let (d50, _) = lbns.rtt(&exe, Ipv4Addr::new(172, 31, 255, 1), conns)?;
            lat[i].0.push(p50);
            lat[i].1.push(p99);
            lat[i].2.push(d50);
        }
    }
    // The per-round ratio (VIP/direct at the size) / (VIP/direct at 10): both probes of a
    // round ran back to back, so the direct probe cancels the machine's state at the time.
    let norm = |i: usize, r: usize| lat[i].0[r] / lat[i].2[r].max(1.0);
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|r| norm(sizes.len() - 1, r) / norm(0, r))
        .collect();
    let (ratio, rmin, rmax) = spread(&mut ratios);
    let mut medians = vec![];
    for (i, (n, _, w)) in spaces.iter().enumerate() {
        let (p50, _, _) = spread(&mut lat[i].0.clone());
        let (p99, _, _) = spread(&mut lat[i].1.clone());
        let (d50, _, _) = spread(&mut lat[i].2.clone());
        medians.push((p50, d50));
        rows.push(Row {
            figure: format!("5 rule scale: {} services × 3 backends", thousands(*n as f64)),
            shoal: format!("full {:.0} ms, change {:.1} ms", w.full_ms, w.change_ms),
            baseline: format!("VIP p50 {p50:.0} µs / p99 {p99:.0} µs vs direct p50 {d50:.0} µs"),
            ratio: "-".into(),
            target: "full < 1 s, change < 50 ms".into(),
            met: met(w.full_ms < 1000.0 && w.change_ms < 50.0),
            note: format!(
                "full: whole-table replace in one nf_tables netlink batch ({:.0} KiB, {:.1} ms to encode); change: one service's backend replaced incrementally (`lb::update`: a {}-byte batch, {:.0} µs to plan and encode; a second sample {:.1} ms; a new backend count, which adds a counter chain and moves the service's verdicts, {:.1} ms); the resync's drift check reads the table back (netlink dumps) in {:.0} ms; latencies are medians over {rounds} rounds",
                w.doc_kib, w.build_ms, w.change_bytes, w.plan_us, w.change2_ms, w.grow_ms, w.read_ms
            ),
        });
    }
    let ((small, small_d), (big, big_d)) = (medians[0], medians[sizes.len() - 1]);
    rows.push(Row {
        figure: "5 rule scale: VIP connection latency 10,000 vs 10 services".into(),
        shoal: format!("p50 {big:.0} µs at 10,000 (direct {big_d:.0} µs)"),
        baseline: format!("p50 {small:.0} µs at 10 (direct {small_d:.0} µs)"),
        ratio: format!("{ratio:.2}"),
        target: "≤ 1.1".into(),
        met: met(ratio <= 1.1),
        note: format!(
            "ratio = median over {rounds} interleaved rounds of (VIP/direct at 10,000) / (VIP/direct at 10), spread {rmin:.2}–{rmax:.2}; raw p50 ratio {:.2}; each size has its own namespace and table, and a round probes every size's VIP and direct backend back to back with {conns} new TCP connections + 1-byte echo each, loopback backends; the verdict map lookup is O(1) in the number of services",
            big / small.max(1.0)
        ),
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
