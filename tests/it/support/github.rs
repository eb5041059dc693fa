//! A fake GitHub REST API on loopback, for the action's tests: the part
//! capstan uses (deployments, deployment statuses, check runs), keeping state
//! the way GitHub does and rejecting what GitHub rejects:
//!
//! - no or a wrong token: 401 `Bad credentials`;
//! - a permission the token lacks: 403 `Resource not accessible by integration`;
//! - a deployment of a ref the repository does not have: 422 `No ref found for: …`;
//! - a status with an unknown state or a description over 140 characters: 422;
//! - a check run without `name`/`head_sha`, a completed one without a
//!   conclusion, a summary over 65,535 characters, more than 50 annotations,
//!   an annotation without its required fields: 422.
//!
//! Like GitHub, `auto_inactive` (on by default) retires earlier
//! *non-production* deployments of the environment on a success, and lists are
//! newest first. Faults can be queued (`500`, `502`, `429` with `Retry-After`),
//! optionally after the request took effect (a 502 from a proxy after GitHub
//! made the deployment). Every request is kept for assertions.
//!
//! [`FakeGitHub::answer_with_nulls`] makes every answer carry `null` wherever
//! GitHub's OpenAPI description allows it (a creator whose `gravatar_id`,
//! `name` and `email` are `null`, a `null` description, `environment_url`,
//! `log_url`, `target_url`, `performed_via_github_app`): what a client must
//! read without failing.

use std::collections::{HashSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    /// Every header but the authorization one, as `name: value` lines.
    pub other_headers: String,
    pub body: String,
}

#[derive(Debug, Clone)]
pub struct Fault {
    /// The first request whose `METHOD /path?query` contains this gets the fault.
    pub on: String,
    pub status: u16,
    pub retry_after: Option<u64>,
    /// Answer the fault only after doing what was asked.
    pub after_effect: bool,
}

#[derive(Debug, Clone)]
pub struct Deployment {
    pub id: u64,
    pub git_ref: String,
    pub environment: String,
    pub production: bool,
    pub task: String,
    pub payload: Value,
    /// (state, description, log_url, environment_url), oldest first.
    pub statuses: Vec<(String, String, Option<String>, Option<String>)>,
}

impl Deployment {
    pub fn states(&self) -> Vec<String> {
        self.statuses.iter().map(|s| s.0.clone()).collect()
    }
}

#[derive(Default)]
pub struct State {
    pub token: String,
    pub repo: String,
    pub refs: HashSet<String>,
    /// Permissions the token lacks: `deployments`, `checks`.
    pub denied: HashSet<String>,
    pub faults: VecDeque<Fault>,
    pub deployments: Vec<Deployment>,
    pub check_runs: Vec<Value>,
    pub requests: Vec<Request>,
    /// Answer with every nullable field `null`.
    pub nulls: bool,
    next_id: u64,
}

pub struct FakeGitHub {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

impl FakeGitHub {
    /// Serves `repo` (`owner/name`) for `token`, knowing the given refs (tags, shas).
    pub fn start(repo: &str, token: &str, refs: &[&str]) -> FakeGitHub {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake GitHub");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            repo: repo.into(),
            refs: refs.iter().map(|r| r.to_string()).collect(),
            next_id: 1000,
            ..Default::default()
        }));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        FakeGitHub { url, state }
    }

    pub fn deployments(&self) -> Vec<Deployment> {
        self.state.lock().unwrap().deployments.clone()
    }

    pub fn check_runs(&self) -> Vec<Value> {
        self.state.lock().unwrap().check_runs.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn fail_next(&self, faults: &[Fault]) {
        self.state.lock().unwrap().faults.extend(faults.iter().cloned());
    }

    pub fn deny(&self, permission: &str) {
        self.state.lock().unwrap().denied.insert(permission.into());
    }

    /// From now on, every nullable field of an answer is `null`.
    pub fn answer_with_nulls(&self) {
        self.state.lock().unwrap().nulls = true;
    }
}

