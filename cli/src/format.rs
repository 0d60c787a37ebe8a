//! Printing: aligned tables, ages (`5m`, `Running 2 minutes ago`), JSON and YAML, and the
//! columns of every kind. Pure functions of objects and "now", so tests pin every string.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shoal_api_types::payload::PayloadStatus;
use shoal_api_types::volume::VolumeInfo;
use shoal_api_types::{Endpoints, Network, Node, Service, ServiceMode, Task, TaskState};

/// Lays rows out in columns separated by at least three spaces, as `docker` and `kubectl`
/// do. Trailing spaces are trimmed; every line ends with a newline.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(cell.chars().count())
                    + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's short age: `45s`, `5m30s`, `42m`, `3h15m`, `20h`, `3d4h`, `40d`, `2y10d`.
pub fn short_age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(since) = since else {
        return "<unknown>".into();
    };
    let secs = (now - since).num_seconds().max(0);
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        match secs % 60 {
            0 => format!("{m}m"),
            s => format!("{m}m{s}s"),
        }
    } else if m < 180 {
        format!("{m}m")
    } else if h < 8 {
        match m % 60 {
            0 => format!("{h}h"),
            r => format!("{h}h{r}m"),
        }
    } else if h < 48 {
        format!("{h}h")
    } else if h < 24 * 8 {
        match h % 24 {
            0 => format!("{d}d"),
            r => format!("{d}d{r}h"),
        }
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        match d % 365 {
            0 => format!("{}y", d / 365),
            r => format!("{}y{r}d", d / 365),
        }
    } else {
        format!("{}y", d / 365)
    }
}

/// Docker's long duration (`units.HumanDuration`), lowercase: `less than a second`,
/// `5 seconds`, `about a minute`, `2 minutes`, `about an hour`, `3 hours`, `4 days`, ...
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = (secs as f64 / 3600.0).round() as i64;
    if secs < 1 {
        "less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "about a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "about an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    }
}

/// `Running 2 minutes ago`, as `docker service ps` shows CURRENT STATE.
pub fn state_with_age(
    state: TaskState,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> String {
    match since {
        Some(t) => format!("{state} {} ago", human_duration((now - t).num_seconds())),
        None => state.to_string(),
    }
}

/// Pretty JSON with a trailing newline.
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).expect("values serialise") + "\n"
}

/// YAML (which ends with a newline).
pub fn to_yaml<T: Serialize>(value: &T) -> String {
    serde_yaml_ng::to_string(value).expect("values serialise")
}

fn labels(l: &BTreeMap<String, String>) -> String {
    l.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn or_dash(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "-".into(),
    }
}

/// The table of networks: NAME, DRIVER, SUBNET, GATEWAY, VNI, FLAGS, STATUS, AGE.
pub fn networks_table(items: &[Network], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|n| {
            let mut flags = vec![];
            if n.spec.ingress {
                flags.push("ingress");
            }
            if n.spec.internal {
                flags.push("internal");
            }
            if n.spec.attachable {
                flags.push("attachable");
            }
            let scope = if n.status.scope.is_empty() {
                "swarm"
            } else {
                n.status.scope.as_str()
            };
            vec![
                n.metadata.name.clone(),
                n.spec.driver.clone(),
                scope.to_string(),
                or_dash(n.status.subnet.as_deref().or(n.spec.subnet.as_deref())),
                or_dash(n.status.gateway.as_deref().or(n.spec.gateway.as_deref())),
                or_dash(n.status.vni.map(|v| v.to_string()).as_deref()),
                or_dash(Some(&flags.join(","))),
                or_dash(Some(&n.status.phase)),
                short_age(n.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "DRIVER", "SCOPE", "SUBNET", "GATEWAY", "VNI", "FLAGS", "STATUS", "AGE",
        ],
        &rows,
    )
}

/// The table of `secret ls` and `config ls`: NAME, SIZE, CREATED, LABELS (the data is
/// never returned; secrets and configs are immutable but for labels).
pub fn payloads_table<S>(items: &[shoal_api_types::Object<S>], now: DateTime<Utc>) -> String
where
    S: shoal_api_types::Resource<Status = PayloadStatus>,
{
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|p| {
            vec![
                p.metadata.name.clone(),
                p.status.size.to_string(),
                short_age(p.metadata.creation_timestamp, now),
                labels(&p.metadata.labels),
            ]
        })
        .collect();
    table(&["NAME", "SIZE", "CREATED", "LABELS"], &rows)
}

