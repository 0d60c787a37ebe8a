//! Image references: parsing and Docker-compatible normalisation.
//!
//! `busybox` → `docker.io/library/busybox:latest`; `localhost:5000/busybox` →
//! `localhost:5000/busybox:latest`; `repo@sha256:…` keeps the digest (and a tag next to it
//! is kept for display but the digest wins). The first path component is a registry when it
//! contains a `.` or a `:` or is `localhost`, as in Docker.

use std::fmt;

use super::error::RuntimeError;

/// Docker Hub's canonical name.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `host[:port]`, e.g. `localhost:5000` or `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    /// `algorithm:hex` digest, when given.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Reference, RuntimeError> {
        let bad = |reason: &str| RuntimeError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 255 {
            return Err(bad("longer than 255 characters"));
        }
        if s.chars().any(|c| c.is_whitespace()) {
            return Err(bad("contains whitespace"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((rest, d)) => (rest, Some(d)),
            None => (s, None),
        };
        if let Some(d) = digest {
            validate_digest(d).map_err(|r| bad(&r))?;
        }
        // A tag is after the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, more))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), more.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_string(),
            _ => registry,
        };
        validate_registry(&registry).map_err(|r| bad(&r))?;
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(|r| bad(&r))?;
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }

    /// What to ask the registry's manifests endpoint for: the digest if any, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// `registry/repository` without tag or digest.
    pub fn locator(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for Reference {
    /// The canonical name, used as containerd's image name:
    /// `registry/repository[:tag][@digest]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Checks `sha256:<64 hex>` (other algorithms: `alg:hex` with a sane alphabet).
pub fn validate_digest(d: &str) -> Result<(), String> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(format!("digest {d:?} is not ALGORITHM:HEX"));
    };
    if alg == "sha256" {
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "digest {d:?}: sha256 needs 64 lowercase hex digits"
            ));
        }
        return Ok(());
    }
    if alg.is_empty()
        || !alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
        || hex.len() < 32
        || !hex
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'=' || b == b'_' || b == b'-')
    {
        return Err(format!("digest {d:?} is not ALGORITHM:HEX"));
    }
    Ok(())
}

fn validate_tag(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {t:?}: tags are up to 128 letters, digits, '_', '.', '-' and do not start with '.' or '-'"
        ))
    }
}

fn validate_registry(r: &str) -> Result<(), String> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'[' | b']'))
    {
        return Err(format!("registry host {host:?} is not a host name"));
    }
    if let Some(p) = port {
        if p.parse::<u16>().is_err() {
            return Err(format!("registry port {p:?} is not a number"));
        }
    }
    Ok(())
}

fn validate_repository(repo: &str) -> Result<(), String> {
    for comp in repo.split('/') {
        let ok = !comp.is_empty()
            && comp.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
            && comp
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric())
            && comp
                .bytes()
                .last()
                .is_some_and(|b| b.is_ascii_alphanumeric());
        if !ok {
            return Err(format!(
                "repository component {comp:?}: lowercase letters, digits and separators ('.', '_', '-') between them"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn short_names_normalise_to_docker_hub_library() {
        let r = p("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(p("user/app:1.2").to_string(), "docker.io/user/app:1.2");
        assert_eq!(
            p("index.docker.io/library/busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn local_registry_references_keep_host_and_port() {
        let r = p("localhost:5000/busybox:latest");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "busybox");
        assert_eq!(r.object(), "latest");
        assert_eq!(r.to_string(), "localhost:5000/busybox:latest");
        assert_eq!(
            p("localhost/busybox").to_string(),
            "localhost/busybox:latest"
        );
        assert_eq!(
            p("registry.example.com/team/app").to_string(),
            "registry.example.com/team/app:latest"
        );
        assert_eq!(p("127.0.0.1:5000/a/b:v1").repository, "a/b");
    }

    #[test]
    fn digest_references_pull_by_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = p(&format!("localhost:5000/busybox@{d}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.object(), d);
        assert_eq!(r.to_string(), format!("localhost:5000/busybox@{d}"));
        let r = p(&format!("busybox:1@{d}"));
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.object(), d);
    }

    #[test]
    fn bad_references_are_rejected_with_a_reason() {
        for s in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@nodigest",
            "a//b",
            "localhost:99999/x",
            "has space",
            "x/",
        ] {
            let e = Reference::parse(s).expect_err(s);
            assert!(
                matches!(e, RuntimeError::InvalidReference { .. }),
                "{s}: {e}"
            );
        }
    }
}
