//! The host's Docker engine through bollard, over the socket that `ssh` forwards:
//! [`Engine`] and [`Swarm`]. What its answers become, and the requests built from
//! them, are pure and in `host::spec`. The connection helpers here (the
//! `X-Registry-Auth` fix, pulls, credentials) also serve the local build engine,
//! `build::local`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::PoisonError;

use async_trait::async_trait;
use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::models::ImageInspect;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StatsOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::sync::Arc;

use crate::core::observed::{ContainerInfo, ContainerSpec, ImageInfo, Listed, SwarmService, SwarmTask};
use crate::core::secret::Credentials;
use crate::host::spec::{container_info, swarm_service, swarm_task, swarm_update_spec, COMPOSE_PROJECT, COMPOSE_SERVICE};
use crate::host::{Engine, EngineError, Swarm, SwarmUpdate};

pub struct DockerEngine {
    docker: Docker,
    /// Image inspects by image ID (immutable), so that the health gate's
    /// per-probe container inspect does not inspect the image again each time.
    images: std::sync::Mutex<HashMap<String, ImageInspect>>,
    /// The engine's version as it answered when connected (`20.10.24 (API 1.41)`).
    version: String,
}

impl DockerEngine {
    /// Connects to an engine socket (a local path that ssh forwards to the host's socket).
    /// Its connections are kept alive between requests: bollard's own Unix client opens
    /// one per request, which over ssh is a channel opened per request, a round trip
    /// more for each (measured over a 150 ms link: 302 ms a call, 151 ms kept alive).
    pub async fn connect(socket: &Path) -> Result<Self, EngineError> {
        let mut pool = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
        pool.pool_idle_timeout(KEPT_IDLE).pool_max_idle_per_host(KEPT_PER_HOST);
        let client = Arc::new(pool.build(hyperlocal::UnixConnector));
        let transport = move |req: bollard::BollardRequest| {
            let client = Arc::clone(&client);
            // Every engine call passes here: each is timed (until its answer's headers).
            let timed = crate::host::Timed::new(format!("docker {} {}", req.method(), req.uri().path()));
            async move {
                let answer = client.request(req).await.map_err(bollard::errors::Error::from);
                drop(timed);
                answer
            }
        };
        // bollard writes the socket's path hex-encoded as the authority, hyperlocal's own form.
        let hex: String = socket.to_string_lossy().bytes().map(|b| format!("{b:02x}")).collect();
        let connect = |v: &bollard::ClientVersion| {
            Docker::connect_with_custom_transport(transport.clone(), Some(format!("unix://{hex}")), 300, v)
                .map_err(|e| EngineError::Other(format!("cannot open the Docker socket: {e}")))
        };
        // One `GET /version` both negotiates the API version (as bollard's `negotiate_version`
        // would) and is kept for what asks the version later: a round trip, not three.
        // Pings beside it leave connections open for the first looks at a host, which go out
        // several at once (four instances and their two images, say, beside the registry's
        // answers): each connection opened later costs a round trip more over a slow link.
        let first = connect(bollard::API_DEFAULT_VERSION)?;
        let (v, _) = tokio::join!(first.version(), futures_util::future::join_all((0..OPENED_AHEAD).map(|_| first.ping())));
        let v = v.map_err(|e| EngineError::Other(format!("the Docker engine did not answer: {e}")))?;
        let ours = bollard::API_DEFAULT_VERSION;
        let api = v.api_version.as_deref().and_then(parse_api).filter(|a| (a.major_version, a.minor_version) < (ours.major_version, ours.minor_version));
        let docker = connect(api.as_ref().unwrap_or(ours))?.with_request_modifier(urlsafe_registry_auth);
        let version = format!("{} (API {})", v.version.unwrap_or_default(), v.api_version.unwrap_or_default());
        Ok(DockerEngine { docker, images: Default::default(), version })
    }
}

