//! The registry's own HTTP API (distribution v2), from where capstan runs:
//! which tags a repository has (to decide whether a release is the highest,
//! and which image to take the build cache from), and giving a pushed manifest
//! more tags (one small PUT each, where a `docker push` per tag would check
//! every layer again). Also the first check of the credentials, before
//! anything is built.
//!
//! Authentication follows the registry's challenge: Basic (an htpasswd
//! registry) or a Bearer token from the realm it names (ghcr.io, Docker Hub),
//! each with the configured user and password. Loopback registries are spoken
//! to over plain HTTP, as the Docker engine does; all others over HTTPS.

use std::sync::PoisonError;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, AUTHORIZATION, LINK, WWW_AUTHENTICATE};
use reqwest::StatusCode;

use crate::core::secret::Credentials;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused the credentials (or asked for some and had none).
    #[error("{0}")]
    Auth(String),
    /// Could not reach the registry, or it answered something unexpected.
    #[error("{0}")]
    Other(String),
}

/// What the build needs to know from the registry. Real: [`RegistryClient`].
#[async_trait]
pub trait Registry: Send + Sync {
    /// Every tag of `repo` (`host/path`); empty when the repository does not exist yet.
    async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError>;
    /// The digest `repo:tag` points at, if the tag exists.
    async fn digest(&self, repo: &str, tag: &str) -> Result<Option<String>, RegistryError>;
    /// Points each of `tags` at the manifest `digest` already in `repo`.
    async fn copy_tags(&self, repo: &str, digest: &str, tags: &[String]) -> Result<(), RegistryError>;
}

pub struct RegistryClient {
    http: reqwest::Client,
    creds: Option<Credentials>,
    /// The `Authorization` value that answered each scope's challenge, reused.
    auth: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// Every manifest type a tag may point at.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// `ghcr.io/acme/web` -> (`https://ghcr.io`, `acme/web`), the way Docker reads a reference.
pub fn split_repo(repo: &str) -> (String, String) {
    let (host, path) = match repo.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_string(), p.to_string()),
        _ => ("docker.io".to_string(), repo.to_string()),
    };
    let (host, path) = if host == "docker.io" || host == "index.docker.io" {
        let path = if path.contains('/') { path } else { format!("library/{path}") };
        ("registry-1.docker.io".to_string(), path)
    } else {
        (host, path)
    };
    let scheme = if is_loopback(&host) { "http" } else { "https" };
    (format!("{scheme}://{host}"), path)
}

fn is_loopback(host: &str) -> bool {
    let name = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

impl RegistryClient {
    pub fn new(creds: Option<Credentials>) -> Result<Self, RegistryError> {
        crate::tls::install_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .no_proxy()
            .build()
            .map_err(|e| RegistryError::Other(format!("cannot start an HTTP client: {e}")))?;
        Ok(RegistryClient { http, creds, auth: Default::default() })
    }

    fn who(&self) -> String {
        match &self.creds {
            Some(c) => format!("user {}", c.username),
            None => "no credentials".into(),
        }
    }

    /// A request with the registry's challenge answered (once per scope). `Ok(None)` is a 404.
    async fn send(&self, make: impl Fn() -> reqwest::RequestBuilder, url: &str, scope: &str) -> Result<Option<reqwest::Response>, RegistryError> {
        let unreachable = |e: reqwest::Error| RegistryError::Other(format!("{url}: {}", without_url(&e)));
        let known = self.auth.lock().unwrap_or_else(PoisonError::into_inner).get(scope).cloned();
        let with = |auth: Option<&String>| match auth {
            Some(a) => make().header(AUTHORIZATION, a.as_str()),
            None => make(),
        };
        let first = with(known.as_ref()).send().await.map_err(unreachable)?;
        let resp = if first.status() == StatusCode::UNAUTHORIZED {
            let auth = self.authorization(first.headers(), scope).await?;
            let resp = with(Some(&auth)).send().await.map_err(unreachable)?;
            self.auth.lock().unwrap_or_else(PoisonError::into_inner).insert(scope.to_string(), auth);
            resp
        } else {
            first
        };
        match resp.status() {
            s if s.is_success() => Ok(Some(resp)),
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(RegistryError::Auth(format!("the registry refused the credentials ({}): {}", self.who(), resp.status())))
            }
            s => Err(RegistryError::Other(format!("{url}: the registry answered {s}"))),
        }
    }

    /// The `Authorization` value the challenge in `headers` asks for.
    async fn authorization(&self, headers: &HeaderMap, scope: &str) -> Result<String, RegistryError> {
        let challenge = headers.get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let basic = self.creds.as_ref().map(|c| {
            use base64::Engine as _;
            let raw = format!("{}:{}", c.username, c.password.expose());
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
        });
        let (scheme, params) = parse_challenge(&challenge);
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| RegistryError::Auth("the registry asks for credentials and none are configured (registry: in the config)".into()));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(RegistryError::Other(format!("the registry asks for an unknown authentication scheme {scheme:?}")));
        }
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).unwrap_or_default();
        if !realm.starts_with("https://") && !realm.starts_with("http://") {
            return Err(RegistryError::Other(format!("the registry's token realm {realm:?} is not a URL")));
        }
        let mut query: Vec<(String, String)> = params.into_iter().filter(|(k, _)| k == "service").collect();
        query.push(("scope".into(), scope.to_string()));
        let mut req = self.http.get(&realm).query(&query);
        if let Some(b) = basic {
            req = req.header(AUTHORIZATION, b);
        }
        let resp = req.send().await.map_err(|e| RegistryError::Other(format!("token service: {}", without_url(&e))))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Auth(format!("the registry's token service refused the credentials ({}): {}", self.who(), resp.status())))
            }
            s => return Err(RegistryError::Other(format!("the registry's token service answered {s}"))),
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp.json().await.map_err(|e| RegistryError::Other(format!("the token service's answer: {}", without_url(&e))))?;
        let token = t.token.or(t.access_token).ok_or_else(|| RegistryError::Other("the token service answered no token".into()))?;
        Ok(format!("Bearer {token}"))
    }
}

