//! Watch: resumable newline-delimited JSON events, bookmarks, 410 on compaction, and
//! streams that end with the client or the server.

use std::time::Duration;

use serde_json::json;
use shoal_api_types::{Task, TaskSpec};

use crate::support::{network, summary, Server};

const NETS: &str = "/apis/shoal/v1/networks";

fn ev(t: &str, name: &str) -> (String, String) {
    (t.to_string(), name.to_string())
}

#[tokio::test]
async fn watch_from_a_revision_replays_exactly_the_missed_events() {
    let s = Server::start().await;
    assert_eq!(s.post(NETS, &network("a", None)).await.code, 201);
    let listed = s.get(NETS).await;
    let rv = listed.rv();

    // Changes the watcher "missed" after its list.
    assert_eq!(s.post(NETS, &network("b", None)).await.code, 201);
    let mut a = listed.body["items"][0].clone();
    a["metadata"]["labels"] = json!({"x": "y"});
    assert_eq!(s.put(&format!("{NETS}/a"), &a.to_string()).await.code, 200);
    assert_eq!(s.delete(&format!("{NETS}/b")).await.code, 200);

    let mut w = s
        .watch(&format!(
            "{NETS}?watch=true&resourceVersion={rv}&bookmarkSeconds=0"
        ))
        .await;
    assert_eq!(w.code, 200);
    let got = vec![
        summary(&w.next().await),
        summary(&w.next().await),
        summary(&w.next().await),
    ];
    assert_eq!(
        got,
        [ev("ADDED", "b"), ev("MODIFIED", "a"), ev("DELETED", "b")]
    );
    assert!(
        w.next_within(Duration::from_millis(500)).await.is_none(),
        "nothing else happened"
    );

    // And the stream goes on with new changes.
    assert_eq!(s.post(NETS, &network("c", None)).await.code, 201);
    let next = w.next().await;
    assert_eq!(summary(&next), ev("ADDED", "c"));
    assert_eq!(next["object"]["kind"], "Network");
    assert!(
        next["object"]["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
            > rv.parse().unwrap()
    );
}

#[tokio::test]
async fn watch_without_a_revision_starts_with_every_existing_object() {
    let s = Server::start().await;
    for n in ["a", "b"] {
        assert_eq!(s.post(NETS, &network(n, None)).await.code, 201);
    }
    let mut w = s.watch(&format!("{NETS}?watch=true")).await;
    assert_eq!(w.code, 200);
    assert_eq!(
        [summary(&w.next().await), summary(&w.next().await)],
        [ev("ADDED", "a"), ev("ADDED", "b")]
    );
    assert_eq!(s.delete(&format!("{NETS}/a")).await.code, 200);
    assert_eq!(summary(&w.next().await), ev("DELETED", "a"));
}

#[tokio::test]
async fn watch_from_a_compacted_revision_is_410_gone() {
    let s = Server::private().await;
    let first = s.post(NETS, &network("a", None)).await;
    let old = first.rv();
    for n in ["b", "c"] {
        s.post(NETS, &network(n, None)).await;
    }
    let now = s.store.revision().await.unwrap();
    s.store.compact(now).await.unwrap();
    // Every change after `old - 1` is still wanted, but history before `now` is gone.
    let direct = s
        .get(&format!(
            "{NETS}?watch=true&resourceVersion={}",
            old.parse::<i64>().unwrap() - 1
        ))
        .await;
    assert_eq!((direct.code, direct.reason()), (410, "Gone"), "{direct:?}");
    assert!(direct.message().contains("compacted"), "{direct:?}");
    // From the compaction revision itself, watching works.
    let ok = s
        .watch(&format!(
            "{NETS}?watch=true&resourceVersion={now}&bookmarkSeconds=0"
        ))
        .await;
    assert_eq!(ok.code, 200);
}

#[tokio::test]
async fn watch_sends_bookmarks_with_the_revision_reached() {
    let s = Server::start().await;
    s.post(NETS, &network("a", None)).await;
    let rv: i64 = s.get(NETS).await.rv().parse().unwrap();
    let mut w = s
        .watch(&format!(
            "{NETS}?watch=true&resourceVersion={rv}&bookmarkSeconds=1"
        ))
        .await;
    let bookmark = w.next().await;
    assert_eq!(bookmark["type"], "BOOKMARK", "{bookmark}");
    assert_eq!(bookmark["object"]["kind"], "Network");
    assert_eq!(bookmark["object"]["apiVersion"], "shoal/v1");
    let at: i64 = bookmark["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= rv, "bookmark at {at}, list at {rv}");
}

#[tokio::test]
async fn task_watches_honour_service_and_node_filters() {
    let s = Server::start().await;
    let task = |id: &str, svc: &str, node: &str| {
        Task::new(
            id,
            TaskSpec {
                service: svc.into(),
                node: Some(node.into()),
                image: "busybox".into(),
                ..Default::default()
            },
        )
    };
    s.store.create(&task("t0", "api", "node-1")).await.unwrap();
    let mut by_service = s
        .watch("/apis/shoal/v1/tasks?watch=true&service=api&bookmarkSeconds=0")
        .await;
    let mut by_node = s
        .watch("/apis/shoal/v1/tasks?watch=true&node=node-2&bookmarkSeconds=0")
        .await;
    assert_eq!(summary(&by_service.next().await), ev("ADDED", "t0"));
    for (id, svc, node) in [
        ("t1", "web", "node-2"),
        ("t2", "api", "node-2"),
        ("t3", "web", "node-1"),
    ] {
        s.store.create(&task(id, svc, node)).await.unwrap();
    }
    assert_eq!(summary(&by_service.next().await), ev("ADDED", "t2"));
    assert!(by_service
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(
        [
            summary(&by_node.next().await),
            summary(&by_node.next().await)
        ],
        [ev("ADDED", "t1"), ev("ADDED", "t2")]
    );
    assert!(by_node
        .next_within(Duration::from_millis(300))
        .await
        .is_none());
}

async fn open_watches(s: &Server) -> i64 {
    let text = s
        .get("/metrics")
        .await
        .body
        .as_str()
        .unwrap_or("")
        .to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("shoal_api_watches "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

#[tokio::test]
async fn a_watch_ends_when_its_client_disconnects() {
    let s = Server::start().await;
    let w = s
        .watch(&format!("{NETS}?watch=true&bookmarkSeconds=1"))
        .await;
    assert_eq!(w.code, 200);
    assert_eq!(open_watches(&s).await, 1);
    drop(w);
    let mut n = 1;
    for _ in 0..50 {
        n = open_watches(&s).await;
        if n == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(n, 0, "the server still streams to a client that left");
}

#[tokio::test]
async fn watches_end_and_the_server_stops_on_shutdown() {
    let s = Server::start().await;
    let mut w = s
        .watch(&format!("{NETS}?watch=true&bookmarkSeconds=0"))
        .await;
    assert_eq!(w.code, 200);
    s.shutdown.send(true).unwrap();
    assert!(
        w.ended_within(Duration::from_secs(5)).await,
        "the watch stream did not end on shutdown"
    );
    let served = tokio::time::timeout(Duration::from_secs(5), s.task)
        .await
        .expect("serve returned")
        .expect("joined");
    served.expect("serve ended cleanly");
}

#[tokio::test]
async fn a_watch_ends_with_an_error_event_when_etcd_goes_away() {
    let mut s = Server::private().await;
    let mut w = s
        .watch(&format!("{NETS}?watch=true&bookmarkSeconds=1"))
        .await;
    assert_eq!(w.code, 200);
    s.etcd.kill();
    let last = w
        .next_within(Duration::from_secs(20))
        .await
        .expect("an ERROR event");
    assert_eq!(last["type"], "ERROR", "{last}");
    assert_eq!(last["object"]["code"], 503, "{last}");
    assert!(
        w.ended_within(Duration::from_secs(5)).await,
        "the stream ends after its ERROR event"
    );
}
