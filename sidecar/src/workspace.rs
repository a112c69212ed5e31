//! Workspaces: work that names a repository (`context.repository`) runs in its own git
//! working copy, made from a clone the sidecar keeps under its work directory.
//!
//! - The clone is bare (`WORK_DIR/.agentcom/repos/HASH`), made on first use and fetched (its
//!   branches into `refs/remotes/origin/`, so the `agentcom/` branches made here survive a
//!   fetch) when older than [`FETCH_AFTER`] or when it lacks the revision asked for.
//! - The workspace (`WORK_DIR/.agentcom/workspaces/TASK-GENERATION`) is a repository of its own
//!   that borrows the clone's objects (`git clone --shared`), checked out detached at the branch
//!   or commit asked for (`context.branch`; the default branch without one). The work may use
//!   git there freely: what it writes goes into the workspace's own `.git`, owned by the task's
//!   user under `--run-as`, never into the shared clone.
//! - After the work, everything it changed is staged and described (`--stat` and the diff,
//!   capped). On success with changes the change is committed and fetched into the clone as
//!   the branch `agentcom/TASK_ID`, and the workspace is removed. A failed attempt's workspace
//!   is kept for `--keep-failed-workspaces` and swept after.
//! - With `--push-branches`, that branch is then pushed to the repository it came from (the
//!   clone's `origin`), with the machine's git credentials and no prompt. A failed push is
//!   reported beside the commit; it does not fail the work.
//!
//! Only repositories on the sidecar's allowlist (`--repo-allow`) are used. These git commands
//! are the sidecar's own, on its cache: they run with hooks off (`core.hooksPath=/dev/null`)
//! and without a terminal prompt, not in the task sandbox; task code runs only through the
//! shell runner.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agentcom_types::domain::WorkspaceReport;
use agentcom_types::wire::{MAX_DIFF_BYTES, MAX_DIFF_STAT_BYTES, clip_to};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::attempt::TaskKey;

/// A clone older than this is fetched before a workspace is made from it.
pub const FETCH_AFTER: Duration = Duration::from_secs(60);
/// One git command may take this long (a clone of a large repository takes a while).
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The workspaces of one sidecar.
pub struct Workspaces {
    repos: PathBuf,
    root: PathBuf,
    /// Kept environments (`context.environment`), one per repository and commit.
    environments: PathBuf,
    allow: Vec<String>,
    keep_failed: Duration,
    /// Tasks run as this user own their workspace's files.
    owner: Option<(u32, u32)>,
    /// With `--run-as-range`: each workspace is its attempt's uid's, and no one else's (0700).
    pub users: Option<std::sync::Arc<crate::users::Users>>,
    /// Push the branches of successful work to their repository.
    pub push_branches: bool,
    /// One clone or fetch of a repository at a time.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A workspace made for one attempt.
#[derive(Debug)]
pub struct Workspace {
    pub dir: PathBuf,
    mirror: PathBuf,
    repository: String,
    base: String,
    /// A kept environment: never removed after the work.
    kept: bool,
}

/// What an environment keeps out of the changes its work is committed with: what installs make.
const ENVIRONMENT_EXCLUDES: &str = "# AgentCom: what installs make, kept out of the commits of fixes\n.venv/\nvenv/\nnode_modules/\n__pycache__/\n*.pyc\ntarget/\n.agentcom/\n";

impl Workspaces {
    pub fn new(work_dir: &Path, allow: Vec<String>, keep_failed: Duration, owner: Option<(u32, u32)>) -> Workspaces {
        let state = work_dir.join(".agentcom");
        Workspaces {
            repos: state.join("repos"),
            root: state.join("workspaces"),
            environments: state.join("environments"),
            allow,
            keep_failed,
            owner,
            users: None,
            push_branches: false,
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `repository` is on the allowlist (`agentcom_types::fleet::repository_allowed`),
    /// local paths compared with their symbolic links resolved.
    pub fn allowed(&self, repository: &str) -> bool {
        let local = Path::new(repository);
        let repository = if local.is_absolute() {
            match std::fs::canonicalize(local) {
                Ok(path) => path.to_string_lossy().into_owned(),
                Err(_) => return false,
            }
        } else {
            repository.to_owned()
        };
        agentcom_types::fleet::repository_allowed(&self.resolved(), &repository)
    }

    /// The allowlist with local paths resolved (as they are given where they do not exist).
    fn resolved(&self) -> Vec<String> {
        self.allow
            .iter()
            .map(|allowed| match Path::new(allowed).is_absolute() {
                true => {
                    std::fs::canonicalize(allowed).map(|p| p.to_string_lossy().into_owned()).unwrap_or(allowed.clone())
                }
                false => allowed.clone(),
            })
            .collect()
    }

    /// The allowlist as the hub is told it: each entry as given, and resolved where that differs,
    /// so the hub matches a task's repository named either way.
    pub fn advertised(&self) -> Vec<String> {
        let mut all = self.allow.clone();
        for resolved in self.resolved() {
            if !all.contains(&resolved) {
                all.push(resolved);
            }
        }
        all
    }

    /// Makes the workspace for an attempt, at `revision` (a branch or commit; empty: the
    /// default branch).
    pub async fn open(&self, key: &TaskKey, repository: &str, revision: &str) -> Result<Workspace, String> {
        if !self.allowed(repository) {
            return Err(format!("the repository {repository} is not allowed on this sidecar (--repo-allow)"));
        }
        if revision.starts_with('-') {
            return Err(format!("{revision:?} is not a branch or commit"));
        }
        let (mirror, base) = self.resolve_in_clone(repository, revision).await?;
        let dir = self.root.join(format!("{}-{}", key.task_id, key.lease_generation));
        if dir.exists() {
            remove(&dir);
        }
        std::fs::create_dir_all(&self.root).map_err(|err| format!("{}: {err}", self.root.display()))?;
        let (from, to) = (mirror.to_string_lossy(), dir.to_string_lossy());
        git(None, &["clone", "--shared", "--no-checkout", "--quiet", "--", &from, &to]).await?;
        git_in(&dir, &["checkout", "--quiet", "--detach", &base]).await?;
        let own = self.users.as_ref().and_then(|users| users.of(key)).map(|user| (user.uid, user.uid));
        if let Some((uid, gid)) = own.or(self.owner) {
            chown_tree(&dir, uid, gid).map_err(|err| format!("handing the workspace to the task's user: {err}"))?;
        }
        if own.is_some() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|err| format!("keeping the workspace to its task: {err}"))?;
        }
        info!(task_id = key.task_id, repository, base, dir = %dir.display(), "made a workspace");
        Ok(Workspace { dir, mirror, repository: repository.to_owned(), base, kept: false })
    }

