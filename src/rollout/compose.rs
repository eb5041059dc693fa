//! Keeping Compose's view true while capstan replaces a Compose service's
//! containers: the tag the compose file names points at what runs
//! ([`COMPOSE_IMAGE_LABEL`], `point_tag`), the config hashes Compose will expect
//! (`compose_hashes`), and the `.env` variable the file takes the tag from, set to
//! the release (`set_compose_env`). The host's side (the Compose CLI, the `.env`
//! edit) is `host::compose`.

use std::collections::HashMap;

use crate::core::config::Service;
use crate::core::image;
use crate::core::observed::{ContainerInfo, ContainerSpec};
use crate::rollout::steps::{StepError, StepResult};
use crate::rollout::{Done, Rollout};

impl Rollout<'_> {
    /// Before a Compose service's first instance: the release tagged on the host as
    /// `repo:<version>` (never moving a tag that names another image), and the config
    /// hash Compose computes for each of the project's services with the service's
    /// variable set to the version. Per Compose service: (hash, image ID).
    pub(super) async fn compose_hashes(
        &self,
        svc: &Service,
        c: &crate::core::config::Compose,
        first: &str,
        image: &str,
    ) -> StepResult<HashMap<String, (String, String)>> {
        let (Some(variable), Some(version)) = (&c.variable, self.version) else {
            return Err(format!("services.{}.compose.variable is set, but this run has no version to set it to", svc.name).into());
        };
        let engine = &self.host.engine;
        let tagged = image::tag_ref(&svc.image, version);
        // The instance, the release's image and what its version tag names, asked at once.
        let (current, new, at_tag) = tokio::join!(engine.inspect_container(first), engine.inspect_image(image), engine.inspect_image(&tagged));
        let current = current.map_err(StepError::failed)?.ok_or_else(|| format!("{first} disappeared"))?;
        let project = crate::host::compose::Project::of(&current.spec, c)
            .ok_or_else(|| format!("{first} carries no Compose project labels: is it a container of Compose project {}?", c.project))?;
        let new = new.map_err(StepError::failed)?.ok_or_else(|| format!("{} is not on the host", crate::core::image::short(image)))?;
        let needs_tag = match at_tag.map_err(StepError::failed)? {
            Some(i) if i.id != new.id => {
                return Err(format!(
                    "{tagged} on this host is another image ({}); capstan never moves a version tag: remove that tag, or deploy a new version",
                    i.id
                )
                .into())
            }
            Some(_) => false,
            None => true,
        };
        // The tag beside Compose's hashes, which read the project's files, not the images.
        let tag = async {
            match needs_tag {
                true => engine.tag(image, &svc.image, version).await,
                false => Ok(()),
            }
        };
        let (tagged_now, hashes) = tokio::join!(tag, crate::host::compose::hashes(self.host.shell.as_ref(), &project, variable, version));
        tagged_now.map_err(StepError::failed)?;
        let hashes = hashes.map_err(StepError::failed)?;
        let out: HashMap<String, (String, String)> = hashes.into_iter().map(|(s, h)| (s, (h, new.id.clone()))).collect();
        Ok((out, format!("{tagged} is {}; {} config --hash with {variable}={version}", crate::core::image::short(image), project.command.join(" "))))
    }

    /// After the host's rollout succeeded: each replaced Compose service's `.env` variable
    /// set to the release, so that Compose's own view names what runs.
    pub(super) async fn set_compose_env(&self, done: &[Done<'_>]) -> Result<Vec<crate::host::compose::EnvChange>, (String, StepError)> {
        let Some(version) = self.version else { return Ok(Vec::new()) };
        // Per env file: its variables to set, and the instance whose step reports it.
        type EnvFile<'d, 's> = (String, Vec<(String, String)>, &'d Done<'s>);
        let mut files: Vec<EnvFile> = Vec::new();
        for d in done {
            let Some(c) = d.service.compose.as_ref() else { continue };
            let Some(variable) = &c.variable else { continue };
            let Some(project) = crate::host::compose::Project::of(&d.spec, c) else { continue };
            let var = (variable.clone(), version.to_string());
            match files.iter_mut().find(|(f, _, _)| *f == project.env_file) {
                Some((_, vars, _)) if vars.contains(&var) => {}
                Some((_, vars, _)) => vars.push(var),
                None => files.push((project.env_file.clone(), vec![var], d)),
            }
        }
        let mut changes = Vec::new();
        for (file, vars, d) in files {
            let set = async {
                let c = crate::host::compose::set_env(self.host.shell.as_ref(), &file, &vars).await.map_err(StepError::failed)?;
                let said = c.iter().map(|c| format!("{}={} (was {})", c.variable, c.after, c.before.as_deref().unwrap_or("unset"))).collect::<Vec<_>>();
                Ok((c, format!("{file}: {}", said.join(", "))))
            };
            match self.step(&d.service.name, &d.name, "compose env", set).await {
                Ok(c) => changes.extend(c),
                Err(e) => {
                    // What was set already goes back with the instances.
                    let _ = crate::host::compose::restore_env(self.host.shell.as_ref(), &changes).await;
                    return Err((format!("{} compose env", d.service.name), e));
                }
            }
        }
        Ok(changes)
    }

    /// Compose decides what to run from the tag its file names: point that tag
    /// at what now runs, so that a later `docker compose up -d` keeps it.
    pub(super) async fn point_tag(&self, name: &str, reference: &str, image: &str) {
        let (Some(tag), repo) = (image::tag_of(reference), image::repo_of(reference)) else { return };
        match self.host.engine.tag(image, repo, tag).await {
            Ok(()) => self.info(format!("{name}: compose tag {repo}:{tag} now points at {}", crate::core::image::short(image))),
            Err(e) => self.warn(format!("{name}: could not move the compose tag {repo}:{tag}: {e}")),
        }
    }
}

/// Where capstan remembers the `repo:tag` a Compose file names, once the
/// container itself runs a digest.
pub const COMPOSE_IMAGE_LABEL: &str = "dev.capstan.compose-image";

/// For a Compose-managed container: the tag reference its compose file uses.
pub(super) fn compose_reference(current: &ContainerInfo, spec: &ContainerSpec) -> Option<String> {
    current.compose_project.as_ref()?;
    if let Some(r) = spec.0.labels.as_ref().and_then(|l| l.get(COMPOSE_IMAGE_LABEL)) {
        return Some(r.clone());
    }
    image::tag_of(&current.image_ref).map(|_| current.image_ref.clone())
}

/// A compose reference whose tag moves with releases (`:production`), as opposed to a version.
pub(super) fn moving(reference: &str) -> bool {
    image::tag_of(reference).is_some_and(|t| !crate::host::compose::is_version_tag(t))
}

pub(super) fn with_label(spec: &ContainerSpec, key: &str, value: &str) -> ContainerSpec {
    let mut s = spec.clone();
    s.0.labels.get_or_insert_with(Default::default).insert(key.to_string(), value.to_string());
    s
}
