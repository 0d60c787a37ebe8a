//! Wire types of `exec` and `logs`, shared by the CLI, the API server and the node agents:
//! the same JSON travels CLI → API server (`POST /apis/shoal/v1/tasks/<name>/exec`) and API
//! server → agent (`POST /v1/tasks/<id>/exec`). Logs are plain text streams; their query
//! parameters are [`LogOptions`].

use serde::{Deserialize, Serialize};

use crate::error::Status;

/// How long an exec may run when the request does not say.
pub const DEFAULT_EXEC_TIMEOUT_SECONDS: u64 = 60;

/// The longest an exec may run.
pub const MAX_EXEC_TIMEOUT_SECONDS: u64 = 3600;

/// What an exec keeps of each of its stdout and stderr; the rest is dropped and a marker
/// line (`[output truncated: N bytes, M kept]`) says so.
pub const MAX_EXEC_OUTPUT_BYTES: usize = 1 << 20;

/// The largest exec answer a hop reads: both streams at their cap, every byte escaped as
/// JSON's `\u00XX` at worst, plus room for the rest.
pub const MAX_EXEC_RESPONSE_BYTES: usize = 2 * 6 * MAX_EXEC_OUTPUT_BYTES + 64 * 1024;

/// Runs a command in a running task.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments (not run through a shell).
    pub argv: Vec<String>,
    /// Seconds before the command is killed; [`DEFAULT_EXEC_TIMEOUT_SECONDS`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

impl ExecRequest {
    /// Checks the request; a 400 or 422 `Status` names what is wrong.
    pub fn check(&self) -> Result<(), Status> {
        if self.argv.is_empty() || self.argv[0].is_empty() {
            return Err(Status::invalid(
                "exec needs a command",
                vec![crate::FieldError::new(
                    "argv",
                    "must name a command, e.g. [\"sh\", \"-c\", \"...\"]",
                )
                .into()],
            ));
        }
        if let Some(t) = self.timeout_seconds {
            if t == 0 || t > MAX_EXEC_TIMEOUT_SECONDS {
                return Err(Status::invalid(
                    "bad exec timeout",
                    vec![crate::FieldError::new(
                        "timeoutSeconds",
                        format!("must be 1 to {MAX_EXEC_TIMEOUT_SECONDS}"),
                    )
                    .into()],
                ));
            }
        }
        Ok(())
    }

    /// The timeout in effect.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_seconds.unwrap_or(DEFAULT_EXEC_TIMEOUT_SECONDS))
    }
}

/// What an exec printed and how it ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecResponse {
    /// The command's exit code (128 + signal when killed by a signal).
    pub exit_code: i32,
    /// Its standard output (invalid UTF-8 replaced).
    pub stdout: String,
    /// Its standard error (invalid UTF-8 replaced).
    pub stderr: String,
    /// Whether output was dropped: each stream keeps its first
    /// [`MAX_EXEC_OUTPUT_BYTES`], then a marker line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Query parameters of the logs endpoints (`?follow=true&tail=N`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogOptions {
    /// Keep streaming as the log grows, until the task's container is gone or the client
    /// disconnects.
    #[serde(default, deserialize_with = "flag")]
    pub follow: bool,
    /// Only the last N lines of what is there already.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail: Option<u64>,
}

/// `true`, `1`, `yes` or empty (`?follow`) mean true; `false`, `0`, `no` false.
fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    let s = String::deserialize(d)?;
    match s.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(serde::de::Error::custom(format!(
            "expected true or false, found {s:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_requests_need_a_command_and_a_sane_timeout() {
        let ok: ExecRequest =
            serde_json::from_str(r#"{"argv":["sh","-c","exit 3"],"timeoutSeconds":5}"#).unwrap();
        assert!(ok.check().is_ok());
        assert_eq!(ok.timeout(), std::time::Duration::from_secs(5));
        let empty = ExecRequest::default();
        assert_eq!(empty.check().unwrap_err().details[0].field, "argv");
        let long = ExecRequest {
            argv: vec!["true".into()],
            timeout_seconds: Some(MAX_EXEC_TIMEOUT_SECONDS + 1),
        };
        assert_eq!(long.check().unwrap_err().details[0].field, "timeoutSeconds");
        assert!(serde_json::from_str::<ExecRequest>(r#"{"argv":["x"],"cmd":1}"#).is_err());
    }
}
