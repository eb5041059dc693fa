//! GitHub's REST API, the part capstan uses: deployments, their statuses, and
//! check runs. The effect behind the [`Api`] trait; what to send is decided in
//! [`crate::github::publish`].
//!
//! Requests go through octocrab's client (auth, base URL from `GITHUB_API_URL`
//! so GitHub Enterprise works, TLS) with its own retry left out: it re-sends
//! POSTs on 5xx and duplicates deployments. capstan retries itself, with
//! backoff, on 5xx, 429 and secondary rate limits, honouring `Retry-After`;
//! before re-sending a deployment it looks for the one the failed attempt may
//! have created. The raw request methods are used because the typed builders
//! drop the response headers `Retry-After` is in.
//!
//! Answers are read for the fields capstan uses and nothing else (a
//! deployment's `id`, a status's `state`, `log_url` and `environment_url`),
//! each allowed to be `null` or missing where GitHub's description allows it:
//! a full model (octocrab's) fails on a `null` the description permits, such
//! as a creator's `gravatar_id`, after GitHub has already made the deployment.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /repos/{repo}/deployments`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewDeployment {
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub task: String,
    pub environment: String,
    pub description: String,
    pub auto_merge: bool,
    pub required_contexts: Vec<String>,
    pub production_environment: bool,
    pub transient_environment: bool,
    pub payload: Value,
}

/// `POST /repos/{repo}/deployments/{id}/statuses`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewStatus {
    pub state: String,
    pub description: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// GitHub retires earlier non-production deployments itself with this.
    pub auto_inactive: bool,
}

/// `POST /repos/{repo}/check-runs`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NewCheckRun {
    pub name: String,
    pub head_sha: String,
    pub status: String,
    pub conclusion: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details_url: Option<String>,
    pub output: CheckOutput,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckOutput {
    pub title: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub annotations: Vec<Annotation>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Annotation {
    pub path: String,
    pub start_line: u64,
    pub end_line: u64,
    /// `notice`, `warning` or `failure`.
    pub annotation_level: String,
    pub message: String,
    pub title: String,
}

/// One earlier deployment of the environment, with its newest status.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Earlier {
    pub id: u64,
    pub state: Option<String>,
    /// The newest status's `log_url` (GitHub answers `""` when none was given).
    pub log_url: Option<String>,
    /// The newest status's `environment_url`.
    pub environment_url: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ApiError {
    /// GitHub answered and said no: retrying will not help.
    #[error("GitHub refused to {what} ({status}): {message}{}", hint.as_deref().map(|h| format!("; {h}")).unwrap_or_default())]
    Refused { what: String, status: u16, message: String, hint: Option<String> },
    /// No answer, or only 5xx and rate limits, after every retry.
    #[error("GitHub did not {what}: {last} (after {attempts} attempts)")]
    Unreachable { what: String, attempts: u32, last: String },
    /// GitHub said yes, in an answer without what capstan reads from it.
    #[error("GitHub answered {status} to {what}, without {missing}")]
    Unreadable { what: String, status: u16, missing: String },
}

/// Why the GitHub client cannot be made.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ClientError {
    #[error("GITHUB_API_URL {url:?} is not a URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot make a GitHub client: {0}")]
    Build(String),
    #[error("GITHUB_REPOSITORY {0:?} is not owner/name")]
    BadRepository(String),
}

#[async_trait]
pub trait Api: Send + Sync {
    async fn create_deployment(&self, d: &NewDeployment) -> Result<u64, ApiError>;
    async fn create_status(&self, deployment: u64, s: &NewStatus) -> Result<(), ApiError>;
    /// The environment's most recent deployments, newest first, each with its newest status.
    async fn earlier(&self, environment: &str, limit: u8) -> Result<Vec<Earlier>, ApiError>;
    async fn create_check_run(&self, c: &NewCheckRun) -> Result<u64, ApiError>;
}

/// How hard to try before a report to GitHub becomes a warning.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: usize,
    pub first_wait: Duration,
    /// The longest wait capstan accepts, also when `Retry-After` asks for more.
    pub max_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, first_wait: Duration::from_secs(1), max_wait: Duration::from_secs(60) }
    }
}

pub struct Client {
    octo: octocrab::Octocrab,
    /// `owner/name`
    repo: String,
    retry: RetryPolicy,
}

/// One failed attempt, before the retry decision.
#[derive(Debug, Clone)]
struct Failure {
    status: Option<u16>,
    message: String,
    retry_after: Option<Duration>,
    retryable: bool,
}