fn serve(conn: TcpStream, state: &Mutex<State>) {
    let mut reader = BufReader::new(conn.try_clone().expect("clone the connection"));
    let mut conn = conn;
    // One request per connection is enough: every answer says `Connection: close`.
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let mut length = 0usize;
    let mut authorization = None;
    let mut other_headers = String::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        let (name, value) = h.split_once(':').map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).unwrap_or_default();
        match name.as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "authorization" => authorization = Some(value),
            _ => other_headers.push_str(&format!("{name}: {value}\n")),
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    let body = String::from_utf8_lossy(&body).to_string();
    let (status, extra, answer) = {
        let mut st = state.lock().unwrap();
        st.requests.push(Request { method: method.clone(), path: target.clone(), authorization: authorization.clone(), other_headers, body: body.clone() });
        handle(&mut st, &method, &target, authorization.as_deref(), &body)
    };
    let text = answer.to_string();
    let reason = match status {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        502 => "Bad Gateway",
        _ => "Error",
    };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = conn.flush();
}

fn error(status: u16, message: &str) -> (u16, String, Value) {
    (status, String::new(), json!({ "message": message, "documentation_url": "https://docs.github.com/rest" }))
}

fn now() -> String {
    // A fixed-format UTC timestamp is all the clients read.
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (d, s) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = d as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", s / 3600, s % 3600 / 60, s % 60)
}

/// The app the workflow's token acts as, with the fields the description lets be `null` set so.
fn creator() -> Value {
    json!({
        "login": "github-actions[bot]",
        "id": 41898282,
        "node_id": "MDM6Qm90NDE4OTgyODI=",
        "avatar_url": "https://avatars.githubusercontent.com/in/15368?v=4",
        "gravatar_id": null,
        "name": null,
        "email": null,
        "url": "https://api.github.com/users/github-actions%5Bbot%5D",
        "html_url": "https://github.com/apps/github-actions",
        "followers_url": "https://api.github.com/users/github-actions%5Bbot%5D/followers",
        "following_url": "https://api.github.com/users/github-actions%5Bbot%5D/following{/other_user}",
        "gists_url": "https://api.github.com/users/github-actions%5Bbot%5D/gists{/gist_id}",
        "starred_url": "https://api.github.com/users/github-actions%5Bbot%5D/starred{/owner}{/repo}",
        "subscriptions_url": "https://api.github.com/users/github-actions%5Bbot%5D/subscriptions",
        "organizations_url": "https://api.github.com/users/github-actions%5Bbot%5D/orgs",
        "repos_url": "https://api.github.com/users/github-actions%5Bbot%5D/repos",
        "events_url": "https://api.github.com/users/github-actions%5Bbot%5D/events{/privacy}",
        "received_events_url": "https://api.github.com/users/github-actions%5Bbot%5D/received_events",
        "type": "Bot",
        "site_admin": false,
    })
}

fn deployment_json(api: &str, repo: &str, d: &Deployment, nulls: bool) -> Value {
    if nulls {
        let mut v = deployment_json(api, repo, d, false);
        v["creator"] = creator();
        v["description"] = Value::Null;
        v["original_environment"] = Value::Null;
        v["performed_via_github_app"] = Value::Null;
        return v;
    }
    json!({
        "url": format!("{api}/repos/{repo}/deployments/{}", d.id),
        "id": d.id,
        "node_id": format!("DE_{}", d.id),
        "sha": "a".repeat(40),
        "ref": d.git_ref,
        "task": d.task,
        "payload": d.payload,
        "original_environment": d.environment,
        "environment": d.environment,
        "description": null,
        "creator": null,
        "created_at": now(),
        "updated_at": now(),
        "statuses_url": format!("{api}/repos/{repo}/deployments/{}/statuses", d.id),
        "repository_url": format!("{api}/repos/{repo}"),
        "transient_environment": false,
        "production_environment": d.production,
    })
}

