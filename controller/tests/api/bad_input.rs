//! Bad input: each gets a clear message with a field path where there is one, and nothing
//! is written.

use crate::support::{docs, network, Server};

/// Applies `body` and expects `code` and `reason`, details naming `fields`, a message
/// containing `says`, and no object written.
async fn rejected(body: &str, code: u16, reason: &str, fields: &[&str], says: &str) {
    let s = Server::start().await;
    let a = s.apply(body).await;
    assert_eq!((a.code, a.reason()), (code, reason), "{a:?}");
    assert_eq!(a.fields(), fields, "{a:?}");
    assert!(
        a.message().contains(says),
        "message {:?} should contain {says:?}",
        a.message()
    );
    s.assert_nothing_written().await;
}

fn svc_with(spec: &str) -> String {
    format!("apiVersion: shoal/v1\nkind: Service\nmetadata: {{name: api}}\nspec: {spec}\n")
}

#[tokio::test]
async fn not_yaml_is_400() {
    rejected(
        "kind: Network\nmetadata: {name: [unclosed\n",
        400,
        "BadRequest",
        &[],
        "not valid YAML or JSON",
    )
    .await;
}

#[tokio::test]
async fn a_yaml_list_where_an_object_belongs_is_422() {
    let list = "- apiVersion: shoal/v1\n  kind: Network\n  metadata: {name: a}\n";
    rejected(list, 422, "Invalid", &[""], "expected an object").await;
    let meta_list = "apiVersion: shoal/v1\nkind: Network\nmetadata: [a, b]\nspec: {}\n";
    rejected(meta_list, 422, "Invalid", &["metadata"], "metadata").await;
}

#[tokio::test]
async fn an_unknown_kind_is_422() {
    rejected(
        "apiVersion: shoal/v1\nkind: Gadget\nmetadata: {name: a}\n",
        422,
        "Invalid",
        &["kind"],
        "unknown kind \"Gadget\"",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_field_is_422_with_its_path() {
    rejected(
        &svc_with("{image: busybox, colour: red}"),
        422,
        "Invalid",
        &["spec.colour"],
        "unknown field `colour`",
    )
    .await;
}

#[tokio::test]
async fn a_name_with_capitals_is_422() {
    rejected(
        &network("AppNet", None),
        422,
        "Invalid",
        &["metadata.name"],
        "is not a valid name",
    )
    .await;
}

#[tokio::test]
async fn a_name_over_63_characters_is_422() {
    let long = "a".repeat(64);
    rejected(
        &network(&long, None),
        422,
        "Invalid",
        &["metadata.name"],
        "at most 63 characters",
    )
    .await;
}

#[tokio::test]
async fn a_subnet_that_is_not_a_cidr_is_422() {
    rejected(
        &network("appnet", Some("10.0.0.300/24")),
        422,
        "Invalid",
        &["spec.subnet"],
        "is not an IPv4 CIDR",
    )
    .await;
}

#[tokio::test]
async fn a_subnet_overlapping_another_networks_is_422() {
    // Both in one body, and against a stored network.
    let body = docs(&[
        network("one", Some("10.5.0.0/16")),
        network("two", Some("10.5.1.0/24")),
    ]);
    rejected(
        &body,
        422,
        "Invalid",
        &["spec.subnet"],
        "overlaps 10.5.0.0/16 of network \"one\"",
    )
    .await;

    let s = Server::start().await;
    assert_eq!(
        s.apply(&network("one", Some("10.5.0.0/16"))).await.code,
        200
    );
    let a = s.apply(&network("two", Some("10.5.1.0/24"))).await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["spec.subnet".to_string()]),
        "{a:?}"
    );
    assert_eq!(s.names("networks").await, ["one"]);
}

#[tokio::test]
async fn ports_0_and_70000_are_422() {
    rejected(
        &svc_with(
            "{image: busybox, ports: [{published: 0, target: 80}, {published: 70000, target: 80}]}",
        ),
        422,
        "Invalid",
        &["spec.ports[0].published", "spec.ports[1].published"],
        "must be 1-65535 (got 0)",
    )
    .await;
}