impl Client {
    pub fn new(api_url: &str, token: &str, repo: &str, retry: RetryPolicy) -> Result<Client, ClientError> {
        crate::tls::install_provider();
        let octo = octocrab::OctocrabBuilder::new()
            .base_uri(api_url)
            .map_err(|e| ClientError::BadUrl { url: api_url.to_string(), reason: e.to_string() })?
            .personal_token(token.to_string())
            .set_connect_timeout(Some(Duration::from_secs(10)))
            .set_read_timeout(Some(Duration::from_secs(30)))
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        if repo.split('/').filter(|p| !p.is_empty()).count() != 2 {
            return Err(ClientError::BadRepository(repo.to_string()));
        }
        Ok(Client { octo, repo: repo.to_string(), retry })
    }

    /// One attempt: the status and JSON body of a 2xx answer, or what went wrong.
    async fn attempt(&self, method: &str, route: &str, body: Option<&Value>) -> Result<(u16, Value), Failure> {
        let sent = match method {
            "POST" => self.octo._post(route, body).await,
            _ => self.octo._get(route).await,
        };
        let response = sent.map_err(|e| Failure { status: None, message: source_chain(&e), retry_after: None, retryable: true })?;
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let retry_after = header("retry-after").and_then(|s| s.trim().parse::<u64>().ok()).map(Duration::from_secs);
        let remaining = header("x-ratelimit-remaining");
        let reset = header("x-ratelimit-reset").and_then(|s| s.parse::<u64>().ok());
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure { status: Some(status), message: source_chain(&e), retry_after: None, retryable: true })?
            .to_bytes();
        let json: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
        if (200..300).contains(&status) {
            return Ok((status, json));
        }
        let message =
            json.get("message").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
        let rate_limited =
            status == 429 || (status == 403 && (message.to_lowercase().contains("rate limit") || retry_after.is_some() || remaining.as_deref() == Some("0")));
        // A primary rate limit says when it resets; a secondary one without Retry-After wants at least a minute.
        let retry_after = retry_after.or_else(|| {
            if !rate_limited {
                return None;
            }
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
            Some(reset.map(|r| Duration::from_secs(r.saturating_sub(now).max(1))).unwrap_or(Duration::from_secs(60)))
        });
        Err(Failure { status: Some(status), message, retry_after, retryable: rate_limited || status >= 500 })
    }

    /// An attempt, retried with backoff while GitHub is down or rate-limiting:
    /// the status and body of the answer. `before_retry` runs before each
    /// re-send (the duplicate check of a create; what it finds counts as a 200).
    async fn call<B>(&self, what: &str, permission: &str, method: &str, route: &str, body: Option<&Value>, before_retry: B) -> Result<(u16, Value), ApiError>
    where
        B: Fn() -> futures_util::future::BoxFuture<'static, Option<Value>> + Send + Sync,
    {
        let tries = std::sync::atomic::AtomicU32::new(0);
        let max_wait = self.retry.max_wait;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.first_wait)
            .with_max_delay(max_wait)
            .with_max_times(self.retry.attempts.saturating_sub(1))
            .with_jitter();
        let result = (|| async {
            if tries.fetch_add(1, Ordering::SeqCst) > 0 {
                if let Some(found) = before_retry().await {
                    return Ok((200, found));
                }
            }
            self.attempt(method, route, body).await
        })
        .retry(backoff)
        .when(|f: &Failure| f.retryable && f.retry_after.is_none_or(|w| w <= max_wait))
        .adjust(|f: &Failure, planned| planned.map(|p| f.retry_after.unwrap_or(p)))
        .notify(|f: &Failure, wait| {
            tracing::warn!("GitHub: {what}: {} {}; retrying in {wait:?}", f.status.map(|s| s.to_string()).unwrap_or_default(), f.message)
        })
        .await;
        result.map_err(|f| {
            let attempts = tries.load(Ordering::SeqCst);
            match f.status {
                Some(s) if !f.retryable => {
                    ApiError::Refused { what: what.into(), status: s, message: f.message.clone(), hint: hint(s, &f.message, permission) }
                }
                Some(s) => ApiError::Unreachable { what: what.into(), attempts, last: format!("{s} {}", f.message) },
                None => ApiError::Unreachable { what: what.into(), attempts, last: f.message },
            }
        })
    }

    fn no_retry_check() -> futures_util::future::BoxFuture<'static, Option<Value>> {
        Box::pin(async { None })
    }
}

