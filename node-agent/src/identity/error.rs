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
}
