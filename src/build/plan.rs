//! What to build for one service: its tags (by `core::tags`' rules), the OCI
//! labels, build arguments and the image to take the cache from. Pure.

use std::collections::BTreeMap;

use crate::build::source::Source;
use crate::core::config::Service;
use crate::core::image;
use crate::core::release::Version;
use crate::core::tags::{self, Tags};

/// What to build for one service. Pure data, made by [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct BuildPlan {
    pub service: String,
    pub repo: String,
    pub tags: Tags,
    pub labels: BTreeMap<String, String>,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
    /// The previous release, to take the build cache from on an engine that has none.
    pub cache_from: Option<String>,
}

pub fn plan(svc: &Service, version: &Version, pushed: &[String], source: &Source, created: &str) -> BuildPlan {
    let b = svc.build.as_ref().expect("plan is only called for services with a build block");
    let tags = tags::derive(version, &b.tags, pushed, source.revision.as_deref());
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    labels.insert("org.opencontainers.image.version".into(), version.text.clone());
    labels.insert("org.opencontainers.image.created".into(), created.to_string());
    if let Some(r) = &source.revision {
        labels.insert("org.opencontainers.image.revision".into(), r.clone());
    }
    if let Some(u) = &source.url {
        labels.insert("org.opencontainers.image.source".into(), u.clone());
    }
    // The service's own labels win: the user said so explicitly.
    for (k, v) in &b.labels {
        labels.insert(k.clone(), v.clone());
    }
    BuildPlan {
        service: svc.name.clone(),
        repo: svc.image.clone(),
        tags,
        labels,
        args: b.args.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        target: b.target.clone(),
        cache_from: tags::previous_release(version, pushed).map(|t| image::tag_ref(&svc.image, &t)),
    }
}
