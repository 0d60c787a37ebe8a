//! What the API may do with each kind, and how it finds objects of it in etcd.
//!
//! - Network, Service, Secret, Config: owned by users; created, replaced and deleted
//!   through the API (Secrets and Configs take bodies up to [`LARGE_BODY`]: a payload of
//!   1000 KiB in base64 and its object).
//! - Node: registered by its agent; users may change `spec` (labels, availability) and
//!   delete a node that is not ready.
//! - Task, Endpoints: written only by Shoal; read-only here.
//!
//! Tasks are keyed `tasks/<node|_unassigned>/<id>`, so finding one by name scans the tasks
//! prefix; Endpoints `net.svc` live at `endpoints/net/svc`, their slice n > 0
//! `net.svc.n` at `endpoints/net/svc.n`.

use shoal_api_types::keys::Keys;
use shoal_api_types::{
    AnyObject, ConfigSpec, EndpointsSpec, NetworkSpec, NodeSpec, Object, ObjectMeta, Resource,
    SecretSpec, ServiceSpec, Status, TaskSpec,
};

use super::request::{ListParams, LARGE_BODY, MAX_BODY};

/// Who may write a kind through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Users create, replace and delete it.
    User,
    /// Users may change its spec and delete it; its agent creates it.
    Node,
    /// Shoal alone writes it.
    System,
}

/// Where one object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Locate {
    /// At this key.
    Key(String),
    /// Somewhere below the kind's prefix: scan for the name.
    Scan,
}

/// Which objects of a kind a list or watch covers: the keys below `prefix`, and, if set,
/// only those of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The etcd prefix to list and watch.
    pub prefix: String,
    /// Only objects of this service.
    pub service: Option<String>,
}

/// A kind served by the API.
pub trait ApiKind: Resource + Default {
    /// Who may write it.
    const ACCESS: Access;
    /// The largest create or replace body it takes.
    const MAX_BODY: usize = MAX_BODY;

    /// Where the object named `name` is.
    fn locate(keys: &Keys, name: &str) -> Locate {
        Locate::Key(format!(
            "{}{}",
            keys.prefix::<Self>(),
            Self::key_suffix(&ObjectMeta::named(name), &Self::default())
        ))
    }

    /// The selection that list/watch query parameters ask for. By default no filters.
    fn selection(keys: &Keys, params: &ListParams) -> Result<Selection, Status> {
        reject_filters::<Self>(params, &[])?;
        Ok(Selection {
            prefix: keys.prefix::<Self>(),
            service: None,
        })
    }

    /// The service an object belongs to, for `?service=` filters.
    fn service_of(_obj: &Object<Self>) -> Option<&str> {
        None
    }

    /// Whether `obj` is in `sel` (its key is below the prefix already).
    fn selected(obj: &Object<Self>, sel: &Selection) -> bool {
        sel.service
            .as_deref()
            .is_none_or(|s| Self::service_of(obj) == Some(s))
    }
}

/// A user-owned kind, convertible to the [`AnyObject`] that apply and the rules work on.
pub trait UserKind: ApiKind {
    /// Wraps an object.
    fn into_any(obj: Object<Self>) -> AnyObject;
    /// Unwraps an object of this kind.
    fn from_any(obj: AnyObject) -> Option<Object<Self>>;
}

