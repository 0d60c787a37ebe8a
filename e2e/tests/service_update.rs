//! End-to-end: `shoal service update` changes a running service on a 2-node local cluster
//! (issue 14, first slice): published ports added and removed answer and close on every
//! node, an environment change and `--force` replace the tasks, a bad removal changes
//! nothing, and no flag at all writes nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::{require_e2e, step, Cluster, BUSYBOX};

const HTTPD: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// Whether ip:port answers an HTTP GET with a page naming a task of `service`.
fn answers(ip: Ipv4Addr, port: u16, service: &str) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&SocketAddr::from((ip, port)), Duration::from_secs(2))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains(&format!("{service}."))
}

fn node_ip(k: u32) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, k as u8)
}

fn spec(c: &Cluster, service: &str) -> Value {
    let v = c.json(&["service", "inspect", service]);
    match v {
        Value::Array(mut items) if !items.is_empty() => items.swap_remove(0),
        other => other,
    }
}

#[test]
fn service_update_changes_a_running_service() {
    require_e2e!();
    let c = Cluster::up(2);

    step("a service publishing 9094");
    c.shoal(&[
        "service",
        "create",
        "--name",
        "upd",
        "--replicas",
        "2",
        "-p",
        "9094:80",
        BUSYBOX,
        "sh",
        "-c",
        HTTPD,
    ])
    .ok();
    c.eventually(
        "9094 answers on both nodes",
        Duration::from_secs(60),
        || (answers(node_ip(1), 9094, "upd") && answers(node_ip(2), 9094, "upd")).then_some(()),
    );

    step(
        "--publish-add 9095:80 --publish-rm 9094: the new port answers everywhere, the old closes",
    );
    c.shoal(&[
        "service",
        "update",
        "--publish-add",
        "9095:80",
        "--publish-rm",
        "9094",
        "upd",
    ])
    .ok();
    c.eventually(
        "9095 answers and 9094 is closed on both nodes",
        Duration::from_secs(60),
        || {
            (1..=2)
                .all(|k| answers(node_ip(k), 9095, "upd") && !answers(node_ip(k), 9094, "upd"))
                .then_some(())
        },
    );

    step("--env-add replaces the tasks with the new environment");
    let before = c.running_ids("upd");
    assert_eq!(before.len(), 2, "{before:?}");
    c.shoal(&["service", "update", "--env-add", "COLOR=blue", "upd"])
        .ok();
    let after = c.eventually("two new tasks running", Duration::from_secs(90), || {
        let now = c.running_ids("upd");
        (now.len() == 2 && now.is_disjoint(&before)).then_some(now)
    });
    let task = after.iter().next().expect("a task");
    let run = c.exec(task, &["sh", "-c", "echo $COLOR"]);
    assert_eq!(run.stdout.trim(), "blue", "{run:?}");

    step("removing what is not there fails naming the flag, and changes nothing");
    let version = spec(&c, "upd")["metadata"]["resourceVersion"].clone();
    let run = c.shoal(&["service", "update", "--env-rm", "NOPE", "upd"]);
    assert!(
        run.code != 0 && run.stderr.contains("--env-rm") && run.stderr.contains("NOPE"),
        "{run:?}"
    );
    assert_eq!(spec(&c, "upd")["metadata"]["resourceVersion"], version);

    step("no flag: no change, nothing written");
    let run = c.shoal(&["service", "update", "upd"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("no change"), "{run:?}");
    assert_eq!(spec(&c, "upd")["metadata"]["resourceVersion"], version);

    step("--force replaces every task without a change");
    let before = c.running_ids("upd");
    c.shoal(&["service", "update", "--force", "upd"]).ok();
    c.eventually(
        "two new tasks after --force",
        Duration::from_secs(90),
        || {
            let now = c.running_ids("upd");
            (now.len() == 2 && now.is_disjoint(&before)).then_some(())
        },
    );
    assert_eq!(
        spec(&c, "upd")["spec"]["env"]["COLOR"],
        "blue",
        "--force keeps the spec"
    );
}
