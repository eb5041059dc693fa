//! `capstan build`, and the build step of `deploy`: each service with a
//! `build:` block is built on the local Docker engine, tagged by the release
//! rules of [`crate::core::tags`], and (with `--push`) pushed; the pushed digest is
//! what the deploy that follows runs.
//!
//! Order, so that a failure leaves nothing half-done: ask the registry which
//! tags exist (this also checks the credentials) → build every service
//! (bounded parallelism) → only if all built, push. Planning
//! ([`plan`]) is pure; the engine is behind [`Images`] (real: `local.rs`) and the
//! registry behind [`Registry`] (real: `registry.rs`), with fakes in the tests
//! below. Where the source came from (commit, URL, time) is `source.rs`'s.

pub mod context;
pub mod dockerfile;
pub mod dockerignore;
pub mod local;
pub mod plan;
pub mod registry;
pub mod source;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::build::context::ContextError;
use crate::build::plan::{plan, BuildPlan};
use crate::build::registry::{Registry, RegistryError};
use crate::build::source::{created, source, Source};
use crate::core::config::{Config, Service};
use crate::core::image;
use crate::core::release::Version;
use crate::core::secret::Credentials;
use crate::error::{exit, Diagnostic};
use crate::host::EngineError;
use crate::output::events::{Built, Event, Sink};

/// Why a build stopped, before any push or at one. The registry's own error is
/// the source of [`BuildError::Registry`]; the others read as one line.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The engine capstan builds on (`DOCKER_HOST`) did not answer.
    #[error("local Docker engine: {0}")]
    Engine(EngineError),
    /// The registry's HTTP client could not be made.
    #[error("{0}")]
    Client(RegistryError),
    #[error("services.{service}.build.{}: {}", .error.key, .error.message)]
    Context { service: String, error: ContextError },
    #[error("services.{service}.build.context: packing the context panicked: {reason}")]
    PackPanicked { service: String, reason: tokio::task::JoinError },
    /// The engine's build failed: the step, its last lines of output, the engine's message.
    #[error("{}", failed_text(.service, .dockerfile, .failure))]
    Failed { service: String, dockerfile: PathBuf, failure: BuildFailure },
    #[error("services.{service}: cannot tag {repo}:{tag}: {reason}")]
    Tag { service: String, repo: String, tag: String, reason: EngineError },
    /// The registry refused the credentials, or could not be asked, before anything was built.
    #[error("services.{service}: nothing was built or pushed")]
    Registry {
        service: String,
        /// `registry.username` and `registry.password_env`, when the config has a registry block.
        login: Option<(String, String)>,
        #[source]
        source: AtRegistry,
    },
    #[error("services.{service}: registry {registry} refused the push of {image}:{tag}: {reason}")]
    PushRefused { service: String, registry: String, image: String, tag: String, reason: String },
    #[error("{registry}: push of {image}:{tag} failed: {reason}")]
    PushFailed { registry: String, image: String, tag: String, reason: String },
}

/// What a registry answered, and which registry.
#[derive(Debug, thiserror::Error)]
#[error("registry {registry}: {error}")]
pub struct AtRegistry {
    pub registry: String,
    pub error: RegistryError,
}

impl Diagnostic for BuildError {
    fn exit_code(&self) -> i32 {
        match self {
            BuildError::Engine(_) | BuildError::PushFailed { .. } => exit::UNREACHABLE,
            BuildError::Registry { source: AtRegistry { error: RegistryError::Other(_), .. }, .. } => exit::UNREACHABLE,
            BuildError::Client(_)
            | BuildError::Context { .. }
            | BuildError::PackPanicked { .. }
            | BuildError::Failed { .. }
            | BuildError::Tag { .. }
            | BuildError::Registry { .. }
            | BuildError::PushRefused { .. } => exit::BAD_INPUT,
        }
    }

