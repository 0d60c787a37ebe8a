//! End-to-end: `shoal system check` (issue 18) on a real 2-node local cluster with a
//! service on an overlay network publishing a port. The check exits 0 while the cluster is
//! healthy, and names the node and the object after each drift injected by hand inside the
//! cluster's own node namespaces and containerd: (a) a VXLAN FDB entry deleted, (b) a stale
//! element added to the node's routing-mesh nft map, (c) a container started outside Shoal
//! with Shoal's labels. Each injection is undone and the check is clean again.
//!
//! The agents repair such drift on their periodic resync (every 10 s by default), which
//! would race the check; the cluster runs with `--agent-resync 3600`, so nothing repairs it
//! in between and what the check reports is what was injected. Whatever the test leaves
//! (on failure) goes with the cluster: `shoal dev down` removes the node namespaces (FDB
//! entries, nft tables) and each node's containerd and its containers.

use std::process::Command;
use std::time::Duration;

use shoal_e2e::{require_e2e, step, Cluster, Run, BUSYBOX};

fn manifest() -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: appnet}}\nspec: {{}}\n---\n\
         apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  image: {BUSYBOX}\n  \
         command: [sh, -c]\n  args: [\"mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www\"]\n  \
         replicas: 2\n  networks: [{{name: appnet}}]\n  ports:\n    - published: 9091\n      target: 80\n"
    )
}

/// Runs `shoal system check` and shows what it printed.
fn check(c: &Cluster) -> Run {
    let r = c.shoal(&["system", "check"]);
    eprintln!(
        "shoal system check: exit {}\n{}{}",
        r.code, r.stdout, r.stderr
    );
    r
}

/// Waits until the check is clean (the cluster may still be converging).
fn clean(c: &Cluster, what: &str) -> String {
    c.eventually(what, Duration::from_secs(60), || {
        let r = check(c);
        (r.code == 0).then_some(r.stdout)
    })
}

/// The check's drift rows that mention every one of `words`.
fn rows_with(out: &str, words: &[&str]) -> Vec<String> {
    out.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .map(str::to_string)
        .collect()
}

