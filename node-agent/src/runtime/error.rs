//! The runtime's errors ([`RuntimeError`]), what they mean for a task ([`ErrorClass`]), and
//! the container id check.

use std::path::PathBuf;
use std::time::Duration;

/// Why a runtime operation failed. Messages are for users (they end up in `shoal service ps`).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The image reference does not parse.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// The reference as given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry answered, and has no such repository or tag.
    #[error("image not found: {reference}")]
    ImageNotFound {
        /// The reference as given.
        reference: String,
    },
    /// The registry could not be reached at all.
    #[error("registry {registry} is not reachable: {reason}")]
    RegistryUnreachable {
        /// `host:port`.
        registry: String,
        /// e.g. `connection refused`.
        reason: String,
    },
    /// The registry answered with an error.
    #[error("registry {registry} failed {what}: {reason}")]
    Registry {
        /// `host:port`.
        registry: String,
        /// What was asked (`GET /v2/busybox/manifests/latest`).
        what: String,
        /// HTTP status and body or transport error.
        reason: String,
        /// Whether a retry can help (5xx, 429, timeouts).
        temporary: bool,
    },
    /// The image exists but Shoal cannot run it (no linux/amd64 manifest, unknown media type...).
    #[error("image {reference} cannot be used: {reason}")]
    UnsupportedImage {
        /// The reference.
        reference: String,
        /// Why not.
        reason: String,
    },
    /// No such container.
    #[error("container {id} not found")]
    NotFound {
        /// Container id.
        id: String,
    },
    /// The container id is taken.
    #[error("container {id} already exists")]
    AlreadyExists {
        /// Container id.
        id: String,
    },
    /// The spec cannot become a container (bad id, no command, unsupported user...).
    #[error("invalid container {id}: {reason}")]
    InvalidSpec {
        /// Container id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// containerd/runc refused to start the process (e.g. executable not found).
    #[error("container {id} failed to start: {reason}")]
    StartFailed {
        /// Container id.
        id: String,
        /// runc's message.
        reason: String,
    },
    /// The container's main process exited right after starting.
    #[error("container {id} exited at once with exit code {exit_code}")]
    ExitedAtOnce {
        /// Container id.
        id: String,
        /// Its exit code.
        exit_code: i32,
    },
    /// containerd's socket does not answer.
    #[error("containerd at {socket} is not reachable: {reason}")]
    Unavailable {
        /// The socket path.
        socket: String,
        /// Why.
        reason: String,
    },
    /// A containerd call failed.
    #[error("containerd {op} {object} failed: {code:?}: {message}")]
    Containerd {
        /// The call (`Tasks.Create`).
        op: &'static str,
        /// What it was about (container id, digest, snapshot key).
        object: String,
        /// gRPC status code.
        code: containerd_client::tonic::Code,
        /// containerd's message.
        message: String,
    },
    /// An operation did not finish in time.
    #[error("{op} of {id} did not finish within {after:?}")]
    Timeout {
        /// The operation.
        op: &'static str,
        /// Container id.
        id: String,
        /// The limit.
        after: Duration,
    },
    /// An image pull did not finish within the agent's pull deadline.
    #[error("pulling image {reference} did not finish within {} (the agent's --pull-timeout); the registry is too slow or the image too large", humantime::format_duration(*after))]
    PullTimeout {
        /// The image.
        reference: String,
        /// The deadline.
        after: Duration,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl RuntimeError {
    /// Whether retrying the same operation later can succeed without anyone changing
    /// anything (registry or containerd down, timeouts). A wrong image name, a bad spec, or a
    /// container that exits at once are not temporary: the task fails and the orchestrator
    /// decides what to do.
    pub fn is_temporary(&self) -> bool {
        use containerd_client::tonic::Code;
        match self {
            RuntimeError::RegistryUnreachable { .. }
            | RuntimeError::Unavailable { .. }
            | RuntimeError::Timeout { .. }
            | RuntimeError::PullTimeout { .. }
            | RuntimeError::Io { .. } => true,
            RuntimeError::Registry { temporary, .. } => *temporary,
            RuntimeError::Containerd { code, .. } => matches!(
                code,
                Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Unknown
                    | Code::Internal
            ),
            RuntimeError::InvalidReference { .. }
            | RuntimeError::ImageNotFound { .. }
            | RuntimeError::UnsupportedImage { .. }
            | RuntimeError::NotFound { .. }
            | RuntimeError::AlreadyExists { .. }
            | RuntimeError::InvalidSpec { .. }
            | RuntimeError::StartFailed { .. }
            | RuntimeError::ExitedAtOnce { .. } => false,
        }
    }

    /// How the agent should report this error on a task (see [`ErrorClass`]).
    pub fn class(&self) -> ErrorClass {
        match self {
            RuntimeError::InvalidReference { .. }
            | RuntimeError::ImageNotFound { .. }
            | RuntimeError::UnsupportedImage { .. }
            | RuntimeError::InvalidSpec { .. } => ErrorClass::Rejected,
            RuntimeError::Unavailable { .. } => ErrorClass::Unavailable,
            RuntimeError::Containerd { code, .. }
                if *code == containerd_client::tonic::Code::Unavailable =>
            {
                ErrorClass::Unavailable
            }
            _ => ErrorClass::Failed,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// What a [`RuntimeError`] means for the task it happened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The task can never run as specified: wrong image name, unusable image, bad spec.
    Rejected,
    /// This attempt failed (registry down, exited at once, runc refused); the task fails and
    /// the restart policy decides. [`RuntimeError::is_temporary`] tells whether the same
    /// spec may work later.
    Failed,
    /// containerd itself is not reachable: report nothing on the task, retry with backoff.
    Unavailable,
}

/// Checks a container id: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 64 bytes (it becomes a
/// directory name, a snapshot key and part of a cgroup path).
pub fn validate_container_id(id: &str) -> Result<(), RuntimeError> {
    let bad = |reason: &str| RuntimeError::InvalidSpec {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(bad("container ids are 1 to 64 characters"));
    }
    let mut chars = id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(bad("container ids start with a letter or digit"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(bad(
            "container ids contain only letters, digits, '_', '.' and '-'",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_validated() {
        assert!(validate_container_id("shoal-api.1-abc").is_ok());
        assert!(validate_container_id("").is_err());
        assert!(validate_container_id("-x").is_err());
        assert!(validate_container_id("a/b").is_err());
        assert!(validate_container_id(&"a".repeat(65)).is_err());
    }

    #[test]
    fn errors_are_classified_and_readable() {
        let e = RuntimeError::ImageNotFound {
            reference: "localhost:5000/nope:1".into(),
        };
        assert_eq!(e.to_string(), "image not found: localhost:5000/nope:1");
        assert!(!e.is_temporary());
        let e = RuntimeError::RegistryUnreachable {
            registry: "localhost:5000".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry localhost:5000 is not reachable: connection refused"
        );
        assert!(e.is_temporary());
        let e = RuntimeError::ExitedAtOnce {
            id: "api.1".into(),
            exit_code: 3,
        };
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("exit code 3"));
    }
}