impl DockerEngine {
    /// The engine's inspect of container `name` (None: no such container).
    async fn inspect_raw(&self, name: &str) -> Result<Option<bollard::models::ContainerInspectResponse>, EngineError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_404(&e) => Ok(None),
            Err(e) => Err(other(&format!("inspect {name}"), e)),
        }
    }

    /// Keeps an image's inspect by its ID (an image ID's config never changes).
    fn remember(&self, i: ImageInspect) -> ImageInspect {
        if let Some(id) = &i.id {
            self.images.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), i.clone());
        }
        i
    }
}

/// How many engine connections are opened beside the first request (which opens one):
/// as many as are kept idle.
const OPENED_AHEAD: usize = KEPT_PER_HOST - 1;

/// How long an engine connection may stay idle in the pool, and how many may.
const KEPT_IDLE: std::time::Duration = std::time::Duration::from_secs(30);
const KEPT_PER_HOST: usize = 8;

/// Every engine connection: the `X-Registry-Auth` fix, and the API version
/// negotiated (a newer bollard speaks a newer API than a 20.10 engine accepts).
pub(crate) async fn ready(docker: Result<Docker, bollard::errors::Error>) -> Result<Docker, EngineError> {
    docker
        .map_err(|e| EngineError::Other(format!("cannot open the Docker socket: {e}")))?
        .with_request_modifier(urlsafe_registry_auth)
        .negotiate_version()
        .await
        .map_err(|e| EngineError::Other(format!("the Docker engine did not answer: {e}")))
}

fn image_info(i: ImageInspect) -> ImageInfo {
    ImageInfo { id: i.id.unwrap_or_default(), repo_digests: i.repo_digests.unwrap_or_default(), repo_tags: i.repo_tags.unwrap_or_default() }
}

/// `1.41` -> API version 1.41.
fn parse_api(v: &str) -> Option<bollard::ClientVersion> {
    let (major, minor) = v.split_once('.')?;
    Some(bollard::ClientVersion { major_version: major.parse().ok()?, minor_version: minor.parse().ok()? })
}

/// bollard encodes `X-Registry-Auth` with the standard base64 alphabet; the
/// engine decodes the URL-safe one and, when that fails, silently pulls with no
/// credentials. Re-encode (see shared/CRATES.md).
fn urlsafe_registry_auth(mut req: bollard::BollardRequest) -> bollard::BollardRequest {
    for name in ["x-registry-auth", "x-registry-config"] {
        let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
            continue;
        };
        if let Some(fixed) = to_urlsafe(&v) {
            if let Ok(h) = fixed.parse() {
                req.headers_mut().insert(name, h);
            }
        }
    }
    req
}

fn to_urlsafe(v: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE.encode(raw))
}

/// Pulls on either engine. Errors arrive inside the stream: it is drained to the end.
pub(crate) async fn pull(docker: &Docker, reference: &str, c: Option<&Credentials>) -> Result<(), bollard::errors::Error> {
    let opts = CreateImageOptionsBuilder::new().from_image(reference).build();
    let mut stream = docker.create_image(Some(opts), None, creds(c));
    while let Some(item) = stream.next().await {
        item?;
    }
    Ok(())
}

pub(crate) fn creds(c: Option<&Credentials>) -> Option<DockerCredentials> {
    c.map(|c| DockerCredentials {
        username: Some(c.username.clone()),
        password: Some(c.password.expose().to_string()),
        serveraddress: Some(c.server.clone()),
        ..Default::default()
    })
}

fn classify(reference: &str, e: bollard::errors::Error) -> EngineError {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if lower.contains("manifest unknown") || lower.contains("not found") || lower.contains("no such image") {
        EngineError::NotFound(format!("{reference}: not found in the registry ({})", tidy(&text)))
    } else if lower.contains("unauthorized") || lower.contains("no basic auth") || lower.contains("denied") || lower.contains("authentication required") {
        EngineError::Auth(format!("{reference}: the registry refused the credentials ({})", tidy(&text)))
    } else {
        EngineError::Other(format!("{reference}: {}", tidy(&text)))
    }
}