    /// The sidecar's clone of an allowed repository, fetched as needed, and the commit
    /// `revision` (a branch or commit; empty: the default branch) is there.
    async fn resolve_in_clone(&self, repository: &str, revision: &str) -> Result<(PathBuf, String), String> {
        if !self.allowed(repository) {
            return Err(format!("the repository {repository} is not allowed on this sidecar (--repo-allow)"));
        }
        if revision.starts_with('-') {
            return Err(format!("{revision:?} is not a branch or commit"));
        }
        let mirror = self.repos.join(&hex::encode(Sha256::digest(repository.as_bytes()))[..16]);
        let lock = self.locks.lock().expect("lock").entry(repository.to_owned()).or_default().clone();
        let _held = lock.lock().await;
        let fetched = self.refresh(&mirror, repository).await?;
        let missing = || {
            let wanted = if revision.is_empty() { "its default branch" } else { revision };
            format!("no branch or commit {wanted:?} in {repository}")
        };
        let base = match resolve(&mirror, revision).await {
            Some(commit) => commit,
            None if !fetched => {
                fetch(&mirror).await?;
                resolve(&mirror, revision).await.ok_or_else(missing)?
            }
            None => return Err(missing()),
        };
        Ok((mirror, base))
    }

    /// The kept environment of `repository` at `revision`: a working copy of its own at that
    /// commit (`WORK_DIR/.agentcom/environments/HASH-COMMIT`), made on first use (anew with
    /// `fresh`) and kept after the work, so an install made there serves the services started
    /// there later, and a fix made there is what they run. The work's changes are described
    /// against the environment's state when it starts.
    pub async fn environment(&self, repository: &str, revision: &str, fresh: bool) -> Result<Workspace, String> {
        if self.users.is_some() {
            return Err("kept environments are shared by the work that follows: not with --run-as-range".to_owned());
        }
        let (mirror, commit) = self.resolve_in_clone(repository, revision).await?;
        let hash = hex::encode(Sha256::digest(repository.as_bytes()));
        let dir = self.environments.join(format!("{}-{}", &hash[..16], &commit[..commit.len().min(12)]));
        let lock = self.locks.lock().expect("lock").entry(dir.to_string_lossy().into_owned()).or_default().clone();
        let _held = lock.lock().await;
        if fresh && dir.exists() {
            info!(repository, dir = %dir.display(), "making the environment anew");
            remove(&dir);
        }
        if !dir.join(".git").exists() {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&self.environments)
                .map_err(|err| format!("{}: {err}", self.environments.display()))?;
            let partial = dir.with_extension("making");
            let _ = std::fs::remove_dir_all(&partial);
            let (from, to) = (mirror.to_string_lossy(), partial.to_string_lossy());
            git(None, &["clone", "--shared", "--no-checkout", "--quiet", "--", &from, &to]).await?;
            git_in(&partial, &["checkout", "--quiet", "--detach", &commit]).await?;
            std::fs::write(partial.join(".git/info/exclude"), ENVIRONMENT_EXCLUDES)
                .map_err(|err| format!("{}: {err}", partial.display()))?;
            // The commit it was made at, which names it (`repo status` says it as `base`).
            std::fs::create_dir_all(partial.join(".git/agentcom"))
                .and_then(|()| std::fs::write(partial.join(".git/agentcom/base"), &commit))
                .map_err(|err| format!("{}: {err}", partial.display()))?;
            if let Some((uid, gid)) = self.owner {
                chown_tree(&partial, uid, gid)
                    .map_err(|err| format!("handing the environment to the task's user: {err}"))?;
            }
            std::fs::rename(&partial, &dir).map_err(|err| format!("{}: {err}", dir.display()))?;
            info!(repository, commit, dir = %dir.display(), "made an environment");
        }
        let base = git_in(&dir, &["rev-parse", "HEAD"]).await?.trim().to_owned();
        Ok(Workspace { dir, mirror, repository: repository.to_owned(), base, kept: true })
    }

