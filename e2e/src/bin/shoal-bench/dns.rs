//! Figure 6, DNS: the agent's embedded server (`DnsServer::start` in a namespace of this
//! tool's, 127.0.0.11:53, 100 services on one network) against unbound serving the same A
//! records from a namespace of its own at the same address; the same closed-loop UDP load
//! generator (`shoal-bench __dnsload`, run inside each namespace) measures both.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use shoal_api_types::EndpointsSpec;
use shoal_node_agent::dns::{DnsServer, DnsServerConfig, RecordStore};

use crate::common::*;
use crate::rules::parse_kv;

const SERVICES: usize = 100;

fn vip(i: usize) -> String {
    format!("10.0.{}.{}", (i + 2) / 256, (i + 2) % 256)
}

/// One closed-loop load run of `secs` against 127.0.0.11:53 inside `ns`: (q/s, p99 µs,
/// errors). The generator is a child process, so the runtime serving Shoal's side goes on.
async fn load(
    ns: &Netns,
    exe: &str,
    name: &str,
    secs: &str,
    conc: &str,
) -> Result<(f64, f64, f64)> {
    let mut cmd = tokio::process::Command::from(ns.command(&[
        exe,
        "__dnsload",
        "127.0.0.11:53",
        name,
        secs,
        conc,
    ]));
    let out = cmd.output().await?;
    anyhow::ensure!(
        out.status.success(),
        "dns load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = String::from_utf8_lossy(&out.stdout);
    let p = parse_kv(&out);
    Ok((p("qps"), p("p99_us"), p("errors")))
}

/// Runs figure 6.
pub async fn dns(quick: bool, dir: &std::path::Path, rows: &mut Vec<Row>) -> Result<()> {
    let target = "≥ 1.0× unbound, p99 < 1 ms";
    if !have("unbound") {
        rows.push(Row::skipped(
            "6 DNS: service name at 127.0.0.11",
            target,
            "unbound is not installed (scripts/install-deps installs it)",
        ));
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or("shoal-bench").to_string();
    // Rounds of `secs` per server, interleaved (the order alternating), so load that comes
    // and goes on the machine hits both alike.
    let (rounds, secs) = if quick { (2, "1") } else { (5, "2") };
    let conc = "4";
    let name = "svc-42";
    // Shoal's server.
    let ns = Netns::create(&format!("{}-dns", run_id()))?;
    let eps: Vec<EndpointsSpec> = (0..SERVICES)
        .map(|i| EndpointsSpec {
            network: "benchnet".into(),
            service: format!("svc-{i}"),
            vip: Some(vip(i)),
            ..Default::default()
        })
        .collect();
    let records = RecordStore::new();
    records.set_from_endpoints("benchnet", eps.iter());
    let server = DnsServer::start(
        Some(&ns.path()),
        records.view(&["benchnet"]),
        Arc::new(DnsServerConfig::default()),
    )
    .await?;
    // unbound, with the same A records.
    let uns = Netns::create(&format!("{}-unbound", run_id()))?;
    let udir = dir.join("unbound");
    std::fs::create_dir_all(&udir)?;
    let mut conf = format!(
        "server:\n  interface: 127.0.0.11\n  port: 53\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  verbosity: 0\n  num-threads: 2\n  do-ip6: no\n  access-control: 127.0.0.0/8 allow\n  module-config: \"iterator\"\n  trust-anchor-file: \"\"\n",
        d = udir.display()
    );
    for i in 0..SERVICES {
        conf.push_str(&format!("  local-data: \"svc-{i}. 0 IN A {}\"\n", vip(i)));
    }
    conf.push_str("remote-control:\n  control-enable: no\n");
    let conf_path = udir.join("unbound.conf");
    std::fs::write(&conf_path, conf)?;
    let _unbound = Proc::spawn(
        "unbound",
        &mut uns.command(&[
            "unbound",
            "-d",
            "-c",
            conf_path.to_str().unwrap_or_default(),
        ]),
        &udir.join("unbound.log"),
    )?;
    let mut ready = false;
    for _ in 0..50 {
        if uns
            .exec_ok(&[&exe, "__dnsload", "127.0.0.11:53", name, "0.1", "1"])
            .map(|o| parse_kv(&o)("ok") > 0.0)
            .unwrap_or(false)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !ready {
        let log = std::fs::read_to_string(udir.join("unbound.log")).unwrap_or_default();
        server.shutdown().await;
        anyhow::bail!(
            "unbound did not answer at 127.0.0.11:53 in its namespace: {}",
            log.lines().last().unwrap_or("")
        );
    }
    let (mut sq, mut sp99, mut uq, mut up99, mut ratios) = (vec![], vec![], vec![], vec![], vec![]);
    let mut serr = 0.0;
    for round in 0..rounds {
        let (s, u) = if round % 2 == 0 {
            let s = load(&ns, &exe, name, secs, conc).await?;
            (s, load(&uns, &exe, name, secs, conc).await?)
        } else {
            let u = load(&uns, &exe, name, secs, conc).await?;
            (load(&ns, &exe, name, secs, conc).await?, u)
        };
        eprintln!(
            "bench:   DNS round {round}: Shoal {:.0} q/s p99 {:.0} µs, unbound {:.0} q/s p99 {:.0} µs",
            s.0, s.1, u.0, u.1
        );
        ratios.push(s.0 / u.0.max(1.0));
        sq.push(s.0);
        sp99.push(s.1);
        serr += s.2;
        uq.push(u.0);
        up99.push(u.1);
    }
    server.shutdown().await;
    let (r, rmin, rmax) = spread(&mut ratios);
    let (sqm, sqmin, sqmax) = spread(&mut sq);
    let (uqm, uqmin, uqmax) = spread(&mut uq);
    // p99: the worst round's, since the target is a bound.
    let sp99max = spread(&mut sp99).2;
    let up99max = spread(&mut up99).2;
    let errors = if serr > 0.0 {
        format!(", {serr} errors")
    } else {
        String::new()
    };
    rows.push(Row {
        figure: format!("6 DNS: A query for a service name at 127.0.0.11 ({conc} clients, {rounds} × {secs} s each)"),
        shoal: format!("{} q/s ({}–{}), p99 ≤ {sp99max:.0} µs{errors}", thousands(sqm), thousands(sqmin), thousands(sqmax)),
        baseline: format!("unbound {} q/s ({}–{}), p99 ≤ {up99max:.0} µs", thousands(uqm), thousands(uqmin), thousands(uqmax)),
        ratio: format!("{r:.2}"),
        target: target.into(),
        met: met(r >= 1.0 && sp99max < 1000.0),
        note: format!("ratio = median of the rounds' Shoal/unbound q/s (spread {rmin:.2}–{rmax:.2}); the rounds interleave the two servers, alternating which goes first; q/s medians with min–max, p99 the worst round's; both on 2 cores shared with the load generator; Shoal's server answers A questions for its names from prepared answers on one UDP socket read by 2 threads (the rest goes to its hickory handler on the agent's tokio runtime, here the bench process's), unbound runs 2 threads"),
    });
    Ok(())
}
