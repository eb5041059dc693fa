//! Which image tags a release gets, the way docker/metadata-action derives
//! them, and one step further: floating tags (`MAJOR.MINOR`, `MAJOR`,
//! `latest`) move only when this release is the highest stable one the
//! registry has, so a hotfix `v1.3.9` pushed after `v1.4.0` moves `1.3` but
//! not `1` or `latest`. Pure.

use std::fmt;

use crate::core::release::{parse_semver, Version};

/// The kinds of tag a service can push (`build.tags` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TagKind {
    /// The release's own tag, as written (`v1.4.2`).
    Version,
    /// `1.4`
    Minor,
    /// `1` (never for `0.x`, whose minor releases may break)
    Major,
    /// `latest`
    Latest,
    /// `sha-<7 hex>` of the commit
    Sha,
}

impl TagKind {
    pub const ALL: [TagKind; 5] = [TagKind::Version, TagKind::Minor, TagKind::Major, TagKind::Latest, TagKind::Sha];

    pub fn parse(s: &str) -> Option<TagKind> {
        Some(match s {
            "version" => TagKind::Version,
            "minor" => TagKind::Minor,
            "major" => TagKind::Major,
            "latest" => TagKind::Latest,
            "sha" => TagKind::Sha,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TagKind::Version => "version",
            TagKind::Minor => "minor",
            TagKind::Major => "major",
            TagKind::Latest => "latest",
            TagKind::Sha => "sha",
        }
    }
}

impl fmt::Display for TagKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tags to push, and why any asked-for kind was left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tags {
    /// The release's own tag first: it is the one pushed first and deployed.
    pub tags: Vec<String>,
    pub skipped: Vec<String>,
}

/// The tags of `version` among `kinds`, given the tags the repository already
/// has (`pushed`) and the commit, if known.
pub fn derive(version: &Version, kinds: &[TagKind], pushed: &[String], commit: Option<&str>) -> Tags {
    let mut out = Tags::default();
    let want = |k| kinds.contains(&k);
    // The release's own tag is always pushed: it is what deploy and rollback name.
    out.tags.push(version.text.clone());
    let stable: Vec<semver::Version> = pushed.iter().filter_map(|t| parse_semver(t)).filter(|v| v.pre.is_empty()).collect();
    let floating = [TagKind::Minor, TagKind::Major, TagKind::Latest];
    match &version.semver {
        None => {
            for k in floating.into_iter().filter(|k| want(*k)) {
                out.skipped.push(format!("{k}: {} is not a semver release", version.text));
            }
        }
        Some(v) if !v.pre.is_empty() => {
            for k in floating.into_iter().filter(|k| want(*k)) {
                out.skipped.push(format!("{k}: {} is a prerelease", version.text));
            }
        }
        Some(v) => {
            // Highest stable release already pushed within a group, if higher than this one.
            let higher = |same: &dyn Fn(&semver::Version) -> bool| stable.iter().filter(|p| same(p) && cmp(p, v).is_gt()).max_by(|a, b| cmp(a, b)).cloned();
            if want(TagKind::Minor) {
                let tag = format!("{}.{}", v.major, v.minor);
                match higher(&|p| p.major == v.major && p.minor == v.minor) {
                    None => out.tags.push(tag),
                    Some(h) => out.skipped.push(format!("minor: {tag} stays on {h}, which is higher")),
                }
            }
            if want(TagKind::Major) {
                let tag = v.major.to_string();
                if v.major == 0 {
                    out.skipped.push("major: no `0` tag for 0.x releases, whose minor releases may break".into());
                } else {
                    match higher(&|p| p.major == v.major) {
                        None => out.tags.push(tag),
                        Some(h) => out.skipped.push(format!("major: {tag} stays on {h}, which is higher")),
                    }
                }
            }
            if want(TagKind::Latest) {
                match higher(&|_| true) {
                    None => out.tags.push("latest".into()),
                    Some(h) => out.skipped.push(format!("latest: stays on {h}, which is higher")),
                }
            }
        }
    }
    if want(TagKind::Sha) {
        match commit.filter(|c| c.len() >= 7 && c.chars().all(|ch| ch.is_ascii_hexdigit())) {
            Some(c) => out.tags.push(format!("sha-{}", c[..7].to_ascii_lowercase())),
            None => out.skipped.push("sha: the commit is not known (no GITHUB_SHA, not a git checkout)".into()),
        }
    }
    out.tags.dedup();
    out
}

/// Semver precedence (build metadata does not count).
fn cmp(a: &semver::Version, b: &semver::Version) -> std::cmp::Ordering {
    a.cmp_precedence(b)
}

/// The highest stable release among `pushed` below `version`: the image a
/// build can take its cache from.
pub fn previous_release(version: &Version, pushed: &[String]) -> Option<String> {
    let mut best: Option<(semver::Version, &String)> = None;
    for t in pushed {
        let Some(p) = parse_semver(t) else { continue };
        if !p.pre.is_empty() || *t == version.text {
            continue;
        }
        if let Some(v) = &version.semver {
            if !cmp(&p, v).is_lt() {
                continue;
            }
        }
        if best.as_ref().is_none_or(|(b, _)| cmp(&p, b).is_gt()) {
            best = Some((p, t));
        }
    }
    best.map(|(_, t)| t.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Version {
        Version { text: text.into(), semver: parse_semver(text) }
    }

    fn s(list: &[&str]) -> Vec<String> {
        list.iter().map(|x| x.to_string()).collect()
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn tag_rules() {
        let all = TagKind::ALL;
        // (version, already pushed, expected tags)
        let cases: &[(&str, &[&str], &[&str])] = &[
            // A first stable release gets every tag.
            ("v1.4.2", &[], &["v1.4.2", "1.4", "1", "latest", "sha-0123456"]),
            // Without a `v` the same rules apply; the exact tag stays as written.
            ("1.4.2", &["1.4.1", "latest"], &["1.4.2", "1.4", "1", "latest", "sha-0123456"]),
            // The next release moves every floating tag.
            ("v1.5.0", &["v1.4.2", "1.4", "1", "latest"], &["v1.5.0", "1.5", "1", "latest", "sha-0123456"]),
            // A hotfix below the highest release moves only its own minor tag.
            ("v1.3.9", &["v1.3.8", "v1.4.0", "1.4", "1.3", "1", "latest"], &["v1.3.9", "1.3", "sha-0123456"]),
            // A fix to an old major line moves that major, not latest.
            ("v1.9.1", &["v1.9.0", "v2.0.0"], &["v1.9.1", "1.9", "1", "sha-0123456"]),
            // Prereleases never move floating tags, and do not count as higher.
            ("v2.0.0-rc.1", &["v1.4.0"], &["v2.0.0-rc.1", "sha-0123456"]),
            ("v1.4.1", &["v1.4.0", "v2.0.0-rc.1"], &["v1.4.1", "1.4", "1", "latest", "sha-0123456"]),
            // 0.x gets no major tag.
            ("v0.3.0", &[], &["v0.3.0", "0.3", "latest", "sha-0123456"]),
            // Pushing the same release again keeps it on top.
            ("v1.4.2", &["v1.4.2", "1.4", "1", "latest"], &["v1.4.2", "1.4", "1", "latest", "sha-0123456"]),
            // A raw tag (the config allowed it) gets only itself and the commit.
            ("edge-7", &["v1.0.0"], &["edge-7", "sha-0123456"]),
        ];
        for (version, pushed, want) in cases {
            let got = derive(&v(version), &all, &s(pushed), Some(SHA));
            assert_eq!(got.tags, s(want), "{version} after {pushed:?}: skipped {:?}", got.skipped);
        }
    }

    #[test]
    fn skipped_tags_say_why() {
        let got = derive(&v("v1.3.9"), &TagKind::ALL, &s(&["v1.4.0"]), None);
        assert!(got.skipped.iter().any(|m| m == "latest: stays on 1.4.0, which is higher"), "{:?}", got.skipped);
        assert!(got.skipped.iter().any(|m| m.starts_with("sha: the commit is not known")), "{:?}", got.skipped);
        let pre = derive(&v("v2.0.0-rc.1"), &[TagKind::Version, TagKind::Latest], &[], Some(SHA));
        assert_eq!(pre.tags, s(&["v2.0.0-rc.1"]));
        assert_eq!(pre.skipped, s(&["latest: v2.0.0-rc.1 is a prerelease"]));
    }

    #[test]
    fn chosen_kinds_only() {
        let got = derive(&v("v1.4.2"), &[TagKind::Version, TagKind::Latest], &[], Some(SHA));
        assert_eq!(got.tags, s(&["v1.4.2", "latest"]));
        // The release's own tag is pushed even when not listed: deploys run it.
        let got = derive(&v("v1.4.2"), &[TagKind::Sha], &[], Some(SHA));
        assert_eq!(got.tags, s(&["v1.4.2", "sha-0123456"]));
        assert!(TagKind::parse("nightly").is_none());
    }

    #[test]
    fn previous_releases() {
        let pushed = s(&["v1.2.0", "v1.4.0", "v1.3.0", "latest", "v1.5.0-rc.1", "v2.0.0"]);
        assert_eq!(previous_release(&v("v1.4.2"), &pushed).as_deref(), Some("v1.4.0"));
        assert_eq!(previous_release(&v("v1.4.0"), &pushed).as_deref(), Some("v1.3.0"));
        assert_eq!(previous_release(&v("v1.0.0"), &pushed), None);
        assert_eq!(previous_release(&v("edge"), &pushed).as_deref(), Some("v2.0.0"), "a raw tag builds on the highest release");
    }
}