/// Fails if `params` holds a filter outside `allowed`.
fn reject_filters<S: Resource>(params: &ListParams, allowed: &[&str]) -> Result<(), Status> {
    let given = [
        ("service", &params.service),
        ("node", &params.node),
        ("network", &params.network),
    ];
    for (name, value) in given {
        if value.is_some() && !allowed.contains(&name) {
            let hint = match allowed {
                [] => format!("{} take no filters", S::PLURAL),
                some => format!(
                    "{} take {}",
                    S::PLURAL,
                    some.iter()
                        .map(|a| format!("?{a}="))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            };
            return Err(Status::bad_request(format!(
                "unknown filter ?{name}=: {hint}"
            )));
        }
    }
    Ok(())
}

/// A filter value that must be a name (no '/').
fn filter_name(param: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() || value.contains('/') {
        return Err(Status::bad_request(format!(
            "?{param}={value:?} is not a name"
        )));
    }
    Ok(())
}

impl ApiKind for NetworkSpec {
    const ACCESS: Access = Access::User;
}

impl UserKind for NetworkSpec {
    fn into_any(obj: Object<Self>) -> AnyObject {
        AnyObject::Network(obj)
    }
    fn from_any(obj: AnyObject) -> Option<Object<Self>> {
        match obj {
            AnyObject::Network(n) => Some(n),
            _ => None,
        }
    }
}

impl ApiKind for ServiceSpec {
    const ACCESS: Access = Access::User;
}

impl UserKind for ServiceSpec {
    fn into_any(obj: Object<Self>) -> AnyObject {
        AnyObject::Service(obj)
    }
    fn from_any(obj: AnyObject) -> Option<Object<Self>> {
        match obj {
            AnyObject::Service(s) => Some(s),
            _ => None,
        }
    }
}

impl ApiKind for SecretSpec {
    const ACCESS: Access = Access::User;
    const MAX_BODY: usize = LARGE_BODY;
}

impl UserKind for SecretSpec {
    fn into_any(obj: Object<Self>) -> AnyObject {
        AnyObject::Secret(obj)
    }
    fn from_any(obj: AnyObject) -> Option<Object<Self>> {
        match obj {
            AnyObject::Secret(s) => Some(s),
            _ => None,
        }
    }
}

impl ApiKind for ConfigSpec {
    const ACCESS: Access = Access::User;
    const MAX_BODY: usize = LARGE_BODY;
}

impl UserKind for ConfigSpec {
    fn into_any(obj: Object<Self>) -> AnyObject {
        AnyObject::Config(obj)
    }
    fn from_any(obj: AnyObject) -> Option<Object<Self>> {
        match obj {
            AnyObject::Config(c) => Some(c),
            _ => None,
        }
    }
}

impl ApiKind for NodeSpec {
    const ACCESS: Access = Access::Node;
}

impl ApiKind for TaskSpec {
    const ACCESS: Access = Access::System;

    fn locate(_keys: &Keys, _name: &str) -> Locate {
        Locate::Scan
    }

    fn selection(keys: &Keys, params: &ListParams) -> Result<Selection, Status> {
        reject_filters::<Self>(params, &["service", "node"])?;
        let prefix = match &params.node {
            Some(node) => {
                filter_name("node", node)?;
                keys.node_tasks(node)
            }
            None => keys.prefix::<Self>(),
        };
        if let Some(s) = &params.service {
            filter_name("service", s)?;
        }
        Ok(Selection {
            prefix,
            service: params.service.clone(),
        })
    }

    fn service_of(obj: &Object<Self>) -> Option<&str> {
        Some(&obj.spec.service)
    }
}

impl ApiKind for EndpointsSpec {
    const ACCESS: Access = Access::System;

    fn selection(keys: &Keys, params: &ListParams) -> Result<Selection, Status> {
        reject_filters::<Self>(params, &["service", "network"])?;
        let prefix = match &params.network {
            Some(net) => {
                filter_name("network", net)?;
                keys.network_endpoints(net)
            }
            None => keys.prefix::<Self>(),
        };
        if let Some(s) = &params.service {
            filter_name("service", s)?;
        }
        Ok(Selection {
            prefix,
            service: params.service.clone(),
        })
    }

    fn service_of(obj: &Object<Self>) -> Option<&str> {
        Some(&obj.spec.service)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_located_by_their_key_layout() {
        let keys = Keys::new("/r");
        assert_eq!(
            NetworkSpec::locate(&keys, "appnet"),
            Locate::Key("/r/networks/appnet".into())
        );
        assert_eq!(
            EndpointsSpec::locate(&keys, "appnet.api"),
            Locate::Key("/r/endpoints/appnet/api".into())
        );
        assert_eq!(
            EndpointsSpec::locate(&keys, "appnet.api.2"),
            Locate::Key("/r/endpoints/appnet/api.2".into())
        );
        assert_eq!(TaskSpec::locate(&keys, "abc"), Locate::Scan);
    }

    #[test]
    fn task_filters_narrow_the_prefix_and_the_service() {
        let keys = Keys::new("/r");
        let params = ListParams {
            node: Some("node-1".into()),
            service: Some("api".into()),
            ..Default::default()
        };
        let sel = TaskSpec::selection(&keys, &params).unwrap();
        assert_eq!(
            sel,
            Selection {
                prefix: "/r/tasks/node-1/".into(),
                service: Some("api".into())
            }
        );
        let mut task = Object::new(
            "t1",
            TaskSpec {
                service: "api".into(),
                ..Default::default()
            },
        );
        assert!(TaskSpec::selected(&task, &sel));
        task.spec.service = "web".into();
        assert!(!TaskSpec::selected(&task, &sel));
    }

    #[test]
    fn filters_on_kinds_without_them_are_rejected() {
        let params = ListParams {
            service: Some("api".into()),
            ..Default::default()
        };
        let err = NetworkSpec::selection(&Keys::new("/r"), &params).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("networks take no filters"),
            "{}",
            err.message
        );
        let params = ListParams {
            node: Some("a/b".into()),
            ..Default::default()
        };
        assert_eq!(
            TaskSpec::selection(&Keys::new("/r"), &params)
                .unwrap_err()
                .code,
            400
        );
    }
}