/// The table of `volume ls`: NODE, NAME, USED BY (short task ids).
pub fn volumes_table(items: &[VolumeInfo]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            let used: Vec<String> = v.used_by.iter().map(|t| short_id(t)).collect();
            vec![
                v.node.clone(),
                v.name.clone(),
                or_dash(Some(&used.join(","))),
            ]
        })
        .collect();
    table(&["NODE", "NAME", "USED BY"], &rows)
}

/// The table of `stack ls`: NAME, SERVICES (stack name -> its services).
pub fn stacks_table(stacks: &BTreeMap<String, usize>) -> String {
    let rows: Vec<Vec<String>> = stacks
        .iter()
        .map(|(name, n)| vec![name.clone(), n.to_string()])
        .collect();
    table(&["NAME", "SERVICES"], &rows)
}

/// `2/3` from a service's status (desired: replicas until the controller has counted).
pub fn replicas(s: &Service) -> String {
    let desired = match s.spec.mode {
        ServiceMode::Replicated if s.status.observed_generation < s.metadata.generation => {
            s.spec.replica_count()
        }
        _ => s.status.desired_tasks,
    };
    format!("{}/{}", s.status.running_tasks, desired)
}

/// The table of services, as `docker service ls`: NAME, MODE, REPLICAS, IMAGE, PORTS.
pub fn services_table(items: &[Service]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|s| {
            let mode = match s.spec.mode {
                ServiceMode::Replicated => "replicated",
                ServiceMode::Global => "global",
            };
            let ports = s
                .spec
                .ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                s.metadata.name.clone(),
                mode.into(),
                replicas(s),
                s.spec.image.clone(),
                ports,
            ]
        })
        .collect();
    table(&["NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows)
}

/// The first 12 characters of a task id, as Docker shortens ids.
pub fn short_id(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(12).collect()
}

/// What went wrong with a task, or why it waits.
pub fn task_error(t: &Task) -> String {
    if !t.status.err.is_empty() {
        t.status.err.clone()
    } else if t.status.oom_killed {
        "OOM-killed".to_string()
    } else if t.status.state <= TaskState::Pending {
        t.spec.pending_reason.clone()
    } else {
        String::new()
    }
}

/// Newest first: by status timestamp, then creation, then name.
fn newest_first(a: &Task, b: &Task) -> std::cmp::Ordering {
    let key = |t: &Task| {
        (
            t.metadata.creation_timestamp,
            t.status.timestamp,
            t.metadata.revision(),
        )
    };
    key(b).cmp(&key(a))
}

/// Orders tasks as `docker service ps` does: by slot (or node), the current task first and
/// earlier tasks of the slot after it. Returns each task with whether it is history.
pub fn order_tasks(tasks: &[Task]) -> Vec<(&Task, bool)> {
    let mut groups: BTreeMap<(String, u64, String), Vec<&Task>> = BTreeMap::new();
    for t in tasks {
        let key = match t.spec.slot {
            Some(slot) => (t.spec.service.clone(), slot, String::new()),
            None => (
                t.spec.service.clone(),
                0,
                t.spec.node.clone().unwrap_or_default(),
            ),
        };
        groups.entry(key).or_default().push(t);
    }
    let mut out = vec![];
    for (_, mut group) in groups {
        group.sort_by(|a, b| {
            let live = |t: &Task| t.spec.desired_state == TaskState::Running;
            live(b).cmp(&live(a)).then_with(|| newest_first(a, b))
        });
        for (i, t) in group.into_iter().enumerate() {
            out.push((t, i > 0));
        }
    }
    out
}

/// The table of `service ps`: ID, NAME, IMAGE, NODE, DESIRED STATE, CURRENT STATE, ERROR.
/// Earlier tasks of a slot are shown below the current one as ` \_ api.1`.
pub fn tasks_table(tasks: &[Task], now: DateTime<Utc>, full_ids: bool) -> String {
    let rows: Vec<Vec<String>> = order_tasks(tasks)
        .into_iter()
        .map(|(t, history)| {
            let name = t.spec.display_name();
            let err = task_error(t);
            vec![
                if full_ids {
                    t.metadata.name.clone()
                } else {
                    short_id(&t.metadata.name)
                },
                if history {
                    format!(" \\_ {name}")
                } else {
                    name
                },
                t.spec.image.clone(),
                t.spec.node.clone().unwrap_or_default(),
                t.spec.desired_state.to_string(),
                state_with_age(
                    t.status.state,
                    t.status.timestamp.or(t.metadata.creation_timestamp),
                    now,
                ),
                if err.is_empty() {
                    err
                } else {
                    format!("\"{err}\"")
                },
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "IMAGE",
            "NODE",
            "DESIRED STATE",
            "CURRENT STATE",
            "ERROR",
        ],
        &rows,
    )
}

/// The table of nodes, as `docker node ls` plus ADDRESS, TASKS and LABELS. TASKS counts
/// the tasks on the node that have not ended.
pub fn nodes_table(nodes: &[Node], tasks: &[Task]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let count = tasks
                .iter()
                .filter(|t| {
                    t.spec.node.as_deref() == Some(n.name()) && !t.status.state.is_terminal()
                })
                .count();
            let availability = match n.spec.availability {
                shoal_api_types::NodeAvailability::Active => "Active",
                shoal_api_types::NodeAvailability::Pause => "Pause",
                shoal_api_types::NodeAvailability::Drain => "Drain",
            };
            vec![
                n.metadata.name.clone(),
                or_dash(Some(&n.status.address)),
                n.status.state.to_string(),
                availability.into(),
                count.to_string(),
                labels(&n.spec.labels),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "STATUS",
            "AVAILABILITY",
            "TASKS",
            "LABELS",
        ],
        &rows,
    )
}

/// The table of endpoints: NAME, NETWORK, SERVICE, VIP, READY (ready/total tasks).
pub fn endpoints_table(items: &[Endpoints], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|e| {
            let ready = e.spec.tasks.iter().filter(|t| t.ready).count();
            vec![
                e.metadata.name.clone(),
                e.spec.network.clone(),
                e.spec.service.clone(),
                or_dash(e.spec.vip.as_deref()),
                format!("{ready}/{}", e.spec.tasks.len()),
                short_age(e.metadata.creation_timestamp, now),
            ]
        })
        .collect();
    table(
        &["NAME", "NETWORK", "SERVICE", "VIP", "READY", "AGE"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use shoal_api_types::{
        NetworkSpec, NetworkStatus, NodeSpec, NodeState, NodeStatus, PortConfig, PublishMode,
        ServiceSpec, ServiceStatus, TaskSpec, TaskStatus,
    };

    use super::*;

    fn now() -> DateTime<Utc> {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn ago(secs: i64) -> Option<DateTime<Utc>> {
        Some(now() - Duration::seconds(secs))
    }

    #[test]
    fn tables_align_columns_with_three_spaces() {
        let t = table(
            &["NAME", "X"],
            &[
                vec!["a".into(), "1".into()],
                vec!["longer".into(), "".into()],
            ],
        );
        assert_eq!(t, "NAME     X\na        1\nlonger\n");
    }

    #[test]
    fn short_ages_follow_kubectl() {
        let cases = [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 15 * 60, "3h15m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (40 * 86400, "40d"),
        ];
        for (secs, want) in cases {
            assert_eq!(short_age(ago(secs), now()), want, "{secs}");
        }
        assert_eq!(short_age(None, now()), "<unknown>");
        assert_eq!(short_age(ago(-10), now()), "0s");
    }

    #[test]
    fn human_durations_follow_docker() {
        let cases = [
            (0, "less than a second"),
            (1, "1 second"),
            (42, "42 seconds"),
            (61, "about a minute"),
            (150, "2 minutes"),
            (3500, "58 minutes"),
            (3700, "about an hour"),
            (5 * 3600, "5 hours"),
            (3 * 86400, "3 days"),
            (20 * 86400, "2 weeks"),
            (100 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
        assert_eq!(
            state_with_age(TaskState::Running, ago(130), now()),
            "Running 2 minutes ago"
        );
        assert_eq!(state_with_age(TaskState::Pending, None, now()), "Pending");
    }

    fn task(id: &str, slot: u64, desired: TaskState, state: TaskState, created: i64) -> Task {
        let mut t = Task::new(
            id,
            TaskSpec {
                service: "api".into(),
                slot: Some(slot),
                node: Some("node-1".into()),
                desired_state: desired,
                image: "busybox".into(),
                ..Default::default()
            },
        );
        t.metadata.creation_timestamp = ago(created);
        t.status = TaskStatus {
            state,
            timestamp: ago(created),
            ..Default::default()
        };
        t
    }

    #[test]
    fn service_ps_shows_current_task_then_history_per_slot() {
        let mut failed = task(
            "1f0a2b3c4d5e6f70",
            1,
            TaskState::Shutdown,
            TaskState::Failed,
            300,
        );
        failed.status.err = "exit code 1".into();
        let mut pending = task("99aa", 2, TaskState::Running, TaskState::Pending, 5);
        pending.spec.node = None;
        pending.spec.pending_reason = "no suitable node (host port 8080 in use on 3 nodes)".into();
        let tasks = vec![
            failed,
            task(
                "2a2a2a2a2a2a2a2a",
                1,
                TaskState::Running,
                TaskState::Running,
                130,
            ),
            pending,
        ];
        let out = tasks_table(&tasks, now(), false);
        let want = "\
ID             NAME        IMAGE     NODE     DESIRED STATE   CURRENT STATE           ERROR
2a2a2a2a2a2a   api.1       busybox   node-1   Running         Running 2 minutes ago
1f0a2b3c4d5e    \\_ api.1   busybox   node-1   Shutdown        Failed 5 minutes ago    \"exit code 1\"
99aa           api.2       busybox            Running         Pending 5 seconds ago   \"no suitable node (host port 8080 in use on 3 nodes)\"
";
        assert_eq!(out, want);
    }

    #[test]
    fn service_ps_shows_oom_kills_in_the_error_column() {
        let mut killed = task("3b3b", 1, TaskState::Shutdown, TaskState::Failed, 60);
        killed.status.err = "OOM-killed (memory limit 32Mi)".into();
        killed.status.oom_killed = true;
        let mut finished = task("4c4c", 2, TaskState::Shutdown, TaskState::Complete, 60);
        finished.status.oom_killed = true;
        assert_eq!(task_error(&killed), "OOM-killed (memory limit 32Mi)");
        assert_eq!(task_error(&finished), "OOM-killed");
        let out = tasks_table(&[killed], now(), false);
        assert!(
            out.contains("Failed about a minute ago   \"OOM-killed (memory limit 32Mi)\""),
            "{out}"
        );
    }

    #[test]
    fn service_ls_shows_replicas_and_docker_ports() {
        let mut s = Service::new(
            "web",
            ServiceSpec {
                image: "nginx".into(),
                replicas: Some(3),
                ports: vec![
                    PortConfig {
                        published: 9091,
                        target: 80,
                        ..Default::default()
                    },
                    PortConfig {
                        published: 9092,
                        target: 81,
                        mode: PublishMode::Host,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        );
        s.metadata.generation = 1;
        s.status = ServiceStatus {
            desired_tasks: 3,
            running_tasks: 2,
            observed_generation: 1,
            ..Default::default()
        };
        let out = services_table(&[s.clone()]);
        assert_eq!(
            out,
            "NAME   MODE         REPLICAS   IMAGE   PORTS\nweb    replicated   2/3        nginx   *:9091->80/tcp, 9092->81/tcp (host)\n"
        );
        s.metadata.generation = 2;
        s.spec.replicas = Some(5);
        assert_eq!(replicas(&s), "2/5");
    }

    #[test]
    fn node_ls_counts_live_tasks_and_shows_labels() {
        let mut n = Node::new("node-1", NodeSpec::default());
        n.spec.labels.insert("zone".into(), "a".into());
        n.status = NodeStatus {
            state: NodeState::Ready,
            address: "198.18.0.1".into(),
            ..Default::default()
        };
        let tasks = vec![
            task("a", 1, TaskState::Running, TaskState::Running, 1),
            task("b", 2, TaskState::Shutdown, TaskState::Complete, 1),
        ];
        assert_eq!(
            nodes_table(&[n], &tasks),
            "NAME     ADDRESS      STATUS   AVAILABILITY   TASKS   LABELS\nnode-1   198.18.0.1   Ready    Active         1       zone=a\n"
        );
    }

    #[test]
    fn network_ls_prefers_allocated_addresses() {
        let mut n = Network::new(
            "appnet",
            NetworkSpec {
                driver: "overlay".into(),
                internal: true,
                ..Default::default()
            },
        );
        n.status = NetworkStatus {
            subnet: Some("10.0.1.0/24".into()),
            gateway: Some("10.0.1.1".into()),
            vni: Some(4097),
            phase: "Ready".into(),
            ..Default::default()
        };
        n.metadata.creation_timestamp = ago(30);
        assert_eq!(
            networks_table(&[n], now()),
            "NAME     DRIVER    SCOPE   SUBNET        GATEWAY    VNI    FLAGS      STATUS   AGE\nappnet   overlay   swarm   10.0.1.0/24   10.0.1.1   4097   internal   Ready    30s\n"
        );
        let mut gw = Network::new(
            "gwbridge",
            NetworkSpec {
                driver: "bridge".into(),
                subnet: Some("172.18.0.0/16".into()),
                ..Default::default()
            },
        );
        gw.status = NetworkStatus {
            subnet: Some("172.18.0.0/16".into()),
            gateway: Some("172.18.0.1".into()),
            phase: "Ready".into(),
            scope: "local".into(),
            ..Default::default()
        };
        gw.metadata.creation_timestamp = ago(30);
        assert_eq!(
            networks_table(&[gw], now()),
            "NAME       DRIVER   SCOPE   SUBNET          GATEWAY      VNI   FLAGS   STATUS   AGE\ngwbridge   bridge   local   172.18.0.0/16   172.18.0.1   -     -       Ready    30s\n"
        );
    }

    #[test]
    fn payload_volume_and_stack_tables_show_their_columns() {
        let mut s = shoal_api_types::Secret::new("shop_pw", Default::default());
        s.status.size = 6;
        s.metadata.creation_timestamp = ago(90);
        s.metadata
            .labels
            .insert("shoal.io/stack".into(), "shop".into());
        assert_eq!(
            payloads_table(&[s], now()),
            "NAME      SIZE   CREATED   LABELS\nshop_pw   6      90s       shoal.io/stack=shop\n"
        );
        let v = VolumeInfo {
            name: "shop_data".into(),
            node: "node-1".into(),
            used_by: vec!["5b6c1f0e-8a8b-4c1d-9e5f-0a1b2c3d4e5f".into()],
            created_at: None,
        };
        let idle = VolumeInfo {
            name: "old".into(),
            node: "node-2".into(),
            ..Default::default()
        };
        assert_eq!(
            volumes_table(&[v, idle]),
            "NODE     NAME        USED BY\nnode-1   shop_data   5b6c1f0e8a8b\nnode-2   old         -\n"
        );
        assert_eq!(
            stacks_table(&BTreeMap::from([("shop".to_string(), 4)])),
            "NAME   SERVICES\nshop   4\n"
        );
    }

    #[test]
    fn short_ids_take_twelve_characters() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(
            short_id("5b6c1f0e-8a8b-4c1d-9e5f-0a1b2c3d4e5f"),
            "5b6c1f0e8a8b"
        );
    }
}
