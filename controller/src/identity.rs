//! The controller's data dir: `shoal-controller init` (cluster CA, API server certificate,
//! the controller's own client certificate, admin token), `shoal-controller cert etcd`
//! (etcd member certificates), and loading it at start.
//!
//! Layout (docs/architecture.md, "Cluster identity"); the directory is 0700, every `*.key`
//! and `admin.token` 0600, certificates 0644:
//!
//! ```text
//! ca.crt ca.key                 cluster CA
//! api.crt api.key               API server: localhost, 127.0.0.1, ::1 + every --api-san
//! controller.crt controller.key CN shoal-controller, server+client: etcd client, agents' client
//! admin.token                   the admin API token, one line
//! secrets.key                   the secrets key (64 hex digits): Secret payloads at rest,
//!                               payload fingerprints (see crate::secrets_key)
//! etcd/<name>.crt etcd/<name>.key  etcd members (server+client, for clients and peers)
//! ```
//!
//! `init` never overwrites a CA unless forced. The certificates made here live
//! [`CERT_LIFETIME`]; nothing renews them (re-run `cert etcd`, or `init --force` for a new
//! cluster identity).

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal_pki::{Ca, Issued, PkiError, Profile, Usage};

/// The default data dir.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/shoal";

/// The CN (and etcd user) of every controller.
pub const CONTROLLER_CN: &str = "shoal-controller";

/// How long the API, controller and etcd certificates made here are valid (5 years).
pub const CERT_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);

/// What went wrong with the data dir.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `init` found a CA and was not forced.
    #[error(
        "{path} already exists: this data dir holds a cluster CA; pass --force to replace the \
         whole cluster identity (every joined node must join again)"
    )]
    Exists {
        /// The existing CA certificate.
        path: PathBuf,
    },
    /// The data dir has no cluster identity.
    #[error(
        "no cluster identity in {dir} ({missing} is missing): run `shoal-controller init \
         --data-dir {dir}` first (or run with --insecure for a plaintext controller on loopback)"
    )]
    Missing {
        /// The data dir.
        dir: PathBuf,
        /// The missing file.
        missing: String,
    },
    /// A certificate or key is unusable.
    #[error("{path}: {source}")]
    Pki {
        /// The file (or what was being made).
        path: PathBuf,
        /// Why.
        source: PkiError,
    },
    /// A name given on the command line is unusable.
    #[error("{0}")]
    Invalid(String),
}

type Result<T> = std::result::Result<T, IdentityError>;

/// The files of one data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// The data dir at `root`.
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file in it.
    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `ca.crt`.
    pub fn ca_cert(&self) -> PathBuf {
        self.file("ca.crt")
    }

    /// `admin.token`.
    pub fn admin_token(&self) -> PathBuf {
        self.file("admin.token")
    }

    /// `etcd/<name>.crt` and `etcd/<name>.key`.
    pub fn etcd_member(&self, name: &str) -> (PathBuf, PathBuf) {
        let dir = self.root.join("etcd");
        (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        )
    }
}

/// What `init` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Names in the CA's CN (`shoal-ca <cluster>`).
    pub cluster: String,
    /// Extra SANs of the API certificate (IP addresses or DNS names).
    pub api_sans: Vec<String>,
    /// Replace an existing CA.
    pub force: bool,
}

/// A loaded data dir: what a running controller needs.
pub struct Identity {
    /// The cluster CA.
    pub ca: Ca,
    /// The API server's certificate and key.
    pub api: Issued,
    /// The controller's client (and server) certificate and key.
    pub controller: Issued,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pki(path: &Path) -> impl FnOnce(PkiError) -> IdentityError + '_ {
    move |source| IdentityError::Pki {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) and makes it 0700.
fn private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    std::fs::set_permissions(dir, Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Writes `contents` to `path` with `mode` (also when the file existed with another mode).
fn write(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.set_permissions(Permissions::from_mode(mode))
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))
}

fn write_pair(dir: &DataDir, name: &str, issued: &Issued) -> Result<()> {
    write(&dir.file(&format!("{name}.crt")), &issued.cert_pem, 0o644)?;
    write(&dir.file(&format!("{name}.key")), &issued.key_pem, 0o600)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(io(path))
}

/// Splits SANs into DNS names and IP addresses; refuses empty ones.
pub fn split_sans(sans: &[String]) -> Result<(Vec<String>, Vec<IpAddr>)> {
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    for san in sans {
        let san = san.trim();
        if san.is_empty() {
            return Err(IdentityError::Invalid(
                "--san/--api-san: empty name (give an IP address or a DNS name)".into(),
            ));
        }
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.to_string()),
        }
    }
    Ok((dns, ips))
}

/// The API server's certificate profile: localhost, 127.0.0.1, ::1 and `sans`.
pub fn api_profile(sans: &[String]) -> Result<Profile> {
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for s in sans {
        if !all.contains(s) {
            all.push(s.clone());
        }
    }
    let (dns_names, ips) = split_sans(&all)?;
    Ok(Profile {
        common_name: "shoal-api".into(),
        dns_names,
        ips,
        usage: Usage::Server,
        lifetime: CERT_LIFETIME,
    })
}

/// The controller's own certificate profile (CN `shoal-controller`).
pub fn controller_profile() -> Profile {
    Profile {
        common_name: CONTROLLER_CN.into(),
        dns_names: vec![CONTROLLER_CN.into()],
        ips: vec![],
        usage: Usage::Both,
        lifetime: CERT_LIFETIME,
    }
}

