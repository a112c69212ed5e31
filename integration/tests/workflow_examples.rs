//! The workflow examples (`examples/workflows/`) run as shipped, and a workflow's model changed
//! in one line from an Ollama model to an OpenAI-compatible server's and to Claude: the real
//! binaries, one sidecar in front of the three protocol doubles.
#![allow(clippy::disallowed_methods)] // Reason: tests start the real binaries and git.

use std::path::{Path, PathBuf};
use std::time::Duration;

use agentcom_integration::assert_eventually;
use agentcom_integration::chat_doubles::{ChatDouble, Script, Turn};
use agentcom_integration::ollama::{ChatScript, FakeModel, OllamaDouble};
use agentcom_integration::process::{HubProcess, SidecarProcess, git};
use agentcom_integration::workflows::{rows, workflow};
use serde_json::{Value, json};

const PATIENCE: Duration = Duration::from_secs(60);
const LOCAL: &str = "qwen2.5-coder:7b";
const OPENAI: &str = "llama3.2:3b";
const CLAUDE: &str = "claude-sonnet-4-5";

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows").join(name).to_string_lossy().into_owned()
}

/// A repository whose check wants 42 in answer.txt (it holds 0).
fn project(root: &Path) -> PathBuf {
    let repo = root.join("project");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("answer.txt"), "0\n").unwrap();
    let check = "if [ \"$(cat answer.txt)\" = 42 ]; then echo ok; else echo \"expected 42, got $(cat answer.txt)\"; exit 1; fi\n";
    std::fs::write(repo.join("check.sh"), check).unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "a failing check"]);
    repo
}

struct Doubles {
    ollama: OllamaDouble,
    openai: ChatDouble,
    claude: ChatDouble,
}