#[async_trait]
impl Registry for RegistryClient {
    async fn tags(&self, repo: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct List {
            tags: Option<Vec<String>>,
        }
        let (base, path) = split_repo(repo);
        let scope = format!("repository:{path}:pull");
        let mut url = format!("{base}/v2/{path}/tags/list?n=1000");
        let mut out = Vec::new();
        // Follow `Link: <…>; rel="next"` pages, with a bound.
        for _ in 0..100 {
            let Some(resp) = self.send(|| self.http.get(&url), &url, &scope).await? else { return Ok(out) };
            let next = resp.headers().get(LINK).and_then(|v| v.to_str().ok()).and_then(next_link);
            let list: List = resp.json().await.map_err(|e| RegistryError::Other(format!("{repo}: the tag list: {}", without_url(&e))))?;
            out.extend(list.tags.unwrap_or_default());
            match next {
                Some(n) if n.starts_with('/') => url = format!("{base}{n}"),
                Some(n) => url = n,
                None => break,
            }
        }
        Ok(out)
    }

    async fn digest(&self, repo: &str, tag: &str) -> Result<Option<String>, RegistryError> {
        let (base, path) = split_repo(repo);
        let scope = format!("repository:{path}:pull");
        let url = format!("{base}/v2/{path}/manifests/{tag}");
        let resp = self.send(|| self.http.head(&url).header(reqwest::header::ACCEPT, MANIFEST_TYPES), &url, &scope).await?;
        Ok(resp.and_then(|r| r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(String::from)))
    }

    async fn copy_tags(&self, repo: &str, digest: &str, tags: &[String]) -> Result<(), RegistryError> {
        let (base, path) = split_repo(repo);
        let scope = format!("repository:{path}:pull,push");
        let url = format!("{base}/v2/{path}/manifests/{digest}");
        let resp = self
            .send(|| self.http.get(&url).header(reqwest::header::ACCEPT, MANIFEST_TYPES), &url, &scope)
            .await?
            .ok_or_else(|| RegistryError::Other(format!("{repo}@{digest}: the registry does not have this manifest")))?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
            .to_string();
        let body = resp.bytes().await.map_err(|e| RegistryError::Other(format!("{repo}@{digest}: {}", without_url(&e))))?;
        let puts = tags.iter().map(|tag| {
            let (url, body, media_type, scope) = (format!("{base}/v2/{path}/manifests/{tag}"), body.clone(), media_type.clone(), scope.clone());
            async move {
                let make = || self.http.put(&url).header(reqwest::header::CONTENT_TYPE, media_type.as_str()).body(body.clone());
                match self.send(make, &url, &scope).await? {
                    Some(r) => match r.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
                        Some(d) if d != digest => Err(RegistryError::Other(format!("{repo}:{tag}: the registry stored {d}, not {digest}"))),
                        _ => Ok(()),
                    },
                    None => Err(RegistryError::Other(format!("{repo}:{tag}: the registry answered 404 to the tag's manifest"))),
                }
            }
        });
        for r in futures_util::future::join_all(puts).await {
            r?;
        }
        Ok(())
    }
}

/// `Bearer realm="https://…",service="ghcr.io",scope="…"` -> ("Bearer", [(realm, …), …]).
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (quoted[..end].to_string(), &quoted[end + 1..]),
                None => (quoted.to_string(), ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (after[..end].trim().to_string(), &after[end..]),
                None => (after.trim().to_string(), ""),
            }
        };
        params.push((key, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

/// `</v2/x/tags/list?last=a&n=1000>; rel="next"` -> the URL.
fn next_link(h: &str) -> Option<String> {
    h.split(',').find(|part| part.contains("rel=\"next\"")).and_then(|part| {
        let start = part.find('<')? + 1;
        let end = part.find('>')?;
        Some(part[start..end].to_string())
    })
}

/// reqwest's error text without the URL it carries (a URL could carry a token).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories() {
        assert_eq!(split_repo("ghcr.io/acme/web"), ("https://ghcr.io".into(), "acme/web".into()));
        assert_eq!(split_repo("127.0.0.1:5000/demo"), ("http://127.0.0.1:5000".into(), "demo".into()));
        assert_eq!(split_repo("localhost:5000/a/b"), ("http://localhost:5000".into(), "a/b".into()));
        assert_eq!(split_repo("nginx"), ("https://registry-1.docker.io".into(), "library/nginx".into()));
        assert_eq!(split_repo("acme/web"), ("https://registry-1.docker.io".into(), "acme/web".into()));
        assert_eq!(split_repo("docker.io/acme/web"), ("https://registry-1.docker.io".into(), "acme/web".into()));
    }

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:a/b:pull""#);
        assert_eq!(s, "Bearer");
        assert_eq!(p[0], ("realm".into(), "https://ghcr.io/token".into()));
        assert_eq!(p[1], ("service".into(), "ghcr.io".into()));
        assert_eq!(p[2], ("scope".into(), "repository:a/b:pull".into()));
        let (s, p) = parse_challenge(r#"Basic realm="capstan-test-registry""#);
        assert_eq!((s.as_str(), p.len()), ("Basic", 1));
        assert_eq!(next_link(r#"</v2/x/tags/list?last=b&n=2>; rel="next""#).as_deref(), Some("/v2/x/tags/list?last=b&n=2"));
        assert_eq!(next_link(""), None);
    }
}