    fn hint(&self) -> Option<String> {
        match self {
            BuildError::Engine(_) => Some("capstan builds on the engine of DOCKER_HOST (default /var/run/docker.sock); start Docker or set DOCKER_HOST".into()),
            BuildError::Failed { .. } => Some("nothing was pushed and no host was touched".into()),
            BuildError::Registry { login, source: AtRegistry { error: RegistryError::Auth(_), .. }, .. } => Some(match login {
                Some((username, password_env)) => format!("check registry.username ({username}) and the password in ${password_env}"),
                None => "add a registry: block (server, username, password_env) to the config".to_string(),
            }),
            BuildError::PushRefused { .. } => {
                Some("check registry.username and the variable named by registry.password_env; the token needs push (write:packages on ghcr.io)".into())
            }
            _ => None,
        }
    }
}

/// What went into one `/build` call.
pub struct BuildRequest<'a> {
    pub context: &'a [u8],
    pub dockerfile: &'a str,
    /// `repo:tag` the engine names the image with.
    pub tag: &'a str,
    pub args: &'a BTreeMap<String, String>,
    pub labels: &'a BTreeMap<String, String>,
    pub target: Option<&'a str>,
    pub cache_from: &'a [String],
}

/// A build that failed: the step it failed at, the output of that step and the engine's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildFailure {
    pub step: Option<String>,
    pub output: Vec<String>,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushFailure {
    Auth(String),
    Other(String),
}

/// The local Docker engine, as the build needs it. Real: `local::LocalImages`.
#[async_trait]
pub trait Images: Send + Sync {
    /// Builds; each output line goes to `out`. Returns the image ID.
    async fn build(&self, req: BuildRequest<'_>, out: &(dyn Fn(String) + Send + Sync)) -> Result<String, BuildFailure>;
    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError>;
    /// Pushes `repo:tag`; returns the manifest digest the registry stored.
    async fn push(&self, repo: &str, tag: &str, creds: Option<&Credentials>) -> Result<String, PushFailure>;
    /// Whether the engine has any image of `repo` (then its own cache is warm).
    async fn has_any(&self, repo: &str) -> bool;
    /// The digests this image is known by in registries (`repo@sha256:…`), from earlier pushes or pulls.
    async fn repo_digests(&self, image: &str) -> Vec<String>;
    async fn pull(&self, reference: &str, creds: Option<&Credentials>) -> Result<(), EngineError>;
}

pub struct Builder<'a> {
    pub config: &'a Config,
    pub events: &'a dyn Sink,
    pub images: &'a dyn Images,
    pub registry: &'a dyn Registry,
    pub creds: Option<&'a Credentials>,
    pub source: Source,
    /// RFC 3339, for `org.opencontainers.image.created`.
    pub created: String,
    /// How many services build at once.
    pub jobs: usize,
}

