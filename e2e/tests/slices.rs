//! End-to-end: a service whose Endpoints are split into several slices still resolves and
//! balances as one. The controller runs with `--endpoints-slice-size 2` (real containers at
//! more than 1,000 replicas are too heavy for a test machine), so 5 replicas of `web` make
//! slices `slicenet.web`, `slicenet.web.1` and `slicenet.web.2`; a task of another service
//! on the same network resolves `tasks.web` to all 5 and reaches every one through the VIP.
//! Scaled to 0, only slice 0 stays, still carrying the VIP.
//!
//! One cluster runs at a time; it is removed at the end, also on failure.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use shoal_e2e::{require_e2e, step, Cluster, BUSYBOX};

fn manifests() -> String {
    format!(
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {{name: slicenet}}\nspec: {{}}\n---\n\
         apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  image: {BUSYBOX}\n  command: [sh, -c]\n  \
         args: [\"mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www\"]\n  replicas: 5\n  \
         networks: [{{name: slicenet}}]\n---\n\
         apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: client}}\nspec:\n  image: {BUSYBOX}\n  command: [sleep, \"100000\"]\n  \
         networks: [{{name: slicenet}}]\n"
    )
}

/// The Endpoints slices of `web` on `slicenet`, from the API, by name.
fn web_slices(c: &Cluster) -> BTreeMap<String, Value> {
    let v = c.json(&["get", "endpoints", "-o", "json"]);
    let items = v["items"]
        .as_array()
        .or(v.as_array())
        .cloned()
        .unwrap_or_default();
    items
        .into_iter()
        .filter(|e| e["spec"]["service"] == "web" && e["spec"]["network"] == "slicenet")
        .map(|e| {
            (
                e["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                e,
            )
        })
        .collect()
}

/// (task display name, IP) of the ready tasks of one slice.
fn ready_tasks(slice: &Value) -> Vec<(String, String)> {
    slice["spec"]["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|t| t["ready"] == true)
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["ip"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_service_in_several_endpoints_slices_resolves_and_balances_as_one() {
    require_e2e!();
    let c = Cluster::up_with(2, &["--controller-arg=--endpoints-slice-size=2"]);
    let wait = Duration::from_secs(120);

    step("5 replicas of web at slice size 2: three Endpoints slices of at most 2 tasks");
    c.apply(&manifests());
    let running: BTreeSet<String> = c.eventually("5 web tasks running", wait, || {
        let r = c.running("web", "slicenet");
        (r.len() == 5).then(|| r.into_iter().map(|(_, _, ip)| ip).collect())
    });
    c.eventually("client running", wait, || {
        c.running("client", "slicenet").into_iter().next()
    });
    let slices = c.eventually("3 slices listing the 5 tasks ready", wait, || {
        let s = web_slices(&c);
        let ips: BTreeSet<String> = s.values().flat_map(ready_tasks).map(|(_, ip)| ip).collect();
        (s.len() == 3 && ips == running).then_some(s)
    });
    let names: Vec<&str> = slices.keys().map(String::as_str).collect();
    assert_eq!(names, ["slicenet.web", "slicenet.web.1", "slicenet.web.2"]);
    let vip = slices["slicenet.web"]["spec"]["vip"]
        .as_str()
        .expect("slice 0 carries the VIP")
        .to_string();
    let mut slice_of: BTreeMap<String, String> = BTreeMap::new();
    for (name, s) in &slices {
        let tasks = s["spec"]["tasks"].as_array().map(Vec::len).unwrap_or(0);
        assert!((1..=2).contains(&tasks), "{name} holds {tasks} tasks");
        assert_eq!(s["spec"]["vip"], vip.as_str(), "{name} is self-describing");
        for (task, _) in ready_tasks(s) {
            slice_of.insert(task, name.clone());
        }
    }
    eprintln!("tasks by slice: {slice_of:?}");

    step("tasks.web from client.1 answers the tasks of every slice");
    let answer = c.eventually("nslookup tasks.web lists all 5", wait, || {
        let r = c.exec("client.1", &["nslookup", "tasks.web"]);
        (r.code == 0 && running.iter().all(|ip| r.stdout.contains(ip.as_str()))).then_some(r.stdout)
    });
    eprintln!("{answer}");
    let r = c.exec("client.1", &["nslookup", "web"]).ok();
    assert!(r.contains(&vip), "web resolves to its VIP {vip}: {r}");

    step("the VIP reaches tasks of every slice");
    let script = "i=0; while [ $i -lt 40 ]; do timeout 5 wget -qO- http://web/ || echo FAILED; i=$((i+1)); done";
    let out = c.exec("client.1", &["sh", "-c", script]).ok();
    let mut hits: BTreeMap<String, usize> = BTreeMap::new();
    for line in out.lines() {
        *hits.entry(line.trim().to_string()).or_insert(0) += 1;
    }
    eprintln!("{hits:?}");
    assert!(!hits.contains_key("FAILED"), "no request fails: {hits:?}");
    let answered: BTreeSet<&str> = hits
        .keys()
        .filter_map(|host| slice_of.get(host).map(String::as_str))
        .collect();
    assert_eq!(
        answered.len(),
        3,
        "tasks of all three slices answer through the VIP: {hits:?} (slices {slice_of:?})"
    );

    step("scaled to 0: the slices above 0 are deleted, slice 0 keeps the VIP");
    c.shoal(&["service", "scale", "web=0", "--timeout", "120s"])
        .ok();
    let left = c.eventually("only slice 0 left, with no task", wait, || {
        let s = web_slices(&c);
        (s.len() == 1
            && s.values()
                .all(|e| e["spec"]["tasks"].as_array().is_none_or(Vec::is_empty)))
        .then_some(s)
    });
    assert_eq!(left["slicenet.web"]["spec"]["vip"], vip.as_str());
}
