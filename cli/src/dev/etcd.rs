//! The local cluster's etcd: one member on loopback, or three members each in a network
//! namespace of its own on the underlay (`shoal-etcd-i`, 198.18.0.(240+i)), so stopping one
//! is a member dying, not a port closing. Secured clusters serve clients and peers over TLS
//! and accept only certificates of the cluster CA (`--client-cert-auth`); the controllers
//! then turn on etcd's authentication with users named by certificate CNs.

use std::time::Duration;

use anyhow::Context;

use super::cluster::Layout;
use super::host;
use super::process::{run, run_quiet};

/// etcd's request size limit on the local cluster (8 MiB; docs/deploy.md says to set it on
/// real hosts too).
pub const MAX_REQUEST_BYTES: u64 = 8 * 1024 * 1024;

/// etcd's flags for member i.
pub fn member_args(layout: &Layout, i: u32) -> Vec<String> {
    let cluster: Vec<String> = (1..=layout.etcd_members)
        .map(|m| format!("{}={}", layout.etcd_name(m), layout.etcd_peer_url(m)))
        .collect();
    let mut args = vec![
        format!("--name={}", layout.etcd_name(i)),
        format!("--data-dir={}", layout.etcd_dir(i).display()),
        format!("--listen-client-urls={}", layout.etcd_client_url(i)),
        format!("--advertise-client-urls={}", layout.etcd_client_url(i)),
        format!("--listen-peer-urls={}", layout.etcd_peer_url(i)),
        format!("--initial-advertise-peer-urls={}", layout.etcd_peer_url(i)),
        format!("--initial-cluster={}", cluster.join(",")),
        "--initial-cluster-state=new".into(),
        "--initial-cluster-token=shoal-dev".into(),
        "--log-level=warn".into(),
        // One stack deploy may carry a 1000 KiB config and 500 KiB secrets in one
        // transaction; etcd's default limit is 1.5 MiB.
        format!("--max-request-bytes={}", MAX_REQUEST_BYTES),
    ];
    if layout.secure {
        let pki = layout.pki_dir();
        let ca = pki.join("ca.crt").display().to_string();
        let cert = pki
            .join("etcd")
            .join(format!("{}.crt", layout.etcd_name(i)))
            .display()
            .to_string();
        let key = pki
            .join("etcd")
            .join(format!("{}.key", layout.etcd_name(i)))
            .display()
            .to_string();
        args.extend([
            format!("--cert-file={cert}"),
            format!("--key-file={key}"),
            format!("--trusted-ca-file={ca}"),
            "--client-cert-auth".into(),
            format!("--peer-cert-file={cert}"),
            format!("--peer-key-file={key}"),
            format!("--peer-trusted-ca-file={ca}"),
            "--peer-client-cert-auth".into(),
        ]);
    }
    args
}

/// The environment of the local cluster's etcd members: the same as `shoal_store::ETCD_ENV`
/// (Go's collector at `GOGC=400`; see there), which this crate does not link, so a test
/// keeps the two equal.
pub const ETCD_ENV: &[(&str, &str)] = &[("GOGC", "400")];

/// Starts member i (and its namespace when it has one) unless it runs.
pub fn start_member(layout: &Layout, i: u32) -> anyhow::Result<()> {
    let etcd = host::which("etcd").context("etcd")?;
    let daemon = layout.daemon(&layout.etcd_name(i));
    let env: Vec<(&str, String)> = ETCD_ENV.iter().map(|(k, v)| (*k, v.to_string())).collect();
    match layout.etcd_netns(i) {
        None => {
            daemon.start(&etcd, &member_args(layout, i), &env)?;
        }
        Some(ns) => {
            ensure_member_netns(layout, i, &ns)?;
            // `ip netns exec` execs etcd: the recorded pid is etcd's.
            let mut args = vec![
                "netns".to_string(),
                "exec".into(),
                ns,
                etcd.display().to_string(),
            ];
            args.extend(member_args(layout, i));
            let ip = host::which("ip").context("ip")?;
            daemon.start(&ip, &args, &env)?;
        }
    }
    Ok(())
}

/// Stops member i (SIGTERM, then SIGKILL).
pub async fn stop_member(layout: &Layout, i: u32) -> anyhow::Result<()> {
    layout
        .daemon(&layout.etcd_name(i))
        .stop(Duration::from_secs(5))
        .await
}

fn ensure_member_netns(layout: &Layout, i: u32, ns: &str) -> anyhow::Result<()> {
    if !host::netns_exists(ns)? {
        run("ip", &["netns", "add", ns])?;
    }
    host::attach_to_underlay(
        layout,
        &layout.etcd_veth(i),
        ns,
        layout.etcd_address(i),
        None,
    )?;
    Ok(())
}

/// Removes member i's namespace and veth, if any.
pub fn remove_member_netns(layout: &Layout, i: u32) {
    host::detach_from_underlay(layout, &layout.etcd_veth(i));
    run_quiet("ip", &["netns", "delete", &format!("shoal-etcd-{i}")]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_local_cluster_should_start_etcd_as_every_other_shoal_etcd() {
        assert_eq!(super::ETCD_ENV, shoal_store::ETCD_ENV);
    }
}