pub(crate) fn tidy(s: &str) -> String {
    s.replace("Docker responded with status code", "status").trim().to_string()
}

fn other(what: &str, e: bollard::errors::Error) -> EngineError {
    EngineError::Other(format!("{what}: {}", tidy(&e.to_string())))
}

fn is_404(e: &bollard::errors::Error) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code: 404, .. })
}

#[async_trait]
impl Engine for DockerEngine {
    async fn version(&self) -> Result<String, EngineError> {
        Ok(self.version.clone())
    }

    async fn inspect_container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let Some(c) = self.inspect_raw(name).await? else { return Ok(None) };
        let image_id = c.image.clone().unwrap_or_default();
        let cached = self.images.lock().unwrap_or_else(PoisonError::into_inner).get(&image_id).cloned();
        let image = match cached {
            Some(i) => Some(i),
            None => self.docker.inspect_image(&image_id).await.ok().map(|i| self.remember(i)),
        };
        Ok(Some(container_info(&c, image.as_ref())))
    }

    /// The CLI prints the engine's own inspect (a list of one); its image is the one
    /// `create` asked beside it.
    fn read_printed(&self, printed: &str) -> Option<ContainerInfo> {
        let c = match serde_json::from_str::<Vec<bollard::models::ContainerInspectResponse>>(printed) {
            Ok(list) => list.into_iter().next()?,
            Err(e) => {
                tracing::debug!("the inspect printed on the host does not read: {e}");
                return None;
            }
        };
        let image = self.images.lock().unwrap_or_else(PoisonError::into_inner).get(c.image.as_deref()?).cloned()?;
        Some(container_info(&c, Some(&image)))
    }

    async fn list_containers(&self) -> Result<Vec<Listed>, EngineError> {
        let opts = ListContainersOptionsBuilder::new().all(true).build();
        let list = self.docker.list_containers(Some(opts)).await.map_err(|e| other("list containers", e))?;
        Ok(list
            .into_iter()
            .flat_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let label = |k: &str| labels.get(k).cloned();
                let (project, service, number) =
                    (label(COMPOSE_PROJECT), label(COMPOSE_SERVICE), label("com.docker.compose.container-number").and_then(|n| n.parse().ok()));
                let image_id = c.image_id;
                c.names.unwrap_or_default().into_iter().map(move |n| Listed {
                    name: n.trim_start_matches('/').to_string(),
                    compose_project: project.clone(),
                    compose_service: service.clone(),
                    number,
                    image_id: image_id.clone(),
                })
            })
            .collect())
    }

    async fn exec(&self, container: &str, argv: &[&str]) -> Result<(i64, String), EngineError> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        let opts = CreateExecOptions { cmd: Some(argv.to_vec()), attach_stdout: Some(true), attach_stderr: Some(true), ..Default::default() };
        let what = || format!("exec `{}` in {container}", argv.join(" "));
        let exec = self.docker.create_exec(container, opts).await.map_err(|e| other(&what(), e))?;
        let mut out = String::new();
        if let StartExecResults::Attached { output: mut stream, .. } = self.docker.start_exec(&exec.id, None).await.map_err(|e| other(&what(), e))? {
            while let Some(item) = stream.next().await {
                out.push_str(&item.map_err(|e| other(&what(), e))?.to_string());
            }
        }
        let code = self.docker.inspect_exec(&exec.id).await.map_err(|e| other(&what(), e))?.exit_code.unwrap_or(-1);
        Ok((code, out))
    }

    /// Every container and every image it was listed with at once, each image asked once
    /// and fresh (tags move): one round trip, where each container's inspect and then its
    /// image's took two. A container whose image changed since it was listed has its own
    /// asked after.
    async fn inspect_with_images(&self, wanted: &[(&str, Option<&str>)]) -> Result<Vec<Option<(ContainerInfo, Option<ImageInfo>)>>, EngineError> {
        let ask = |id: String| async move {
            match self.docker.inspect_image(&id).await {
                Ok(i) => Ok((id, Some(self.remember(i)))),
                Err(e) if is_404(&e) => Ok((id, None)),
                Err(e) => Err(other(&format!("inspect image {id}"), e)),
            }
        };
        let listed: std::collections::BTreeSet<&str> = wanted.iter().filter_map(|(_, i)| *i).collect();
        let (containers, images) = tokio::join!(
            futures_util::future::join_all(wanted.iter().map(|(name, _)| self.inspect_raw(name))),
            futures_util::future::join_all(listed.into_iter().map(|id| ask(id.to_string())))
        );
        let mut images: HashMap<String, Option<ImageInspect>> = images.into_iter().collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        for c in containers {
            let Some(c) = c? else {
                out.push(None);
                continue;
            };
            let image_id = c.image.clone().unwrap_or_default();
            let image = match images.get(&image_id) {
                Some(i) => i.clone(),
                None => {
                    let (id, i) = ask(image_id).await?;
                    images.insert(id, i.clone());
                    i
                }
            };
            out.push(Some((container_info(&c, image.as_ref()), image.map(image_info))));
        }
        Ok(out)
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, EngineError> {
        match self.docker.inspect_image(reference).await {
            Ok(i) => Ok(Some(image_info(i))),
            Err(e) if is_404(&e) => Ok(None),
            Err(e) => Err(other(&format!("inspect image {reference}"), e)),
        }
    }

    async fn registry_digest(&self, reference: &str, c: Option<&Credentials>) -> Result<String, EngineError> {
        let d = self.docker.inspect_registry_image(reference, creds(c)).await.map_err(|e| classify(reference, e))?;
        Ok(d.descriptor.digest.unwrap_or_default())
    }

    async fn pull(&self, reference: &str, c: Option<&Credentials>) -> Result<(), EngineError> {
        pull(&self.docker, reference, c).await.map_err(|e| classify(reference, e))
    }

    async fn tag(&self, image: &str, repo: &str, tag: &str) -> Result<(), EngineError> {
        let opts = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
        self.docker.tag_image(image, Some(opts)).await.map_err(|e| other(&format!("tag {repo}:{tag}"), e))
    }

    async fn rename(&self, name: &str, new_name: &str) -> Result<(), EngineError> {
        let opts = RenameContainerOptionsBuilder::new().name(new_name).build();
        self.docker.rename_container(name, opts).await.map_err(|e| other(&format!("rename {name} to {new_name}"), e))
    }

    async fn stop(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.stop_container(name, None).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(other(&format!("stop {name}"), e)),
        }
    }

    async fn start(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(other(&format!("start {name}"), e)),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), EngineError> {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_404(&e) => Ok(()),
            Err(e) => Err(other(&format!("remove {name}"), e)),
        }
    }

    async fn create(&self, name: &str, spec: &ContainerSpec, image: &str) -> Result<String, EngineError> {
        let mut body = spec.0.clone();
        body.image = Some(image.to_string());
        let opts = CreateContainerOptionsBuilder::new().name(name).build();
        // The image's inspect, which the new container's first inspect needs, is asked beside
        // the create (a round trip less for the health gate over a slow link).
        let (r, image) = tokio::join!(self.docker.create_container(Some(opts), body), self.docker.inspect_image(image));
        if let Ok(i) = image {
            self.remember(i);
        }
        Ok(r.map_err(|e| other(&format!("create {name}"), e))?.id)
    }

    async fn rx_bytes(&self, name: &str) -> Result<u64, EngineError> {
        let opts = StatsOptionsBuilder::new().stream(false).one_shot(true).build();
        let mut s = self.docker.stats(name, Some(opts));
        let stats = s.next().await.ok_or_else(|| EngineError::Other(format!("stats {name}: no answer")))?.map_err(|e| other(&format!("stats {name}"), e))?;
        Ok(stats.networks.unwrap_or_default().values().filter_map(|n| n.rx_bytes).sum())
    }

    async fn data_root(&self) -> Result<String, EngineError> {
        let info = self.docker.info().await.map_err(|e| other("docker info", e))?;
        info.docker_root_dir.ok_or_else(|| EngineError::Other("docker info did not name the data root".into()))
    }

    async fn run_once(&self, name: &str, spec: &ContainerSpec, image: &str, timeout: std::time::Duration) -> Result<(i64, String), EngineError> {
        self.create(name, spec, image).await?;
        let result = async {
            self.start(name).await?;
            let mut wait = self.docker.wait_container(name, None::<bollard::query_parameters::WaitContainerOptions>);
            let code = match tokio::time::timeout(timeout, wait.next()).await {
                Err(_) => {
                    let _ = self.docker.kill_container(name, None::<bollard::query_parameters::KillContainerOptions>).await;
                    return Err(EngineError::Other(format!("{name} did not finish within {}", humantime::format_duration(timeout))));
                }
                Ok(Some(Ok(r))) => r.status_code,
                Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
                Ok(Some(Err(e))) => return Err(other(&format!("wait for {name}"), e)),
                Ok(None) => return Err(EngineError::Other(format!("wait for {name}: no answer"))),
            };
            Ok((code, self.logs(name).await?))
        }
        .await;
        let _ = self.remove(name).await;
        result
    }

    async fn logs(&self, name: &str) -> Result<String, EngineError> {
        let opts = bollard::query_parameters::LogsOptionsBuilder::new().stdout(true).stderr(true).build();
        let mut s = self.docker.logs(name, Some(opts));
        let mut out = String::new();
        while let Some(item) = s.next().await {
            out.push_str(&item.map_err(|e| other(&format!("logs of {name}"), e))?.to_string());
        }
        Ok(out)
    }

    async fn logs_since(&self, name: &str, since: i64) -> Result<String, EngineError> {
        let since = i32::try_from(since).unwrap_or(i32::MAX);
        let opts = bollard::query_parameters::LogsOptionsBuilder::new().stdout(true).stderr(true).since(since).build();
        let mut s = self.docker.logs(name, Some(opts));
        let mut out = String::new();
        while let Some(item) = s.next().await {
            out.push_str(&item.map_err(|e| other(&format!("logs of {name}"), e))?.to_string());
        }
        Ok(out)
    }

    async fn stats(&self, name: &str) -> Result<crate::core::resources::StatsSample, EngineError> {
        // Not one-shot: the engine samples twice (about a second apart) and sends both.
        let opts = StatsOptionsBuilder::new().stream(false).one_shot(false).build();
        let mut s = self.docker.stats(name, Some(opts));
        let stats = s.next().await.ok_or_else(|| EngineError::Other(format!("stats {name}: no answer")))?.map_err(|e| other(&format!("stats {name}"), e))?;
        let json = serde_json::to_string(&stats).map_err(|e| EngineError::Other(format!("stats {name}: {e}")))?;
        crate::core::resources::parse_stats(&json).map_err(|e| EngineError::Other(format!("stats {name}: {e}")))
    }
}

