//! [`PkiError`]: what went wrong with which certificate, key, token or TLS setting.

/// The result of this crate's operations.
pub type Result<T> = std::result::Result<T, PkiError>;

/// Failures of certificate, token and TLS operations, each naming what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not build, parse or sign something.
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done ("signing the CSR", "reading the CA key"…).
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A PEM text holds no usable block of the expected kind, or its DER does not parse.
    #[error("{what}: {message}")]
    Parse {
        /// What was being read ("the CA certificate", "the client key"…).
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate (its public key differs)")]
    KeyMismatch,
    /// A join token that is not `SWMTKN-1-<64 hex digest>-<25 [a-z0-9] secret>`.
    #[error("invalid join token: {reason} (expected SWMTKN-1-<ca digest>-<secret>)")]
    InvalidToken {
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused a certificate, key or protocol setting.
    #[error("{what}: {source}")]
    Tls {
        /// What was being built.
        what: String,
        /// rustls' error.
        source: rustls::Error,
    },
    /// The client-certificate verifier could not be built (for example an empty CA).
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

impl PkiError {
    pub(crate) fn cert(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
        let what = what.into();
        move |source| PkiError::Certificate { what, source }
    }

    pub(crate) fn parse(what: impl Into<String>, message: impl ToString) -> PkiError {
        PkiError::Parse {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn tls(what: impl Into<String>) -> impl FnOnce(rustls::Error) -> PkiError {
        let what = what.into();
        move |source| PkiError::Tls { what, source }
    }
}