impl Builder<'_> {
    fn info(&self, message: String) {
        self.events.emit(Event::Info { host: None, message });
    }

    fn warn(&self, message: String) {
        self.events.emit(Event::Warn { host: None, message });
    }

    fn registry_name(&self, repo: &str) -> String {
        crate::build::registry::split_repo(repo).0.split("://").nth(1).unwrap_or(repo).to_string()
    }

    /// Builds `services` that have a `build:` block; with `push`, pushes them.
    pub async fn run(&self, services: &[&Service], version: &Version, push: bool) -> Result<Vec<Built>, BuildError> {
        let todo: Vec<&Service> = services.iter().copied().filter(|s| s.build.is_some()).collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        // 1. The registry: which tags exist. A refused password stops here, before any build.
        let mut plans = Vec::new();
        for svc in &todo {
            let pushed = match self.registry.tags(&svc.image).await {
                Ok(t) => t,
                Err(e) if push => return Err(self.registry_error(svc, e)),
                Err(e) => {
                    self.warn(format!("services.{}: cannot list the tags of {} ({e}); deciding tags as if it had none", svc.name, svc.image));
                    Vec::new()
                }
            };
            let p = plan(svc, version, &pushed, &self.source, &self.created);
            self.info(format!("{}: {} -> {}", svc.name, svc.image, p.tags.tags.join(", ")));
            for s in &p.tags.skipped {
                self.info(format!("{}: not tagged {s}", svc.name));
            }
            plans.push((*svc, p));
        }

        // 2. Build everything; push nothing unless every build succeeded.
        let results: Vec<Result<Built, BuildError>> =
            stream::iter(plans.iter().map(|(svc, p)| self.build_one(svc, p))).buffered(self.jobs.max(1)).collect().await;
        let mut built = Vec::new();
        let mut failures = Vec::new();
        for r in results {
            match r {
                Ok(b) => built.push(b),
                Err(e) => failures.push(e),
            }
        }
        if let Some(first) = failures.into_iter().next() {
            return Err(first);
        }
        if !push {
            for b in &built {
                self.events.emit(Event::Built(b.clone()));
            }
            return Ok(built);
        }

        // 3. Push: the release's own tag first (its digest is what deploys run), then the rest.
        let pushed: Vec<Result<Built, BuildError>> = stream::iter(built.into_iter().map(|b| self.push_one(b))).buffered(self.jobs.max(1)).collect().await;
        let mut out = Vec::new();
        for r in pushed {
            let b = r?;
            self.events.emit(Event::Built(b.clone()));
            out.push(b);
        }
        Ok(out)
    }

    async fn build_one(&self, svc: &Service, p: &BuildPlan) -> Result<Built, BuildError> {
        let b = svc.build.as_ref().expect("only services with a build block");
        let t0 = Instant::now();
        let (context, dockerfile) = (b.context.clone(), b.dockerfile.clone());
        // Without a target stage the labels join the Dockerfile as one step (see `dockerfile`).
        let fold = p.target.is_none().then(|| p.labels.clone());
        let packed = tokio::task::spawn_blocking(move || {
            crate::build::context::pack(&context, &dockerfile, &|text| fold.as_ref().and_then(|l| crate::build::dockerfile::fold_labels(text, l)))
        })
        .await
        .map_err(|reason| BuildError::PackPanicked { service: svc.name.clone(), reason })?
        .map_err(|error| BuildError::Context { service: svc.name.clone(), error })?;
        // An engine without this repository's images (a fresh CI runner) takes its cache from the previous release.
        let mut cache_from = Vec::new();
        let cache = if self.images.has_any(&p.repo).await {
            "local".to_string()
        } else if let Some(prev) = &p.cache_from {
            match self.images.pull(prev, self.creds).await {
                Ok(()) => {
                    cache_from.push(prev.clone());
                    format!("from {prev}")
                }
                Err(e) => {
                    self.info(format!("{}: no build cache from {prev} ({e})", svc.name));
                    "none".into()
                }
            }
        } else {
            "none".into()
        };
        self.info(format!("{}: building {} ({} files, {} KiB of context, cache: {cache})", svc.name, p.tags.tags[0], packed.files, packed.tar.len() / 1024));
        let exact = image::tag_ref(&p.repo, &p.tags.tags[0]);
        let service = svc.name.clone();
        let events = self.events;
        let out = move |line: String| events.emit(Event::BuildOutput { service: service.clone(), line });
        let no_labels = BTreeMap::new();
        let req = BuildRequest {
            context: &packed.tar,
            dockerfile: &packed.dockerfile,
            tag: &exact,
            args: &p.args,
            labels: if packed.rewritten { &no_labels } else { &p.labels },
            target: p.target.as_deref(),
            cache_from: &cache_from,
        };
        let image_id = self.images.build(req, &out).await.map_err(|failure| BuildError::Failed {
            service: svc.name.clone(),
            dockerfile: b.dockerfile.clone(),
            failure,
        })?;
        let tagged = futures_util::future::join_all(p.tags.tags[1..].iter().map(|t| {
            let image_id = &image_id;
            async move { (t, self.images.tag(image_id, &p.repo, t).await) }
        }))
        .await;
        for (t, r) in tagged {
            r.map_err(|reason| BuildError::Tag { service: svc.name.clone(), repo: p.repo.clone(), tag: t.clone(), reason })?;
        }
        let build_ms = t0.elapsed().as_millis() as u64;
        self.info(format!("{}: built {} in {:.1}s", svc.name, crate::core::image::short(&image_id), build_ms as f64 / 1000.0));
        Ok(Built {
            service: svc.name.clone(),
            image: p.repo.clone(),
            tags: p.tags.tags.clone(),
            skipped_tags: p.tags.skipped.clone(),
            digest: None,
            image_id,
            cache,
            context_files: packed.files,
            context_bytes: packed.tar.len(),
            build_ms,
            push_ms: None,
        })
    }

    async fn push_one(&self, mut b: Built) -> Result<Built, BuildError> {
        let t0 = Instant::now();
        let svc = b.service.clone();
        let image = b.image.clone();
        let fail = |tag: &str, f: PushFailure| {
            let (registry, image, tag) = (self.registry_name(&image), image.clone(), tag.to_string());
            match f {
                PushFailure::Auth(reason) => BuildError::PushRefused { service: svc.clone(), registry, image, tag, reason },
                PushFailure::Other(reason) => BuildError::PushFailed { registry, image, tag, reason },
            }
        };
        // An image this engine already pushed, whose tag the registry still has at the same
        // digest (a rebuild of an unchanged commit), is not pushed again.
        let known = self.images.repo_digests(&b.image_id).await;
        let already = match self.registry.digest(&b.image, &b.tags[0]).await {
            Ok(Some(d)) if known.contains(&image::digest_ref(&b.image, &d)) => Some(d),
            _ => None,
        };
        let digest = match already {
            Some(d) => {
                self.info(format!("{svc}: {image}:{} is already in the registry as this image", b.tags[0]));
                d
            }
            None => self.images.push(&b.image, &b.tags[0], self.creds).await.map_err(|f| fail(&b.tags[0], f))?,
        };
        // The other tags name the same manifest: point them at it through the
        // registry's API (one PUT each); a `docker push` per tag is the fallback.
        if let Err(e) = self.registry.copy_tags(&b.image, &digest, &b.tags[1..]).await {
            self.info(format!("{svc}: tagging through the registry's API failed ({e}); pushing each tag instead"));
            let rest = futures_util::future::join_all(b.tags[1..].iter().map(|t| {
                let image = &image;
                async move { (t, self.images.push(image, t, self.creds).await) }
            }))
            .await;
            for (t, r) in rest {
                let d = r.map_err(|f| fail(t, f))?;
                if d != digest {
                    self.warn(format!("services.{svc}: {}:{t} was pushed as {d}, not {digest}", b.image));
                }
            }
        }
        b.push_ms = Some(t0.elapsed().as_millis() as u64);
        self.info(format!(
            "{svc}: pushed {} ({} tags) in {:.1}s",
            crate::core::image::short(&image::digest_ref(&b.image, &digest)),
            b.tags.len(),
            t0.elapsed().as_secs_f64()
        ));
        b.digest = Some(digest);
        Ok(b)
    }

    fn registry_error(&self, svc: &Service, error: RegistryError) -> BuildError {
        BuildError::Registry {
            service: svc.name.clone(),
            login: self.config.registry.as_ref().map(|r| (r.username.clone(), r.password_env.clone())),
            source: AtRegistry { registry: self.registry_name(&svc.image), error },
        }
    }
}

