//! Tokens and secrets: the join token ([`JoinToken`], Swarm's
//! `SWMTKN-1-<ca digest>-<secret>`), API tokens, sha256 and constant-time comparison.
//!
//! Secrets are drawn from the thread-local CSPRNG; stored forms are sha256 digests and
//! every comparison of a secret goes through [`constant_time_eq`].

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::PkiError;

const PREFIX: &str = "SWMTKN-1-";
const SECRET_LEN: usize = 25;
const API_TOKEN_PREFIX: &str = "shoal_";
const API_TOKEN_LEN: usize = 40;
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A join token: the digest of the cluster CA the joining node must find (so it pins the
/// CA before sending anything) and the secret that admits it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the CA certificate's DER, 64 lowercase hex digits.
    pub ca_digest: String,
    /// 25 characters `[a-z0-9]`.
    pub secret: String,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &self.ca_digest)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}-{}", self.ca_digest, self.secret)
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<JoinToken, PkiError> {
        let bad = |reason: &str| PkiError::InvalidToken {
            reason: reason.to_string(),
        };
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad("it does not start with SWMTKN-1-"))?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or_else(|| bad("no '-' between the CA digest and the secret"))?;
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the CA digest is not 64 hexadecimal digits"));
        }
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| ALPHABET.contains(&b)) {
            return Err(bad("the secret is not 25 characters [a-z0-9]"));
        }
        Ok(JoinToken {
            ca_digest: digest.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

fn random_chars(n: usize) -> String {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A new join secret: 25 characters `[a-z0-9]` (about 129 bits).
pub fn new_join_secret() -> String {
    random_chars(SECRET_LEN)
}

/// A new API token: `shoal_` and 40 characters `[a-z0-9]` (about 206 bits).
pub fn new_api_token() -> String {
    format!("{API_TOKEN_PREFIX}{}", random_chars(API_TOKEN_LEN))
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Whether `a == b`, in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn join_token_should_round_trip_through_its_text() {
        let token = JoinToken {
            ca_digest: DIGEST.into(),
            secret: new_join_secret(),
        };
        let text = token.to_string();
        assert!(text.starts_with("SWMTKN-1-0123"));
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
    }

    #[test]
    fn join_token_should_refuse_malformed_text() {
        let secret = new_join_secret();
        for bad in [
            format!("SWMTKN-2-{DIGEST}-{secret}"),
            format!("{DIGEST}-{secret}"),
            format!("SWMTKN-1-{}-{secret}", &DIGEST[..63]),
            format!("SWMTKN-1-{DIGEST}0-{secret}"),
            format!("SWMTKN-1-{}-{secret}", DIGEST.replace('a', "g")),
            format!("SWMTKN-1-{DIGEST}-{}", &secret[..24]),
            format!("SWMTKN-1-{DIGEST}-{}", secret.to_uppercase() + "X"),
            format!("SWMTKN-1-{DIGEST}{secret}"),
            String::new(),
        ] {
            let err = bad.parse::<JoinToken>().unwrap_err();
            assert!(matches!(err, PkiError::InvalidToken { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn secrets_should_have_their_documented_shape_and_differ() {
        let s = new_join_secret();
        assert_eq!(s.len(), 25);
        assert!(s.bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(s, new_join_secret());
        let t = new_api_token();
        assert_eq!(t.len(), 46);
        assert!(t.starts_with("shoal_"));
        assert!(t[6..].bytes().all(|b| ALPHABET.contains(&b)));
        assert_ne!(t, new_api_token());
    }

    #[test]
    fn sha256_hex_should_match_the_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn constant_time_eq_should_compare_contents_and_lengths() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
    }
}