fn status_json(api: &str, repo: &str, d: &Deployment, i: usize, nulls: bool) -> Value {
    if nulls {
        let mut v = status_json(api, repo, d, i, false);
        v["creator"] = creator();
        for k in ["description", "environment", "target_url", "log_url", "environment_url", "performed_via_github_app"] {
            v[k] = Value::Null;
        }
        return v;
    }
    let (state, description, log_url, env_url) = &d.statuses[i];
    json!({
        "url": format!("{api}/repos/{repo}/deployments/{}/statuses/{}", d.id, i + 1),
        "id": d.id * 100 + i as u64 + 1,
        "node_id": format!("DES_{}_{i}", d.id),
        "state": state,
        "creator": null,
        "description": description,
        "environment": d.environment,
        "target_url": log_url.clone().unwrap_or_default(),
        "log_url": log_url.clone().unwrap_or_default(),
        "environment_url": env_url.clone().unwrap_or_default(),
        "created_at": now(),
        "updated_at": now(),
        "deployment_url": format!("{api}/repos/{repo}/deployments/{}", d.id),
        "repository_url": format!("{api}/repos/{repo}"),
    })
}

fn query(target: &str, name: &str) -> Option<String> {
    let q = target.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == name).map(|(_, v)| v.replace("%20", " ").replace("%2F", "/")))
}

fn handle(st: &mut State, method: &str, target: &str, auth: Option<&str>, body: &str) -> (u16, String, Value) {
    let expected = [format!("Bearer {}", st.token), format!("token {}", st.token)];
    if !auth.is_some_and(|a| expected.iter().any(|e| e == a)) {
        return error(401, "Bad credentials");
    }
    let line = format!("{method} {target}");
    let fault = st.faults.iter().position(|f| line.contains(&f.on)).and_then(|i| st.faults.remove(i));
    if let Some(f) = &fault {
        if !f.after_effect {
            let extra = f.retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
            return (f.status, extra, json!({ "message": if f.status == 429 { "You have exceeded a secondary rate limit." } else { "Server Error" } }));
        }
    }
    let answer = route(st, method, target, body);
    match fault {
        Some(f) => {
            let extra = f.retry_after.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
            (f.status, extra, json!({ "message": "Server Error" }))
        }
        None => answer,
    }
}

