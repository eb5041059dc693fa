//! The base image the action's `Dockerfile` builds on, made here: no image can
//! be pulled in the test environment.
//!
//! A Debian bookworm rootfs from `debootstrap --variant=minbase` (what
//! `debian:bookworm-slim` is made from) off the mirror apt uses on this
//! machine, `docker import`ed under [`TAG`]. It is kept on the engine: a later
//! run finds the tag and skips the minute this takes.
//!
//! The tag is a test tag, passed to the build as `RUST_IMAGE`/`RUNTIME_IMAGE`,
//! rather than a fake `debian:bookworm-slim` / `rust:1-slim-bookworm`: those
//! names would then mean a locally made image to everything else on the engine
//! (and `rust:…` would be a Rust image without Rust). The build arguments are
//! the Dockerfile's own seam, and what it installs on top (`apt-get install
//! openssh-client ca-certificates`) runs for real: a build container reaches
//! the Debian mirror here, as it does on a runner. The apt lists are emptied,
//! as in the official image, so the Dockerfile's `apt-get update` is
//! needed here too. The rootfs is made like the official slim image (see
//! [`SLIMIFY`]), so sizes measured on it are what the real image would weigh.

use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::proc::{cmd, run};
use super::{repo_root, short_tempdir};

/// Bump the suffix when the recipe below changes: an engine keeps the old one.
pub const TAG: &str = "capstan-test/debian:bookworm-slim-1";
const SUITE: &str = "bookworm";
const FALLBACK_MIRROR: &str = "http://deb.debian.org/debian";

/// The base image, and how long making it took (`None`: it was on the engine).
pub struct BaseImage {
    pub tag: &'static str,
    pub made_in: Option<Duration>,
}

/// [`TAG`] on the engine, made first if it is not there. One process at a
/// time (a lock file in /tmp); panics with the reason on failure.
pub fn bookworm() -> BaseImage {
    let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open("/tmp/capstan-base-image.lock").expect("open /tmp/capstan-base-image.lock");
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        panic!("flock /tmp/capstan-base-image.lock: {}", std::io::Error::last_os_error());
    }
    if image_exists(TAG) {
        return BaseImage { tag: TAG, made_in: None };
    }
    let t0 = Instant::now();
    make(TAG);
    BaseImage { tag: TAG, made_in: Some(t0.elapsed()) }
}

fn image_exists(tag: &str) -> bool {
    matches!(run(&mut cmd("docker", ["image", "inspect", "--format", "{{.Id}}", tag]), None, Duration::from_secs(30)), Ok(o) if o.success())
}

fn make(tag: &str) {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "making the base image {tag} needs root (debootstrap); run the tests as root, as scripts/test does");
    if !Path::new("/usr/sbin/debootstrap").is_file() {
        // scripts/setup installs every Debian package the tests need, debootstrap included.
        let out = run(Command::new("bash").arg(repo_root().join("scripts/setup")), None, Duration::from_secs(600)).expect("run scripts/setup");
        assert!(out.success() && Path::new("/usr/sbin/debootstrap").is_file(), "scripts/setup did not install debootstrap: {}{}", out.stdout, out.stderr);
    }
    let mirror = debian_mirror();
    let tmp = short_tempdir("cst-base-");
    let root = tmp.path().join("rootfs");
    let t0 = Instant::now();
    let out = run(Command::new("/usr/sbin/debootstrap").args(["--variant=minbase", SUITE]).arg(&root).arg(&mirror), None, Duration::from_secs(900))
        .expect("run debootstrap");
    if !out.success() {
        let inner = fs::read_to_string(root.join("debootstrap/debootstrap.log")).unwrap_or_default();
        panic!("debootstrap --variant=minbase {SUITE} {mirror} failed (exit {}):\n{}\n{}\n{inner}", out.status, out.stdout, out.stderr);
    }
    let debootstrapped = t0.elapsed();
    let out = run(cmd("sh", ["-c", SLIMIFY, "sh"]).arg(&root), None, Duration::from_secs(120)).expect("run sh");
    assert!(out.success(), "slimming the rootfs failed: {}{}", out.stdout, out.stderr);
    let tarball = tmp.path().join("rootfs.tar");
    let out = run(cmd("tar", ["--numeric-owner", "-C"]).arg(&root).arg("-cf").arg(&tarball).arg("."), None, Duration::from_secs(300)).expect("run tar");
    assert!(out.success(), "tar of the rootfs failed: {}", out.stderr);
    let message = format!("debootstrap --variant=minbase {SUITE} {mirror} (capstan tests)");
    let out = run(
        cmd(
            "docker",
            [
                "import",
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--change",
                "CMD [\"bash\"]",
                "--message",
                message.as_str(),
            ],
        )
        .arg(&tarball)
        .arg(tag),
        None,
        Duration::from_secs(300),
    )
    .expect("run docker import");
    assert!(out.success(), "docker import {tag} failed: {}", out.stderr);
    eprintln!("[support] base image {tag}: debootstrap {SUITE} from {mirror} in {debootstrapped:?}, imported at {:?}", t0.elapsed());
    // The rootfs holds root-owned files and device nodes; we are root, so the temp dir's drop removes it.
}

