//! `GET /openapi.json`: an OpenAPI 3.1 document of the API. Schemas come from the types
//! themselves (schemars, JSON Schema 2020-12 as OpenAPI 3.1 uses it), so the document
//! cannot drift from what the server reads and writes; paths mirror the router.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Map, Value};
use shoal_api_types::check::CheckReport;
use shoal_api_types::payload::TaskPayloads;
use shoal_api_types::volume::VolumeList;
use shoal_api_types::{
    Config, ConfigSpec, CreatedToken, Endpoints, EndpointsSpec, Network, NetworkSpec, Node,
    NodeSpec, ObjectList, Secret, SecretSpec, Service, ServiceSpec, Status, Task, TaskSpec,
    TokenInfo, TokenList, TokenRequest, WatchEvent, API_VERSION,
};

use super::apply::ApplyResult;
use super::auth::is_public;
use super::kinds::{Access, ApiKind};
use super::watch::WATCH_CONTENT_TYPE;

const REF: &str = "#/components/schemas/";

/// The whole document.
pub fn document() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut named: Vec<(String, Value)> = Vec::new();
    let mut add =
        |name: &str, schema: schemars::Schema| named.push((name.to_string(), schema.to_value()));
    add("Network", generator.subschema_for::<Network>());
    add(
        "NetworkList",
        generator.subschema_for::<ObjectList<NetworkSpec>>(),
    );
    add("Service", generator.subschema_for::<Service>());
    add(
        "ServiceList",
        generator.subschema_for::<ObjectList<ServiceSpec>>(),
    );
    add("Secret", generator.subschema_for::<Secret>());
    add(
        "SecretList",
        generator.subschema_for::<ObjectList<SecretSpec>>(),
    );
    add("Config", generator.subschema_for::<Config>());
    add(
        "ConfigList",
        generator.subschema_for::<ObjectList<ConfigSpec>>(),
    );
    add("TaskPayloads", generator.subschema_for::<TaskPayloads>());
    add("VolumeList", generator.subschema_for::<VolumeList>());
    add("CheckReport", generator.subschema_for::<CheckReport>());
    add("Node", generator.subschema_for::<Node>());
    add(
        "NodeList",
        generator.subschema_for::<ObjectList<NodeSpec>>(),
    );
    add("Task", generator.subschema_for::<Task>());
    add(
        "TaskList",
        generator.subschema_for::<ObjectList<TaskSpec>>(),
    );
    add("Endpoints", generator.subschema_for::<Endpoints>());
    add(
        "EndpointsList",
        generator.subschema_for::<ObjectList<EndpointsSpec>>(),
    );
    add("Status", generator.subschema_for::<Status>());
    add("ApplyResult", generator.subschema_for::<ApplyResult>());
    add("WatchEvent", generator.subschema_for::<WatchEvent<Value>>());
    add("TokenRequest", generator.subschema_for::<TokenRequest>());
    add("CreatedToken", generator.subschema_for::<CreatedToken>());
    add("TokenInfo", generator.subschema_for::<TokenInfo>());
    add("TokenList", generator.subschema_for::<TokenList>());
    let mut schemas = generator.take_definitions(true);
    // Give generic instances (`Object_for_NetworkSpec`) the names users know (`Network`).
    let mut renames = Vec::new();
    for (name, schema) in named {
        match schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix(REF))
        {
            Some(generated) if generated != name => {
                if let Some(s) = schemas.remove(generated) {
                    schemas.insert(name.clone(), s);
                }
                renames.push((format!("{REF}{generated}"), format!("{REF}{name}")));
            }
            Some(_) => {}
            None => {
                schemas.insert(name, schema);
            }
        }
    }
    let mut schemas = Value::Object(schemas);
    rewrite_refs(&mut schemas, &renames);

    let mut paths = Map::new();
    kind_paths::<NetworkSpec>(&mut paths);
    kind_paths::<ServiceSpec>(&mut paths);
    kind_paths::<SecretSpec>(&mut paths);
    kind_paths::<ConfigSpec>(&mut paths);
    kind_paths::<NodeSpec>(&mut paths);
    kind_paths::<TaskSpec>(&mut paths);
    kind_paths::<EndpointsSpec>(&mut paths);
    paths.insert(
        "/apis/shoal/v1/apply".into(),
        json!({"post": {
            "operationId": "apply",
            "summary": "Create or update every object of a multi-document YAML or JSON body (up to 4 MiB), all or nothing; \
                        with prune, also delete the objects carrying that label that the body leaves out",
            "parameters": [dry_run(), query("prune", "string",
                "`<label key>=<value>`: also delete every Service, Network, Secret and Config with this label \
                 that the body does not hold (action `pruned`); the body may then hold no object")],
            "requestBody": manifest_body("Network, Service, Secret and Config documents"),
            "responses": {"200": ok("ApplyResult", "What happened to each object"), "default": error()}
        }}),
    );
    paths.insert(
        "/apis/shoal/v1/services/{name}/rollback".into(),
        json!({"post": {
            "operationId": "rollbackService",
            "summary": "Go back to the service's previous spec (admin): the spec and status.previousSpec swap, \
                        the generation is bumped and status.updateStatus becomes rollback_started; \
                        409 when the service has no previous spec",
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}, dry_run()],
            "responses": {"200": ok("Service", "The service as stored (or, with dryRun, as it would be)"), "default": error()}
        }}),
    );
    let name_param = json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"},
        "description": "A task id (or a unique prefix of one) or a task name such as api.1 or mon.node-2"});
    paths.insert(
        "/apis/shoal/v1/tasks/{name}/exec".into(),
        json!({"post": {
            "operationId": "execTask",
            "summary": "Run a command in a running task through its node agent; 200 whatever the command's exit code",
            "parameters": [name_param],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object", "required": ["argv"], "additionalProperties": false,
                "properties": {
                    "argv": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 3600}
                }}}}},
            "responses": {"200": {"description": "What the command printed and its exit code",
                "content": {"application/json": {"schema": {"type": "object",
                    "required": ["exitCode", "stdout", "stderr"],
                    "properties": {"exitCode": {"type": "integer"}, "stdout": {"type": "string"}, "stderr": {"type": "string"}}}}}},
                "default": error()}
        }}),
    );
    let log_params = json!([
        query("follow", "boolean", "Keep streaming as the log grows"),
        query(
            "tail",
            "integer",
            "Only the last N lines (per task) of what is there already"
        )
    ]);
    for (path, op, summary) in [
        ("/apis/shoal/v1/tasks/{name}/logs", "taskLogs", "A task's container output (stdout and stderr), as text"),
        ("/apis/shoal/v1/services/{name}/logs", "serviceLogs",
         "The output of every task of a service, lines prefixed `api.1@node-2 | `, merged as they come"),
    ] {
        let mut params = vec![json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}})];
        params.extend(log_params.as_array().cloned().unwrap_or_default());
        paths.insert(
            path.into(),
            json!({"get": {"operationId": op, "summary": summary, "parameters": params,
                "responses": {"200": {"description": summary, "content": {"text/plain": {}}}, "default": error()}}}),
        );
    }
    paths.insert(
        "/apis/shoal/v1/volumes".into(),
        json!({"get": {"operationId": "listVolumes",
            "summary": "Named volumes of every ready node (asked through their agents); nodes that could not be asked are listed in `unreachable`",
            "parameters": [query("node", "string", "Only this node (404 unknown, 409 not ready)")],
            "responses": {"200": ok("VolumeList", "The volumes, by node then name"), "default": error()}}}),
    );
    paths.insert(
        "/apis/shoal/v1/system/check".into(),
        json!({"get": {"operationId": "systemCheck",
            "summary": "Audit etcd (address claims, slots, Endpoints) and every ready node (containers, namespaces, veths, FDB and neighbour entries, nft elements, DNS records against its agent's desired state); a node whose agent does not answer is a drift of kind `unreachable`",
            "responses": {"200": ok("CheckReport", "Every drift, by node, kind and object (none: the cluster is as etcd says)"), "default": error()}}}),
    );
    paths.insert(
        "/apis/shoal/v1/nodes/{node}/volumes/{name}".into(),
        json!({"delete": {"operationId": "deleteVolume",
            "summary": "Remove a named volume on a node through its agent: 204; 404 unknown; 409 in use by a task",
            "parameters": [
                {"name": "node", "in": "path", "required": true, "schema": {"type": "string"}},
                {"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"204": {"description": "Removed"}, "default": error()}}}),
    );
    paths.insert(
        "/v1/node/tasks/{id}/payloads".into(),
        json!({"get": {"operationId": "taskPayloads",
            "summary": "The secrets and configs a task references, decrypted, for the node running it: mutual TLS with \
                        that node's certificate (401 without, 403 another identity or a task not wanted running, \
                        404 a task not on that node); no token",
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": ok("TaskPayloads", "The payloads, base64"), "default": error()}}}),
    );
    join_paths(&mut paths);
    paths.insert(
        "/v1/tokens".into(),
        json!({
            "get": {"operationId": "listTokens", "summary": "List API tokens (admin; never the tokens themselves)",
                    "responses": {"200": ok("TokenList", "The tokens, by name"), "default": error()}},
            "post": {"operationId": "createToken",
                     "summary": "Create an API token (admin); the answer is the only time the token is shown",
                     "requestBody": {"required": true, "content": {"application/json": {"schema": schema_ref("TokenRequest")}}},
                     "responses": {"201": ok("CreatedToken", "The new token"), "default": error()}}
        }),
    );
    paths.insert(
        "/v1/tokens/{name}".into(),
        json!({"delete": {"operationId": "deleteToken", "summary": "Revoke an API token (admin)",
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": {"200": ok("TokenInfo", "The revoked token"), "default": error()}}}),
    );
    paths.insert(
        "/v1/whoami".into(),
        json!({"get": {"operationId": "whoami",
            "summary": "The caller's token name and role ({\"name\",\"role\"}; any role; what the web view asks first)",
            "responses": {"200": {"description": "The caller", "content": {"application/json": {"schema": {
                "type": "object", "required": ["name", "role"],
                "properties": {"name": {"type": "string"}, "role": {"type": "string", "enum": ["admin", "read-only"]}}}}}},
                "default": error()}}}),
    );
    for (path, summary, media) in [
        (
            "/healthz",
            "Liveness: 200 while the process serves",
            "text/plain",
        ),
        (
            "/readyz",
            "Readiness: 200 while etcd answers, else 503",
            "text/plain",
        ),
        (
            "/metrics",
            "Prometheus metrics",
            "application/openmetrics-text",
        ),
        ("/openapi.json", "This document", "application/json"),
    ] {
        paths.insert(
            path.into(),
            json!({"get": {"summary": summary, "responses": {"200": {"description": summary, "content": {media: {}}}}}}),
        );
    }
    // Every operation needs a bearer token (when the server checks them) except the
    // public paths.
    for (path, item) in paths.iter_mut() {
        if is_public(path) {
            for op in item
                .as_object_mut()
                .into_iter()
                .flat_map(|m| m.values_mut())
            {
                op["security"] = json!([]);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "security": [{"bearer": []}],
        "info": {
            "title": "Shoal API",
            "version": API_VERSION,
            "description": "Docker Swarm networking on a Kubernetes-style control plane. Errors are Status \
                            objects; lists carry metadata.resourceVersion to watch from."
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "An API token: `shoal token create --role admin|read-only NAME`. \
                                read-only may GET objects, lists and watches; everything else needs admin. \
                                401 without a valid token, 403 when the role does not allow the request."}}
        }
    })
}

fn rewrite_refs(v: &mut Value, renames: &[(String, String)]) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "$ref" {
                    if let Some((_, to)) = child
                        .as_str()
                        .and_then(|r| renames.iter().find(|(from, _)| from == r))
                    {
                        *child = Value::String(to.clone());
                    }
                } else {
                    rewrite_refs(child, renames);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| rewrite_refs(c, renames)),
        _ => {}
    }
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("{REF}{name}")})
}

fn ok(schema: &str, description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema_ref(schema)}}})
}

fn error() -> Value {
    json!({"description": "An error (400, 401, 403, 404, 405, 409, 410, 413, 415, 422, 503)",
           "content": {"application/json": {"schema": schema_ref("Status")}}})
}

fn manifest_body(description: &str) -> Value {
    json!({"required": true, "description": format!("{description} (at most 1 MiB)"), "content": {
        "application/yaml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}}
    }})
}

fn query(name: &str, kind: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": kind}})
}

fn dry_run() -> Value {
    query("dryRun", "boolean", "Validate and report; write nothing")
}

fn kind_paths<S: ApiKind + JsonSchema>(paths: &mut Map<String, Value>) {
    let (kind, plural) = (S::KIND, S::PLURAL);
    let list = format!("{kind}List");
    let mut list_params = vec![
        query(
            "watch",
            "boolean",
            "Stream newline-delimited JSON WatchEvents instead of answering a list",
        ),
        query(
            "resourceVersion",
            "string",
            "With watch: only changes after this revision (410 Gone if compacted)",
        ),
        query(
            "bookmarkSeconds",
            "integer",
            "With watch: seconds between BOOKMARK events (default 10, 0 = none)",
        ),
    ];
    match plural {
        "tasks" => {
            list_params.push(query("service", "string", "Only tasks of this service"));
            list_params.push(query("node", "string", "Only tasks on this node"));
        }
        "endpoints" => {
            list_params.push(query("service", "string", "Only endpoints of this service"));
            list_params.push(query("network", "string", "Only endpoints on this network"));
        }
        _ => {}
    }
    let mut collection = Map::new();
    collection.insert(
        "get".into(),
        json!({
            "operationId": format!("list{kind}"),
            "summary": format!("List (or watch) {plural}"),
            "parameters": list_params,
            "responses": {
                "200": {"description": format!("The {plural}, or a watch stream"), "content": {
                    "application/json": {"schema": schema_ref(&list)},
                    WATCH_CONTENT_TYPE: {"schema": schema_ref("WatchEvent")}
                }},
                "default": error()
            }
        }),
    );
    if S::ACCESS == Access::User {
        collection.insert(
            "post".into(),
            json!({
                "operationId": format!("create{kind}"),
                "summary": format!("Create a {}", kind.to_lowercase()),
                "parameters": [dry_run()],
                "requestBody": manifest_body(&format!("One {kind}")),
                "responses": {"201": ok(kind, "Created"), "default": error()}
            }),
        );
    }
    paths.insert(
        format!("/apis/shoal/v1/{plural}"),
        Value::Object(collection),
    );

    let name =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    let mut item = Map::new();
    item.insert(
        "get".into(),
        json!({"operationId": format!("read{kind}"), "parameters": [name],
               "responses": {"200": ok(kind, "The object"), "default": error()}}),
    );
    if S::ACCESS != Access::System {
        item.insert(
            "put".into(),
            json!({
                "operationId": format!("replace{kind}"),
                "summary": "Replace; metadata.resourceVersion must be the stored one (409 if stale)",
                "parameters": [name, dry_run()],
                "requestBody": manifest_body(&format!("The whole {kind}")),
                "responses": {"200": ok(kind, "Replaced"), "default": error()}
            }),
        );
        item.insert(
            "delete".into(),
            json!({
                "operationId": format!("delete{kind}"),
                "parameters": [name, dry_run(), query("resourceVersion", "string", "Delete only at this revision")],
                "responses": {"200": ok(kind, "The deleted object"), "default": error()}
            }),
        );
    }
    paths.insert(
        format!("/apis/shoal/v1/{plural}/{{name}}"),
        Value::Object(item),
    );
}

/// The node join API and the join token (see `api::join`).
fn join_paths(paths: &mut Map<String, Value>) {
    let join_answer = json!({"description": "The node's certificate, the CA and the etcd endpoints",
        "content": {"application/json": {"schema": {"type": "object",
            "required": ["certificate", "ca", "etcdEndpoints", "notAfter"],
            "properties": {"certificate": {"type": "string"}, "ca": {"type": "string"},
                "etcdEndpoints": {"type": "array", "items": {"type": "string"}},
                "notAfter": {"type": "string", "format": "date-time"}}}}}});
    let token_answer = json!({"description": "SWMTKN-1-<ca digest>-<secret>",
        "content": {"application/json": {"schema": {"type": "object", "required": ["token"],
            "properties": {"token": {"type": "string"}}}}}});
    let body = |required: Value, properties: Value| {
        json!({"required": true, "content": {"application/json": {"schema": {
            "type": "object", "additionalProperties": false,
            "required": required, "properties": properties}}}})
    };
    let string = json!({"type": "string"});
    paths.insert("/v1/join/ca".into(), json!({"get": {"operationId": "joinCa",
        "summary": "The cluster CA certificate (public: a joining node checks its digest against its token)",
        "responses": {"200": {"description": "PEM", "content": {"application/x-pem-file": {}}}, "default": error()}}}));
    paths.insert("/v1/join".into(), json!({"post": {"operationId": "join",
        "summary": "Admit a node with a join token: sign its certificate request (401 wrong token, 400 bad name)",
        "requestBody": body(json!(["token", "name", "address", "csr"]), json!({"token": string,
            "name": string, "address": string, "csr": string})),
        "responses": {"200": join_answer.clone(), "default": error()}}}));
    paths.insert("/v1/renew".into(), json!({"post": {"operationId": "renew",
        "summary": "Renew a node certificate over mutual TLS with the current one (401 without, 403 revoked)",
        "requestBody": body(json!(["csr"]), json!({"csr": string})),
        "responses": {"200": join_answer, "default": error()}}}));
    paths.insert(
        "/v1/join-token".into(),
        json!({"get": {"operationId": "joinToken",
        "summary": "The current join token",
        "responses": {"200": token_answer.clone(), "default": error()}}}),
    );
    paths.insert(
        "/v1/join-token/rotate".into(),
        json!({"post": {"operationId": "rotateJoinToken",
        "summary": "Replace the join secret: the old token no longer admits nodes",
        "responses": {"200": token_answer, "default": error()}}}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_names_every_kind_and_resolves_every_ref() {
        let doc = document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "Network",
            "NetworkList",
            "Service",
            "Node",
            "Task",
            "Endpoints",
            "EndpointsList",
            "Status",
            "ApplyResult",
            "WatchEvent",
            "TokenRequest",
            "CreatedToken",
            "TokenList",
            "Secret",
            "SecretList",
            "Config",
            "ConfigList",
            "TaskPayloads",
            "VolumeList",
        ] {
            assert!(
                schemas.contains_key(name),
                "{name} missing: {:?}",
                schemas.keys().collect::<Vec<_>>()
            );
        }
        let text = doc.to_string();
        for piece in text.split("\"$ref\":\"").skip(1) {
            let target = piece.split('"').next().unwrap();
            let name = target
                .strip_prefix(REF)
                .unwrap_or_else(|| panic!("odd ref {target}"));
            assert!(schemas.contains_key(name), "dangling ref {target}");
        }
        assert!(doc["paths"]["/apis/shoal/v1/networks/{name}"]["put"].is_object());
        assert!(doc["paths"]["/apis/shoal/v1/tasks/{name}"]
            .get("put")
            .is_none());
        assert!(doc["paths"]["/v1/tokens"]["post"].is_object());
        assert!(doc["paths"]["/v1/tokens/{name}"]["delete"].is_object());
        assert!(doc["paths"]["/v1/whoami"]["get"].is_object());
        assert!(doc["paths"]["/apis/shoal/v1/services/{name}/rollback"]["post"].is_object());
        assert!(doc["paths"]["/apis/shoal/v1/secrets/{name}"]["delete"].is_object());
        assert!(doc["paths"]["/apis/shoal/v1/volumes"]["get"].is_object());
    }

    #[test]
    fn openapi_requires_bearer_tokens_except_on_public_paths() {
        let doc = document();
        assert_eq!(doc["security"], json!([{"bearer": []}]));
        assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
        assert_eq!(
            doc["paths"]["/v1/node/tasks/{id}/payloads"]["get"]["security"],
            json!([])
        );
        assert!(doc["paths"]["/v1/tokens"]["get"].get("security").is_none());
    }

    #[test]
    fn network_schema_describes_the_spec_fields() {
        let doc = document();
        let text = doc["components"]["schemas"].to_string();
        assert!(text.contains("\"subnet\""), "{text}");
        assert!(text.contains("\"published\""), "{text}");
    }

    #[test]
    fn port_schema_documents_traffic_and_the_health_port() {
        let doc = document();
        let text = doc["components"]["schemas"].to_string();
        for piece in ["\"traffic\"", "\"healthPort\"", "\"local\"", "\"cluster\""] {
            assert!(text.contains(piece), "{piece} missing from {text}");
        }
    }
}
