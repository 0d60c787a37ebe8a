//! [`ControllerClient`]: the agent's requests to the controller while it runs — today the
//! payloads of a task it starts (`GET /v1/node/tasks/<id>/payloads`, the
//! [`PayloadSource`] of `crate::taskfiles`). With an identity it speaks mutual TLS pinned to
//! the cluster CA with the node's certificate (the controller names the node by the
//! certificate's CN), and takes the new certificate after each renewal
//! ([`ControllerClient::set_identity`], called by the `Renewer`); `--insecure` agents use
//! plain HTTP. Several controller URLs are tried in turn (HA controllers). Answers are
//! never logged: they hold secrets.

use std::sync::RwLock;

use async_trait::async_trait;
use shoal_api_types::TaskPayloads;

use super::error::IdentityError;
use super::files::NodeIdentity;
use super::http;
use crate::taskfiles::{FetchError, PayloadSource};

/// The agent's client toward the controller.
pub struct ControllerClient {
    urls: Vec<reqwest::Url>,
    client: RwLock<reqwest::Client>,
}

impl std::fmt::Debug for ControllerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.urls.iter().map(|u| u.as_str()).collect();
        f.debug_struct("ControllerClient")
            .field("urls", &urls)
            .finish_non_exhaustive()
    }
}

fn parse_urls(urls: &[String], https: bool) -> Result<Vec<reqwest::Url>, IdentityError> {
    urls.iter()
        .map(|u| {
            let bad = |reason: String| IdentityError::InvalidController {
                url: u.clone(),
                reason,
            };
            let url = reqwest::Url::parse(u.trim())
                .map_err(|e| bad(format!("is not a URL ({e}); give https://HOST:7777")))?;
            match (https, url.scheme()) {
                (true, "https") | (false, "http") => Ok(url),
                (true, _) => Err(bad(
                    "must start with https:// (an agent with an identity fetches secrets over \
                     mutual TLS only)"
                        .into(),
                )),
                (false, _) => Err(bad(
                    "must start with http:// (an --insecure agent has no certificate to show)"
                        .into(),
                )),
            }
        })
        .collect()
}

impl ControllerClient {
    /// Mutual TLS with `identity` to `urls`, or the controller the node joined through
    /// when none is given.
    pub fn node(identity: &NodeIdentity, urls: &[String]) -> Result<Self, IdentityError> {
        let urls = if urls.is_empty() {
            vec![identity.join.controller.clone()]
        } else {
            urls.to_vec()
        };
        Ok(ControllerClient {
            urls: parse_urls(&urls, true)?,
            client: RwLock::new(Self::client_for(identity)?),
        })
    }

    /// Plain HTTP to `urls` (`--insecure`).
    pub fn plain(urls: &[String]) -> Result<Self, IdentityError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| IdentityError::Client(e.to_string()))?;
        Ok(ControllerClient {
            urls: parse_urls(urls, false)?,
            client: RwLock::new(client),
        })
    }

    fn client_for(identity: &NodeIdentity) -> Result<reqwest::Client, IdentityError> {
        http::pinned_client(
            &identity.ca_pem,
            Some((&identity.cert_pem, &identity.key_pem)),
        )
    }

    /// Uses `identity` (a renewed certificate) from now on.
    pub fn set_identity(&self, identity: &NodeIdentity) -> Result<(), IdentityError> {
        let client = Self::client_for(identity)?;
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        Ok(())
    }

    /// The controllers it asks, in order.
    pub fn urls(&self) -> &[reqwest::Url] {
        &self.urls
    }
}

/// `base` with the path of task `task`'s payloads (the id as one escaped segment).
pub fn payloads_url(base: &reqwest::Url, task: &str) -> reqwest::Url {
    let mut url = http::endpoint(base, "/");
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .clear()
            .extend(["v1", "node", "tasks", task, "payloads"]);
    }
    url
}

#[async_trait]
impl PayloadSource for ControllerClient {
    async fn fetch(&self, task: &str) -> Result<TaskPayloads, FetchError> {
        let client = self
            .client
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last = FetchError::Temporary("no controller URL".into());
        for base in &self.urls {
            let url = payloads_url(base, task);
            let result = match client.get(url.clone()).send().await {
                Ok(resp) => http::text(&url, "the task's secrets and configs", resp).await,
                Err(e) => Err(IdentityError::unreachable(&url, e)),
            };
            match result {
                Ok(body) => {
                    return serde_json::from_str(&body).map_err(|e| {
                        // Not the body: it may hold secrets.
                        FetchError::Refused(format!(
                            "{url} answered something else than payloads: {e}"
                        ))
                    });
                }
                Err(e) if e.is_temporary() => last = FetchError::Temporary(e.to_string()),
                Err(e) => return Err(FetchError::Refused(e.to_string())),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payloads_url_should_take_the_task_id_as_one_segment() {
        let base = reqwest::Url::parse("https://127.0.0.1:7777").unwrap();
        assert_eq!(
            payloads_url(&base, "0123abcd").as_str(),
            "https://127.0.0.1:7777/v1/node/tasks/0123abcd/payloads"
        );
        assert_eq!(
            payloads_url(&base, "../x").as_str(),
            "https://127.0.0.1:7777/v1/node/tasks/..%2Fx/payloads"
        );
    }

    #[test]
    fn controller_urls_should_match_the_agents_security() {
        assert!(ControllerClient::plain(&["http://127.0.0.1:7777".into()]).is_ok());
        let e = ControllerClient::plain(&["https://127.0.0.1:7777".into()]).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
        assert!(parse_urls(&["http://x:1".into()], true).is_err());
        assert!(parse_urls(&["nonsense".into()], false).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_controller_is_temporary_and_the_next_url_is_tried() {
        // Port 9 on loopback: nothing listens.
        let client = ControllerClient::plain(&["http://127.0.0.1:9".into()]).unwrap();
        let e = client.fetch("t1").await.unwrap_err();
        assert!(matches!(e, FetchError::Temporary(_)), "{e:?}");

        // A controller that answers 403, after one that does not answer.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/v1/node/tasks/{id}/payloads",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FORBIDDEN,
                    axum::Json(shoal_api_types::Status::new(
                        403,
                        "Forbidden",
                        "task t1 is not node-2's",
                    )),
                )
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client =
            ControllerClient::plain(&["http://127.0.0.1:9".into(), format!("http://{addr}")])
                .unwrap();
        let e = client.fetch("t1").await.unwrap_err();
        assert!(
            matches!(&e, FetchError::Refused(m) if m.contains("403") && m.contains("not node-2's")),
            "{e:?}"
        );
        server.abort();
    }
}