/// What the official `debian:bookworm-slim` is, besides minbase (debuerreotype's
/// minimizing config and slimify): apt that keeps no downloaded packages, no
/// binary caches and no translations; dpkg that installs no docs, man pages or
/// locales (and those removed); no package lists. `$1` is the rootfs.
const SLIMIFY: &str = r#"set -eu
r="$1"
printf '%s\n' \
  'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";' > "$r/etc/apt/apt.conf.d/docker-clean"
echo 'Acquire::Languages "none";' > "$r/etc/apt/apt.conf.d/docker-no-languages"
echo 'Acquire::GzipIndexes "true";' > "$r/etc/apt/apt.conf.d/docker-gzip-indexes"
echo 'Apt::AutoRemove::SuggestsImportant "false";' > "$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
echo 'force-unsafe-io' > "$r/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
printf '%s\n' \
  'path-exclude /usr/share/doc/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
  'path-exclude /usr/share/linda/*' 'path-exclude /usr/share/lintian/overrides/*' \
  'path-exclude /usr/share/locale/*' 'path-exclude /usr/share/man/*' \
  'path-include /usr/share/doc/*/copyright' 'path-include /usr/share/locale/locale.alias' > "$r/etc/dpkg/dpkg.cfg.d/docker"
cd "$r/usr/share"
[ ! -d doc ] || find doc -mindepth 1 ! -type d ! -path 'doc/*/copyright' -delete
[ ! -d doc ] || find doc -mindepth 1 -type d -empty -delete
[ ! -d locale ] || find locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf groff/* info/* linda/* lintian/overrides/* man/*
rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb
"#;

/// The Debian archive apt uses on this machine (deb822 `.sources` or
/// one-line `sources.list`), not the security archive.
fn debian_mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy().to_string();
            if name.ends_with(".sources") || name.ends_with(".list") {
                if let Ok(t) = fs::read_to_string(&p) {
                    texts.push(t);
                }
            }
        }
    }
    let is_debian = |uri: &str| (uri.starts_with("http://") || uri.starts_with("https://")) && uri.trim_end_matches('/').ends_with("/debian");
    for text in &texts {
        for line in text.lines().map(str::trim) {
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if line.starts_with("deb ") {
                // deb [options] URI suite components
                line.split_whitespace().skip(1).filter(|w| !w.starts_with('[') && !w.ends_with(']')).take(1).collect()
            } else {
                continue;
            };
            if let Some(u) = uris.into_iter().find(|u| is_debian(u)) {
                return u.trim_end_matches('/').to_string();
            }
        }
    }
    FALLBACK_MIRROR.to_string()
}
