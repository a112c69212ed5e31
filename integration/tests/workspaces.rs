//! Workspaces end to end: a hub and a sidecar on loopback run shell work that names a real git
//! repository. Each attempt gets its own worktree at the branch or commit asked for; the result
//! carries the diff and, on success, a commit on `agentcom/TASK_ID` in the sidecar's clone; the
//! worktree is removed then, or kept after a failure; repositories off the allowlist, unknown
//! revisions and a `cwd` that climbs out are refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcom_integration::TestMesh;
use agentcom_integration::process::git;
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);
const COMMIT: &str = "git -c user.email=t@example.com -c user.name=t commit -q";

/// A repository with `app.txt` saying "bug" on `main`; returns it and its head commit.
fn upstream(root: &Path) -> (PathBuf, String) {
    let repo = root.join("app");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("app.txt"), "bug\n").unwrap();
    git(&repo, &["add", "app.txt"]);
    git(&repo, &["commit", "-q", "-m", "start"]);
    let head = git(&repo, &["rev-parse", "HEAD"]);
    (repo, head)
}

fn task(repo: &Path, script: &str, extra: Value) -> Value {
    let mut body = json!({
        "name": "fix the bug",
        "shell": { "argv": ["sh", "-c", script] },
        "context": { "repository": repo.to_string_lossy(), "branch": "main" },
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            body.insert(k.clone(), v.clone());
        }
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_in_a_repository_runs_in_its_own_worktree_and_comes_back_as_a_diff_and_a_commit() {
    let root = tempfile::tempdir().unwrap();
    let (repo, head) = upstream(root.path());
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let allowed = root.path().to_string_lossy().into_owned();
    mesh.add_sidecar_configured(1, |config| config.shell(|shell| shell.repo_allow = vec![allowed]));
    let workspaces = mesh.work_dir.join(".agentcom/workspaces");

    // The work fixes the bug and adds a file; the check passes.
    let body = task(
        &repo,
        "test \"$(cat app.txt)\" = bug && echo ok > app.txt && echo notes > notes.txt && pwd",
        json!({ "verification": [{ "test_passes": { "argv": ["grep", "-q", "ok", "app.txt"] } }] }),
    );
    let submitted = mesh.api.submit(body).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let workspace = &done["outcome"]["workspace"];
    assert_eq!(workspace["base"], head.as_str(), "{workspace}");
    assert_eq!(workspace["branch"], format!("agentcom/{id}"));
    let diff = workspace["diff"].as_str().unwrap();
    assert!(diff.contains("-bug") && diff.contains("+ok") && diff.contains("notes.txt"), "{diff}");
    assert!(workspace["diff_stat"].as_str().unwrap().contains("2 files changed"), "{workspace}");
    assert!(workspace["kept_at"].is_null());
    // It ran inside the worktree, which is gone now.
    let ran_in = done["outcome"]["stdout"].as_str().unwrap().trim().to_owned();
    assert!(ran_in.starts_with(&*workspaces.to_string_lossy()), "{ran_in}");
    assert!(!Path::new(&ran_in).exists(), "the workspace is removed");
    // The commit is on agentcom/ID in the sidecar's clone, on top of the base; upstream is untouched.
    let clones: Vec<PathBuf> =
        std::fs::read_dir(mesh.work_dir.join(".agentcom/repos")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(clones.len(), 1);
    let commit = workspace["commit"].as_str().unwrap();
    let clone = clones[0].to_string_lossy().into_owned();
    assert_eq!(git(root.path(), &["--git-dir", &clone, "rev-parse", &format!("agentcom/{id}")]), commit);
    assert_eq!(git(root.path(), &["--git-dir", &clone, "rev-parse", &format!("{commit}^")]), head);
    let message = git(root.path(), &["--git-dir", &clone, "log", "-1", "--format=%s", commit]);
    assert_eq!(message, format!("agentcom: fix the bug ({id})"));
    assert_eq!(std::fs::read_to_string(repo.join("app.txt")).unwrap(), "bug\n");

    // A failed check: the change is described but not committed, and the worktree is kept.
    let body =
        task(&repo, "echo worse > app.txt", json!({ "verification": [{ "output_contains": { "text": "fixed" } }] }));
    let submitted = mesh.api.submit(body).await;
    let done = mesh.api.wait_final(submitted["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "failed", "{done}");
    let workspace = &done["outcome"]["workspace"];
    assert!(workspace["diff"].as_str().unwrap().contains("+worse"), "{workspace}");
    assert!(workspace["branch"].is_null() && workspace["commit"].is_null(), "{workspace}");
    let kept = workspace["kept_at"].as_str().expect("kept");
    assert_eq!(std::fs::read_to_string(Path::new(kept).join("app.txt")).unwrap(), "worse\n");

    // Work that commits by itself keeps its commit: it is what lands on agentcom/ID.
    let body = task(&repo, &format!("echo mine > mine.txt && git add mine.txt && {COMMIT} -m mine"), json!({}));
    let submitted = mesh.api.submit(body).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let commit = done["outcome"]["workspace"]["commit"].as_str().expect("a commit").to_owned();
    assert_eq!(git(root.path(), &["--git-dir", &clone, "log", "-1", "--format=%s", &format!("agentcom/{id}")]), "mine");
    assert_eq!(git(root.path(), &["--git-dir", &clone, "rev-parse", &format!("agentcom/{id}")]), commit);

    // A commit made upstream after the clone is fetched when asked for by name.
    std::fs::write(repo.join("app.txt"), "later\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "later"]);
    let later = git(&repo, &["rev-parse", "HEAD"]);
    let mut body = task(&repo, "cat app.txt", json!({}));
    body["context"]["branch"] = json!(later);
    let submitted = mesh.api.submit(body).await;
    let done = mesh.api.wait_final(submitted["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(
        (done["state"].as_str(), done["outcome"]["stdout"].as_str()),
        (Some("succeeded"), Some("later\n")),
        "{done}"
    );
    assert_eq!(done["outcome"]["workspace"]["base"], later.as_str());
    assert_eq!(done["outcome"]["workspace"]["diff_total_bytes"], 0, "nothing changed, nothing committed");
    assert!(done["outcome"]["workspace"]["commit"].is_null());

    // A repository off the allowlist is never placed: it waits, saying why.
    let elsewhere = tempfile::tempdir().unwrap();
    let (other, _) = upstream(elsewhere.path());
    waits_for_an_allowed_sidecar(&mesh.api, task(&other, "true", json!({}))).await;
    // Refused by the sidecar: an unknown branch, a cwd that climbs out.
    for (body, why) in [
        (
            {
                let mut body = task(&repo, "true", json!({}));
                body["context"]["branch"] = json!("no-such-branch");
                body
            },
            "no branch or commit \"no-such-branch\"",
        ),
        (
            {
                let mut body = task(&repo, "true", json!({}));
                body["shell"]["cwd"] = json!("../..");
                body
            },
            "must be a path inside the repository's workspace",
        ),
    ] {
        let submitted = mesh.api.submit(body).await;
        let done = mesh.api.wait_final(submitted["id"].as_str().unwrap(), PATIENCE).await;
        assert_eq!(done["state"], "failed", "{done}");
        let error = done["outcome"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(why), "{error}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_that_pushes_branches_pushes_each_successful_change_to_its_repository() {
    let root = tempfile::tempdir().unwrap();
    let (repo, head) = upstream(root.path());
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let allowed = root.path().to_string_lossy().into_owned();
    mesh.add_sidecar_configured(1, |config| {
        config.shell(|shell| {
            shell.repo_allow = vec![allowed];
            shell.push_branches = true;
        })
    });
    let submitted = mesh.api.submit(task(&repo, "echo ok > app.txt", json!({}))).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let workspace = &done["outcome"]["workspace"];
    assert_eq!(workspace["pushed_to"], repo.to_string_lossy().as_ref(), "{workspace}");
    assert!(workspace["push_error"].is_null());
    // The branch is in the repository itself now, holding the change on top of main.
    let branch = format!("agentcom/{id}");
    assert_eq!(git(&repo, &["rev-parse", &branch]), workspace["commit"].as_str().unwrap());
    assert_eq!(git(&repo, &["show", &format!("{branch}:app.txt")]), "ok");
    assert_eq!(git(&repo, &["rev-parse", "main"]), head, "main is untouched");

    // The repository refuses the push: the task still succeeds, the commit is kept in the
    // sidecar's clone, and the result says why the push failed.
    git(&repo, &["config", "receive.maxInputSize", "1"]);
    let submitted = mesh.api.submit(task(&repo, "echo better > app.txt", json!({}))).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let workspace = &done["outcome"]["workspace"];
    assert!(workspace["pushed_to"].is_null(), "{workspace}");
    assert!(workspace["push_error"].as_str().unwrap().contains("git push failed"), "{workspace}");
    assert_eq!(workspace["branch"], format!("agentcom/{id}"));
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_hubs_sidecar_runs_work_in_a_repository_it_is_allowed() {
    let root = tempfile::tempdir().unwrap();
    let (repo, _) = upstream(root.path());
    let work = root.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let allowed = repo.to_string_lossy().into_owned();
    let hub = agentcom_integration::HubProcess::dev(&root.path().join("hub"), &work, &["--repo-allow", &allowed]).await;
    let submitted = hub.api.submit(task(&repo, "echo ok > app.txt", json!({}))).await;
    let done = hub.api.wait_final(submitted["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert!(done["outcome"]["workspace"]["diff"].as_str().unwrap().contains("+ok"), "{done}");
    // A repository it was not given is not sent to it: the task waits, saying why.
    let (other, _) = upstream(&root.path().join("elsewhere"));
    waits_for_an_allowed_sidecar(&hub.api, task(&other, "true", json!({}))).await;
}

/// Submits work in a repository no sidecar allows: it stays queued with `why` saying
/// `repository_not_allowed` (it is not failed: a sidecar that allows it may join), and is
/// cancelled.
async fn waits_for_an_allowed_sidecar(api: &agentcom_integration::Api, body: Value) {
    let id = api.submit(body).await["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let why = api.request(reqwest::Method::GET, &format!("/api/v1/tasks/{id}/why"), None).await.1;
    assert_eq!(why["why"]["code"], "repository_not_allowed", "{why}");
    assert!(why["why"]["message"].as_str().unwrap().contains("--repo-allow"), "{why}");
    assert_eq!(api.get(&id).await["state"], "queued");
    let (status, _) = api.request(reqwest::Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!(status, 200);
}