#[tokio::test]
async fn negative_replicas_are_422() {
    rejected(
        &svc_with("{image: busybox, replicas: -2}"),
        422,
        "Invalid",
        &["spec.replicas"],
        "must be 0 or more",
    )
    .await;
}

#[tokio::test]
async fn host_and_ingress_claiming_one_port_is_rejected() {
    rejected(
        &svc_with("{image: busybox, ports: [{published: 8080, target: 80}, {published: 8080, target: 81, protocol: udp, mode: host}]}"),
        422,
        "Invalid",
        &["spec.ports[1].published"],
        "an ingress and a host port cannot share a number",
    )
    .await;
}

#[tokio::test]
async fn a_10_mb_body_is_413() {
    let s = Server::start().await;
    let huge = format!(
        "{}\n# {}\n",
        network("appnet", None),
        "x".repeat(10 * 1024 * 1024)
    );
    let a = s.apply(&huge).await;
    assert_eq!(
        (a.code, a.reason()),
        (413, "RequestEntityTooLarge"),
        "{:?}",
        (a.code, a.reason())
    );
    // Apply takes up to 4 MiB (payloads of Secrets and Configs); other writes 1 MiB.
    assert_eq!(a.message(), "request body is larger than 4 MiB");
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn a_10_mb_body_streamed_without_length_is_413() {
    let s = Server::start().await;
    let chunks: Vec<Result<String, std::io::Error>> =
        (0..10).map(|_| Ok("x".repeat(1024 * 1024))).collect();
    let resp = s
        .http
        .post(s.url("/apis/shoal/v1/networks"))
        .header("content-type", "application/yaml")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("sent");
    let a = crate::support::answer(resp).await;
    assert_eq!(a.code, 413, "{:?}", a.code);
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn a_body_that_is_not_json_or_yaml_by_content_type_is_415() {
    let s = Server::start().await;
    let resp = s
        .http
        .post(s.url("/apis/shoal/v1/apply"))
        .header("content-type", "image/png")
        .body(network("appnet", None))
        .send()
        .await
        .expect("sent");
    let a = crate::support::answer(resp).await;
    assert_eq!((a.code, a.reason()), (415, "UnsupportedMediaType"), "{a:?}");
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn bad_create_bodies_get_the_same_checks_as_apply() {
    let s = Server::start().await;
    let a = s.post("/apis/shoal/v1/networks", "{not json").await;
    assert_eq!((a.code, a.reason()), (400, "BadRequest"), "{a:?}");
    let a = s
        .post("/apis/shoal/v1/networks", &network("Caps", Some("nope")))
        .await;
    assert_eq!(
        (a.code, a.fields()),
        (
            422,
            vec!["metadata.name".to_string(), "spec.subnet".to_string()]
        ),
        "{a:?}"
    );
    let a = s
        .post("/apis/shoal/v1/services", &network("appnet", None))
        .await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["spec.image".to_string()]),
        "a Network body on the services route: {a:?}"
    );
    let a = s.post("/apis/shoal/v1/networks", "").await;
    assert_eq!(a.code, 400, "{a:?}");
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn users_cannot_create_an_ingress_network() {
    rejected(
        "apiVersion: shoal/v1\nkind: Network\nmetadata: {name: mesh}\nspec: {ingress: true}\n",
        422,
        "Invalid",
        &["spec.ingress"],
        "only Shoal creates the ingress network",
    )
    .await;
}

#[tokio::test]
async fn publishing_a_reserved_port_is_422_naming_the_port_and_why() {
    // Apply, in ingress mode: VXLAN.
    rejected(
        &svc_with(
            "{image: busybox, ports: [{published: 8080, target: 80}, {published: 4789, target: 4789, protocol: udp}]}",
        ),
        422,
        "Invalid",
        &["spec.ports[1].published"],
        "4789/udp is reserved: VXLAN (the overlay's underlay port); reserved ports are configured with the controller's --reserved-ports",
    )
    .await;
    // Create, in host mode: SSH and the API port.
    let s = Server::start().await;
    let a = s
        .post(
            "/apis/shoal/v1/services",
            &svc_with(
                "{image: busybox, ports: [{published: 22, target: 22, mode: host}, {published: 7777, target: 80}]}",
            ),
        )
        .await;
    assert_eq!((a.code, a.reason()), (422, "Invalid"), "{a:?}");
    assert_eq!(
        a.fields(),
        ["spec.ports[0].published", "spec.ports[1].published"],
        "{a:?}"
    );
    let messages: Vec<&str> = a.body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    assert!(messages[0].starts_with("22/tcp is reserved: SSH"), "{a:?}");
    assert!(
        messages[1].starts_with("7777/tcp is reserved: the Shoal API"),
        "{a:?}"
    );
    s.assert_nothing_written().await;
}

#[tokio::test]
async fn the_reserved_ports_are_the_ones_the_leader_published() {
    use shoal_api_types::settings::{ClusterSettingsSpec, ReservedPort, CLUSTER_SETTINGS};
    use shoal_api_types::ClusterSettings;
    let s = Server::start().await;
    // The cluster reserves 23790/tcp (a local cluster's etcd) but no longer 22/tcp.
    s.store
        .create(&ClusterSettings::new(
            CLUSTER_SETTINGS,
            ClusterSettingsSpec::with_reserved_ports([
                ReservedPort::udp(4789),
                ReservedPort::tcp(23790),
            ]),
        ))
        .await
        .unwrap();
    let a = s
        .apply(&svc_with(
            "{image: busybox, ports: [{published: 23790, target: 80}]}",
        ))
        .await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["spec.ports[0].published".to_string()]),
        "{a:?}"
    );
    assert!(a.message().contains("23790/tcp is reserved"), "{a:?}");
    s.assert_nothing_written().await;
    let a = s
        .apply(&svc_with(
            "{image: busybox, ports: [{published: 22, target: 22}]}",
        ))
        .await;
    assert_eq!(a.code, 200, "{a:?}");
}

