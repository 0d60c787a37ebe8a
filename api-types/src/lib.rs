//! Shoal's object model: the types users and components exchange, their defaults, their
//! validation (every problem, each with its field path) and their etcd key encoding.
//!
//! This crate does no I/O. Everything else in Shoal depends on it; it depends on nothing of
//! ours. Objects are Kubernetes-shaped (`apiVersion: shoal/v1`, `kind`, `metadata`, `spec`,
//! `status`), serialised in camelCase, and unknown fields are rejected.

pub mod capabilities;
pub mod check;
pub mod constraint;
pub mod duration;
pub mod endpoints;
pub mod error;
pub mod exec;
pub mod join;
pub mod keys;
pub mod labels;
pub mod manifest;
pub mod meta;
pub mod network;
pub mod node;
pub mod object;
pub mod payload;
pub mod resources;
pub mod service;
pub mod settings;
pub mod task;
pub mod token;
pub mod update;
pub mod validation;
pub mod volume;

pub use check::{CheckReport, Drift, DriftKind};
pub use constraint::Constraint;
pub use endpoints::{EndpointTask, Endpoints, EndpointsSpec};
pub use error::{Status, StatusDetail};
pub use exec::{ExecRequest, ExecResponse, LogOptions};
pub use join::{JoinRequest, JoinResponse, JoinTokenResponse, RenewRequest};
pub use manifest::{parse_manifests, AnyObject, ManifestError};
pub use meta::{ObjectMeta, API_VERSION};
pub use network::{Network, NetworkSpec, NetworkStatus};
pub use node::{Node, NodeAvailability, NodeSpec, NodeState, NodeStatus};
pub use object::{EventType, Object, ObjectList, Resource, Stored, WatchEvent};
pub use payload::{
    Config, ConfigSpec, DeliveredPayload, PayloadKind, PayloadStatus, Secret, SecretSpec,
    TaskPayloads,
};
pub use resources::{Cpus, Memory, NodeCapacity, ResourceLimits, ResourceReservations, Resources};
pub use service::{
    ConfigReference, EndpointMode, HealthCheck, Mount, MountType, NetworkAttachmentConfig,
    Placement, PortConfig, Protocol, PublishMode, RestartCondition, RestartPolicy, SeccompMode,
    SecretReference, Service, ServiceMode, ServiceSpec, ServiceStatus, TrafficPolicy, VirtualIp,
};
pub use settings::{ClusterSettings, ClusterSettingsSpec, ReservedPort};
pub use task::{Task, TaskAttachment, TaskSpec, TaskState, TaskStatus};
pub use token::{CreatedToken, Role, StoredToken, TokenInfo, TokenList, TokenRequest};
pub use update::{
    FailureAction, HumanDuration, Ratio, UpdateConfig, UpdateOrder, UpdateState, UpdateStatus,
};
pub use validation::{FieldError, Validate};
pub use volume::{VolumeInfo, VolumeList};
