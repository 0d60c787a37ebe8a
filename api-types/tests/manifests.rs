//! Every example in `manifests/` parses and validates: users copy these.

use std::path::Path;

use shoal_api_types::{parse_manifests, AnyObject};

fn read_dir_sorted(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    files.sort();
    files
}

#[test]
fn demo_manifests_are_valid_and_complete() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/demo");
    let body: String = read_dir_sorted(&dir)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    let objects = parse_manifests(&body).unwrap_or_else(|e| panic!("{e}"));
    let refs: Vec<String> = objects.iter().map(AnyObject::reference).collect();
    assert_eq!(
        refs,
        vec![
            "network/appoverlay",
            "service/api",
            "service/web",
            "service/worker"
        ]
    );
    // Every service joins a network that the demo defines.
    for obj in &objects {
        if let AnyObject::Service(s) = obj {
            assert!(
                s.spec.networks.iter().all(|n| n.name == "appoverlay"),
                "{}",
                s.name()
            );
        }
    }
}

#[test]
fn examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let files = read_dir_sorted(&dir);
    assert!(!files.is_empty(), "no examples in {}", dir.display());
    let mut objects = Vec::new();
    for p in &files {
        let text = std::fs::read_to_string(p).unwrap();
        objects.extend(parse_manifests(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display())));
    }
    // One example keeps the client's address (issue 17).
    let edge = objects.iter().find_map(|o| match o {
        AnyObject::Service(s) if s.name() == "edge" => Some(s),
        _ => None,
    });
    let port = &edge.expect("service/edge").spec.ports[0];
    assert_eq!(port.traffic, shoal_api_types::TrafficPolicy::Local);
    assert_eq!(port.health_port, Some(31094));
}
