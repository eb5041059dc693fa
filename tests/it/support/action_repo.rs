//! The action's repository as the runner (or the release workflow) has it
//! checked out, for the tests that build its `Dockerfile`: the tracked files and
//! new ones git does not ignore, plus the capstan under test at `dist/capstan`,
//! which the Dockerfile takes as is. The repository's `.dockerignore` then
//! decides what a build sends.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::{capstan_bin, proc, repo_root, set_mode};

/// Copies the checkout into `dir` (an empty directory).
pub fn checkout(dir: &Path) {
    let root = repo_root();
    let listed = proc::run_ok(proc::cmd("git", ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]).current_dir(&root), Duration::from_secs(60));
    for rel in listed.split('\0').filter(|s| !s.is_empty()) {
        let from = root.join(rel);
        if !from.is_file() {
            continue; // deleted in the work tree
        }
        let to = dir.join(rel);
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&from, &to).unwrap_or_else(|e| panic!("copy {} to the build context: {e}", from.display()));
    }
    fs::create_dir_all(dir.join("dist")).unwrap();
    fs::copy(capstan_bin(), dir.join("dist/capstan")).expect("copy the capstan binary into dist/");
    set_mode(&dir.join("dist/capstan"), 0o755);
}