fn route(st: &mut State, method: &str, target: &str, body: &str) -> (u16, String, Value) {
    let api = "http://fake-github";
    let repo = st.repo.clone();
    let nulls = st.nulls;
    let path = target.split('?').next().unwrap_or("");
    let Some(rest) = path.strip_prefix(&format!("/repos/{repo}/")) else { return error(404, "Not Found") };
    let segs: Vec<&str> = rest.split('/').collect();
    let json_body = || serde_json::from_str::<Value>(body).map_err(|_| error(400, "Problems parsing JSON"));
    match (method, segs.as_slice()) {
        ("POST", ["deployments"]) => {
            if st.denied.contains("deployments") {
                return error(403, "Resource not accessible by integration");
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(git_ref) = b.get("ref").and_then(Value::as_str) else { return error(422, "Invalid request.\n\n\"ref\" wasn't supplied.") };
            if !st.refs.contains(git_ref) {
                return error(422, &format!("No ref found for: {git_ref}"));
            }
            let environment = b.get("environment").and_then(Value::as_str).unwrap_or("production").to_string();
            st.next_id += 1;
            let d = Deployment {
                id: st.next_id,
                git_ref: git_ref.into(),
                production: b.get("production_environment").and_then(Value::as_bool).unwrap_or(environment == "production"),
                environment,
                task: b.get("task").and_then(Value::as_str).unwrap_or("deploy").into(),
                payload: b.get("payload").cloned().unwrap_or(json!({})),
                statuses: vec![],
            };
            let v = deployment_json(api, &repo, &d, nulls);
            st.deployments.insert(0, d);
            (201, String::new(), v)
        }
        ("GET", ["deployments"]) => {
            let env = query(target, "environment");
            let per_page = query(target, "per_page").and_then(|p| p.parse().ok()).unwrap_or(30usize);
            let list: Vec<Value> = st
                .deployments
                .iter()
                .filter(|d| env.as_ref().is_none_or(|e| *e == d.environment))
                .take(per_page)
                .map(|d| deployment_json(api, &repo, d, nulls))
                .collect();
            (200, String::new(), Value::Array(list))
        }
        ("POST", ["deployments", id, "statuses"]) => {
            if st.denied.contains("deployments") {
                return error(403, "Resource not accessible by integration");
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            let state = b.get("state").and_then(Value::as_str).unwrap_or("");
            if !["error", "failure", "inactive", "in_progress", "queued", "pending", "success"].contains(&state) {
                return error(422, "Validation Failed: state is not included in the list");
            }
            let description = b.get("description").and_then(Value::as_str).unwrap_or("").to_string();
            if description.chars().count() > 140 {
                return error(422, "Validation Failed: description is too long (maximum is 140 characters)");
            }
            let Some(idx) = st.deployments.iter().position(|d| id.parse() == Ok(d.id)) else { return error(404, "Not Found") };
            let s = |k: &str| b.get(k).and_then(Value::as_str).map(String::from);
            st.deployments[idx].statuses.push((state.into(), description, s("log_url"), s("environment_url")));
            // GitHub's auto_inactive: earlier non-production, non-transient deployments of the environment.
            if state == "success" && b.get("auto_inactive").and_then(Value::as_bool).unwrap_or(true) {
                let env = st.deployments[idx].environment.clone();
                for d in st.deployments.iter_mut().skip(idx + 1).filter(|d| d.environment == env && !d.production) {
                    if d.statuses.last().is_some_and(|s| s.0 != "inactive") {
                        d.statuses.push(("inactive".into(), String::new(), None, None));
                    }
                }
            }
            let d = &st.deployments[idx];
            (201, String::new(), status_json(api, &repo, d, d.statuses.len() - 1, nulls))
        }
        ("GET", ["deployments", id, "statuses"]) => {
            let Some(d) = st.deployments.iter().find(|d| id.parse() == Ok(d.id)) else { return error(404, "Not Found") };
            let per_page = query(target, "per_page").and_then(|p| p.parse().ok()).unwrap_or(30usize);
            let list: Vec<Value> = (0..d.statuses.len()).rev().take(per_page).map(|i| status_json(api, &repo, d, i, nulls)).collect();
            (200, String::new(), Value::Array(list))
        }
        ("POST", ["check-runs"]) => {
            if st.denied.contains("checks") {
                return error(403, "Resource not accessible by integration");
            }
            let b = match json_body() {
                Ok(b) => b,
                Err(e) => return e,
            };
            for k in ["name", "head_sha"] {
                if b.get(k).and_then(Value::as_str).is_none_or(str::is_empty) {
                    return error(422, &format!("Invalid request.\n\n\"{k}\" wasn't supplied."));
                }
            }
            if b.get("status").and_then(Value::as_str) == Some("completed") && b.get("conclusion").is_none() {
                return error(422, "Invalid request.\n\n\"conclusion\" is required when status is completed");
            }
            if let Some(c) = b.get("conclusion").and_then(Value::as_str) {
                if !["action_required", "cancelled", "failure", "neutral", "success", "skipped", "stale", "timed_out"].contains(&c) {
                    return error(422, "Invalid request.\n\nconclusion is not a member of the list");
                }
            }
            let output = b.get("output").cloned().unwrap_or(Value::Null);
            if output.get("summary").and_then(Value::as_str).is_some_and(|s| s.chars().count() > 65_535) {
                return error(422, "Invalid request.\n\nOnly 65535 characters are allowed; 65536 were supplied.");
            }
            let annotations = output.get("annotations").and_then(Value::as_array).cloned().unwrap_or_default();
            if annotations.len() > 50 {
                return error(422, "Invalid request.\n\nOnly 50 annotations are allowed per request.");
            }
            for a in &annotations {
                for k in ["path", "start_line", "end_line", "annotation_level", "message"] {
                    if a.get(k).is_none() {
                        return error(422, &format!("Invalid request.\n\n\"{k}\" wasn't supplied."));
                    }
                }
                if !["notice", "warning", "failure"].contains(&a["annotation_level"].as_str().unwrap_or("")) {
                    return error(422, "Invalid request.\n\nannotation_level is not a member of the list");
                }
            }
            st.next_id += 1;
            let mut run = b.clone();
            run["id"] = json!(st.next_id);
            run["node_id"] = json!(format!("CR_{}", st.next_id));
            run["url"] = json!(format!("{api}/repos/{repo}/check-runs/{}", st.next_id));
            run["html_url"] = json!(format!("https://github.com/{repo}/runs/{}", st.next_id));
            run["pull_requests"] = json!([]);
            st.check_runs.push(run.clone());
            (201, String::new(), run)
        }
        _ => error(404, "Not Found"),
    }
}
