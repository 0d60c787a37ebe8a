//! Which API server the CLI talks to, and the context file that remembers it.
//!
//! Resolution order, first match wins: `--server URL`, `$SHOAL_SERVER`, the context file
//! (`$SHOAL_CONFIG`, else `~/.config/shoal/context.json`, holding `{"server": "..."}`), then
//! [`DEFAULT_SERVER`]. `shoal dev up` writes the context file with [`write_context`].

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Where the API listens when nothing says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7777";

/// The environment variable naming the server.
pub const SERVER_ENV: &str = "SHOAL_SERVER";

/// The environment variable naming the context file.
pub const CONFIG_ENV: &str = "SHOAL_CONFIG";

/// The contents of the context file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// The API's base URL, e.g. `https://127.0.0.1:7777`.
    pub server: String,
    /// The PEM file of the CA the API's certificate is verified with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// The API token sent as `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// The context file's path: `$SHOAL_CONFIG`, else `~/.config/shoal/context.json`; `None`
/// when neither that variable nor `$HOME` is set.
pub fn context_path() -> Option<PathBuf> {
    context_path_from(
        std::env::var_os(CONFIG_ENV).map(PathBuf::from),
        std::env::var_os("HOME").map(PathBuf::from),
    )
}

fn context_path_from(config: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    match config {
        Some(p) if !p.as_os_str().is_empty() => Some(p),
        _ => home
            .filter(|h| !h.as_os_str().is_empty())
            .map(|h| h.join(".config/shoal/context.json")),
    }
}

/// Reads a context file; `Ok(None)` when it does not exist.
pub fn read_context(path: &Path) -> Result<Option<Context>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read context file {}", path.display()))
        }
    };
    let ctx: Context = serde_json::from_str(&text).with_context(|| {
        format!(
            "context file {} is not {{\"server\": \"URL\"}}",
            path.display()
        )
    })?;
    Ok(Some(ctx))
}

/// Writes a context file, creating its directory. Written to a temporary file first and
/// renamed, so readers never see half a file.
pub fn write_context(path: &Path, ctx: &Context) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(ctx)? + "\n";
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes the default context file (see [`context_path`]) and returns its path.
pub fn write_default_context(ctx: &Context) -> Result<PathBuf> {
    let path = context_path()
        .context("neither $SHOAL_CONFIG nor $HOME is set: nowhere to write the context")?;
    write_context(&path, ctx)?;
    Ok(path)
}

/// The server to use, from the flag, the environment and the context file at `path`.
pub fn resolve_server(
    flag: Option<&str>,
    env: Option<&str>,
    path: Option<&Path>,
) -> Result<String> {
    let chosen = if let Some(s) = flag.filter(|s| !s.is_empty()) {
        s.to_string()
    } else if let Some(s) = env.filter(|s| !s.is_empty()) {
        s.to_string()
    } else if let Some(ctx) = path.map(read_context).transpose()?.flatten() {
        ctx.server
    } else {
        DEFAULT_SERVER.to_string()
    };
    normalise_server(&chosen)
}

/// The server from `--server` (if given), the process environment and the default context
/// file.
pub fn server_from_env(flag: Option<&str>) -> Result<String> {
    let env = std::env::var(SERVER_ENV).ok();
    resolve_server(flag, env.as_deref(), context_path().as_deref())
}

/// Adds `http://` to a bare `host:port` and drops trailing slashes.
fn normalise_server(s: &str) -> Result<String> {
    let s = s.trim().trim_end_matches('/');
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(url),
        _ => anyhow::bail!("server {s:?} is not an http:// URL (e.g. {DEFAULT_SERVER})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_flag_wins_over_env_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctx.json");
        write_context(
            &path,
            &Context {
                server: "http://ctx:1".into(),
            },
        )
        .unwrap();
        assert_eq!(
            resolve_server(Some("http://flag:1"), Some("http://env:1"), Some(&path)).unwrap(),
            "http://flag:1"
        );
        assert_eq!(
            resolve_server(None, Some("http://env:1"), Some(&path)).unwrap(),
            "http://env:1"
        );
        assert_eq!(
            resolve_server(None, None, Some(&path)).unwrap(),
            "http://ctx:1"
        );
        assert_eq!(
            resolve_server(None, Some(""), Some(&dir.path().join("missing.json"))).unwrap(),
            DEFAULT_SERVER
        );
        assert_eq!(resolve_server(None, None, None).unwrap(), DEFAULT_SERVER);
    }

    #[test]
    fn servers_are_normalised_and_checked() {
        assert_eq!(
            resolve_server(Some("127.0.0.1:9/"), None, None).unwrap(),
            "http://127.0.0.1:9"
        );
        let err = resolve_server(Some("ftp://x"), None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not an http:// URL"), "{err}");
    }

    #[test]
    fn context_files_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/context.json");
        let ctx = Context {
            server: "http://127.0.0.1:7777".into(),
        };
        write_context(&path, &ctx).unwrap();
        assert_eq!(read_context(&path).unwrap(), Some(ctx));
        std::fs::write(&path, "nope").unwrap();
        let err = format!("{:#}", resolve_server(None, None, Some(&path)).unwrap_err());
        assert!(err.contains("context.json"), "{err}");
    }

    #[test]
    fn context_path_prefers_shoal_config_then_home() {
        assert_eq!(
            context_path_from(Some("/x/c.json".into()), Some("/home/u".into())),
            Some(PathBuf::from("/x/c.json"))
        );
        assert_eq!(
            context_path_from(None, Some("/home/u".into())),
            Some(PathBuf::from("/home/u/.config/shoal/context.json"))
        );
        assert_eq!(context_path_from(Some("".into()), None), None);
    }
}