    /// Describes what the work changed; on success commits it, fetches it into the clone as
    /// `agentcom/TASK_ID` and removes the workspace, else keeps it (for
    /// `--keep-failed-workspaces`).
    pub async fn close(&self, workspace: Workspace, task_id: &str, title: &str, succeeded: bool) -> WorkspaceReport {
        let Workspace { dir, mirror, repository, base, kept } = workspace;
        let mut report = WorkspaceReport { repository, base: base.clone(), ..WorkspaceReport::default() };
        let described = async {
            git_in(&dir, &["add", "--all"]).await?;
            let stat = git_in(&dir, &["diff", "--cached", "--no-color", "--stat", &base]).await?;
            let diff = git_in(&dir, &["diff", "--cached", "--no-color", "--no-ext-diff", &base]).await?;
            Ok::<_, String>((stat, diff))
        };
        match described.await {
            Ok((stat, diff)) => {
                report.diff_stat = clip_to(stat, MAX_DIFF_STAT_BYTES);
                report.diff_total_bytes = diff.len() as u64;
                report.diff = clip_to(diff, MAX_DIFF_BYTES);
            }
            Err(error) => report.diff_stat = format!("could not describe the changes: {error}"),
        }
        if succeeded && report.diff_total_bytes > 0 {
            let branch = format!("agentcom/{task_id}");
            let message = if title.is_empty() {
                format!("agentcom: {task_id}")
            } else {
                format!("agentcom: {title} ({task_id})")
            };
            let committed = async {
                let identity = ["-c", "user.name=AgentCom", "-c", "user.email=agentcom@localhost"];
                // What the work left uncommitted is committed; what it committed itself stays.
                let uncommitted = git_in(&dir, &["diff", "--cached", "--quiet", "HEAD"]).await.is_err();
                if uncommitted {
                    let mut commit = identity.to_vec();
                    commit.extend(["commit", "--quiet", "--no-verify", "-m", &message]);
                    git_in(&dir, &commit).await?;
                }
                let head = git_in(&dir, &["rev-parse", "HEAD"]).await?;
                let head = head.trim().to_owned();
                let refspec = format!("+HEAD:refs/heads/{branch}");
                git_dir(&mirror, &["fetch", "--quiet", "--no-tags", "--", &dir.to_string_lossy(), &refspec]).await?;
                Ok::<_, String>(head)
            };
            match committed.await {
                Ok(commit) => {
                    report.commit = Some(commit.trim().to_owned());
                    if self.push_branches {
                        let refspec = format!("refs/heads/{branch}:refs/heads/{branch}");
                        match git_dir(&mirror, &["push", "--quiet", "--no-verify", "origin", &refspec]).await {
                            Ok(_) => report.pushed_to = Some(report.repository.clone()),
                            Err(error) => {
                                warn!(task_id, error, "could not push the branch");
                                report.push_error = Some(error);
                            }
                        }
                    }
                    report.branch = Some(branch);
                }
                Err(error) => warn!(task_id, error, "could not commit the workspace's changes"),
            }
        }
        if kept {
            report.kept_at = Some(dir.to_string_lossy().into_owned());
        } else if succeeded {
            remove(&dir);
        } else {
            report.kept_at = Some(dir.to_string_lossy().into_owned());
        }
        report
    }

