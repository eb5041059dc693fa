//! The build context: the directory a service builds from, packed as the tar
//! the engine's `/build` endpoint takes, leaving out what `.dockerignore`
//! excludes. Like the Docker CLI, the Dockerfile and `.dockerignore` are always
//! sent (the engine needs the first; both stay out of `COPY .` only if the
//! user's rules say so), symlinks are stored as links, never followed, and
//! owners are 0:0.
//!
//! When the Dockerfile lives outside the context, or the build rewrites it
//! (see `dockerfile::fold_labels`), it is sent as `.capstan.Dockerfile` and
//! that name is added to the `.dockerignore` inside the tar, as the Docker CLI
//! does for its own generated name: the engine reads it, then drops it from the
//! context, so `COPY .` never copies it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::build::dockerignore::Rules;

/// A packed context, ready to send.
#[derive(Debug)]
pub struct Context {
    pub tar: Vec<u8>,
    /// The Dockerfile's name inside the tar (the `dockerfile` build parameter).
    pub dockerfile: String,
    pub files: usize,
    /// Whether `rewrite` changed the Dockerfile that was sent.
    pub rewritten: bool,
}

/// Why a context cannot be packed; `key` is the config key the problem is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextError {
    pub key: &'static str,
    pub message: String,
}

/// The name of a Dockerfile that capstan sends itself (outside the context, or rewritten).
const GENERATED_DOCKERFILE: &str = ".capstan.Dockerfile";

/// Packs `context`. `rewrite` may return a new text for the Dockerfile.
pub fn pack(context: &Path, dockerfile: &Path, rewrite: &dyn Fn(&str) -> Option<String>) -> Result<Context, ContextError> {
    let err = |key, message: String| ContextError { key, message };
    if !context.is_dir() {
        return Err(err("context", format!("{} is not a directory", context.display())));
    }
    if !dockerfile.is_file() {
        return Err(err("dockerfile", format!("{} does not exist", dockerfile.display())));
    }
    let ignore_file = context.join(".dockerignore");
    let ignore_text = match fs::read_to_string(&ignore_file) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(err("context", format!("cannot read {}: {e}", ignore_file.display()))),
    };
    let rules = match &ignore_text {
        Some(text) => Rules::parse(text).map_err(|b| err("context", format!("{}:{}: {}", ignore_file.display(), b.line, b.message)))?,
        None => Rules::default(),
    };
    let original = fs::read(dockerfile).map_err(|e| err("dockerfile", format!("cannot read {}: {e}", dockerfile.display())))?;
    let rewritten = std::str::from_utf8(&original).ok().and_then(rewrite);
    let canon_ctx = context.canonicalize().map_err(|e| err("context", format!("{}: {e}", context.display())))?;
    let canon_df = dockerfile.canonicalize().map_err(|e| err("dockerfile", format!("{}: {e}", dockerfile.display())))?;
    let inside = canon_df.strip_prefix(&canon_ctx).ok().map(slash_path);
    let generated = rewritten.is_some() || inside.is_none();
    // Always sent, whatever the rules say.
    let keep: Vec<String> = [inside.clone(), Some(".dockerignore".into())].into_iter().flatten().collect();

    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut files = 0;
    let prune = !rules.has_exceptions();
    let walker = walkdir::WalkDir::new(&canon_ctx).follow_links(false).sort_by_file_name().min_depth(1).into_iter();
    let it = walker.filter_entry(|e| {
        // With no exceptions, nothing under an excluded directory can come back: do not walk it.
        let rel = e.path().strip_prefix(&canon_ctx).map(slash_path).unwrap_or_default();
        !(prune && e.file_type().is_dir() && rules.excludes(&rel) && !keep.iter().any(|k| k.starts_with(&format!("{rel}/"))))
    });
    for entry in it {
        let entry = entry.map_err(|e| err("context", format!("cannot read the context: {e}")))?;
        let rel = slash_path(entry.path().strip_prefix(&canon_ctx).unwrap_or(entry.path()));
        if rules.excludes(&rel) && !keep.contains(&rel) {
            continue;
        }
        if generated && (rel == ".dockerignore" || rel == GENERATED_DOCKERFILE) {
            continue;
        }
        append(&mut tar, entry.path(), &rel).map_err(|e| err("context", format!("cannot pack {}: {e}", entry.path().display())))?;
        if !entry.file_type().is_dir() {
            files += 1;
        }
    }
    let name = match (inside, generated) {
        (Some(rel), false) => rel,
        _ => {
            let text = rewritten.as_ref().map(|t| t.as_bytes()).unwrap_or(&original);
            let ignore = format!("{}\n{GENERATED_DOCKERFILE}\n", ignore_text.as_deref().unwrap_or("").trim_end());
            let pack_err = |e: std::io::Error| err("dockerfile", format!("cannot pack {}: {e}", dockerfile.display()));
            append_bytes(&mut tar, GENERATED_DOCKERFILE, text).map_err(pack_err)?;
            append_bytes(&mut tar, ".dockerignore", ignore.as_bytes()).map_err(pack_err)?;
            GENERATED_DOCKERFILE.to_string()
        }
    };
    let tar = tar.into_inner().map_err(|e| err("context", format!("cannot pack the context: {e}")))?;
    Ok(Context { tar, dockerfile: name, files, rewritten: rewritten.is_some() })
}