/// A failed build as the user reads it: the step, its last 20 lines, the engine's message.
fn failed_text(service: &str, dockerfile: &Path, f: &BuildFailure) -> String {
    let mut msg = format!("services.{service}: the build failed");
    if let Some(step) = &f.step {
        msg.push_str(&format!(" at {step}"));
    }
    msg.push_str(&format!(" ({})", dockerfile.display()));
    let tail: Vec<&String> = f.output.iter().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
    for l in tail {
        msg.push_str(&format!("\n  | {l}"));
    }
    msg.push_str(&format!("\n  {}", f.message));
    msg
}

/// Whether a local build pushes, and how many services build at once.
#[derive(Debug, Clone, Copy)]
pub struct BuildOpts {
    pub push: bool,
    pub jobs: usize,
}

/// Builds the services of `config` selected by `services` for `version`, on the local engine.
pub async fn build_local(
    config: &Config,
    events: &dyn Sink,
    services: &[&Service],
    version: &Version,
    creds: Option<&Credentials>,
    BuildOpts { push, jobs }: BuildOpts,
    env: &crate::env::Context,
) -> Result<Vec<Built>, BuildError> {
    if !services.iter().any(|s| s.build.is_some()) {
        return Ok(Vec::new());
    }
    let images = local::LocalImages::connect().await.map_err(BuildError::Engine)?;
    let registry = crate::build::registry::RegistryClient::new(creds.cloned()).map_err(BuildError::Client)?;
    let dir = config.file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let source = source(dir, env);
    let created = created(&source, env);
    let builder = Builder { config, events, images: &images, registry: &registry, creds, source, created, jobs };
    builder.run(services, version, push).await
}

