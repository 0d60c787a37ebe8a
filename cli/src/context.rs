//! Which API server the CLI talks to, how it trusts it, and which token it shows: the
//! context file that remembers them, and the flags and variables that override it.
//!
//! Resolution ([`resolve`]), first match wins:
//! - server: `--server URL`, `$SHOAL_SERVER`, the context file's `server`, [`DEFAULT_SERVER`];
//! - token: `--token`, `$SHOAL_TOKEN`, the context file's `token`;
//! - CA: `--ca PATH`, `$SHOAL_CA`, the context file's `certificateAuthority` (a path, relative
//!   to the context file's directory).
//!
//! The context file is `$SHOAL_CONFIG`, else `~/.config/shoal/context.json`:
//! `{"server": "https://127.0.0.1:7777", "certificateAuthority": "ca.crt", "token": "shoal_…"}`.
//!
//! Invariants: the context file's token and CA belong to its server: they are used only
//! when the server in use is that one (another `--server` gets neither, so a token never
//! leaks to a server it was not made for). A token is never sent over plain `http://` to
//! anything but a loopback address. `shoal dev up` writes the context file with
//! [`write_context`], readable by its owner only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

/// Where the API listens when nothing says otherwise.
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:7777";

/// The environment variable naming the server.
pub const SERVER_ENV: &str = "SHOAL_SERVER";

/// The environment variable holding the API token.
pub const TOKEN_ENV: &str = "SHOAL_TOKEN";

/// The environment variable naming the CA certificate file (PEM).
pub const CA_ENV: &str = "SHOAL_CA";

/// The environment variable naming the context file.
pub const CONFIG_ENV: &str = "SHOAL_CONFIG";

/// The contents of the context file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    /// The API's base URL, e.g. `https://127.0.0.1:7777`.
    pub server: String,
    /// The cluster CA certificate (PEM file) that the server's certificate must chain
    /// to; a relative path is relative to the context file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<String>,
    /// The API token sent as `Authorization: Bearer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// What one source (the flags, or the environment) says; empty strings count as unset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The server URL.
    pub server: Option<String>,
    /// The API token.
    pub token: Option<String>,
    /// The CA certificate file.
    pub ca: Option<PathBuf>,
}

impl Settings {
    /// `$SHOAL_SERVER`, `$SHOAL_TOKEN` and `$SHOAL_CA`.
    pub fn from_env() -> Settings {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Settings {
            server: var(SERVER_ENV),
            token: var(TOKEN_ENV),
            ca: var(CA_ENV).map(PathBuf::from),
        }
    }

    fn cleaned(self) -> Settings {
        Settings {
            server: self.server.filter(|s| !s.trim().is_empty()),
            token: self
                .token
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            ca: self.ca.filter(|p| !p.as_os_str().is_empty()),
        }
    }
}

/// Where the token in use came from (for hints when the server refuses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token`.
    Flag,
    /// `$SHOAL_TOKEN`.
    Env,
    /// The context file at this path.
    Context(PathBuf),
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Flag => f.write_str("--token"),
            TokenSource::Env => write!(f, "${TOKEN_ENV}"),
            TokenSource::Context(p) => write!(f, "the context file {}", p.display()),
        }
    }
}

/// Everything the client needs: where, whom to trust, what to show.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The server's base URL, normalised (`https://host:port`, no trailing slash).
    pub server: String,
    /// The CA certificate file to verify an `https://` server with.
    pub ca: Option<PathBuf>,
    /// The API token.
    pub token: Option<String>,
    /// Where the token came from.
    pub token_source: Option<TokenSource>,
    /// The context file that was consulted (whether or not it exists).
    pub context_path: Option<PathBuf>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("server", &self.server)
            .field("ca", &self.ca)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_source", &self.token_source)
            .field("context_path", &self.context_path)
            .finish()
    }
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
            "context file {} is not {{\"server\": \"URL\", \"certificateAuthority\": \"PATH\", \"token\": \"TOKEN\"}}",
            path.display()
        )
    })?;
    Ok(Some(ctx))
}

/// Writes a context file, creating its directory. The file is readable by its owner only
/// (it may hold a token), and written to a temporary file first and renamed, so readers
/// never see half a file.
pub fn write_context(path: &Path, ctx: &Context) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(ctx)? + "\n";
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
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

