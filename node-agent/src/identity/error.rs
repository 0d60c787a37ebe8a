//! [`IdentityError`]: why joining, loading or renewing the node's identity failed, with
//! the file, URL or digest concerned and what to do about it.

use std::path::PathBuf;

/// What went wrong with the node's identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No identity in the directory: the node has not joined.
    #[error(
        "no node identity in {}: join the cluster first with `shoal-agent join --token <join token> \
         --controller https://<controller>:7777 --name <node> --address <ip> --pki-dir {}` \
         (`shoal join-token` prints the token), or run with --insecure for a plaintext \
         cluster",
        dir.display(),
        dir.display()
    )]
    NotJoined {
        /// The directory.
        dir: PathBuf,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not what it should be.
    #[error("{}: {reason}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the field.
        reason: String,
    },
    /// The flags do not say how to run (see [`crate::identity::Security`]).
    #[error("{0}")]
    Flags(String),
    /// The node name is not a DNS-1123 label.
    #[error("--name: {0}")]
    InvalidName(String),
    /// The join token does not parse.
    #[error("--token: {0}")]
    InvalidToken(shoal_pki::PkiError),
    /// The controller URL is not usable.
    #[error("--controller: {url:?} {reason}")]
    InvalidController {
        /// What was given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The controller serves a CA other than the one the join token names: the secret is
    /// not sent.
    #[error(
        "the controller's CA digest {got} does not match the join token's {want}, refusing to \
         send the join secret (is {controller} this cluster's controller, and the token the \
         one `shoal join-token` prints there?)"
    )]
    CaMismatch {
        /// The controller's URL.
        controller: String,
        /// sha256 of the CA the controller served.
        got: String,
        /// The digest in the token.
        want: String,
    },
    /// The controller could not be reached, or the TLS handshake failed.
    #[error("cannot reach the controller at {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why, with the underlying causes.
        reason: String,
    },
    /// The controller answered with an error.
    #[error("the controller refused {what} ({url}): {code} {message}")]
    Refused {
        /// The URL.
        url: String,
        /// What was asked.
        what: String,
        /// The HTTP status.
        code: u16,
        /// The controller's message.
        message: String,
    },
    /// The controller's answer is not what the protocol says.
    #[error("unexpected answer from {url}: {reason}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build an HTTPS client: {0}")]
    Client(String),
    /// A certificate, key or TLS setting is unusable.
    #[error(transparent)]
    Pki(#[from] shoal_pki::PkiError),
    /// etcd refused the renewed identity.
    #[error("cannot reconnect to etcd with the renewed certificate: {0}")]
    Store(#[from] shoal_store::StoreError),
}

impl IdentityError {
    /// A request that got no answer, with every cause (reqwest's own message is terse).
    pub(crate) fn unreachable(url: &reqwest::Url, e: reqwest::Error) -> IdentityError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            reason.push_str(": ");
            reason.push_str(&s.to_string());
            source = s.source();
        }
        IdentityError::Unreachable {
            url: url.to_string(),
            reason,
        }
    }

    /// Whether trying again later may help (the controller or etcd unreachable or busy),
    /// as opposed to a refusal that will repeat.
    pub fn is_temporary(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Refused { code, .. } => *code >= 500 || *code == 429,
            IdentityError::Store(e) => e.is_temporary(),
            IdentityError::Write { .. } => true,
            _ => false,
        }
    }
}