fn ctr(c: &Cluster, k: u32, args: &[&str]) -> Run {
    let sock = c
        .state_dir()
        .join(format!("node-{k}/containerd/containerd.sock"));
    let mut all = vec!["--address", sock.to_str().unwrap(), "-n", "shoal"];
    all.extend_from_slice(args);
    let out = Command::new("ctr").args(&all).output().expect("run ctr");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The MAC Shoal derives for an overlay address.
fn mac_of(ip: &str) -> String {
    let o: Vec<u8> = ip.split('.').map(|p| p.parse().unwrap()).collect();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[test]
fn system_check_should_be_clean_on_a_healthy_cluster_and_name_each_injected_drift() {
    require_e2e!();
    let c = Cluster::up_with(2, &["--agent-resync", "3600"]);
    let wait = Duration::from_secs(120);

    step("a service on an overlay network, publishing a port, one task per node");
    c.apply(&manifest());
    let web = c.eventually("2 web tasks running on two nodes", wait, || {
        let r = c.running("web", "appnet");
        let nodes: std::collections::BTreeSet<&String> = r.iter().map(|(_, n, _)| n).collect();
        (r.len() == 2 && nodes.len() == 2).then_some(r)
    });
    let out = clean(&c, "a clean check on the healthy cluster");
    assert!(out.contains("no drift: 2 nodes checked"), "{out}");

    step("JSON output carries the nodes checked");
    let json = c.json(&["system", "check", "-o", "json"]);
    assert_eq!(
        json["nodes"],
        serde_json::json!(["node-1", "node-2"]),
        "{json}"
    );
    assert_eq!(json["drift"], serde_json::json!([]), "{json}");

    let vni = c.json(&["network", "inspect", "appnet"]);
    let vni = vni
        .as_array()
        .and_then(|a| a.first())
        .unwrap_or(&vni)
        .pointer("/status/vni")
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("appnet has no VNI: {vni}"));
    let vxlan = format!("shv-{vni}");

    step("(a) an FDB entry deleted on node-1: the check names node-1 and appnet");
    // node-1's entry for the web task on node-2.
    let (_, _, remote_ip) = web
        .iter()
        .find(|(_, n, _)| n == "node-2")
        .expect("a web task on node-2")
        .clone();
    let mac = mac_of(&remote_ip);
    let dst = "198.18.0.2";
    let fdb = c.in_node(1, &["bridge", "fdb", "show", "dev", &vxlan]).ok();
    assert!(
        fdb.contains(&mac),
        "node-1 holds no FDB entry for {mac}:\n{fdb}"
    );
    c.in_node(
        1,
        &[
            "bridge", "fdb", "del", &mac, "dev", &vxlan, "dst", dst, "self",
        ],
    )
    .ok();
    let r = check(&c);
    assert_eq!(r.code, 1, "the check exits 1 on drift");
    let rows = rows_with(&r.stdout, &["node-1", "fdb", "appnet", &mac]);
    assert_eq!(
        rows.len(),
        1,
        "one fdb row for {mac} on node-1:\n{}",
        r.stdout
    );
    assert!(rows[0].contains("found nothing"), "{}", rows[0]);
    c.in_node(
        1,
        &[
            "bridge",
            "fdb",
            "replace",
            &mac,
            "dev",
            &vxlan,
            "dst",
            dst,
            "self",
            "permanent",
        ],
    )
    .ok();
    clean(&c, "a clean check after restoring the FDB entry");

    step("(b) a stale element in node-2's mesh map: the check names node-2 and the port");
    c.in_node(
        2,
        &[
            "nft",
            "add",
            "element",
            "ip",
            "shoal_mesh",
            "ports",
            "{ tcp . 9999 : goto refuse }",
        ],
    )
    .ok();
    let r = check(&c);
    assert_eq!(r.code, 1, "the check exits 1 on drift");
    let rows = rows_with(&r.stdout, &["node-2", "nft", "shoal_mesh", "tcp/9999"]);
    assert_eq!(rows.len(), 1, "one nft row on node-2:\n{}", r.stdout);
    assert!(rows[0].contains("found tcp/9999 → refuse"), "{}", rows[0]);
    c.in_node(
        2,
        &[
            "nft",
            "delete",
            "element",
            "ip",
            "shoal_mesh",
            "ports",
            "{ tcp . 9999 }",
        ],
    )
    .ok();
    clean(&c, "a clean check after removing the stale element");

    step("(c) a container started outside Shoal with its labels on node-2");
    let intruder = format!("intruder-{:x}", std::process::id());
    let pulled = ctr(&c, 2, &["images", "pull", "--plain-http", BUSYBOX]);
    assert_eq!(pulled.code, 0, "ctr pull: {}", pulled.stderr);
    let task_label = format!("shoal.io/task={intruder}");
    // runc's state under the node's directory, as the agent keeps it (`--runc-root`), so
    // that it goes with the cluster instead of staying in /run/containerd/runc.
    let runc_root = c.state_dir().join("node-2/containerd/runc");
    let started = ctr(
        &c,
        2,
        &[
            "run",
            "-d",
            "--runc-root",
            runc_root.to_str().unwrap(),
            "--label",
            "shoal.io/managed=true",
            "--label",
            &task_label,
            BUSYBOX,
            &intruder,
            "sleep",
            "600",
        ],
    );
    assert_eq!(started.code, 0, "ctr run: {}", started.stderr);
    let r = check(&c);
    let rows = rows_with(&r.stdout, &["node-2", "container", &intruder]);
    // Clean up before asserting, so a failure leaves nothing running either (the agent
    // may remove it too, on its next round: either way it must be gone).
    ctr(&c, 2, &["task", "kill", "-s", "SIGKILL", &intruder]);
    c.eventually("the intruder to be gone", Duration::from_secs(30), || {
        ctr(&c, 2, &["task", "delete", &intruder]);
        ctr(&c, 2, &["containers", "delete", &intruder]);
        let left = ctr(&c, 2, &["containers", "ls", "-q"]);
        (left.code == 0 && !left.stdout.contains(&intruder)).then_some(())
    });
    assert_eq!(r.code, 1, "the check exits 1 on drift");
    assert_eq!(rows.len(), 1, "one container row on node-2:\n{}", r.stdout);
    assert!(
        rows[0].contains("no task") && rows[0].contains("(running)"),
        "{}",
        rows[0]
    );
    let out = clean(&c, "a clean check after removing the intruder");
    assert!(out.contains("no drift: 2 nodes checked"), "{out}");
}
