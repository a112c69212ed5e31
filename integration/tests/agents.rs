//! Agent work end to end on Claude Code, with a scripted stand-in for the `claude` CLI that
//! prints the stream-json Claude Code prints: a small project in a real git repository has a
//! failing check; round 1 writes a wrong fix and fails `test_passes`; the evidence goes back for
//! round 2, which writes the right fix and passes. The result lists both rounds, the final diff
//! and a commit on `agentcom/TASK_ID`; the workspace is gone afterwards.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcom_integration::TestMesh;
use agentcom_integration::process::git;
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(60);

/// A project whose check wants `answer.txt` to say 42; it says 0.
fn project(root: &Path) -> PathBuf {
    let repo = root.join("project");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("answer.txt"), "0\n").unwrap();
    let check = "if [ \"$(cat answer.txt)\" = 42 ]; then echo 'test result: ok. 1 passed; 0 failed'; \
                 else echo \"expected 42, got $(cat answer.txt)\"; echo 'test result: FAILED. 0 passed; 1 failed'; exit 1; fi\n";
    std::fs::write(repo.join("check.sh"), check).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "a failing check"]);
    repo
}

/// A stand-in for `claude`: it logs each goal, then edits `answer.txt` as Claude Code would
/// with its Edit tool, printing the same stream-json lines. A goal that says it failed gets
/// the right answer (unless the goal says "never"); a first goal gets a wrong one.
fn fake_claude(dir: &Path, log: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
goal="$2"
printf '%s\n=====\n' "$goal" >> {log}
answer=41
case "$goal" in *"did not pass its checks"*) answer=42 ;; esac
case "$goal" in *never*) answer=41 ;; esac
echo '{{"type":"system","subtype":"init","session_id":"s1","cwd":"'"$PWD"'","model":"claude-sonnet-4-5","tools":["Read","Edit","Bash"]}}'
echo '{{"type":"assistant","message":{{"content":[{{"type":"text","text":"Reading the check."}},{{"type":"tool_use","id":"t1","name":"Read","input":{{"file_path":"check.sh"}}}}],"usage":{{"input_tokens":50,"output_tokens":10}}}}}}'
echo '{{"type":"user","message":{{"content":[{{"type":"tool_result","tool_use_id":"t1","is_error":false,"content":"if [ ... ]"}}]}}}}'
echo "$answer" > answer.txt
echo '{{"type":"assistant","message":{{"content":[{{"type":"tool_use","id":"t2","name":"Edit","input":{{"file_path":"answer.txt","old_string":"0","new_string":"'"$answer"'"}}}}]}}}}'
echo '{{"type":"user","message":{{"content":[{{"type":"tool_result","tool_use_id":"t2","is_error":false,"content":"The file answer.txt has been updated."}}]}}}}'
echo '{{"type":"result","subtype":"success","is_error":false,"duration_ms":120,"num_turns":3,"result":"Set the answer to '"$answer"'.","session_id":"s1","total_cost_usd":0.01,"usage":{{"input_tokens":100,"output_tokens":20,"cache_creation_input_tokens":0,"cache_read_input_tokens":30}}}}'
"#,
        log = log.display()
    );
    let path = dir.join("claude");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_fixes_a_failing_check_in_two_rounds_and_its_change_is_committed() {
    let root = tempfile::tempdir().unwrap();
    let repo = project(root.path());
    let log = root.path().join("goals.log");
    let claude = fake_claude(root.path(), &log);
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let allowed = root.path().to_string_lossy().into_owned();
    mesh.add_sidecar_configured(1, |config| {
        config.shell(|shell| {
            shell.repo_allow = vec![allowed];
            shell.claude = Some(claude);
        })
    });
    agentcom_integration::assert_eventually!(mesh.api.agents().await.len() == 1, PATIENCE, "the sidecar joined");

    let check = json!([{ "test_passes": { "argv": ["sh", "check.sh"] } }]);
    let body = json!({
        "name": "make the check pass",
        "agent": { "goal": "make the check pass", "repository": repo.to_string_lossy(), "branch": "main" },
        "verification": check,
    });
    let task = mesh.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let outcome = &done["outcome"];

    // Both rounds: the first failed its check, the second passed.
    let rounds = outcome["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2, "{outcome}");
    assert_eq!((rounds[0]["number"].as_u64(), rounds[0]["verdict"].as_str()), (Some(1), Some("failed")));
    assert_eq!(rounds[0]["failed"], json!(["test_passes sh check.sh"]));
    assert!(rounds[0]["diff_stat"].as_str().unwrap().contains("answer.txt"), "{}", rounds[0]);
    assert_eq!((rounds[1]["number"].as_u64(), rounds[1]["verdict"].as_str()), (Some(2), Some("passed")));
    assert!(rounds[1]["diff_stat"].as_str().unwrap().contains("answer.txt"), "round 2 changed it again: {}", rounds[1]);
    assert_eq!(rounds[0]["cost_micros"], 10_000);
    // The second goal carried what failed, with the check's own words.
    let goals = std::fs::read_to_string(&log).unwrap();
    let second = goals.split("=====\n").nth(1).unwrap();
    assert!(second.contains("did not pass its checks") && second.contains("Goal: make the check pass"), "{second}");
    assert!(second.contains("expected 42, got 41"), "{second}");
    // Usage adds up the rounds, at Claude Code's own cost.
    let usage = &outcome["usage"];
    assert_eq!((usage["provider"].as_str(), usage["model"].as_str()), (Some("claude-code"), Some("claude-sonnet-4-5")));
    assert_eq!((usage["input_tokens"].as_u64(), usage["output_tokens"].as_u64()), (Some(200), Some(40)));
    assert_eq!(usage["cost_micros"], 20_000);
    // The transcript streamed as the task's output; each tool call is a step of its round.
    let stdout = outcome["stdout"].as_str().unwrap();
    assert!(
        stdout.contains("Reading the check.") && stdout.contains("[claude-code] success after 3 turns"),
        "{stdout}"
    );
    let steps: Vec<String> = outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} {}", s["round"], s["tool"].as_str().unwrap(), s["summary"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, ["1 Read check.sh", "1 Edit answer.txt", "2 Read check.sh", "2 Edit answer.txt"]);
    assert_eq!(stdout.matches("[claude-code] started").count(), 2, "both rounds' transcripts, one after the other");
    // The final diff, and a commit on agentcom/ID in the sidecar's clone; the workspace is gone.
    let workspace = &outcome["workspace"];
    let diff = workspace["diff"].as_str().unwrap();
    assert!(diff.contains("-0") && diff.contains("+42"), "{diff}");
    assert_eq!(workspace["branch"], format!("agentcom/{id}"));
    let clones: Vec<PathBuf> =
        std::fs::read_dir(mesh.work_dir.join(".agentcom/repos")).unwrap().map(|e| e.unwrap().path()).collect();
    let clone = clones[0].to_string_lossy().into_owned();
    let committed = git(root.path(), &["--git-dir", &clone, "show", &format!("agentcom/{id}:answer.txt")]);
    assert_eq!(committed, "42");
    let left: Vec<_> = std::fs::read_dir(mesh.work_dir.join(".agentcom/workspaces")).unwrap().collect();
    assert!(left.is_empty(), "the workspace is removed: {left:?}");

    // Rounds that never pass: one fix round, then a partial report; the work is kept, not committed.
    let body = json!({
        "agent": { "goal": "never get it right", "repository": repo.to_string_lossy(), "fix_rounds": 1 },
        "verification": check,
    });
    let task = mesh.api.submit(body).await;
    let done = mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(
        done["state_reason"].as_str().unwrap().starts_with("verification_failed: test_passes sh check.sh"),
        "{done}"
    );
    let outcome = &done["outcome"];
    assert_eq!(outcome["rounds"].as_array().unwrap().len(), 2);
    assert_eq!(outcome["verification"]["verdict"], "partial");
    assert!(outcome["workspace"]["commit"].is_null());
    let kept = outcome["workspace"]["kept_at"].as_str().expect("kept");
    assert_eq!(std::fs::read_to_string(Path::new(kept).join("answer.txt")).unwrap(), "41\n");

    // A budget across the rounds: each costs $0.01, so a $0.015 budget stops after round 2 of 3.
    let body = json!({
        "agent": { "goal": "never get it right", "repository": repo.to_string_lossy(), "fix_rounds": 2 },
        "verification": check,
        "limits": { "max_cost_micros": 15_000 },
    });
    let task = mesh.api.submit(body).await;
    let done = mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert_eq!(done["outcome"]["rounds"].as_array().unwrap().len(), 2, "{done}");
    assert_eq!(done["outcome"]["verification"]["verdict"], "partial");
    assert!(done["state_reason"].as_str().unwrap().starts_with("budget_exceeded: cost $0.02"), "{done}");

    // The verdicts are counted by model: one pass and two failures, shown by hubctl models.
    let (_, stats) = mesh.api.request(reqwest::Method::GET, "/api/v1/models/stats", None).await;
    let row = &stats["models"][0];
    assert_eq!((row["model"].as_str(), row["kind"].as_str()), (Some("claude-sonnet-4-5"), Some("agent")), "{stats}");
    assert_eq!(
        (row["passed"].as_u64(), row["failed"].as_u64(), row["pass_rate"].as_f64()),
        (Some(1), Some(2), Some(0.571))
    );
    let shown = agentcom_integration::process::hubctl(&mesh.url, &mesh.api.token, &["models"]).await;
    let table = String::from_utf8_lossy(&shown.stdout);
    assert!(
        table.starts_with("MODEL") && table.contains("claude-sonnet-4-5  agent") && table.contains("57%"),
        "{table}"
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_loop_on_a_local_model_fixes_a_failing_check_through_tool_calls() {
    use agentcom_integration::ollama::{FakeModel, OllamaDouble, Turn};
    let root = tempfile::tempdir().unwrap();
    let repo = project(root.path());
    let model = "qwen2.5-coder:7b";
    let double = OllamaDouble::start(vec![FakeModel::new(model, 1, "qwen2", "7.6B")]).await;
    double.load(model, 1);
    let call = |name: &str, arguments: serde_json::Value| (name.to_owned(), arguments);
    double.turns(vec![
        // Round 1: it reads the check and writes a wrong answer.
        Turn::ToolCalls(vec![call("read_file", json!({ "path": "check.sh" }))]),
        Turn::ToolCalls(vec![call("write_file", json!({ "path": "answer.txt", "content": "41\n" }))]),
        Turn::Text("I set the answer.".into()),
        // Round 2, told what failed: it runs the check, then edits the answer.
        Turn::ToolCalls(vec![call("run_command", json!({ "command": "sh check.sh" }))]),
        Turn::ToolCalls(vec![call(
            "edit_file",
            json!({ "path": "answer.txt", "old_string": "41", "new_string": "42" }),
        )]),
        Turn::Text("Fixed: the check wants 42.".into()),
    ]);
    let reports = agentcom_sidecar::reports::Settings { ollama: vec![double.url.clone()], ..Default::default() };
    let mesh = tool_loop_mesh(root.path(), reports).await;
    let body = json!({
        "agent": { "goal": "make the check pass", "repository": repo.to_string_lossy() },
        "verification": [{ "test_passes": { "argv": ["sh", "check.sh"] } }],
    });
    let task = mesh.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let outcome = &done["outcome"];
    let verdicts: Vec<&str> =
        outcome["rounds"].as_array().unwrap().iter().map(|r| r["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, vec!["failed", "passed"], "{outcome}");
    assert_eq!(
        steps_of(outcome),
        ["1 read_file check.sh", "1 write_file answer.txt", "2 run_command sh check.sh", "2 edit_file answer.txt"]
    );
    let stdout = outcome["stdout"].as_str().unwrap();
    assert!(stdout.contains("I set the answer.") && stdout.contains("Fixed: the check wants 42."), "{stdout}");
    assert_eq!(
        (outcome["usage"]["provider"].as_str(), outcome["usage"]["model"].as_str()),
        (Some("ollama"), Some(model))
    );
    // What the model was sent: the tools, each tool's result, and in round 2 what failed.
    let chats = double.chats();
    assert_eq!(chats.len(), 6);
    assert_eq!(chats[0]["tools"].as_array().unwrap().len(), 6);
    let messages = chats[1]["messages"].as_array().unwrap();
    let result = messages.last().unwrap();
    assert_eq!((result["role"].as_str(), result["tool_name"].as_str()), (Some("tool"), Some("read_file")));
    assert!(result["content"].as_str().unwrap().contains("expected 42"), "{result}");
    let goal = chats[3]["messages"][1]["content"].as_str().unwrap();
    assert!(goal.contains("did not pass its checks") && goal.contains("expected 42, got 41"), "{goal}");
    let ran = chats[4]["messages"].as_array().unwrap().last().unwrap()["content"].as_str().unwrap().to_owned();
    assert!(ran.starts_with("exit code 1") && ran.contains("expected 42, got 41"), "{ran}");
    // The change is committed on agentcom/ID; the workspace is gone.
    assert_eq!(outcome["workspace"]["branch"], format!("agentcom/{id}"));
    let clones: Vec<PathBuf> =
        std::fs::read_dir(mesh.work_dir.join(".agentcom/repos")).unwrap().map(|e| e.unwrap().path()).collect();
    let clone = clones[0].to_string_lossy().into_owned();
    assert_eq!(git(root.path(), &["--git-dir", &clone, "show", &format!("agentcom/{id}:answer.txt")]), "42");
    let left: Vec<_> = std::fs::read_dir(mesh.work_dir.join(".agentcom/workspaces")).unwrap().collect();
    assert!(left.is_empty(), "the workspace is removed: {left:?}");
    mesh.stop().await;
}

/// A hub and one sidecar that runs agent work as its tool loop on the endpoints of `reports`
/// (checked every 200 ms, nothing discovered), allowed the repositories under `root`; ready once
/// the sidecar's endpoint is healthy at the hub.
async fn tool_loop_mesh(
    root: &Path,
    reports: agentcom_sidecar::reports::Settings,
) -> agentcom_integration::RunningMesh {
    let mut mesh = TestMesh::new().sidecars(0).start().await;
    let allowed = root.to_string_lossy().into_owned();
    let reports = agentcom_sidecar::reports::Settings {
        llm_check_every: Duration::from_millis(200),
        discover_ollama: false,
        ..reports
    };
    mesh.add_sidecar_configured(1, |config| config.reports(reports).shell(|shell| shell.repo_allow = vec![allowed]));
    agentcom_integration::assert_eventually!(
        {
            let agents = mesh.api.agents().await;
            let looping =
                agents.first().is_some_and(|a| a["capabilities"].as_array().unwrap().contains(&json!("agent-loop")));
            let (_, list) = mesh.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
            looping && list["endpoints"][0]["healthy"] == true
        },
        PATIENCE,
        "the sidecar joined, its endpoint healthy at the hub"
    );
    mesh
}

/// An agent's steps as `round tool summary`.
fn steps_of(outcome: &serde_json::Value) -> Vec<String> {
    outcome["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} {}", s["round"], s["tool"].as_str().unwrap(), s["summary"].as_str().unwrap()))
        .collect()
}

/// The model's side of the two rounds: a wrong fix, then (told what failed) the right one.
fn two_rounds() -> Vec<agentcom_integration::ollama::Turn> {
    use agentcom_integration::ollama::Turn;
    let call = |name: &str, arguments: serde_json::Value| (name.to_owned(), arguments);
    vec![
        Turn::ToolCalls(vec![call("read_file", json!({ "path": "check.sh" }))]),
        Turn::ToolCalls(vec![call("write_file", json!({ "path": "answer.txt", "content": "41\n" }))]),
        Turn::Text("I set the answer.".into()),
        // Two calls in one turn: both answered in the next request.
        Turn::ToolCalls(vec![
            call("run_command", json!({ "command": "sh check.sh" })),
            call("read_file", json!({ "path": "answer.txt" })),
        ]),
        Turn::ToolCalls(vec![call(
            "edit_file",
            json!({ "path": "answer.txt", "old_string": "41", "new_string": "42" }),
        )]),
        Turn::Text("Fixed: the check wants 42.".into()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_loop_on_the_claude_api_fixes_a_failing_check_through_tool_use() {
    use agentcom_integration::chat_doubles::{ChatDouble, Fault, Turn};
    let root = tempfile::tempdir().unwrap();
    let repo = project(root.path());
    let double = ChatDouble::anthropic().await;
    double.turns(two_rounds());
    // The first turn meets a rate limit: the loop waits it out.
    double.faults(vec![Fault::RateLimited { retry_after_s: 1 }]);
    let reports = agentcom_sidecar::reports::Settings {
        anthropic: Some(agentcom_sidecar::reports::Anthropic {
            api_key: "sk-ant-agent-secret".into(),
            base_url: double.url.clone(),
            models: vec!["claude-sonnet-4-5".into()],
        }),
        ..Default::default()
    };
    let mesh = tool_loop_mesh(root.path(), reports).await;
    let body = json!({
        "agent": { "goal": "make the check pass", "repository": repo.to_string_lossy() },
        "verification": [{ "test_passes": { "argv": ["sh", "check.sh"] } }],
    });
    let task = mesh.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    // Watched while it runs: the steps show on hubctl watch's stderr.
    let watched = agentcom_integration::process::hubctl(&mesh.url, &mesh.api.token, &["watch", &id]).await;
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let outcome = &done["outcome"];
    let verdicts: Vec<&str> =
        outcome["rounds"].as_array().unwrap().iter().map(|r| r["verdict"].as_str().unwrap()).collect();
    assert_eq!(verdicts, vec!["failed", "passed"], "{outcome}");
    assert_eq!(
        steps_of(outcome),
        [
            "1 read_file check.sh",
            "1 write_file answer.txt",
            "2 run_command sh check.sh",
            "2 read_file answer.txt",
            "2 edit_file answer.txt"
        ]
    );
    let shown = String::from_utf8_lossy(&watched.stderr);
    assert!(
        shown.contains("[step 1] read_file check.sh: ") && shown.contains("[step 5] edit_file answer.txt: "),
        "{shown}"
    );
    // The usage is the Messages API's, summed over every turn, and priced by the hub.
    let usage = &outcome["usage"];
    assert_eq!((usage["provider"].as_str(), usage["model"].as_str()), (Some("anthropic"), Some("claude-sonnet-4-5")));
    assert_eq!(usage["input_tokens"], 25 * 6, "six turns of 25 tokens: {usage}");
    assert!(usage["cost_micros"].as_u64().unwrap() > 0, "{usage}");
    // What the API was sent: its own tool format, each result answering its call by id, the key
    // only in the header.
    let requests = double.requests();
    assert_eq!(requests.len(), 7, "six turns and the rate-limited one");
    let (headers, first) = &requests[1];
    assert_eq!(headers["x-api-key"], "sk-ant-agent-secret");
    assert_eq!(first["tools"].as_array().unwrap().len(), 6);
    assert!(first["tools"][0]["input_schema"].is_object() && first.get("stream").is_none(), "{first}");
    let fifth = &requests[5].1["messages"];
    let answers = fifth.as_array().unwrap().last().unwrap()["content"].as_array().unwrap();
    assert_eq!(answers.len(), 2, "both calls of the turn answered together: {fifth}");
    assert!(answers[0]["content"].as_str().unwrap().starts_with("exit code 1"), "{answers:?}");
    for (_, body) in &requests {
        assert!(!body.to_string().contains("sk-ant-agent-secret"), "the key never reaches a prompt");
    }
    assert_eq!(outcome["workspace"]["branch"], format!("agentcom/{id}"));

    // A cost budget: each turn costs 25 in and 15 out at $3 and $15 a million, $0.0003; with
    // $0.0005 the loop stops after its second turn, at the price the hub sent with the work.
    let list = || Turn::ToolCalls(vec![("list_files".to_owned(), json!({}))]);
    double.turns(vec![list(), list(), list(), list()]);
    let body = json!({
        "agent": { "goal": "look around", "repository": repo.to_string_lossy(), "fix_rounds": 0 },
        "limits": { "max_cost_micros": 500 },
    });
    let task = mesh.api.submit(body).await;
    let done = mesh.api.wait_final(task["id"].as_str().unwrap(), PATIENCE).await;
    assert_eq!(done["state"], "failed", "{done}");
    assert!(done["state_reason"].as_str().unwrap().starts_with("budget_exceeded"), "{done}");
    assert_eq!(done["outcome"]["steps"].as_array().unwrap().len(), 2, "{done}");
    // The hub's price counts the 10 cached tokens of each turn too, at a tenth.
    assert_eq!(done["outcome"]["usage"]["cost_micros"], 606);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_loop_on_an_openai_compatible_server_uses_its_tool_calls() {
    use agentcom_integration::chat_doubles::ChatDouble;
    let root = tempfile::tempdir().unwrap();
    let repo = project(root.path());
    let double = ChatDouble::openai().await;
    double.turns(two_rounds());
    let reports = agentcom_sidecar::reports::Settings {
        openai: Some(agentcom_sidecar::reports::OpenAi {
            base_url: double.url.clone(),
            api_key: Some("sk-openai-secret".into()),
            models: Vec::new(),
            parallel: 0,
            context: None,
        }),
        ..Default::default()
    };
    let mesh = tool_loop_mesh(root.path(), reports).await;
    let body = json!({
        "agent": { "goal": "make the check pass", "repository": repo.to_string_lossy() },
        "placement": { "model": "qwen2.5:7b" },
        "verification": [{ "test_passes": { "argv": ["sh", "check.sh"] } }],
    });
    let task = mesh.api.submit(body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let done = mesh.api.wait_final(&id, PATIENCE).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["outcome"]["usage"]["provider"], "openai");
    assert_eq!(steps_of(&done["outcome"]).len(), 5);
    let requests = double.requests();
    assert_eq!(requests.len(), 6);
    let (headers, second) = &requests[1];
    assert_eq!(headers["authorization"], "Bearer sk-openai-secret");
    let messages = second["messages"].as_array().unwrap();
    let (call, answer) = (&messages[2], &messages[3]);
    assert!(call["tool_calls"][0]["function"]["arguments"].is_string(), "arguments are a JSON string: {call}");
    assert_eq!(answer["role"], "tool");
    assert_eq!(answer["tool_call_id"], call["tool_calls"][0]["id"]);
    mesh.stop().await;
}

/// The two scenarios again with the real binaries: a hub process and two sidecar processes,
/// one running the tool loop on the Claude API (its key in its environment, as in production),
/// one running Claude Code. Neither the key nor anything of it reaches the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_fix_a_failing_check_through_the_real_binaries_on_either_backend() {
    use agentcom_integration::chat_doubles::{ChatDouble, Turn};
    use agentcom_integration::{HubProcess, SidecarProcess};
    const SECRET: &str = "sk-ant-process-secret-4f1c";
    let root = tempfile::tempdir().unwrap();
    let repo = project(root.path());
    let allowed = root.path().to_string_lossy().into_owned();
    let double = ChatDouble::anthropic().await;
    // The model first looks at its environment (and its process's), then does the two rounds.
    let snoop = Turn::ToolCalls(vec![(
        "run_command".to_owned(),
        json!({ "command": "env; tr '\\0' '\\n' < /proc/self/environ; tr '\\0' '\\n' < /proc/$PPID/environ" }),
    )]);
    double.turns([vec![snoop], two_rounds()].concat());
    let claude = fake_claude(root.path(), &root.path().join("goals.log"));
    let hub = HubProcess::serve(&root.path().join("hub"), &["--heartbeat-interval-ms", "200"]).await;
    let (api_dir, cli_dir) = (root.path().join("api-work"), root.path().join("cli-work"));
    for dir in [&api_dir, &cli_dir] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let api_flags = [
        "--anthropic-base-url",
        &double.url,
        "--anthropic-model",
        "claude-sonnet-4-5",
        "--repo-allow",
        &allowed,
        "--tag",
        "api",
        "--llm-check-interval-ms",
        "200",
    ];
    let _api = SidecarProcess::start_with_env(&hub, "api", 1, &api_dir, &api_flags, &[("ANTHROPIC_API_KEY", SECRET)]);
    let claude_path = claude.to_string_lossy().into_owned();
    let cli_flags = ["--claude", &claude_path, "--repo-allow", &allowed, "--tag", "cli"];
    let _cli = SidecarProcess::start_with(&hub, "cli", 1, &cli_dir, &cli_flags);
    agentcom_integration::assert_eventually!(hub.api.agents().await.len() == 2, PATIENCE, "both sidecars joined");

    for (tag, dir) in [("api", &api_dir), ("cli", &cli_dir)] {
        let body = json!({
            "agent": { "goal": "make the check pass", "repository": repo.to_string_lossy() },
            "placement": { "tags": [tag] },
            "verification": [{ "test_passes": { "argv": ["sh", "check.sh"] } }],
        });
        let task = hub.api.submit(body).await;
        let id = task["id"].as_str().unwrap().to_owned();
        let done = hub.api.wait_final(&id, PATIENCE).await;
        assert_eq!(done["state"], "succeeded", "{tag}: {done}");
        assert_eq!(done["sidecar_id"], tag);
        let outcome = &done["outcome"];
        let verdicts: Vec<&str> =
            outcome["rounds"].as_array().unwrap().iter().map(|r| r["verdict"].as_str().unwrap()).collect();
        assert_eq!(verdicts, ["failed", "passed"], "{tag}: {outcome}");
        let workspace = &outcome["workspace"];
        let diff = workspace["diff"].as_str().unwrap();
        assert!(diff.contains("-0") && diff.contains("+42"), "{tag}: {diff}");
        assert_eq!(workspace["branch"], format!("agentcom/{id}"));
        let clones: Vec<PathBuf> =
            std::fs::read_dir(dir.join(".agentcom/repos")).unwrap().map(|e| e.unwrap().path()).collect();
        let clone = clones[0].to_string_lossy().into_owned();
        assert_eq!(git(root.path(), &["--git-dir", &clone, "show", &format!("agentcom/{id}:answer.txt")]), "42");
        let left: Vec<_> = std::fs::read_dir(dir.join(".agentcom/workspaces")).unwrap().collect();
        assert!(left.is_empty(), "{tag}: the workspace is removed: {left:?}");
    }
    // The key went in the header of every request, and in nothing the model was sent: the
    // environment the command saw (its own and its parent's) does not hold it.
    let requests = double.requests();
    assert!(requests.iter().all(|(headers, _)| headers["x-api-key"] == SECRET));
    let looked = &requests[1].1["messages"].as_array().unwrap().last().unwrap()["content"][0]["content"];
    assert!(looked.as_str().unwrap().contains("PATH="), "the command ran and showed its environment: {looked}");
    for (_, body) in &requests {
        assert!(!body.to_string().contains(SECRET), "the key reached the model: {body}");
    }
}
