//! The secrets key: the 32 bytes under which the controllers encrypt Secret payloads at
//! rest and fingerprint every payload (Secrets and Configs), and where it comes from.
//!
//! - Encryption: AES-256-GCM (`ring`) under a key derived from the secrets key with HKDF
//!   (`info` [`AEAD_INFO`]), a random 96-bit nonce per write, and the payload's kind and
//!   name (`secrets/pw`) as associated data, so a ciphertext moved to another name does not
//!   open. Stored value: [`SEALED_MAGIC`] ‖ nonce ‖ ciphertext ‖ tag.
//! - Fingerprints: `hmac-sha256:<hex>` of the payload under a second derived key (`info`
//!   [`FINGERPRINT_INFO`]): equal fingerprints mean equal payloads, and without the key a
//!   fingerprint says nothing about the data (no dictionary attack on short secrets).
//! - Where the key lives ([`KeySource`]): a file (`<data-dir>/secrets.key`, 0600, 64 hex
//!   digits; written by `shoal-controller init` or created at start when missing, never
//!   overwritten; `--secrets-key FILE` names another), so nodes, which never see the data
//!   dir, cannot decrypt what etcd holds. Controllers of one cluster must share it (HA:
//!   the same file on every replica). With `--insecure` and no `--secrets-key`, the key is
//!   kept in etcd itself (`<root>/private/secrets-key`, created by the first controller
//!   that needs it): that protects nothing, as nothing else of an insecure cluster is.
//! - Nothing here logs a key or a payload; `Debug` shows neither.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use shoal_store::{Store, StoreError};

/// The file name of the key in the controller's data dir.
pub const KEY_FILE: &str = "secrets.key";
/// The HKDF `info` of the payload encryption key.
pub const AEAD_INFO: &[u8] = b"shoal secrets aes-256-gcm v1";
/// The HKDF `info` of the fingerprint key.
pub const FINGERPRINT_INFO: &[u8] = b"shoal payload fingerprint hmac-sha256 v1";
/// What every sealed payload starts with (format version 1).
pub const SEALED_MAGIC: &[u8] = b"shoal-aead-1:";
/// The prefix of every fingerprint.
pub const FINGERPRINT_PREFIX: &str = "hmac-sha256:";

/// What went wrong with the secrets key or a sealed payload.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file does not hold a key.
    #[error("{path}: not a secrets key ({why}); it must hold 64 hex digits (32 bytes)")]
    Malformed {
        /// The file (or etcd key).
        path: String,
        /// Why.
        why: String,
    },
    /// A stored payload did not open: another key sealed it, or it was altered.
    #[error(
        "the stored payload of {what} cannot be decrypted with this controller's secrets key \
         (it was written under another key, or altered)"
    )]
    Open {
        /// `secrets/<name>`.
        what: String,
    },
    /// The operating system's random generator failed.
    #[error("the system random generator failed")]
    Random,
    /// etcd (the insecure key's home) failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The key, ready to seal, open and fingerprint.
