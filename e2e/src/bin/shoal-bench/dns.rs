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

/// Runs figure 6.
pub async fn dns(quick: bool, dir: &std::path::Path, rows: &mut Vec<Row>) -> Result<()> {
    let target = "≥ 1.0× unbound, p99 < 1 ms";
    let exe = std::env::current_exe()?;
    let exe = exe.to_str().unwrap_or("shoal-bench").to_string();
    let secs = if quick { "2" } else { "5" };
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
    // The load generator runs in a child process while this runtime serves.
    let shoal_out = {
        let mut cmd = tokio::process::Command::from(ns.command(&[
            &exe,
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    server.shutdown().await;
    drop(ns);
    let s = parse_kv(&shoal_out);
    let (sq, sp99, serr) = (s("qps"), s("p99_us"), s("errors"));
    // unbound.
    if !have("unbound") {
        rows.push(Row {
            figure: "6 DNS: service name at 127.0.0.11".into(),
            shoal: format!("{} q/s, p99 {:.0} µs", thousands(sq), sp99),
            baseline: "skipped: unbound not installed (scripts/install-deps installs it)".into(),
            ratio: "-".into(),
            target: target.into(),
            met: met(sp99 < 1000.0),
            note: String::new(),
        });
        return Ok(());
    }
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
        rows.push(Row {
            figure: "6 DNS: service name at 127.0.0.11".into(),
            shoal: format!("{} q/s, p99 {:.0} µs", thousands(sq), sp99),
            baseline: "skipped: unbound did not answer".into(),
            ratio: "-".into(),
            target: target.into(),
            met: met(sp99 < 1000.0),
            note: log.lines().last().unwrap_or("").to_string(),
        });
        return Ok(());
    }
    let uout = uns.exec_ok(&[&exe, "__dnsload", "127.0.0.11:53", name, secs, conc])?;
    let u = parse_kv(&uout);
    let (uq, up99) = (u("qps"), u("p99_us"));
    let r = sq / uq.max(1.0);
    rows.push(Row {
        figure: format!("6 DNS: A query for a service name at 127.0.0.11 ({conc} clients, {secs} s)"),
        shoal: format!("{} q/s, p99 {:.0} µs{}", thousands(sq), sp99, if serr > 0.0 { format!(", {serr} errors") } else { String::new() }),
        baseline: format!("unbound {} q/s, p99 {:.0} µs", thousands(uq), up99),
        ratio: format!("{r:.2}"),
        target: target.into(),
        met: met(r >= 1.0 && sp99 < 1000.0),
        note: "both on 2 cores shared with the load generator; Shoal's server answers A questions for its names from prepared answers on 2 SO_REUSEPORT sockets with a receive thread each (the rest goes to its hickory handler on the agent's tokio runtime, here the bench process's), unbound runs 2 threads".into(),
    });
    Ok(())
}