/// `shoal-controller init`: a new cluster identity in `dir`. Returns the admin token.
pub fn init(dir: &DataDir, opts: &InitOptions) -> Result<String> {
    let ca_path = dir.ca_cert();
    if !opts.force && (ca_path.exists() || dir.file("ca.key").exists()) {
        return Err(IdentityError::Exists { path: ca_path });
    }
    let api = api_profile(&opts.api_sans)?;
    private_dir(dir.root())?;
    let ca = Ca::generate(&opts.cluster).map_err(pki(&ca_path))?;
    write(&dir.file("ca.key"), ca.key_pem(), 0o600)?;
    write(&ca_path, ca.cert_pem(), 0o644)?;
    write_pair(
        dir,
        "api",
        &ca.issue(&api).map_err(pki(&dir.file("api.crt")))?,
    )?;
    let controller = ca
        .issue(&controller_profile())
        .map_err(pki(&dir.file("controller.crt")))?;
    write_pair(dir, "controller", &controller)?;
    let token = shoal_pki::new_api_token();
    write(&dir.admin_token(), &format!("{token}\n"), 0o600)?;
    // Kept across `init --force`: etcd may hold payloads sealed under it.
    let key_path = dir.file(crate::secrets_key::KEY_FILE);
    crate::secrets_key::create_key_file(&key_path).map_err(|e| match e {
        crate::secrets_key::KeyError::Io { path, source } => IdentityError::Io { path, source },
        other => IdentityError::Invalid(format!("{}: {other}", key_path.display())),
    })?;
    Ok(token)
}

/// What to do after `init` (printed by the binary).
pub fn next_steps(dir: &DataDir) -> String {
    let d = dir.root().display();
    format!(
        "Cluster identity written to {d} (CA digest {digest}).\n\
         Next steps:\n\
         1. etcd member certificates, one per member:\n\
         \x20  shoal-controller cert etcd --data-dir {d} --name etcd-1 --san 127.0.0.1 --san <member IP>\n\
         2. run etcd with TLS and client-certificate auth:\n\
         \x20  etcd --client-cert-auth --trusted-ca-file {d}/ca.crt --cert-file {d}/etcd/etcd-1.crt \\\n\
         \x20       --key-file {d}/etcd/etcd-1.key --peer-client-cert-auth --peer-trusted-ca-file {d}/ca.crt \\\n\
         \x20       --peer-cert-file {d}/etcd/etcd-1.crt --peer-key-file {d}/etcd/etcd-1.key \\\n\
         \x20       --listen-client-urls https://127.0.0.1:2379 --advertise-client-urls https://127.0.0.1:2379\n\
         3. start the controller: shoal-controller --data-dir {d} --etcd https://127.0.0.1:2379\n\
         4. the admin token is in {d}/admin.token; join nodes with the token of `shoal join-token`:\n\
         \x20  shoal-agent join --token <token> --controller https://<controller>:7777 --name <node> --address <ip>\n",
        digest = std::fs::read_to_string(dir.ca_cert())
            .ok()
            .and_then(|pem| shoal_pki::ca_digest(&pem).ok())
            .unwrap_or_default(),
    )
}

/// `shoal-controller cert etcd`: a member certificate (CN `name`, server+client, SANs
/// `sans`) in `etcd/`. Returns the certificate and key paths.
pub fn cert_etcd(dir: &DataDir, name: &str, sans: &[String]) -> Result<(PathBuf, PathBuf)> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(IdentityError::Invalid(format!(
            "--name {name:?}: give a plain member name such as etcd-1"
        )));
    }
    let ca = load_ca(dir)?;
    let (dns_names, ips) = split_sans(sans)?;
    let (crt, key) = dir.etcd_member(name);
    let issued = ca
        .issue(&Profile {
            common_name: name.into(),
            dns_names,
            ips,
            usage: Usage::Both,
            lifetime: CERT_LIFETIME,
        })
        .map_err(pki(&crt))?;
    private_dir(&dir.root().join("etcd"))?;
    write(&crt, &issued.cert_pem, 0o644)?;
    write(&key, &issued.key_pem, 0o600)?;
    Ok((crt, key))
}

fn require(dir: &DataDir, name: &str) -> Result<PathBuf> {
    let path = dir.file(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(IdentityError::Missing {
            dir: dir.root().to_path_buf(),
            missing: name.into(),
        })
    }
}

fn load_ca(dir: &DataDir) -> Result<Ca> {
    let crt = require(dir, "ca.crt")?;
    let key = require(dir, "ca.key")?;
    Ca::load(&read(&crt)?, &read(&key)?).map_err(pki(&crt))
}

fn load_pair(dir: &DataDir, name: &str) -> Result<Issued> {
    let crt = require(dir, &format!("{name}.crt"))?;
    let key = require(dir, &format!("{name}.key"))?;
    let cert_pem = read(&crt)?;
    shoal_pki::inspect(&cert_pem).map_err(pki(&crt))?;
    Ok(Issued {
        cert_pem,
        key_pem: read(&key)?,
    })
}

/// Loads what a running controller needs from `dir`.
pub fn load(dir: &DataDir) -> Result<Identity> {
    Ok(Identity {
        ca: load_ca(dir)?,
        api: load_pair(dir, "api")?,
        controller: load_pair(dir, "controller")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_split_into_ips_and_dns_names() {
        let (dns, ips) =
            split_sans(&["10.0.0.1".into(), "ctl.example".into(), "::1".into()]).unwrap();
        assert_eq!(dns, vec!["ctl.example"]);
        assert_eq!(ips.len(), 2);
        assert!(split_sans(&[" ".into()]).is_err());
    }

    #[test]
    fn the_api_profile_always_covers_loopback() {
        let p = api_profile(&["10.0.0.1".into(), "localhost".into()]).unwrap();
        assert_eq!(p.dns_names, vec!["localhost"]);
        assert_eq!(p.ips.len(), 3);
        assert_eq!(p.usage, Usage::Server);
    }
}