    /// The state of the workspace's files now, as a tree id (through an index of its own, so
    /// the workspace's own index is left as the work keeps it).
    pub async fn snapshot(&self, workspace: &Workspace) -> Result<String, String> {
        let index = workspace.dir.with_extension("index");
        let tree = async {
            git_with(Some(&workspace.dir), Some(&index), &["add", "--all"]).await?;
            git_with(Some(&workspace.dir), Some(&index), &["write-tree"]).await
        }
        .await;
        let _ = std::fs::remove_file(&index);
        Ok(tree?.trim().to_owned())
    }

    /// `git diff --stat` of the workspace's files now against a [`Workspaces::snapshot`] (or
    /// the base).
    pub async fn changes_since(&self, workspace: &Workspace, snapshot: Option<&str>) -> String {
        let index = workspace.dir.with_extension("index");
        let since = snapshot.unwrap_or(&workspace.base);
        let stat = async {
            git_with(Some(&workspace.dir), Some(&index), &["add", "--all"]).await?;
            git_with(Some(&workspace.dir), Some(&index), &["diff", "--cached", "--no-color", "--stat", since]).await
        }
        .await;
        let _ = std::fs::remove_file(&index);
        stat.unwrap_or_else(|error| format!("could not describe the changes: {error}"))
    }

    /// Removes kept workspaces older than `--keep-failed-workspaces`; returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else { return 0 };
        let cutoff = SystemTime::now().checked_sub(self.keep_failed).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut swept = 0;
        for entry in entries.flatten() {
            let old = entry.metadata().and_then(|m| m.modified()).is_ok_and(|at| at < cutoff);
            if !old {
                continue;
            }
            let dir = entry.path();
            let _ = std::fs::remove_dir_all(&dir);
            swept += 1;
        }
        if swept > 0 {
            info!(swept, "removed kept workspaces past --keep-failed-workspaces");
        }
        swept
    }

    /// Clones `repository` into `mirror` if it is not there, or fetches if the clone is stale.
    /// Returns whether it fetched (or cloned) now.
    async fn refresh(&self, mirror: &Path, repository: &str) -> Result<bool, String> {
        if !mirror.exists() {
            std::fs::create_dir_all(&self.repos).map_err(|err| format!("{}: {err}", self.repos.display()))?;
            let partial = mirror.with_extension("cloning");
            let _ = std::fs::remove_dir_all(&partial);
            git(None, &["clone", "--bare", "--quiet", "--", repository, &partial.to_string_lossy()]).await?;
            git_dir(&partial, &["config", "remote.origin.fetch", "+refs/heads/*:refs/remotes/origin/*"]).await?;
            fetch(&partial).await?;
            std::fs::rename(&partial, mirror).map_err(|err| format!("{}: {err}", mirror.display()))?;
            return Ok(true);
        }
        let stale = std::fs::metadata(mirror.join("agentcom-fetched"))
            .and_then(|m| m.modified())
            .map_or(true, |at| at.elapsed().unwrap_or_default() > FETCH_AFTER);
        if stale {
            fetch(mirror).await?;
            return Ok(true);
        }
        Ok(false)
    }
}

async fn fetch(mirror: &Path) -> Result<(), String> {
    git_dir(mirror, &["fetch", "--prune", "--quiet", "origin"]).await?;
    touch(mirror);
    Ok(())
}

fn touch(mirror: &Path) {
    let _ = std::fs::write(mirror.join("agentcom-fetched"), b"");
}

