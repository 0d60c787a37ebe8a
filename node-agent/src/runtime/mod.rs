//! The container runtime: one narrow trait, [`ContainerRuntime`], between the agent and the
//! thing that runs task containers, with two implementations:
//!
//! - [`containerd::ContainerdRuntime`] talks gRPC to a containerd (1.6+) over its unix socket,
//!   inside a containerd namespace of its own (`shoal` by default), so nothing it does touches
//!   other users of the same containerd. Images are pulled client-side (see
//!   [`containerd`]'s docs for why not through CRI) from registries over the HTTP API v2.
//! - `fake::FakeRuntime` (feature `test-util`), a `Send + Sync` recording fake for tests of
//!   callers.
//!
//! Pure pieces live in their own modules so they are tested without containerd:
//! [`reference`] (image reference parsing and normalisation), [`registry`] (the registry
//! client and the image/manifest JSON types), [`spec`] (the OCI runtime spec and the
//! `/etc/resolv.conf`, `/etc/hosts`, `/etc/hostname` files a task gets), [`seccomp`] (the
//! default seccomp profile), [`logs`] (log rotation and reading across rotated files);
//! [`labels`] names the labels on our containers. See docs/architecture.md ("Node agent").
//!
//! Invariants every implementation keeps:
//! - Container ids are chosen by the caller (the agent) and are stable: the same task always
//!   maps to the same id, so after an agent restart `list()` + the desired tasks give a pure
//!   diff. Everything created carries the [`LABEL_MANAGED`] label; `list()` returns only those.
//! - Every operation is idempotent where it can be: `delete` of a missing container is `Ok`,
//!   `ensure_image` of a present image touches no registry, `stop` of a stopped container
//!   returns its exit code.
//! - Errors name what failed (image, registry, container) and say whether retrying can help
//!   ([`RuntimeError::is_temporary`]).

pub mod capture;
pub mod containerd;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod labels;
pub mod logs;
pub mod reference;
pub mod registry;
pub mod seccomp;
pub mod spec;

mod api;
mod error;
mod types;

pub use api::{start_checked, ContainerRuntime};
pub use containerd::{ContainerdConfig, ContainerdRuntime};
pub use error::{validate_container_id, ErrorClass, RuntimeError};
#[cfg(any(test, feature = "test-util"))]
pub use fake::FakeRuntime;
pub use labels::{LABEL_IMAGE, LABEL_MANAGED};
pub use reference::Reference;
pub use types::{
    ContainerInfo, ContainerMount, ContainerSpec, ContainerState, ContainerStatus, DnsConfig,
    ExecOutput, ImageConfig, ImageInfo, Limits,
};
