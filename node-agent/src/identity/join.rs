//! `shoal-agent join`: trading a join token for a node identity.
//!
//! 1. `GET /v1/join/ca` over TLS that verifies nothing (and sends nothing secret);
//! 2. the CA's sha256 must equal the digest in the token — otherwise stop, before any
//!    request carries the secret ([`IdentityError::CaMismatch`]);
//! 3. over TLS pinned to that CA, `POST /v1/join {"token","name","address","csr"}` with a
//!    certificate request for a key made here (the key never leaves the node);
//! 4. write `ca.crt`, `node.crt`, `node.key`, `join.json` ([`PkiDir::save`]).

use shoal_pki::JoinToken;

use super::error::IdentityError;
use super::files::{JoinInfo, NodeIdentity, PkiDir};
use shoal_api_types::join::JoinRequest as JoinBody;

use super::http;

/// What `shoal-agent join` is asked to do.
#[derive(Clone)]
pub struct JoinRequest {
    /// The join token (`SWMTKN-1-<ca digest>-<secret>`).
    pub token: JoinToken,
    /// The controller's URL, `https://HOST:7777`.
    pub controller: String,
    /// The node's name.
    pub name: String,
    /// The node's underlay address (its certificate's IP SAN).
    pub address: String,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token", &self.token)
            .field("controller", &self.controller)
            .field("name", &self.name)
            .field("address", &self.address)
            .finish()
    }
}

/// The controller URL as given, checked: `https://` (the join secret never travels in
/// the clear), a host, no path beyond `/`.
pub fn controller_url(url: &str) -> Result<reqwest::Url, IdentityError> {
    let bad = |reason: &str| IdentityError::InvalidController {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| bad(&format!("is not a URL ({e}); give https://HOST:7777")))?;
    if parsed.scheme() != "https" {
        return Err(bad(
            "must start with https:// (the join secret and certificates never travel in the clear)",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host; give https://HOST:7777"));
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() {
        return Err(bad("must be the controller's base URL, https://HOST:7777"));
    }
    Ok(parsed)
}

/// Joins the cluster and writes the identity into `dir` (steps in the module docs).
pub async fn join(req: &JoinRequest, dir: &PkiDir) -> Result<NodeIdentity, IdentityError> {
    shoal_api_types::validation::check_dns_label(&req.name).map_err(IdentityError::InvalidName)?;
    let controller = controller_url(&req.controller)?;

    // 1–2: the CA, pinned by the token's digest before anything secret is sent.
    let (ca_pem, presented) = http::fetch_ca_unverified(&controller).await?;
    let got = shoal_pki::ca_digest(&ca_pem).map_err(|e| IdentityError::BadAnswer {
        url: http::endpoint(&controller, "/v1/join/ca").to_string(),
        reason: e.to_string(),
    })?;
    if !shoal_pki::constant_time_eq(got.as_bytes(), req.token.ca_digest.as_bytes()) {
        return Err(IdentityError::CaMismatch {
            controller: controller.to_string(),
            got,
            want: req.token.ca_digest.clone(),
        });
    }
    tracing::debug!(
        digest = %got,
        presented = presented.len(),
        "the controller's CA matches the join token"
    );

    // 3: the certificate request, over TLS that trusts that CA only.
    let (csr, key_pem) = shoal_pki::csr(&req.name)?;
    let client = http::pinned_client(&ca_pem, None)?;
    let url = http::endpoint(&controller, "/v1/join");
    let issued = http::post_issued(
        &client,
        &url,
        "the join",
        &JoinBody {
            token: req.token.to_string(),
            name: req.name.clone(),
            address: req.address.clone(),
            csr: csr.clone(),
        },
    )
    .await?;
    check_issued(&url, &req.name, &issued.certificate)?;
    if issued.etcd_endpoints.is_empty() {
        return Err(IdentityError::BadAnswer {
            url: url.to_string(),
            reason: "etcdEndpoints is empty".into(),
        });
    }

    // 4: the files. The CA written is the one pinned by the token.
    let identity = NodeIdentity {
        ca_pem,
        cert_pem: issued.certificate,
        key_pem,
        join: JoinInfo {
            controller: controller.as_str().trim_end_matches('/').to_string(),
            etcd_endpoints: issued.etcd_endpoints,
            name: req.name.clone(),
        },
    };
    dir.save(&identity)?;
    Ok(identity)
}

/// The certificate the controller issued must be for `name`.
pub(crate) fn check_issued(
    url: &reqwest::Url,
    name: &str,
    cert_pem: &str,
) -> Result<(), IdentityError> {
    let info = shoal_pki::inspect(cert_pem).map_err(|e| IdentityError::BadAnswer {
        url: url.to_string(),
        reason: format!("certificate: {e}"),
    })?;
    if info.common_name != name {
        return Err(IdentityError::BadAnswer {
            url: url.to_string(),
            reason: format!(
                "the certificate is for {:?}, not for this node {name:?}",
                info.common_name
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controller_url_should_be_https_and_a_base_url() {
        assert_eq!(
            controller_url("https://10.0.0.1:7777").unwrap().as_str(),
            "https://10.0.0.1:7777/"
        );
        assert!(controller_url("https://ctl.example:7777/").is_ok());
        for (bad, says) in [
            ("http://10.0.0.1:7777", "https://"),
            ("10.0.0.1:7777", "https://"),
            ("https://10.0.0.1:7777/v1", "base URL"),
            ("not a url", "not a URL"),
        ] {
            let e = controller_url(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