/// The target from the flags, the environment and the context file at `path` (see the
/// module's documentation for the order).
pub fn resolve(flags: Settings, env: Settings, path: Option<&Path>) -> Result<Target> {
    let (flags, env) = (flags.cleaned(), env.cleaned());
    let ctx = path.map(read_context).transpose()?.flatten();
    let ctx_server = ctx
        .as_ref()
        .map(|c| normalise_server(&c.server))
        .transpose()?;
    let server = match flags.server.or(env.server) {
        Some(s) => normalise_server(&s)?,
        None => ctx_server.clone().unwrap_or(DEFAULT_SERVER.to_string()),
    };
    // The context's credentials are for the context's server only.
    let ctx = ctx.filter(|_| ctx_server.as_deref() == Some(server.as_str()));
    let (token, token_source) = match (flags.token, env.token) {
        (Some(t), _) => (Some(t), Some(TokenSource::Flag)),
        (None, Some(t)) => (Some(t), Some(TokenSource::Env)),
        (None, None) => match ctx.as_ref().and_then(|c| c.token.clone()) {
            Some(t) if !t.trim().is_empty() => (
                Some(t.trim().to_string()),
                path.map(|p| TokenSource::Context(p.to_path_buf())),
            ),
            _ => (None, None),
        },
    };
    let ca = flags.ca.or(env.ca).or_else(|| {
        let ca = PathBuf::from(ctx.as_ref()?.certificate_authority.clone()?);
        if ca.as_os_str().is_empty() {
            return None;
        }
        let dir = path.and_then(Path::parent).unwrap_or(Path::new(""));
        Some(if ca.is_relative() { dir.join(ca) } else { ca })
    });
    if token.is_some() && server.starts_with("http://") && !is_loopback(&server) {
        anyhow::bail!(
            "not sending the API token to {server} over plain http: use an https:// server \
             (plain http is only for a controller on this machine started with --insecure)"
        );
    }
    Ok(Target {
        server,
        ca,
        token,
        token_source,
        context_path: path.map(Path::to_path_buf),
    })
}

/// The target from the flags, the process environment and the default context file.
pub fn target_from_env(flags: Settings) -> Result<Target> {
    resolve(flags, Settings::from_env(), context_path().as_deref())
}