pub struct SecretsKey {
    aead: LessSafeKey,
    fingerprint: hmac::Key,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretsKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"shoal").extract(bytes);
        let aead_key: UnboundKey = prk
            .expand(&[AEAD_INFO], &AES_256_GCM)
            .expect("32 bytes is a valid HKDF-SHA256 output length")
            .into();
        let fingerprint: hmac::Key = prk
            .expand(&[FINGERPRINT_INFO], hmac::HMAC_SHA256)
            .expect("32 bytes is a valid HKDF-SHA256 output length")
            .into();
        SecretsKey {
            aead: LessSafeKey::new(aead_key),
            fingerprint,
            rng: SystemRandom::new(),
        }
    }

    /// 32 fresh random bytes.
    pub fn generate_bytes() -> Result<[u8; 32], KeyError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(bytes)
    }

    /// Encrypts the payload of `<plural>/<name>`.
    pub fn seal(&self, plural: &str, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| KeyError::Random)?;
        let mut in_out = plaintext.to_vec();
        let aad = associated_data(plural, name);
        self.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| KeyError::Random)?;
        let mut sealed = Vec::with_capacity(SEALED_MAGIC.len() + NONCE_LEN + in_out.len());
        sealed.extend_from_slice(SEALED_MAGIC);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Decrypts what [`SecretsKey::seal`] made for `<plural>/<name>`.
    pub fn open(&self, plural: &str, name: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        let aad = associated_data(plural, name);
        let fail = || KeyError::Open { what: aad.clone() };
        let rest = sealed.strip_prefix(SEALED_MAGIC).ok_or_else(fail)?;
        if rest.len() < NONCE_LEN {
            return Err(fail());
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail())?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .aead
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut in_out)
            .map_err(|_| fail())?;
        Ok(plain.to_vec())
    }

    /// `hmac-sha256:<hex>` of a payload.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        let tag = hmac::sign(&self.fingerprint, data);
        format!("{FINGERPRINT_PREFIX}{}", hex::encode(tag.as_ref()))
    }

    /// Reads the key file at `path`, creating it (0600, random) when it does not exist.
    /// Two controllers starting at once end up with the same key: the file appears whole
    /// or not at all (written aside, then hard-linked into place, which fails if another
    /// got there first).
    pub fn load_or_create(path: &Path) -> Result<SecretsKey, KeyError> {
        match std::fs::read_to_string(path) {
            Ok(text) => return Ok(SecretsKey::from_bytes(&parse_key(&path_text(path), &text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KeyError::Io {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
        create_key_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(SecretsKey::from_bytes(&parse_key(&path_text(path), &text)?))
    }
}

fn path_text(path: &Path) -> String {
    path.display().to_string()
}

/// The associated data binding a ciphertext to its object.
fn associated_data(plural: &str, name: &str) -> String {
    format!("{plural}/{name}")
}

/// 64 hex digits (surrounding whitespace ignored) → 32 bytes.
pub fn parse_key(what: &str, text: &str) -> Result<[u8; 32], KeyError> {
    let malformed = |why: String| KeyError::Malformed {
        path: what.to_string(),
        why,
    };
    let bytes = hex::decode(text.trim()).map_err(|e| malformed(e.to_string()))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| malformed(format!("{} bytes", b.len())))
}

/// Writes a new random key to `path` unless a file is there (then leaves it alone).
/// Returns whether it wrote one.
pub fn create_key_file(path: &Path) -> Result<bool, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let text = format!("{}\n", hex::encode(SecretsKey::generate_bytes()?));
    let tmp = path.with_file_name(format!(
        ".{KEY_FILE}.{}.{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(io);
    drop(file);
    let linked = written.and_then(|_| match std::fs::hard_link(&tmp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(e)),
    });
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Where the API finds the key.
#[derive(Debug)]
pub enum KeySource {
    /// Loaded at start (a file).
    Ready(Arc<SecretsKey>),
    /// Kept in etcd at `<root>/private/secrets-key` (`--insecure` without `--secrets-key`,
    /// and the in-process test routers): read, or created by the first to need it.
    InEtcd(tokio::sync::OnceCell<Arc<SecretsKey>>),
}

impl KeySource {
    /// The key kept in etcd.
    pub fn in_etcd() -> KeySource {
        KeySource::InEtcd(tokio::sync::OnceCell::new())
    }

    /// The key (for [`KeySource::InEtcd`], read or created on first use).
    pub async fn key(&self, store: &Store) -> Result<Arc<SecretsKey>, KeyError> {
        match self {
            KeySource::Ready(k) => Ok(k.clone()),
            KeySource::InEtcd(cell) => cell
                .get_or_try_init(|| async {
                    let key = etcd_key(store);
                    let fresh = format!("{}\n", hex::encode(SecretsKey::generate_bytes()?));
                    let text = store.get_or_create_raw(&key, fresh).await?;
                    let text = String::from_utf8_lossy(&text).into_owned();
                    Ok(Arc::new(SecretsKey::from_bytes(&parse_key(&key, &text)?)))
                })
                .await
                .cloned(),
        }
    }
}

/// `<root>/private/secrets-key`: the insecure clusters' key.
pub fn etcd_key(store: &Store) -> String {
    format!("{}secrets-key", store.keys().private())
}

/// Checks that `key` opens the stored Secret payloads (the first few): a controller started
/// with the wrong key (a replaced data dir, a replica with another file) stops with a clear
/// error instead of failing every task that needs a secret.
pub async fn check_stored(store: &Store, key: &SecretsKey) -> Result<usize, KeyError> {
    use shoal_api_types::{Resource, SecretSpec};
    let prefix = store.keys().payload::<SecretSpec>("");
    let (stored, _) = store.list_raw(&prefix).await?;
    for kv in stored.iter().take(8) {
        let name = kv.key.strip_prefix(&prefix).unwrap_or(&kv.key);
        key.open(SecretSpec::PLURAL, name, &kv.value)?;
    }
    Ok(stored.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretsKey {
        SecretsKey::from_bytes(&[b; 32])
    }

    #[test]
    fn sealed_payloads_open_only_with_the_same_key_and_name() {
        let k = key(1);
        let sealed = k.seal("secrets", "pw", b"hunter2").unwrap();
        assert!(sealed.starts_with(SEALED_MAGIC));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(k.open("secrets", "pw", &sealed).unwrap(), b"hunter2");
        // Random nonces: the same payload seals differently each time.
        assert_ne!(sealed, k.seal("secrets", "pw", b"hunter2").unwrap());
        assert!(matches!(
            k.open("secrets", "other", &sealed),
            Err(KeyError::Open { ref what }) if what == "secrets/other"
        ));
        assert!(key(2).open("secrets", "pw", &sealed).is_err());
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert!(k.open("secrets", "pw", &altered).is_err());
        assert!(k.open("secrets", "pw", b"shoal-aead-1:short").is_err());
    }

    #[test]
    fn fingerprints_are_keyed_and_equal_only_for_equal_payloads() {
        let a = key(1).fingerprint(b"x");
        assert!(a.starts_with("hmac-sha256:") && a.len() == 12 + 64, "{a}");
        assert_eq!(a, key(1).fingerprint(b"x"));
        assert_ne!(a, key(1).fingerprint(b"y"));
        assert_ne!(a, key(2).fingerprint(b"x"));
    }

    #[test]
    fn a_key_file_is_created_once_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let first = SecretsKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = first.seal("secrets", "pw", b"x").unwrap();
        assert!(!create_key_file(&path).unwrap(), "never overwritten");
        let again = SecretsKey::load_or_create(&path).unwrap();
        assert_eq!(again.open("secrets", "pw", &sealed).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, "not hex").unwrap();
        let err = SecretsKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