fn append(tar: &mut tar::Builder<Vec<u8>>, path: &Path, name: &str) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    header.set_uid(0);
    header.set_gid(0);
    header.set_username("")?;
    header.set_groupname("")?;
    if meta.file_type().is_symlink() {
        let target: PathBuf = fs::read_link(path)?;
        header.set_size(0);
        tar.append_link(&mut header, name, target)
    } else if meta.is_dir() {
        tar.append_data(&mut header, format!("{name}/"), std::io::empty())
    } else if meta.is_file() {
        tar.append_data(&mut header, name, fs::File::open(path)?)
    } else {
        // Sockets, fifos, devices: the Docker CLI skips them too.
        Ok(())
    }
}

fn append_bytes(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o644);
    header.set_size(data.len() as u64);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

fn slash_path(p: &Path) -> String {
    p.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        let mut out: Vec<String> = a.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        out.sort();
        out
    }

    fn write(dir: &Path, rel: &str, body: &str) {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, body).unwrap();
    }

    #[test]
    fn packs_what_the_rules_keep() {
        let d = tempfile::tempdir().unwrap();
        let ctx = d.path();
        write(ctx, "Dockerfile", "FROM scratch\n");
        write(ctx, ".dockerignore", "Dockerfile\n.dockerignore\n*.log\nsecrets\n!secrets/public.pem\nnode_modules\n");
        write(ctx, "app.bin", "x");
        write(ctx, "debug.log", "x");
        write(ctx, "sub/debug.log", "kept: *.log is anchored at the root");
        write(ctx, "secrets/key.pem", "x");
        write(ctx, "secrets/public.pem", "x");
        write(ctx, "node_modules/a/b.js", "x");
        std::os::unix::fs::symlink("/etc/passwd", ctx.join("link")).unwrap();
        let c = pack(ctx, &ctx.join("Dockerfile"), &|_| None).unwrap();
        assert_eq!(c.dockerfile, "Dockerfile");
        assert_eq!(names(&c.tar), vec![".dockerignore", "Dockerfile", "app.bin", "link", "secrets/public.pem", "sub/", "sub/debug.log"]);
        // The link is a link, not the file it points to.
        let mut a = tar::Archive::new(c.tar.as_slice());
        let link = a.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_str() == Some("link")).unwrap();
        assert_eq!(link.header().entry_type(), tar::EntryType::Symlink);
        assert_eq!(link.header().uid().unwrap(), 0);
    }

    #[test]
    fn dockerfile_outside_the_context_is_sent_under_its_own_name() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "docker/web.Dockerfile", "FROM scratch\n");
        write(d.path(), "app/main", "x");
        let c = pack(&d.path().join("app"), &d.path().join("docker/web.Dockerfile"), &|_| None).unwrap();
        assert_eq!(c.dockerfile, GENERATED_DOCKERFILE);
        assert_eq!(names(&c.tar), vec![GENERATED_DOCKERFILE, ".dockerignore", "main"]);
        // The engine drops it from the context after reading it: it is listed in the .dockerignore it gets.
        assert_eq!(entry(&c.tar, ".dockerignore"), format!("\n{GENERATED_DOCKERFILE}\n"));
    }

    #[test]
    fn a_rewritten_dockerfile_is_sent_under_its_own_name() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "Dockerfile", "FROM scratch\n");
        write(d.path(), ".dockerignore", "*.log\n");
        write(d.path(), "a.log", "x");
        let c = pack(d.path(), &d.path().join("Dockerfile"), &|t| Some(format!("{t}LABEL a=b\n"))).unwrap();
        assert!(c.rewritten);
        assert_eq!(c.dockerfile, GENERATED_DOCKERFILE);
        assert_eq!(names(&c.tar), vec![GENERATED_DOCKERFILE, ".dockerignore", "Dockerfile"]);
        assert_eq!(entry(&c.tar, GENERATED_DOCKERFILE), "FROM scratch\nLABEL a=b\n");
        assert_eq!(entry(&c.tar, ".dockerignore"), format!("*.log\n{GENERATED_DOCKERFILE}\n"));
        assert_eq!(entry(&c.tar, "Dockerfile"), "FROM scratch\n", "the user's own file is untouched");
    }

    fn entry(tar: &[u8], name: &str) -> String {
        use std::io::Read;
        let mut a = tar::Archive::new(tar);
        let mut e = a.entries().unwrap().map(|e| e.unwrap()).find(|e| e.path().unwrap().to_str() == Some(name)).unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn errors_name_the_key() {
        let d = tempfile::tempdir().unwrap();
        let e = pack(&d.path().join("nope"), &d.path().join("Dockerfile"), &|_| None).unwrap_err();
        assert_eq!(e.key, "context");
        let e = pack(d.path(), &d.path().join("Dockerfile"), &|_| None).unwrap_err();
        assert_eq!((e.key, e.message.ends_with("does not exist")), ("dockerfile", true));
        write(d.path(), "Dockerfile", "FROM scratch\n");
        write(d.path(), ".dockerignore", "ok\n!\n");
        let e = pack(d.path(), &d.path().join("Dockerfile"), &|_| None).unwrap_err();
        assert!(e.message.ends_with(".dockerignore:2: illegal exclusion pattern: \"!\""), "{e:?}");
    }
}
