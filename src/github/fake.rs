//! (tests) GitHub's deployments and check-runs API in memory, behind [`Api`].

use std::sync::Mutex;

use async_trait::async_trait;

use crate::github::api::{hint, Api, ApiError, Earlier, NewCheckRun, NewDeployment, NewStatus};

/// GitHub's deployments API in memory, keeping state as GitHub does: ids,
/// deployments per environment (newest first), each one's status list. It
/// rejects what GitHub rejects: an unknown state, a description over 140
/// characters. `down` answers nothing; `denied` refuses like a token without
/// `deployments: write`; `unreadable` makes the deployment but answers
/// without its id.
#[derive(Default)]
pub struct FakeGitHub {
    pub down: bool,
    pub denied: bool,
    pub unreadable: bool,
    /// (id, environment, statuses)
    pub deployments: Mutex<Vec<(u64, String, Vec<NewStatus>)>>,
    pub check_runs: Mutex<Vec<NewCheckRun>>,
}

impl FakeGitHub {
    pub fn states(&self, id: u64) -> Vec<String> {
        self.statuses(id).into_iter().map(|s| s.state).collect()
    }

    pub fn statuses(&self, id: u64) -> Vec<NewStatus> {
        self.deployments.lock().unwrap().iter().find(|d| d.0 == id).map(|d| d.2.clone()).unwrap_or_default()
    }

    fn gate(&self, what: &str) -> Result<(), ApiError> {
        if self.down {
            return Err(ApiError::Unreachable { what: what.into(), attempts: 5, last: "502 Bad Gateway".into() });
        }
        if self.denied {
            let message = "Resource not accessible by integration".to_string();
            return Err(ApiError::Refused { what: what.into(), status: 403, hint: hint(403, &message, "deployments: write"), message });
        }
        Ok(())
    }
}

#[async_trait]
impl Api for FakeGitHub {
    async fn create_deployment(&self, d: &NewDeployment) -> Result<u64, ApiError> {
        self.gate("create a deployment")?;
        let mut all = self.deployments.lock().unwrap();
        let id = all.len() as u64 + 1;
        all.insert(0, (id, d.environment.clone(), vec![]));
        if self.unreadable {
            return Err(ApiError::Unreadable { what: "create a deployment".into(), status: 201, missing: "an id".into() });
        }
        Ok(id)
    }

    async fn create_status(&self, deployment: u64, s: &NewStatus) -> Result<(), ApiError> {
        self.gate("set a status")?;
        let known = ["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];
        let refuse = |m: &str| Err(ApiError::Refused { what: "set a status".into(), status: 422, message: m.into(), hint: None });
        if !known.contains(&s.state.as_str()) {
            return refuse("state is not included in the list");
        }
        if s.description.chars().count() > 140 {
            return refuse("description is too long (maximum is 140 characters)");
        }
        let mut all = self.deployments.lock().unwrap();
        match all.iter_mut().find(|d| d.0 == deployment) {
            Some(d) => {
                d.2.push(s.clone());
                Ok(())
            }
            None => Err(ApiError::Refused { what: "set a status".into(), status: 404, message: "Not Found".into(), hint: None }),
        }
    }

    async fn earlier(&self, environment: &str, limit: u8) -> Result<Vec<Earlier>, ApiError> {
        self.gate("list deployments")?;
        let all = self.deployments.lock().unwrap();
        Ok(all
            .iter()
            .filter(|d| d.1 == environment)
            .take(limit as usize)
            .map(|d| {
                let last = d.2.last();
                Earlier {
                    id: d.0,
                    state: last.map(|s| s.state.clone()),
                    log_url: last.and_then(|s| s.log_url.clone()),
                    environment_url: last.and_then(|s| s.environment_url.clone()),
                }
            })
            .collect())
    }

    async fn create_check_run(&self, c: &NewCheckRun) -> Result<u64, ApiError> {
        self.gate("create a check run")?;
        let mut runs = self.check_runs.lock().unwrap();
        runs.push(c.clone());
        Ok(runs.len() as u64)
    }
}