/// What to change when GitHub says no.
pub fn hint(status: u16, message: &str, permission: &str) -> Option<String> {
    let m = message.to_lowercase();
    if m.contains("resource not accessible by integration") {
        return Some(format!(
            "the workflow's token lacks `{permission}`: add `permissions: {{ {permission} }}` to the job (a pull request from a fork only ever gets a read-only token)"
        ));
    }
    match status {
        401 => Some("the github-token input is missing, expired or wrong (the default is `${{ github.token }}`)".into()),
        404 => Some("the repository is not visible to this token: check GITHUB_REPOSITORY and the token's access".into()),
        409 => Some(
            "the ref's required status checks have not passed, or it cannot be merged: capstan sends `auto_merge: false` and `required_contexts: []`, so this comes from the environment's protection rules or branch protection; let the checks finish or relax the rule".into(),
        ),
        422 if m.contains("no ref found") => Some("the ref does not exist in the repository: push the tag first".into()),
        _ => None,
    }
}

/// The part of a 2xx answer capstan reads (`T` names only those fields, each
/// optional where GitHub's description allows `null`); an answer without them
/// is [`ApiError::Unreadable`], with the status GitHub really sent.
fn read<T: serde::de::DeserializeOwned>(what: &str, status: u16, answer: Value) -> Result<T, ApiError> {
    let message = answer.get("message").and_then(Value::as_str).map(|m| format!(" (GitHub says: {m})")).unwrap_or_default();
    serde_json::from_value(answer).map_err(|e| ApiError::Unreadable { what: what.into(), status, missing: format!("what capstan reads from it: {e}{message}") })
}

/// A deployment or a check run, as far as capstan reads it.
#[derive(Debug, Deserialize)]
struct WithId {
    id: u64,
}

/// A deployment status, as far as capstan reads it: every field may be `null`.
#[derive(Debug, Deserialize)]
struct StatusRead {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    log_url: Option<String>,
    #[serde(default)]
    environment_url: Option<String>,
}

