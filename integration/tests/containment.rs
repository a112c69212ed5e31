//! Containment end to end, with the real binaries: what a task starts dies with the task, a
//! `kill -9` of the hub or a sidecar leaves nothing running once it has started again, no task
//! has two attempts alive at once, and a task cannot read its sidecar's secrets.

use std::path::Path;
use std::time::Duration;

use agentcom_integration::{HubProcess, SidecarProcess, assert_eventually};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);
const FAST_BEATS: [&str; 4] = ["--heartbeat-interval-ms", "100", "--lease-ttl-ms", "1000"];

/// Alive, and not a zombie waiting to be reaped.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// The parent of `pid`, from `/proc/PID/stat`.
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()
}

/// The pids in a file, one per line (`PID` or `PID:START_TIME`).
fn pids(path: &Path) -> Vec<i32> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_whitespace().filter_map(|p| p.split(':').next()?.parse().ok()).collect()
}

fn script_task(script: &str) -> Value {
    json!({ "shell": { "script": script } })
}

/// A task that starts a `setsid` grandchild (its pid goes to `file`), waits until the file is
/// written, then does `rest`.
fn with_setsid_grandchild(file: &Path, rest: &str) -> Value {
    let file = file.display();
    script_task(&format!(
        "setsid sh -c 'echo $$ > {file}.tmp; mv {file}.tmp {file}; exec sleep 300' & \
         while [ ! -s {file} ]; do sleep 0.01; done; {rest}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_grandchild_dies_on_cancel_on_timeout_and_when_the_main_process_exits() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let _sidecar = SidecarProcess::start(&hub, "contain-a", 3, &work);
    assert_eventually!(hub.api.agents().await.len() == 3, PATIENCE, "the sidecar joined");

    let on_cancel = work.join("cancel.pid");
    let cancelled = hub.api.submit(with_setsid_grandchild(&on_cancel, "sleep 300")).await;
    let mut on_timeout_task = with_setsid_grandchild(&work.join("timeout.pid"), "sleep 300");
    on_timeout_task["limits"] = json!({ "timeout_ms": 3000 });
    let timed_out = hub.api.submit(on_timeout_task).await;
    let exited = hub.api.submit(with_setsid_grandchild(&work.join("exit.pid"), "exit 0")).await;

    assert_eventually!(!pids(&on_cancel).is_empty(), PATIENCE, "the grandchild started");
    let id = cancelled["id"].as_str().unwrap();
    let (status, body) = hub.api.request(reqwest::Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await;
    assert_eq!(status, 200, "{body}");

    for (task, file, state) in [
        (&cancelled, "cancel.pid", "cancelled"),
        (&timed_out, "timeout.pid", "failed"),
        (&exited, "exit.pid", "succeeded"),
    ] {
        let id = task["id"].as_str().unwrap();
        let task = hub.api.wait_final(id, PATIENCE).await;
        assert_eq!(task["state"], state, "{task}");
        // A cancel is final at once; the killed attempt's outcome follows once the sidecar has
        // ended every process of it.
        assert_eventually!(!hub.api.get(id).await["outcome"].is_null(), PATIENCE, "the {state} attempt reported");
        let grandchildren = pids(&work.join(file));
        assert_eq!(grandchildren.len(), 1, "{file}");
        // Checked as soon as the outcome is in: the sidecar reports only once the task's
        // processes are gone.
        assert!(
            !alive(grandchildren[0]),
            "the setsid grandchild of the {state} task is still running, in {:?}",
            std::fs::read_to_string(format!("/proc/{}/cgroup", grandchildren[0])).unwrap_or_default().lines().last()
        );
    }
}

/// Tasks that record their processes under their attempt number, and that check, when they
/// start, whether any process of an earlier attempt is still alive (an overlap).
fn crash_task(work: &Path) -> Value {
    let work = work.display();
    script_task(&format!(
        r#"cd {work}
for f in attempt-*.pids; do
  [ "$f" = "attempt-$AGENTCOM_ATTEMPT.pids" ] && continue
  for entry in $(cat "$f" 2>/dev/null); do
    p=${{entry%%:*}}; start=${{entry#*:}}
    # The same process (pid and start time: a pid can be reused), alive and not a zombie, all
    # from one read of its stat: a zombie reaped between two reads is not alive.
    stat=$(cat /proc/$p/stat 2>/dev/null) || continue
    [ "$(echo "$stat" | cut -d' ' -f22)" = "$start" ] || continue
    case "$stat" in *") Z "*) continue;; esac
    echo "$p $AGENTCOM_TASK_ID $AGENTCOM_ATTEMPT $stat" >> overlap
  done
done
echo "$$:$(cut -d' ' -f22 /proc/$$/stat)" >> attempt-$AGENTCOM_ATTEMPT.pids
setsid sh -c 'echo "$$:$(cut -d" " -f22 /proc/$$/stat)" >> attempt-'$AGENTCOM_ATTEMPT'.pids; exec sleep 300' &
sleep 300"#
    ))
}

async fn running_attempt(hub: &HubProcess, ids: &[String], attempt: u64) -> bool {
    for id in ids {
        let task = hub.api.get(id).await;
        if task["state"] != "running" || task["attempt"] != attempt {
            return false;
        }
    }
    true
}

async fn cancel_all(hub: &HubProcess, ids: &[String]) {
    for id in ids {
        hub.api.request(reqwest::Method::DELETE, &format!("/api/v1/tasks/{id}"), None).await;
        hub.api.wait_final(id, PATIENCE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_the_dev_hub_nothing_of_the_killed_attempts_runs_and_no_attempts_overlap() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut hub = HubProcess::dev(&dir.path().join("hub"), &work, &["--slots", "4"]).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(hub.api.submit(crash_task(&work)).await["id"].as_str().unwrap().to_owned());
    }
    assert_eventually!(pids(&work.join("attempt-1.pids")).len() == 6, PATIENCE, "three tasks with a grandchild each");
    let first = pids(&work.join("attempt-1.pids"));

    hub.kill9();
    hub.restart().await;
    // The local sidecar cleans up before the hub serves anything.
    let survivors: Vec<i32> = first.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(survivors.is_empty(), "processes of killed attempts survived the restart: {survivors:?}");

    assert_eventually!(running_attempt(&hub, &ids, 2).await, PATIENCE, "every task runs again as attempt 2");
    assert_eventually!(pids(&work.join("attempt-2.pids")).len() == 6, PATIENCE, "attempt 2 started its processes");
    assert!(
        !work.join("overlap").exists(),
        "attempt 2 saw attempt 1 alive: {}",
        std::fs::read_to_string(work.join("overlap")).unwrap_or_default()
    );
    cancel_all(&hub, &ids).await;
}

/// The watchdog a sidecar started, found by its command line.
fn watchdog_of(sidecar_id: &str) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        (args.get(1) == Some(&&b"__agentcom-watchdog"[..]) && args.get(2) == Some(&sidecar_id.as_bytes()))
            .then_some(pid)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_killed_with_9_takes_its_tasks_with_it_or_its_next_start_kills_them_before_hello() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    // A long lease: the tasks can only run again once the restarted sidecar has said hello.
    let hub =
        HubProcess::serve(&dir.path().join("hub"), &["--heartbeat-interval-ms", "100", "--lease-ttl-ms", "60000"])
            .await;
    let host_online = || async {
        let (_, host) = hub.api.request(reqwest::Method::GET, "/api/v1/hosts/contain-k", None).await;
        host["host"]["online"] == true || host["online"] == true
    };
    let mut sidecar = SidecarProcess::start(&hub, "contain-k", 2, &work);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(hub.api.submit(crash_task(&work)).await["id"].as_str().unwrap().to_owned());
    }
    assert_eventually!(pids(&work.join("attempt-1.pids")).len() == 4, PATIENCE, "two tasks with a grandchild each");
    let first = pids(&work.join("attempt-1.pids"));

    // The sidecar dies: its watchdog kills its tasks, setsid grandchildren included.
    assert!(watchdog_of("contain-k").is_some(), "the sidecar has a watchdog");
    sidecar.kill9();
    assert_eventually!(first.iter().all(|&pid| !alive(pid)), PATIENCE, "the sidecar's tasks died with it");
    assert_eventually!(!host_online().await, PATIENCE, "the hub saw the sidecar go");
    let mut sidecar = SidecarProcess::start(&hub, "contain-k", 2, &work);
    assert_eventually!(running_attempt(&hub, &ids, 2).await, PATIENCE, "both tasks run again as attempt 2");
    assert_eventually!(pids(&work.join("attempt-2.pids")).len() == 4, PATIENCE, "attempt 2 started its processes");
    let second = pids(&work.join("attempt-2.pids"));

    // The sidecar and its watchdog die together (the OOM killer, a kill of the whole group):
    // the tasks stay behind, and the next start kills them before it says hello.
    let watchdog = watchdog_of("contain-k").expect("the restarted sidecar has a watchdog");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(watchdog), nix::sys::signal::Signal::SIGKILL).unwrap();
    sidecar.kill9();
    assert_eventually!(!host_online().await, PATIENCE, "the hub saw the sidecar go");
    assert!(second.iter().any(|&pid| alive(pid)), "nothing was left to clean up; this part proves nothing");
    let _sidecar = SidecarProcess::start(&hub, "contain-k", 2, &work);
    assert_eventually!(host_online().await, PATIENCE, "the sidecar came back");
    let survivors: Vec<i32> = second.iter().copied().filter(|&pid| alive(pid)).collect();
    assert!(survivors.is_empty(), "processes of killed attempts survived the sidecar's restart: {survivors:?}");

    assert_eventually!(running_attempt(&hub, &ids, 3).await, PATIENCE, "both tasks run again as attempt 3");
    assert_eventually!(pids(&work.join("attempt-3.pids")).len() == 4, PATIENCE, "attempt 3 started its processes");
    assert!(
        !work.join("overlap").exists(),
        "an attempt saw an earlier one alive: {}",
        std::fs::read_to_string(work.join("overlap")).unwrap_or_default()
    );
    cancel_all(&hub, &ids).await;
}

const CANARY_KEY: &str = "sk-ant-canary-7f3a9c1e5b";

fn reads_parent_environment() -> Value {
    script_task(
        "cat /proc/$PPID/environ | tr '\\0' '\\n'; echo; cat /proc/$PPID/cmdline | tr '\\0' ' '; echo PPID=$PPID",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cannot_read_its_sidecars_environment_through_proc() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let env = [("ANTHROPIC_API_KEY", CANARY_KEY), ("SOME_OTHER_SECRET", CANARY_KEY)];
    let sidecar = SidecarProcess::start_with_env(&hub, "contain-env", 1, &work, &[], &env);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");

    let task = hub.api.submit(reads_parent_environment()).await;
    let task = hub.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    let stdout = task["outcome"]["stdout"].as_str().unwrap();
    assert!(stdout.contains(&format!("PPID={}", sidecar.pid())), "the task's parent is the sidecar: {stdout}");
    assert!(stdout.contains("PATH="), "the clean environment block is still there: {stdout}");
    assert!(!stdout.contains(CANARY_KEY), "the task read the sidecar's secret: {stdout}");
    // The sidecar itself still holds its key: it offers the Claude models.
    assert_eventually!(
        {
            let (_, body) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            body.to_string().contains("anthropic")
        },
        PATIENCE,
        "the sidecar advertises anthropic, so it kept ANTHROPIC_API_KEY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_of_the_dev_hub_cannot_read_the_hubs_environment_through_proc() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let env = [("ANTHROPIC_API_KEY", CANARY_KEY), ("AGENTCOM_TOKEN", CANARY_KEY)];
    let hub = HubProcess::dev_with_env(&dir.path().join("hub"), &work, &["--slots", "1"], &env).await;
    let task = hub.api.submit(reads_parent_environment()).await;
    let task = hub.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    let stdout = task["outcome"]["stdout"].as_str().unwrap();
    // The task's parent is dev's local sidecar, a child of the hub that got the hub's environment.
    let sidecar: i32 = stdout.rsplit("PPID=").next().and_then(|p| p.trim().parse().ok()).expect("PPID");
    assert_eq!(parent_of(sidecar), Some(hub.pid() as i32), "the task's parent is the dev hub's sidecar: {stdout}");
    assert!(!stdout.contains(CANARY_KEY), "the task read the hub's environment: {stdout}");
}

const CANARY_SECRET: &str = "canary-secret-d41d8cd98f00b204e980";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_env_value_reaches_the_task_and_nothing_else() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let secret_file = dir.path().join("api-token");
    std::fs::write(&secret_file, format!("{CANARY_SECRET}\n")).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let secret_arg = format!("API_TOKEN={}", secret_file.display());
    let _sidecar = SidecarProcess::start_with(&hub, "contain-secret", 1, &work, &["--secret", &secret_arg]);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");

    let body = json!({ "shell": {
        "script": "printf %s \"$API_TOKEN\" | sha256sum",
        "secret_env": ["API_TOKEN"],
        "env": { "PLAIN": "visible-value" },
    } });
    let submitted = hub.api.submit(body).await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    let task = hub.api.wait_final(&id, PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let expected = hex::encode(sha2::Sha256::digest(CANARY_SECRET.as_bytes()));
    assert!(task["outcome"]["stdout"].as_str().unwrap().starts_with(&expected), "the task got the secret: {task}");
    assert_eq!(task["spec"]["work"]["shell"]["secret_env"], json!(["API_TOKEN"]), "the name is visible: {task}");
    // Plain env values are part of the task, as documented: visible to whoever may read it.
    assert_eq!(task["spec"]["work"]["shell"]["env"]["PLAIN"], "visible-value", "{task}");

    // A task that prints its secret (out, err, and into its verification's evidence) gets it
    // back masked, byte for byte: the sidecar masks what it knows to be secret before anything
    // leaves it.
    let body = json!({
        "shell": { "script": "printf %s \"$API_TOKEN\"; printf %s \"$API_TOKEN\" >&2", "secret_env": ["API_TOKEN"] },
        "verification": [{ "output_contains": { "text": "not there" } }],
    });
    let printed = hub.api.submit(body).await;
    let printed = hub.api.wait_final(printed["id"].as_str().unwrap(), PATIENCE).await;
    let mask = "*".repeat(CANARY_SECRET.len());
    assert_eq!(printed["outcome"]["stdout"], mask.as_str(), "{printed}");
    assert_eq!(printed["outcome"]["stderr"], mask.as_str(), "{printed}");
    assert!(printed["state_reason"].as_str().unwrap().starts_with("verification_failed"), "{printed}");

    // Nowhere else: API responses, the event stream, logs, and every stored byte.
    let mut seen = vec![submitted.to_string(), task.to_string(), printed.to_string()];
    seen.push(hub.api.request(reqwest::Method::GET, "/api/v1/tasks", None).await.1.to_string());
    let events = agentcom_integration::http_client()
        .get(format!("{}/api/v1/tasks/{id}/events", hub.url))
        .bearer_auth(&hub.api.token)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    seen.push(events.text().await.unwrap_or_default());
    for text in &seen {
        assert!(!text.contains(CANARY_SECRET), "an API response holds the secret: {text}");
    }
    let (status, _) = hub.api.request(reqwest::Method::POST, "/api/v1/backups", None).await;
    assert_eq!(status, 200);
    for entry in walk(dir.path()) {
        if entry.starts_with(&secret_file) || entry.starts_with(&work) {
            continue;
        }
        let bytes = std::fs::read(&entry).unwrap_or_default();
        let found = bytes.windows(CANARY_SECRET.len()).any(|w| w == CANARY_SECRET.as_bytes());
        assert!(!found, "{} holds the secret", entry.display());
    }
}

/// Every file under `dir` (logs, the database, its log, backups).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_as_the_given_user_and_stay_contained() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged user must reach its work directory.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o777)).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let _sidecar = SidecarProcess::start_with(&hub, "contain-user", 1, &work, &["--run-as", "nobody"]);
    assert_eventually!(hub.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");

    let pidfile = work.join("user.pid");
    let task = hub.api.submit(with_setsid_grandchild(&pidfile, "id -u; echo HOME=$HOME")).await;
    let task = hub.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(task["state"], "succeeded", "{task}");
    let stdout = task["outcome"]["stdout"].as_str().unwrap();
    assert!(stdout.starts_with("65534\n"), "the task ran as nobody: {stdout}");
    assert!(stdout.contains("HOME=/nonexistent"), "with that user's home: {stdout}");
    let grandchild = pids(&pidfile);
    assert_eq!(grandchild.len(), 1);
    assert!(!alive(grandchild[0]), "the setsid grandchild of a task run as nobody survived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_under_run_as_range_cannot_read_or_signal_each_other_nor_read_the_sidecars_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Tasks run as uids without accounts: the directories on their way must let them through.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let work = dir.path().join("work");
    let shared = dir.path().join("shared");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let secret_file = dir.path().join("api-token");
    std::fs::write(&secret_file, format!("{CANARY_SECRET}\n")).unwrap();
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &FAST_BEATS).await;
    let secret_arg = format!("API_TOKEN={}", secret_file.display());
    let flags = ["--run-as-range", "61000-61009", "--secret", &secret_arg];
    let _sidecar = SidecarProcess::start_with(&hub, "contain-uids", 2, &work, &flags);
    assert_eventually!(hub.api.agents().await.len() == 2, PATIENCE, "the sidecar joined");

    let shared = shared.display().to_string();
    let first = json!({ "shell": {
        "script": format!(
            "id -u > {shared}/a.uid; pwd > {shared}/a.dir; echo mine > mine.txt; echo $$ > {shared}/a.pid; sleep 6; echo first done"
        ),
        "secret_env": ["API_TOKEN"],
        "env": { "FIRST_ONLY": "alpha-7731" },
    } });
    let first = hub.api.submit(first).await["id"].as_str().unwrap().to_owned();
    let probes = format!(
        r#"for i in $(seq 50); do [ -s {shared}/a.pid ] && break; sleep 0.1; done
p=$(cat {shared}/a.pid); d=$(cat {shared}/a.dir)
echo "uid:$(id -u) first:$(cat {shared}/a.uid)"
if tr '\0' '\n' < /proc/$p/environ 2>/dev/null | grep -q alpha-7731; then echo environ:read; else echo environ:denied; fi
if kill -0 $p 2>/dev/null; then echo signal:sent; else echo signal:denied; fi
if cat $d/mine.txt >/dev/null 2>&1; then echo files:read; else echo files:denied; fi
if ls $d >/dev/null 2>&1; then echo dir:listed; else echo dir:denied; fi
if cat {secret} >/dev/null 2>&1; then echo secret:read; else echo secret:denied; fi
if cat {token} >/dev/null 2>&1; then echo token:read; else echo token:denied; fi
if ls {state} >/dev/null 2>&1; then echo state:listed; else echo state:denied; fi
"#,
        secret = secret_file.display(),
        token = hub.join_token_file().display(),
        state = work.join(".agentcom-sidecar").display(),
    );
    let second = hub.api.submit(json!({ "shell": { "script": probes } })).await["id"].as_str().unwrap().to_owned();
    let second = hub.api.wait_final(&second, PATIENCE).await;
    assert_eq!(second["state"], "succeeded", "{second}");
    let said = second["outcome"]["stdout"].as_str().unwrap();
    for denied in [
        "environ:denied",
        "signal:denied",
        "files:denied",
        "dir:denied",
        "secret:denied",
        "token:denied",
        "state:denied",
    ] {
        assert!(said.contains(denied), "{denied} expected in:\n{said}");
    }
    let uids: Vec<u32> = said
        .lines()
        .find_map(|line| line.strip_prefix("uid:"))
        .map(|line| line.split(" first:").map(|n| n.trim().parse().unwrap()).collect())
        .unwrap();
    assert_ne!(uids[0], uids[1], "each task has a uid of its own: {said}");
    assert!(uids.iter().all(|uid| (61000..=61009).contains(uid)), "{said}");
    let first = hub.api.wait_final(&first, PATIENCE).await;
    assert_eq!(first["state"], "succeeded", "the first task was not disturbed: {first}");
    assert_eq!(first["outcome"]["stdout"], "first done\n");
    // Its own directory went with it.
    assert_eventually!(
        std::fs::read_dir(work.join(".agentcom/run")).unwrap().next().is_none(),
        PATIENCE,
        "the tasks' own directories are removed when they end"
    );
}