/// The commit `revision` names: the upstream branch of that name as last fetched, else the
/// revision as it is (a commit, a tag). Empty: the repository's default branch.
async fn resolve(mirror: &Path, revision: &str) -> Option<String> {
    let name = if revision.is_empty() {
        let head = git_dir(mirror, &["symbolic-ref", "--quiet", "--short", "HEAD"]).await;
        head.map(|h| h.trim().to_owned()).unwrap_or_else(|_| "HEAD".to_owned())
    } else {
        revision.to_owned()
    };
    for candidate in [format!("refs/remotes/origin/{name}"), name] {
        let found = git_dir(mirror, &["rev-parse", "--verify", "--quiet", &format!("{candidate}^{{commit}}")]).await;
        if let Ok(commit) = found {
            return Some(commit.trim().to_owned());
        }
    }
    None
}

fn remove(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir) {
        warn!(dir = %dir.display(), error = %err, "could not remove a workspace");
    }
}

async fn git_dir(mirror: &Path, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["--git-dir", mirror.to_str().unwrap_or_default()];
    all.extend_from_slice(args);
    git(None, &all).await
}

async fn git_in(dir: &Path, args: &[&str]) -> Result<String, String> {
    git(Some(dir), args).await
}

async fn git(dir: Option<&Path>, args: &[&str]) -> Result<String, String> {
    git_with(dir, None, args).await
}

/// One git command of the sidecar's own: hooks and fsmonitor off, no prompt, no pager, stdout
/// returned.
#[allow(clippy::disallowed_methods)] // The sidecar's git, on its own cache; never task code.
async fn git_with(dir: Option<&Path>, index: Option<&Path>, args: &[&str]) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    if let Some(index) = index {
        command.env("GIT_INDEX_FILE", index);
    }
    // Workspaces belong to the task's user under --run-as; these commands are still the sidecar's.
    command.args(["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "safe.directory=*"]).args(args);
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(GIT_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("git {} took longer than {} s", args.join(" "), GIT_TIMEOUT.as_secs()))?
        .map_err(|err| format!("git: {err}"))?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The subcommand, past the options before it (`--git-dir DIR`, `-c NAME=VALUE`).
    let verb = (0..args.len())
        .find(|&i| !args[i].starts_with('-') && (i == 0 || !matches!(args[i - 1], "--git-dir" | "-c" | "-C")))
        .map_or("", |i| args[i]);
    Err(format!("git {verb} failed: {}", stderr.trim()))
}

fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    let (uid, gid) = (Some(nix::unistd::Uid::from_raw(uid)), Some(nix::unistd::Gid::from_raw(gid)));
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        nix::unistd::fchownat(nix::fcntl::AT_FDCWD, &path, uid, gid, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(std::io::Error::from)?;
        if std::fs::symlink_metadata(&path)?.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowlist_matches_whole_path_segments() {
        let root = tempfile::tempdir().unwrap();
        for dir in ["repos/app", "repos-evil/app"] {
            std::fs::create_dir_all(root.path().join(dir)).unwrap();
        }
        let allowed = root.path().join("repos").to_string_lossy().into_owned();
        let workspaces = Workspaces::new(
            root.path(),
            vec![allowed.clone(), "https://git.example.com/team/".into()],
            Duration::from_secs(60),
            None,
        );
        let at = |p: &str| root.path().join(p).to_string_lossy().into_owned();
        assert!(workspaces.allowed(&allowed));
        assert!(workspaces.allowed(&at("repos/app")));
        assert!(workspaces.allowed(&at("repos/app/../app")), "resolved before it is compared");
        assert!(!workspaces.allowed(&at("repos-evil/app")));
        assert!(!workspaces.allowed(&at("repos/../repos-evil/app")));
        assert!(!workspaces.allowed(&at("repos/missing")), "a path that does not exist is not allowed");
        assert!(workspaces.allowed("https://git.example.com/team/app.git"));
        assert!(!workspaces.allowed("https://git.example.com/teamster/app.git"));
        assert!(!workspaces.allowed(""));
    }

    #[test]
    fn kept_workspaces_are_swept_once_they_are_old() {
        let root = tempfile::tempdir().unwrap();
        let kept = root.path().join(".agentcom/workspaces/01M8-1");
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::write(kept.join("file"), "x").unwrap();
        let young = Workspaces::new(root.path(), Vec::new(), Duration::from_secs(3600), None);
        assert_eq!(young.sweep(), 0);
        assert!(kept.exists());
        let old = Workspaces::new(root.path(), Vec::new(), Duration::ZERO, None);
        assert_eq!(old.sweep(), 1);
        assert!(!kept.exists());
    }
}