/// `""` is GitHub's "none" for a URL it was not given.
fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[async_trait]
impl Api for Client {
    async fn create_deployment(&self, d: &NewDeployment) -> Result<u64, ApiError> {
        let route = format!("/repos/{}/deployments", self.repo);
        let body = serde_json::to_value(d).expect("a deployment serializes");
        // A 5xx may come after GitHub made the deployment: look for it before sending again.
        let marker = d.payload.get("capstan").and_then(|c| c.get("attempt")).cloned();
        let probe_route = format!("/repos/{}/deployments?environment={}&per_page=10", self.repo, urlencode(&d.environment));
        let octo = self.octo.clone();
        let find = move || -> futures_util::future::BoxFuture<'static, Option<Value>> {
            let (octo, route, marker) = (octo.clone(), probe_route.clone(), marker.clone());
            Box::pin(async move {
                let marker = marker?;
                let list: Vec<Value> = octo.get(route, None::<&()>).await.ok()?;
                list.into_iter().find(|dep| dep.pointer("/payload/capstan/attempt") == Some(&marker))
            })
        };
        let what = "create a deployment";
        let found = |v: Option<Value>| v.and_then(|d| d.get("id").and_then(Value::as_u64));
        match self.call(what, "deployments: write", "POST", &route, Some(&body), &find).await {
            Ok((status, answer)) => match read::<WithId>(what, status, answer) {
                Ok(d) => Ok(d.id),
                // GitHub made it but the answer does not say which: the marker does.
                Err(e) => found(find().await).ok_or(e),
            },
            // The last attempt may have made it before its answer was lost.
            Err(e @ ApiError::Unreachable { .. }) => found(find().await).ok_or(e),
            Err(e) => Err(e),
        }
    }

    async fn create_status(&self, deployment: u64, s: &NewStatus) -> Result<(), ApiError> {
        let route = format!("/repos/{}/deployments/{deployment}/statuses", self.repo);
        let body = serde_json::to_value(s).expect("a status serializes");
        let what = format!("set deployment {deployment} {}", s.state);
        // A 2xx is all capstan needs: nothing of the answer is read.
        self.call(&what, "deployments: write", "POST", &route, Some(&body), Client::no_retry_check).await.map(|_| ())
    }

    async fn earlier(&self, environment: &str, limit: u8) -> Result<Vec<Earlier>, ApiError> {
        let route = format!("/repos/{}/deployments?environment={}&per_page={limit}", self.repo, urlencode(environment));
        let (status, list) = self.call("list deployments", "deployments: read", "GET", &route, None, Client::no_retry_check).await?;
        let list: Vec<WithId> = read("list deployments", status, list)?;
        let mut out = Vec::new();
        for d in list {
            let route = format!("/repos/{}/deployments/{}/statuses?per_page=1", self.repo, d.id);
            let (status, statuses) = self.call("list deployment statuses", "deployments: read", "GET", &route, None, Client::no_retry_check).await?;
            let newest = read::<Vec<StatusRead>>("list deployment statuses", status, statuses)?.into_iter().next();
            out.push(match newest {
                Some(s) => Earlier { id: d.id, state: s.state, log_url: non_empty(s.log_url), environment_url: non_empty(s.environment_url) },
                None => Earlier { id: d.id, ..Default::default() },
            });
        }
        Ok(out)
    }

    async fn create_check_run(&self, c: &NewCheckRun) -> Result<u64, ApiError> {
        let route = format!("/repos/{}/check-runs", self.repo);
        let body = serde_json::to_value(c).expect("a check run serializes");
        let what = "create a check run";
        let (status, answer) = self.call(what, "checks: write", "POST", &route, Some(&body), Client::no_retry_check).await?;
        read::<WithId>(what, status, answer).map(|r| r.id)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_add() {
        let h = hint(403, "Resource not accessible by integration", "deployments: write").unwrap();
        assert!(h.contains("permissions: { deployments: write }"), "{h}");
        assert!(hint(409, "Conflict: Commit status checks failed for v2.", "deployments: write").unwrap().contains("required_contexts"));
        assert!(hint(401, "Bad credentials", "x").unwrap().contains("github-token"));
        assert_eq!(hint(422, "Validation Failed", "x"), None);
    }

    /// A deployment and a status as GitHub's description allows them: every
    /// nullable field `null` (the creator's `gravatar_id`, `description`,
    /// `environment_url`, `performed_via_github_app`…).
    #[test]
    fn answers_are_read_for_what_capstan_uses_nulls_and_all() {
        let creator = serde_json::json!({"login": "github-actions[bot]", "id": 41898282, "node_id": "MDM6Qm90NDE4OTgyODI=", "avatar_url": "https://avatars.githubusercontent.com/in/15368?v=4", "gravatar_id": null, "name": null, "email": null, "url": "https://api.github.com/users/github-actions%5Bbot%5D", "type": "Bot", "site_admin": false});
        let deployment = serde_json::json!({
            "url": "https://api.github.com/repos/acme/shop/deployments/1001", "id": 1001, "node_id": "DE_kwDO", "sha": "a".repeat(40),
            "ref": "v2", "task": "deploy", "payload": {"version": "v2"}, "original_environment": "production", "environment": "production",
            "description": null, "creator": creator, "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z",
            "statuses_url": "https://api.github.com/repos/acme/shop/deployments/1001/statuses", "repository_url": "https://api.github.com/repos/acme/shop",
            "transient_environment": false, "production_environment": true, "performed_via_github_app": null
        });
        assert_eq!(read::<WithId>("create a deployment", 201, deployment).unwrap().id, 1001);
        let statuses = serde_json::json!([{
            "url": "https://api.github.com/repos/acme/shop/deployments/1001/statuses/1", "id": 1, "node_id": "DES_kwDO", "state": "success",
            "creator": creator, "description": null, "environment": null, "target_url": null, "log_url": null, "environment_url": null,
            "created_at": "2026-11-20T10:00:00Z", "updated_at": "2026-11-20T10:00:00Z", "performed_via_github_app": null
        }, {"state": "in_progress", "log_url": "", "environment_url": "https://shop.example"}]);
        let got: Vec<StatusRead> = read("list deployment statuses", 200, statuses).unwrap();
        assert_eq!((got[0].state.as_deref(), non_empty(got[0].log_url.clone())), (Some("success"), None));
        assert_eq!((non_empty(got[1].log_url.clone()), non_empty(got[1].environment_url.clone()).as_deref()), (None, Some("https://shop.example")));
        // An answer without what capstan reads says so, with the status GitHub really sent.
        let e = read::<WithId>("create a deployment", 202, serde_json::json!({"message": "Auto-merged main into v2 on deployment."})).unwrap_err();
        assert!(matches!(e, ApiError::Unreadable { status: 202, .. }), "{e:?}");
        assert!(e.to_string().starts_with("GitHub answered 202 to create a deployment, without what capstan reads from it"), "{e}");
        assert!(e.to_string().contains("Auto-merged main into v2"), "{e}");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(urlencode("prod eu/1"), "prod%20eu%2F1");
    }
}