#[tokio::test]
async fn the_ingress_network_cannot_be_created_replaced_or_deleted_by_users() {
    let s = Server::start().await;
    // Not even before the controller made it.
    let a = s
        .post("/apis/shoal/v1/networks", &network("ingress", None))
        .await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["metadata.name".to_string()]),
        "{a:?}"
    );
    assert!(a.message().contains("\"ingress\" is reserved"), "{a:?}");
    s.assert_nothing_written().await;

    // The controller's network, as it writes it.
    let mut ingress = shoal_api_types::Network::new(
        "ingress",
        shoal_api_types::NetworkSpec {
            driver: "overlay".into(),
            subnet: Some("10.255.0.0/16".into()),
            ingress: true,
            ..Default::default()
        },
    );
    ingress = s.store.create(&ingress).await.unwrap();
    let path = "/apis/shoal/v1/networks/ingress";
    let stored = s.get(path).await;
    assert_eq!(stored.code, 200, "{stored:?}");

    let a = s
        .post("/apis/shoal/v1/networks", &network("ingress", None))
        .await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["metadata.name".to_string()]),
        "create: {a:?}"
    );
    let mut body = stored.body.clone();
    body["metadata"]["labels"] = serde_json::json!({"owner": "me"});
    let a = s.put(path, &body.to_string()).await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["metadata.name".to_string()]),
        "replace: {a:?}"
    );
    let a = s.apply(&network("ingress", Some("10.254.0.0/16"))).await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["metadata.name".to_string()]),
        "apply: {a:?}"
    );
    let a = s.delete(path).await;
    assert_eq!(
        (a.code, a.fields()),
        (422, vec!["metadata.name".to_string()]),
        "delete: {a:?}"
    );
    assert!(a.message().contains("cannot be deleted"), "{a:?}");

    let after = s.get(path).await;
    assert_eq!(after.code, 200, "{after:?}");
    assert_eq!(
        after.rv(),
        ingress.metadata.resource_version.unwrap(),
        "unchanged"
    );
}