#[async_trait]
impl Swarm for DockerEngine {
    async fn inspect_service(&self, name: &str) -> Result<Option<SwarmService>, EngineError> {
        match self.docker.inspect_service(name, None).await {
            Ok(s) => Ok(Some(swarm_service(s))),
            Err(e) if is_404(&e) => Ok(None),
            // 503: "This node is not a swarm manager…"
            Err(e) => Err(other(&format!("inspect the Swarm service {name}"), e)),
        }
    }

    async fn update_service(&self, service: &SwarmService, image: &str, settings: &SwarmUpdate, c: Option<&Credentials>) -> Result<Vec<String>, EngineError> {
        let spec = swarm_update_spec(&service.spec, image, settings);
        let opts = bollard::query_parameters::UpdateServiceOptionsBuilder::new().version(service.version as i32).build();
        // The credentials go with the spec, so that every node can pull (`--with-registry-auth`);
        // the request modifier re-encodes them URL-safe like any other X-Registry-Auth.
        let r = self.docker.update_service(&service.id, spec, opts, creds(c)).await.map_err(|e| classify(&format!("update {} to {image}", service.name), e))?;
        Ok(r.warnings.unwrap_or_default())
    }

    async fn rollback_service(&self, service: &SwarmService) -> Result<(), EngineError> {
        // What `docker service rollback` sends: the current spec, `rollback=previous`.
        let opts = bollard::query_parameters::UpdateServiceOptionsBuilder::new().version(service.version as i32).rollback("previous").build();
        self.docker.update_service(&service.id, service.spec.0.clone(), opts, None).await.map_err(|e| other(&format!("roll back {}", service.name), e))?;
        Ok(())
    }