/// A hub and one sidecar in front of an Ollama double (LOCAL), an OpenAI-compatible double
/// (OPENAI among its models) and an Anthropic double (CLAUDE), allowed the repositories under
/// `root`, with the sidecar id `id` (unique on the machine); ready once all three endpoints are
/// healthy at the hub.
async fn fleet(root: &Path, id: &str) -> (HubProcess, SidecarProcess, Doubles) {
    let ollama = OllamaDouble::start(vec![FakeModel::new(LOCAL, 1, "qwen2", "7.6B")]).await;
    ollama.load(LOCAL, 1);
    ollama
        .script(ChatScript { pieces: vec!["Plan:".into(), " set the answer to 42.".into()], ..ChatScript::default() });
    let openai = ChatDouble::openai().await;
    let claude = ChatDouble::anthropic().await;
    let work = root.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let hub = HubProcess::serve(&root.join("hub"), &["--heartbeat-interval-ms", "200"]).await;
    let allowed = root.to_string_lossy().into_owned();
    let flags = [
        "--ollama",
        &ollama.url,
        "--openai-base-url",
        &openai.url,
        "--openai-model",
        OPENAI,
        "--anthropic-base-url",
        &claude.url,
        "--anthropic-model",
        CLAUDE,
        "--repo-allow",
        &allowed,
        "--llm-check-interval-ms",
        "200",
    ];
    let sidecar = SidecarProcess::start_with_env(&hub, id, 4, &work, &flags, &[("ANTHROPIC_API_KEY", "sk-ant-test")]);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/endpoints", None).await;
        if list["endpoints"].as_array().is_some_and(|e| e.len() == 3 && e.iter().all(|e| e["healthy"] == true)) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the three endpoints are not healthy at the hub: {list:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (hub, sidecar, Doubles { ollama, openai, claude })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_line_moves_a_workflow_between_ollama_an_openai_compatible_server_and_claude() {
    let root = tempfile::tempdir().unwrap();
    let (hub, _sidecar, _doubles) = fleet(root.path(), "one-line").await;
    let template = "name: two-prompts\ndefaults: {model: \"MODEL\"}\nsteps:\n  - id: ask\n    prompt: \"hi\"\n  - id: again\n    needs: [ask]\n    prompt: \"{{ steps.ask.output }}, again\"\n";
    for (model, provider) in [(LOCAL, "ollama"), (OPENAI, "openai"), (CLAUDE, "anthropic")] {
        let file = root.path().join(format!("{provider}.yaml"));
        std::fs::write(&file, template.replace("MODEL", model)).unwrap();
        let (code, run) = workflow(&hub, &["run", &file.to_string_lossy(), "--wait"]).await;
        assert_eq!(code, 0, "{model}: {run:#}");
        for step in ["ask", "again"] {
            let row = rows(&run, step)[0];
            assert_eq!(row["model"], model, "{step} ran on {model}: {row}");
            assert!(row["input_tokens"].as_u64().unwrap() > 0 && row["output_tokens"].as_u64().unwrap() > 0, "{row}");
            let task = hub.api.get(row["task_id"].as_str().unwrap()).await;
            assert_eq!(task["outcome"]["usage"]["provider"], provider, "{task}");
        }
        let totals = &run["run"]["totals"];
        let sum = |field: &str| ["ask", "again"].iter().map(|s| rows(&run, s)[0][field].as_u64().unwrap()).sum::<u64>();
        assert_eq!(totals["output_tokens"].as_u64(), Some(sum("output_tokens")), "{run:#}");
        assert_eq!(totals["input_tokens"].as_u64(), Some(sum("input_tokens")), "{run:#}");
        // A list shows each run's totals too, without its rows.
        let (_, list) = hub.api.request(reqwest::Method::GET, "/api/v1/workflows/runs?limit=1", None).await;
        assert_eq!(&list["runs"][0]["totals"], totals, "{list:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_run_as_shipped() {
    let root = tempfile::tempdir().unwrap();
    let repo = project(root.path());
    let (hub, _sidecar, doubles) = fleet(root.path(), "examples").await;

    // fix-failing-test: a plan from the local model, an agent on Claude that fixes the check in
    // two rounds (its tool calls scripted), a review on the OpenAI-compatible model that asks
    // for a change once and then approves.
    let call = |name: &str, arguments: Value| (name.to_owned(), arguments);
    doubles.claude.turns(vec![
        Turn::ToolCalls(vec![call("write_file", json!({ "path": "answer.txt", "content": "41\n" }))]),
        Turn::Text("I set the answer.".into()),
        Turn::ToolCalls(vec![call(
            "edit_file",
            json!({ "path": "answer.txt", "old_string": "41", "new_string": "42" }),
        )]),
        Turn::Text("Fixed: the check wants 42.".into()),
    ]);
    // Each review takes a second, so the script changes before the reviewer is asked a third time.
    let slow = Duration::from_secs(1);
    let asks =
        Script { pieces: vec!["Rename".into(), " the file.".into()], first_piece_after: slow, ..Script::default() };
    doubles.openai.script(asks);
    let input = format!("repo={}", repo.display());
    let file = example("fix-failing-test.yaml");
    let started = workflow(&hub, &["run", &file, "--input", &input]).await;
    assert_eq!(started.0, 0, "{}", started.1);
    let id = started.1["run"]["id"].as_str().unwrap().to_owned();
    // The first review asks for a change; then the reviewer approves.
    assert_eventually!(
        {
            let (_, run) = hub.api.request(reqwest::Method::GET, &format!("/api/v1/workflows/runs/{id}"), None).await;
            rows(&run, "review")[0]["round"].as_u64() >= Some(2) || run["run"]["state"] != "running"
        },
        PATIENCE,
        "the review went round again"
    );
    doubles.openai.script(Script { pieces: vec!["APPROVE".into()], ..Script::default() });
    let (code, run) = workflow(&hub, &["watch", &id]).await;
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(rows(&run, "plan")[0]["model"], LOCAL);
    let fix = rows(&run, "fix")[0];
    assert_eq!((fix["model"].as_str(), fix["verdict"].as_str()), (Some(CLAUDE), Some("passed")), "{fix}");
    let review = rows(&run, "review")[0];
    assert_eq!(review["model"], OPENAI);
    assert!(matches!(review["round"].as_u64(), Some(2 | 3)), "approved after asking for a change: {review}");
    let task = hub.api.get(fix["task_id"].as_str().unwrap()).await;
    let branch = task["outcome"]["workspace"]["branch"].as_str().unwrap().to_owned();
    let clones: Vec<PathBuf> =
        std::fs::read_dir(root.path().join("work/.agentcom/repos")).unwrap().map(|e| e.unwrap().path()).collect();
    let clone = clones[0].to_string_lossy().into_owned();
    assert_eq!(git(root.path(), &["--git-dir", &clone, "show", &format!("{branch}:answer.txt")]), "42");
    let plan_prompt = doubles.ollama.chats()[0]["messages"].to_string();
    assert!(plan_prompt.contains("sh check.sh"), "the plan's prompt was filled: {plan_prompt}");

    // review-files: three reviews, two at a time, and their summary, all on the local model.
    let (code, run) = workflow(&hub, &["run", &example("review-files.yaml"), "--wait"]).await;
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(rows(&run, "review").len(), 3);
    assert!(rows(&run, "review").iter().all(|r| r["model"] == LOCAL && r["state"] == "succeeded"));
    let summary_prompt = doubles.ollama.chats().last().unwrap()["messages"].to_string();
    assert!(summary_prompt.contains("src/lib.rs: Plan: set the answer to 42."), "{summary_prompt}");

    // on-push: added as a webhook, started by a signed push delivery.
    let (code, added) = workflow(&hub, &["hooks", "add", "push", "--workflow", &example("on-push.yaml")]).await;
    assert_eq!(code, 0, "{added}");
    let secret = hex::decode(added["hook"]["secret"].as_str().unwrap()).unwrap();
    let body = json!({"ref": "refs/heads/main", "pusher": {"name": "ada"}, "commits": [{"message": "fix the check"}]});
    let body = serde_json::to_vec(&body).unwrap();
    let signature = {
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
        mac.update(&body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let response = agentcom_integration::http_client()
        .post(format!("{}/api/v1/hooks/push", hub.url))
        .header("x-hub-signature-256", signature)
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let started: Value = response.json().await.unwrap();
    let (code, run) = workflow(&hub, &["watch", started["run"]["id"].as_str().unwrap()]).await;
    assert_eq!(code, 0, "{run:#}");
    assert_eq!(rows(&run, "pushed")[0]["outputs"]["branch"], "main");
    assert_eq!(rows(&run, "summarize")[0]["model"], LOCAL);
}