/// Whether a normalised URL's host is a loopback address or `localhost`.
fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Adds `https://` to a bare `host:port` and drops trailing slashes.
fn normalise_server(s: &str) -> Result<String> {
    let s = s.trim().trim_end_matches('/');
    let url = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    match url.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => Ok(url),
        _ => {
            anyhow::bail!("server {s:?} is not an https:// or http:// URL (e.g. {DEFAULT_SERVER})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(server: Option<&str>, token: Option<&str>, ca: Option<&str>) -> Settings {
        Settings {
            server: server.map(Into::into),
            token: token.map(Into::into),
            ca: ca.map(PathBuf::from),
        }
    }

    fn ctx_file(dir: &Path, ctx: Context) -> PathBuf {
        let path = dir.join("ctx.json");
        write_context(&path, &ctx).unwrap();
        path
    }

    fn full_context() -> Context {
        Context {
            server: "https://ctx:1".into(),
            certificate_authority: Some("pki/ca.crt".into()),
            token: Some("shoal_fromctx".into()),
        }
    }

    #[test]
    fn server_flag_wins_over_env_and_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = ctx_file(dir.path(), full_context());
        let none = Settings::default;
        let server = |f: Settings, e: Settings, p: Option<&Path>| resolve(f, e, p).unwrap().server;
        assert_eq!(
            server(
                flags(Some("https://flag:1"), None, None),
                flags(Some("https://env:1"), None, None),
                Some(&path)
            ),
            "https://flag:1"
        );
        assert_eq!(
            server(
                none(),
                flags(Some("https://env:1"), None, None),
                Some(&path)
            ),
            "https://env:1"
        );
        assert_eq!(server(none(), none(), Some(&path)), "https://ctx:1");
        assert_eq!(
            server(
                none(),
                flags(Some(""), None, None),
                Some(&dir.path().join("missing.json"))
            ),
            DEFAULT_SERVER
        );
        assert_eq!(server(none(), none(), None), DEFAULT_SERVER);
    }

    #[test]
    fn token_and_ca_come_from_flag_then_env_then_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = ctx_file(dir.path(), full_context());
        let t = resolve(Settings::default(), Settings::default(), Some(&path)).unwrap();
        assert_eq!(t.token.as_deref(), Some("shoal_fromctx"));
        assert_eq!(t.token_source, Some(TokenSource::Context(path.clone())));
        assert_eq!(
            t.ca,
            Some(dir.path().join("pki/ca.crt")),
            "a relative CA path is relative to the context file"
        );
        let t = resolve(
            Settings::default(),
            flags(None, Some("shoal_env"), Some("/env/ca.crt")),
            Some(&path),
        )
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("shoal_env"));
        assert_eq!(t.token_source, Some(TokenSource::Env));
        assert_eq!(t.ca, Some(PathBuf::from("/env/ca.crt")));
        let t = resolve(
            flags(None, Some(" shoal_flag\n"), Some("/flag/ca.crt")),
            flags(None, Some("shoal_env"), Some("/env/ca.crt")),
            Some(&path),
        )
        .unwrap();
        assert_eq!(t.token.as_deref(), Some("shoal_flag"));
        assert_eq!(t.token_source, Some(TokenSource::Flag));
        assert_eq!(t.ca, Some(PathBuf::from("/flag/ca.crt")));
        assert!(
            !format!("{t:?}").contains("shoal_flag"),
            "Debug hides tokens"
        );
    }

    #[test]
    fn context_credentials_stay_with_the_context_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = ctx_file(dir.path(), full_context());
        let other = resolve(
            flags(Some("https://elsewhere:1"), None, None),
            Settings::default(),
            Some(&path),
        )
        .unwrap();
        assert_eq!((other.token, other.ca), (None, None));
        let same = resolve(
            flags(Some("ctx:1/"), None, None),
            Settings::default(),
            Some(&path),
        )
        .unwrap();
        assert_eq!(same.token.as_deref(), Some("shoal_fromctx"));
    }

    #[test]
    fn tokens_are_not_sent_over_plain_http_off_this_machine() {
        let err = resolve(
            flags(Some("http://10.0.0.5:7777"), Some("shoal_x"), None),
            Settings::default(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("not sending the API token"), "{err}");
        for local in [
            "http://127.0.0.1:7777",
            "http://localhost:7777",
            "http://[::1]:7777",
        ] {
            let t = resolve(
                flags(Some(local), Some("shoal_x"), None),
                Settings::default(),
                None,
            );
            assert!(t.is_ok(), "{local}: {t:?}");
        }
        assert!(resolve(
            flags(Some("http://10.0.0.5:7777"), None, None),
            Settings::default(),
            None
        )
        .is_ok());
    }

    #[test]
    fn servers_are_normalised_and_checked() {
        let server = |s: &str| resolve(flags(Some(s), None, None), Settings::default(), None);
        assert_eq!(
            server("127.0.0.1:9/").unwrap().server,
            "https://127.0.0.1:9"
        );
        assert_eq!(
            server("http://127.0.0.1:9").unwrap().server,
            "http://127.0.0.1:9"
        );
        let err = server("ftp://x").unwrap_err().to_string();
        assert!(err.contains("not an https:// or http:// URL"), "{err}");
    }

    #[test]
    fn context_files_round_trip_privately_and_bad_ones_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/context.json");
        let ctx = full_context();
        write_context(&path, &ctx).unwrap();
        assert_eq!(read_context(&path).unwrap(), Some(ctx));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"certificateAuthority\": \"pki/ca.crt\""),
            "{text}"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the context may hold a token");
        // A context of before issue 12 (server only) still reads.
        std::fs::write(&path, r#"{"server": "http://127.0.0.1:7777"}"#).unwrap();
        assert_eq!(
            read_context(&path).unwrap(),
            Some(Context {
                server: "http://127.0.0.1:7777".into(),
                ..Context::default()
            })
        );
        std::fs::write(&path, "nope").unwrap();
        let err = format!(
            "{:#}",
            resolve(Settings::default(), Settings::default(), Some(&path)).unwrap_err()
        );
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
