//! A task's files on the node (issue 15): secrets and configs on a read-only tmpfs per
//! task, named volumes, bind mounts below allowed prefixes, and tmpfs mounts — everything a
//! container mounts besides its image. Declares and re-exports only:
//!
//! - [`plan`]: pure — payload files, tmpfs size, bind checks, the container mounts.
//! - [`source`]: the [`PayloadSource`] trait (the controller's delivery endpoint; the real
//!   client is `crate::identity::ControllerClient`) and [`Payload`], bytes that never show
//!   in logs.
//! - [`host`]: the [`HostFiles`] trait (mounts, directories) and [`KernelFiles`].
//! - [`files`]: [`TaskFiles`], from a task spec to its mounts and back, garbage collection
//!   and volumes.
//! - `fake` (feature `test-util`): `RecordingFiles` and `FakePayloads`.

pub mod files;
pub mod host;
pub mod plan;
pub mod source;

#[cfg(any(test, feature = "test-util"))]
pub mod fake;

pub use files::{PrepareError, Prepared, TaskFiles, TaskFilesConfig, VolumeError};
pub use host::{FilesError, HostFiles, KernelFiles};
pub use source::{FetchError, Fetched, Payload, PayloadSource};

#[cfg(any(test, feature = "test-util"))]
pub use fake::{FakePayloads, FilesCall, RecordingFiles};
