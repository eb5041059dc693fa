//! Image references: `repo:tag`, `repo@sha256:…`, their parts, the one that names an
//! image in the log, and the short form shown to people. Pure.

pub fn tag_ref(repo: &str, tag: &str) -> String {
    format!("{repo}:{tag}")
}

pub fn digest_ref(repo: &str, digest: &str) -> String {
    format!("{repo}@{digest}")
}

/// The repository part of `repo:tag` or `repo@sha256:…`.
pub fn repo_of(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    match no_digest.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo,
        _ => no_digest,
    }
}

/// The tag of `repo:tag`, if it has one (not a digest reference).
pub fn tag_of(reference: &str) -> Option<&str> {
    if reference.contains('@') {
        return None;
    }
    match reference.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') => Some(tag),
        _ => None,
    }
}

/// `repo:tag@sha256:…` (how the Docker CLI pins a Swarm service's image) as
/// `repo@sha256:…`, the form capstan plans and records; other references as they are.
pub fn without_tag(reference: &str) -> String {
    match reference.split_once('@') {
        Some((name, digest)) => digest_ref(repo_of(name), digest),
        None => reference.to_string(),
    }
}

/// The image reference that names an image for the record: its digest
/// reference in the service's repository when it has one, else its ID.
pub fn best_reference(repo: &str, repo_digests: &[String], image_id: &str) -> String {
    repo_digests.iter().find(|d| repo_of(d) == repo).or_else(|| repo_digests.first()).cloned().unwrap_or_else(|| image_id.to_string())
}

/// `repo@sha256:0123456789ab…` -> `repo@sha256:0123456789ab`.
pub fn short(image: &str) -> String {
    match image.split_once("sha256:") {
        Some((head, hex)) => format!("{head}sha256:{}", &hex[..hex.len().min(12)]),
        None => image.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(repo_of("127.0.0.1:5000/demo:v1"), "127.0.0.1:5000/demo");
        assert_eq!(repo_of("127.0.0.1:5000/demo@sha256:ab"), "127.0.0.1:5000/demo");
        assert_eq!(repo_of("127.0.0.1:5000/demo"), "127.0.0.1:5000/demo");
        assert_eq!(repo_of("demo:latest"), "demo");
        assert_eq!(tag_of("127.0.0.1:5000/demo:v1"), Some("v1"));
        assert_eq!(tag_of("127.0.0.1:5000/demo"), None);
        assert_eq!(tag_of("demo@sha256:ab"), None);
        let digests = vec!["other/x@sha256:1".to_string(), "r/demo@sha256:2".to_string()];
        assert_eq!(best_reference("r/demo", &digests, "sha256:id"), "r/demo@sha256:2");
        assert_eq!(best_reference("r/demo", &[], "sha256:id"), "sha256:id");
        assert_eq!(without_tag("r/demo:v2@sha256:ab"), "r/demo@sha256:ab");
        assert_eq!(short("r/demo@sha256:0123456789abcdef"), "r/demo@sha256:0123456789ab");
    }
}