    async fn tasks(&self, service_id: &str) -> Result<Vec<SwarmTask>, EngineError> {
        let mut filters = HashMap::new();
        filters.insert("service".to_string(), vec![service_id.to_string()]);
        let opts = bollard::query_parameters::ListTasksOptionsBuilder::new().filters(&filters).build();
        let list = self.docker.list_tasks(Some(opts)).await.map_err(|e| other("list the Swarm tasks", e))?;
        Ok(list.into_iter().map(swarm_task).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_auth_is_reencoded_url_safe() {
        // {"password":"p>?~"} encodes with '+' and '/' in the standard alphabet.
        let std = base64::engine::general_purpose::STANDARD.encode(br#"{"password":"p>?~>>?"}"#);
        assert!(std.contains('+') || std.contains('/'), "{std}");
        let fixed = to_urlsafe(&std).unwrap();
        assert!(!fixed.contains('+') && !fixed.contains('/'));
        assert_eq!(base64::engine::general_purpose::URL_SAFE.decode(fixed).unwrap(), br#"{"password":"p>?~>>?"}"#);
    }

    /// What `docker container inspect` printed on a Docker 20.10 host reads as the API's
    /// inspect does, once the container's image was seen (no engine is asked).
    #[test]
    fn a_container_printed_by_the_cli_reads_as_the_engine_inspects_it() {
        let printed = include_str!("testdata/container-inspect.json");
        // A socket path that exists and that nothing is asked on.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        std::fs::write(&sock, "").unwrap();
        let engine = DockerEngine {
            docker: Docker::connect_with_unix(&sock.display().to_string(), 1, bollard::API_DEFAULT_VERSION).unwrap(),
            images: Default::default(),
            version: String::new(),
        };
        assert!(engine.read_printed(printed).is_none(), "its image not seen yet: the caller asks");
        let image: Vec<ImageInspect> = serde_json::from_str(include_str!("testdata/image-inspect.json")).unwrap();
        engine.remember(image.into_iter().next().unwrap());
        let c = engine.read_printed(printed).expect("read");
        let api: Vec<bollard::models::ContainerInspectResponse> = serde_json::from_str(printed).unwrap();
        let cached = engine.images.lock().unwrap().values().next().cloned();
        assert_eq!(format!("{c:?}"), format!("{:?}", container_info(&api[0], cached.as_ref())));
        assert_eq!((c.name.as_str(), c.running, c.pid, c.addresses.clone()), ("capstan-fixture", true, 24201, vec!["172.17.0.2".to_string()]));
        assert!(engine.read_printed("Error: No such container: web-1").is_none());
        assert!(engine.read_printed("").is_none());
    }
}