/// A default bound for parallel builds: the machine's cores, at most 4.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::source::web_url;
    use crate::core::release;
    use crate::error::Error;
    use crate::output::events::Recorder;
    use std::sync::Mutex;

    fn version(v: &str) -> Version {
        Version { text: v.into(), semver: release::parse_semver(v) }
    }

    fn config(dir: &Path) -> Config {
        std::fs::write(dir.join("Dockerfile"), "FROM scratch\nCOPY . /\n").unwrap();
        std::fs::create_dir_all(dir.join("api")).unwrap();
        std::fs::write(dir.join("api/Dockerfile"), "FROM scratch\n").unwrap();
        let yaml = "app: shop\nhosts: [h]\nregistry: { server: r.example, username: u, password_env: P }\nservices:\n  web:\n    image: r.example/web\n    build: { labels: { team: web, org.opencontainers.image.source: https://example.com/override } }\n    instances: [web-1, web-2]\n  api:\n    image: r.example/api\n    build: { context: api, tags: [version, latest] }\n    instances: [api-1, api-2]\n  worker:\n    image: r.example/worker\n    instances: [w-1, w-2]\n";
        crate::core::config::parse(&dir.join("capstan.yml"), yaml).unwrap()
    }

    #[derive(Default)]
    struct FakeImages {
        calls: Mutex<Vec<String>>,
        fail_build: Option<&'static str>,
        fail_push: Option<PushFailure>,
        local: bool,
    }

    #[async_trait]
    impl Images for FakeImages {
        async fn build(&self, req: BuildRequest<'_>, out: &(dyn Fn(String) + Send + Sync)) -> Result<String, BuildFailure> {
            self.calls.lock().unwrap().push(format!("build {} cache={:?}", req.tag, req.cache_from));
            out("Step 1/2 : FROM scratch".into());
            if self.fail_build.is_some_and(|s| req.tag.contains(s)) {
                out("Step 2/2 : RUN false".into());
                return Err(BuildFailure { step: Some("Step 2/2 : RUN false".into()), output: vec!["boom".into()], message: "exit 1".into() });
            }
            Ok(format!("sha256:id-{}", req.tag))
        }
        async fn tag(&self, _image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
            self.calls.lock().unwrap().push(format!("tag {repo}:{tag}"));
            Ok(())
        }
        async fn push(&self, repo: &str, tag: &str, _creds: Option<&Credentials>) -> Result<String, PushFailure> {
            self.calls.lock().unwrap().push(format!("push {repo}:{tag}"));
            match &self.fail_push {
                Some(f) => Err(f.clone()),
                None => Ok(format!("sha256:{}", repo.len())),
            }
        }
        async fn has_any(&self, _repo: &str) -> bool {
            self.local
        }
        async fn repo_digests(&self, _image: &str) -> Vec<String> {
            vec!["r.example/api@sha256:12".into()]
        }
        async fn pull(&self, reference: &str, _creds: Option<&Credentials>) -> Result<(), EngineError> {
            self.calls.lock().unwrap().push(format!("pull {reference}"));
            Ok(())
        }
    }

    struct FakeRegistry(Result<Vec<String>, RegistryError>, Mutex<Vec<String>>);

    impl FakeRegistry {
        fn new(tags: Result<Vec<String>, RegistryError>) -> Self {
            FakeRegistry(tags, Mutex::new(Vec::new()))
        }
    }

    #[async_trait]
    impl Registry for FakeRegistry {
        async fn tags(&self, _repo: &str) -> Result<Vec<String>, RegistryError> {
            self.0.clone()
        }
        async fn digest(&self, repo: &str, _tag: &str) -> Result<Option<String>, RegistryError> {
            // api's tag is already there, as the image the engine knows; web's is not.
            Ok((repo == "r.example/api").then(|| "sha256:12".to_string()))
        }
        async fn copy_tags(&self, repo: &str, digest: &str, tags: &[String]) -> Result<(), RegistryError> {
            for t in tags {
                self.1.lock().unwrap().push(format!("{repo}:{t} -> {digest}"));
            }
            Ok(())
        }
    }

    async fn run(images: &FakeImages, registry: &FakeRegistry, push: bool) -> (Result<Vec<Built>, BuildError>, Vec<Event>) {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let events = Recorder::default();
        let b = Builder {
            config: &config,
            events: &events,
            images,
            registry,
            creds: None,
            source: Source {
                revision: Some("0123456789abcdef0123456789abcdef01234567".into()),
                url: Some("https://github.com/acme/shop".into()),
                commit_time: None,
            },
            created: "2026-11-23T10:00:00Z".into(),
            jobs: 2,
        };
        let services: Vec<&Service> = config.services.iter().collect();
        let r = b.run(&services, &version("v1.4.2"), push).await;
        let e = events.0.lock().unwrap().clone();
        (r, e)
    }

    #[test]
    fn plans_carry_tags_labels_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let src = Source { revision: Some("abcdef0123456789".into()), url: Some("https://github.com/acme/shop".into()), commit_time: Some(1_700_000_000) };
        assert_eq!(created(&src, &crate::env::Context::default()), "2023-11-14T22:13:20Z", "the commit's time, not the clock's");
        let mut epoch = crate::env::Context::default();
        epoch.source_date_epoch = Some("1600000000".into());
        assert_eq!(created(&src, &epoch), "2020-09-13T12:26:40Z", "SOURCE_DATE_EPOCH wins over the commit's time");
        let p = plan(&config.services[0], &version("v1.4.2"), &["v1.4.1".into(), "v1.5.0".into()], &src, "T");
        assert_eq!(p.tags.tags, vec!["v1.4.2", "1.4", "sha-abcdef0"]);
        assert_eq!(p.labels["org.opencontainers.image.version"], "v1.4.2");
        assert_eq!(p.labels["org.opencontainers.image.revision"], "abcdef0123456789");
        assert_eq!(p.labels["org.opencontainers.image.created"], "T");
        assert_eq!(p.labels["org.opencontainers.image.source"], "https://example.com/override", "the service's labels win");
        assert_eq!(p.labels["team"], "web");
        assert_eq!(p.cache_from.as_deref(), Some("r.example/web:v1.4.1"));
        assert_eq!(web_url("git@github.com:acme/shop.git"), "https://github.com/acme/shop");
        assert_eq!(web_url("https://x-access-token:secret@github.com/acme/shop.git"), "https://github.com/acme/shop");
    }

    #[tokio::test]
    async fn builds_then_pushes_the_release_tag_first() {
        let images = FakeImages::default();
        let registry = FakeRegistry::new(Ok(vec!["v1.4.1".into()]));
        let (r, events) = run(&images, &registry, true).await;
        let built = r.unwrap();
        assert_eq!(built.len(), 2, "worker has no build block");
        assert_eq!(built[0].reference().as_deref(), Some("r.example/web@sha256:13"));
        assert_eq!(built[1].tags, vec!["v1.4.2", "latest"]);
        let calls = images.calls.lock().unwrap().clone();
        let first_push = calls.iter().position(|c| c.starts_with("push")).unwrap();
        assert!(calls[..first_push].iter().filter(|c| c.starts_with("build")).count() == 2, "every build before any push: {calls:?}");
        assert!(calls.contains(&"pull r.example/web:v1.4.1".to_string()), "a cold engine pulls the previous release for cache: {calls:?}");
        assert!(calls.contains(&"build r.example/web:v1.4.2 cache=[\"r.example/web:v1.4.1\"]".to_string()), "{calls:?}");
        assert!(!calls.iter().any(|c| c.starts_with("push r.example/api")), "api is already in the registry as this image: {calls:?}");
        assert_eq!(built[1].digest.as_deref(), Some("sha256:12"));
        let web_pushes: Vec<_> = calls.iter().filter(|c| c.starts_with("push r.example/web:")).collect();
        assert_eq!(web_pushes, vec!["push r.example/web:v1.4.2"], "one push; the other tags are set through the registry");
        let copied = registry.1.lock().unwrap().clone();
        assert!(copied.contains(&"r.example/web:latest -> sha256:13".to_string()), "{copied:?}");
        assert_eq!(copied.len(), 4 + 1, "web: 1.4, 1, latest, sha; api: latest");
        assert!(events.iter().any(|e| matches!(e, Event::BuildOutput { service, line } if service == "web" && line.starts_with("Step 1/2"))));
        assert_eq!(events.iter().filter(|e| matches!(e, Event::Built(_))).count(), 2);
    }

    #[tokio::test]
    async fn a_failed_build_pushes_nothing() {
        let images = FakeImages { fail_build: Some("/api:"), local: true, ..Default::default() };
        let (r, _) = run(&images, &FakeRegistry::new(Ok(vec![])), true).await;
        let e = Error::from(r.unwrap_err());
        let text = e.render();
        assert_eq!(e.exit_code(), crate::error::exit::BAD_INPUT);
        assert!(text.contains("services.api: the build failed at Step 2/2 : RUN false"), "{text}");
        assert!(text.contains("| boom"), "{text}");
        assert!(!images.calls.lock().unwrap().iter().any(|c| c.starts_with("push")));
    }

    #[tokio::test]
    async fn refused_credentials_stop_before_any_build() {
        let images = FakeImages::default();
        let (r, _) = run(&images, &FakeRegistry::new(Err(RegistryError::Auth("the registry refused the credentials (user u): 401".into()))), true).await;
        let e = Error::from(r.unwrap_err());
        assert_eq!(e.exit_code(), crate::error::exit::BAD_INPUT);
        assert_eq!(
            e.render(),
            "error: services.web: nothing was built or pushed\n\
             caused by: registry r.example: the registry refused the credentials (user u): 401\n\
             hint: check registry.username (u) and the password in $P"
        );
        assert_eq!(e.one_line(), "services.web: nothing was built or pushed: registry r.example: the registry refused the credentials (user u): 401");
        assert!(images.calls.lock().unwrap().is_empty());
        // Without --push an unreachable registry is only a warning.
        let (r, _) = run(&images, &FakeRegistry::new(Err(RegistryError::Other("down".into()))), true).await;
        let e = Error::from(r.unwrap_err());
        assert_eq!(
            (e.exit_code(), e.one_line().as_str()),
            (crate::error::exit::UNREACHABLE, "services.web: nothing was built or pushed: registry r.example: down")
        );
        let (r, events) = run(&images, &FakeRegistry::new(Err(RegistryError::Other("down".into()))), false).await;
        assert!(r.unwrap().iter().all(|b| b.digest.is_none()));
        assert!(events.iter().any(|e| matches!(e, Event::Warn { message, .. } if message.contains("cannot list the tags"))));
    }

    #[tokio::test]
    async fn a_refused_push_names_the_registry() {
        let images = FakeImages { fail_push: Some(PushFailure::Auth("no basic auth credentials".into())), ..Default::default() };
        let (r, _) = run(&images, &FakeRegistry::new(Ok(vec![])), true).await;
        let e = Error::from(r.unwrap_err());
        assert_eq!(e.exit_code(), crate::error::exit::BAD_INPUT);
        assert!(e.to_string().contains("registry r.example refused the push of r.example/web:v1.4.2"), "{e}");
        assert!(e.render().contains("hint: check registry.username and the variable named by registry.password_env"), "{}", e.render());
    }
}
