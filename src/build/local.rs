//! The engine capstan runs beside (`DOCKER_HOST`, else the local socket), as the
//! build needs it: build, tag, push ([`Images`]). The remote engines of the hosts
//! are `host::docker`'s; this one shares only its connection helpers.

use std::collections::HashMap;

use async_trait::async_trait;
use bollard::query_parameters::TagImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use crate::build::{BuildFailure, BuildRequest, Images, PushFailure};
use crate::core::secret::Credentials;
use crate::host::docker::{creds, pull, ready, tidy};
use crate::host::EngineError;

/// The engine capstan runs beside (`DOCKER_HOST`, else the local socket): builds and pushes.
pub struct LocalImages {
    docker: Docker,
}

impl LocalImages {
    pub async fn connect() -> Result<Self, EngineError> {
        Ok(LocalImages { docker: ready(Docker::connect_with_local_defaults()).await? })
    }
}

/// `Step 3/5 : RUN make` starts a step of the classic builder.
fn is_step(line: &str) -> bool {
    line.starts_with("Step ") && line.contains(" : ")
}

#[async_trait]
impl Images for LocalImages {
    async fn build(&self, req: BuildRequest<'_>, out: &(dyn Fn(String) + Send + Sync)) -> Result<String, BuildFailure> {
        use bollard::query_parameters::BuildImageOptionsBuilder;
        let args: HashMap<String, String> = req.args.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let labels: HashMap<String, String> = req.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut opts = BuildImageOptionsBuilder::new()
            .dockerfile(req.dockerfile)
            .t(req.tag)
            .rm(true)
            // Without forcerm a failed step leaves its container behind (shared/CRATES.md).
            .forcerm(true)
            .buildargs(&args)
            .labels(&labels);
        if let Some(t) = req.target {
            opts = opts.target(t);
        }
        if !req.cache_from.is_empty() {
            opts = opts.cachefrom(&req.cache_from.to_vec());
        }
        let body = bollard::body_full(bytes::Bytes::copy_from_slice(req.context));
        let mut stream = self.docker.build_image(opts.build(), None, Some(body));
        let mut step: Option<String> = None;
        let mut step_output: Vec<String> = Vec::new();
        let mut image_id: Option<String> = None;
        let mut partial = String::new();
        let fail = |step: &Option<String>, output: &Vec<String>, message: String| BuildFailure { step: step.clone(), output: output.clone(), message };
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(i) => i,
                Err(bollard::errors::Error::DockerStreamError { error }) => return Err(fail(&step, &step_output, error)),
                Err(bollard::errors::Error::DockerResponseServerError { message, .. }) => return Err(fail(&step, &step_output, message)),
                Err(e) => return Err(fail(&step, &step_output, tidy(&e.to_string()))),
            };
            if let Some(text) = info.stream {
                partial.push_str(&text);
                while let Some(i) = partial.find('\n') {
                    let line: String = partial[..i].trim_end_matches('\r').to_string();
                    partial.drain(..=i);
                    if line.trim().is_empty() {
                        continue;
                    }
                    if is_step(&line) {
                        step = Some(line.clone());
                        step_output.clear();
                    } else {
                        step_output.push(line.clone());
                    }
                    out(line);
                }
            }
            if let Some(detail) = info.error_detail {
                return Err(fail(&step, &step_output, detail.message.unwrap_or_else(|| "the build failed".into())));
            }
            if let Some(id) = info.aux.and_then(|a| a.id) {
                image_id = Some(id);
            }
        }
        if !partial.trim().is_empty() {
            out(partial.trim_end().to_string());
        }
        match image_id {
            Some(id) => Ok(id),
            // Older engines only say "Successfully built <id>": ask for the tag instead.
            None => match self.docker.inspect_image(req.tag).await {
                Ok(i) => Ok(i.id.unwrap_or_default()),
                Err(e) => Err(fail(&step, &step_output, format!("the build ended without an image: {}", tidy(&e.to_string())))),
            },
        }
    }

    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let opts = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.docker.tag_image(image, Some(opts)).await.map_err(|e| EngineError::Other(tidy(&e.to_string())))
    }

    async fn push(&self, repo: &str, tag: &str, c: Option<&Credentials>) -> Result<String, PushFailure> {
        let opts = bollard::query_parameters::PushImageOptionsBuilder::new().tag(tag).build();
        let mut stream = self.docker.push_image(repo, Some(opts), creds(c));
        let mut digest = None;
        let classify_push = |m: String| {
            let l = m.to_lowercase();
            if l.contains("unauthorized") || l.contains("no basic auth") || l.contains("denied") || l.contains("authentication required") {
                PushFailure::Auth(m)
            } else {
                PushFailure::Other(m)
            }
        };
        // Errors arrive inside the stream: drain it to the end.
        while let Some(item) = stream.next().await {
            let info = match item {
                Ok(i) => i,
                Err(bollard::errors::Error::DockerStreamError { error }) => return Err(classify_push(error)),
                Err(e) => return Err(classify_push(tidy(&e.to_string()))),
            };
            if let Some(d) = info.error_detail.and_then(|d| d.message) {
                return Err(classify_push(d));
            }
            // "v1.4.2: digest: sha256:… size: 527"
            if let Some(status) = info.status.as_deref() {
                if let Some(rest) = status.split("digest: ").nth(1) {
                    digest = rest.split_whitespace().next().map(str::to_string);
                }
            }
        }
        digest.filter(|d| d.starts_with("sha256:")).ok_or_else(|| PushFailure::Other(format!("the engine did not report the digest of {repo}:{tag}")))
    }

    async fn has_any(&self, repo: &str) -> bool {
        let mut filters = HashMap::new();
        filters.insert("reference".to_string(), vec![repo.to_string()]);
        let opts = bollard::query_parameters::ListImagesOptionsBuilder::new().filters(&filters).build();
        matches!(self.docker.list_images(Some(opts)).await, Ok(list) if !list.is_empty())
    }

    async fn pull(&self, reference: &str, c: Option<&Credentials>) -> Result<(), EngineError> {
        pull(&self.docker, reference, c).await.map_err(|e| EngineError::Other(tidy(&e.to_string())))
    }

    async fn repo_digests(&self, image: &str) -> Vec<String> {
        self.docker.inspect_image(image).await.ok().and_then(|i| i.repo_digests).unwrap_or_default()
    }
}
