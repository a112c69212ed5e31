//! The README's tour, run as written: every command of its block, in order, in one bash in a
//! scratch directory (not the clone), against `agentcom-hub dev` started there as the quick start
//! starts it. Each command's documented result is checked; a command in the README that this test
//! does not know fails it, so the two cannot drift apart.

#![allow(clippy::disallowed_methods)] // Tests start the real binaries and bash.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agentcom_integration::HubProcess;
use agentcom_integration::process::binary;

/// The tour's commands: each logical line of its block (continuation lines kept, as bash reads
/// them), blank lines apart.
fn tour() -> Vec<String> {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let tour = readme.split("## A five-minute tour").nth(1).expect("the README has its tour");
    let block = tour.split("```sh\n").nth(1).and_then(|b| b.split("\n```").next()).expect("the tour's block");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        if current.is_empty() && line.trim().is_empty() {
            continue;
        }
        if !current.is_empty() {
            current.push('\n');
        }
        current.push_str(line);
        // A line that ends in a backslash (before any comment) goes on.
        if !line.split(" #").next().unwrap_or("").trim_end().ends_with('\\') {
            commands.push(std::mem::take(&mut current));
        }
    }
    commands
}

/// A command as the checks name it: its first line without the comment.
fn key(command: &str) -> String {
    let first = command.lines().next().unwrap_or("");
    let code = match first.find("  #") {
        Some(at) => &first[..at],
        None => first,
    };
    code.trim().to_owned()
}

struct Ran {
    rc: i32,
    stdout: String,
    stderr: String,
}

type Check = fn(&Ran, &Path) -> Result<(), String>;

fn ok(ran: &Ran, _: &Path) -> Result<(), String> {
    exits(ran, 0)
}

fn exits(ran: &Ran, rc: i32) -> Result<(), String> {
    if ran.rc == rc { Ok(()) } else { Err(format!("exited {} (wanted {rc})", ran.rc)) }
}

fn says(ran: &Ran, text: &str) -> Result<(), String> {
    exits(ran, 0)?;
    if ran.stdout.contains(text) { Ok(()) } else { Err(format!("printed no {text:?}")) }
}

/// Every command of the tour and what the README says it does.
fn checks() -> Vec<(&'static str, Check)> {
    vec![
        (r#"export PATH="$PWD/target/quick:$PATH""#, ok),
        ("hubctl submit --wait -- echo hello", |r, _| {
            exits(r, 0)?;
            if r.stdout == "hello\n" { Ok(()) } else { Err("did not print hello".into()) }
        }),
        ("hubctl submit --wait -- sh -c 'exit 3'", |r, _| exits(r, 3)),
        ("hubctl submit --wait --timeout 2s -- sleep 10", |r, _| exits(r, 124)),
        ("id=$(hubctl submit --priority high -- sh -c 'for i in 1 2 3; do echo tick $i; sleep 1; done')", ok),
        ("hubctl watch $id", |r, _| says(r, "tick 1\ntick 2\ntick 3\n")),
        ("hubctl get $id", |r, _| says(r, "succeeded")),
        ("hubctl list", |r, _| says(r, "succeeded")),
        ("hubctl submit --wait --after $id -- echo next", |r, _| says(r, "next")),
        ("slow=$(hubctl submit -- sleep 60)", ok),
        ("hubctl cancel $slow", |r, _| says(r, "cancelled")),
        (
            r#"printf '%s\n' '{"shell": {"argv": ["echo", "one"]}}' '{"shell": {"argv": ["echo", "two"]}}' > tasks.jsonl"#,
            ok,
        ),
        ("hubctl submit --from-file tasks.jsonl", |r, _| {
            exits(r, 0)?;
            if r.stdout.lines().count() == 2 { Ok(()) } else { Err("did not print one line per task".into()) }
        }),
        (
            "hubctl submit --verify file_exists=out.txt --verify 'command_succeeds=test -s out.txt' --wait \\",
            |r, scratch| {
                exits(r, 0)?;
                // dev runs its tasks in DATA_DIR/work, not where it was started.
                match (scratch.join(".agentcom/work/out.txt").exists(), scratch.join("out.txt").exists()) {
                    (true, false) => Ok(()),
                    _ => Err("out.txt is not in .agentcom/work alone".into()),
                }
            },
        ),
        ("hubctl explain $id", |r, _| says(r, "for attempt 1")),
        ("hubctl agents", ok),
        ("hubctl hosts", ok),
        ("sidecar=$(hubctl hosts | awk 'NR == 2 { print $1 }')", ok),
        ("hubctl agent $sidecar/0", |r, _| says(r, "state ")),
        ("hubctl drain $sidecar --deadline 10m", ok),
        ("hubctl uncordon $sidecar", ok),
        ("hubctl endpoints ls", |r, _| says(r, "no LLM endpoints yet")),
        ("prompt=$(hubctl submit --prompt 'Say hi in five words')", ok),
        ("hubctl why $prompt", |r, _| {
            says(r, "no_llm_endpoint")?;
            says(r, "--openai-base-url")
        }),
        ("hubctl cancel $prompt", |r, _| says(r, "cancelled")),
        ("hubctl list --json", |r, _| {
            exits(r, 0)?;
            let list: serde_json::Value = serde_json::from_str(&r.stdout).map_err(|e| e.to_string())?;
            if list["tasks"].as_array().is_some_and(|t| t.len() >= 10) { Ok(()) } else { Err("no task list".into()) }
        }),
        ("dead=$(hubctl submit --retry-on-exit 75 --max-attempts 2 -- sh -c 'exit 75')", ok),
        ("hubctl watch $dead", |r, _| exits(r, 75)),
        ("hubctl dlq list", |r, _| says(r, "exit code 75 (attempt 2 of 2)")),
        ("hubctl dlq retry $dead", ok),
        ("hubctl tokens create --role viewer --name grafana > viewer.token", |r, scratch| {
            exits(r, 0)?;
            let token = std::fs::read_to_string(scratch.join("viewer.token")).unwrap_or_default();
            if token.contains("agentcom_viewer_") { Ok(()) } else { Err("no viewer token written".into()) }
        }),
        ("hubctl tokens ls", |r, _| says(r, "grafana")),
        ("hubctl audit", |r, _| says(r, "drain")),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_runs_as_written() {
    let commands = tour();
    let checks = checks();
    let unknown: Vec<String> =
        commands.iter().map(|c| key(c)).filter(|k| !checks.iter().any(|(known, _)| known == k)).collect();
    assert!(unknown.is_empty(), "README tour commands this test does not check: {unknown:#?}");
    assert_eq!(commands.len(), checks.len(), "the README's tour lost commands this test checks");

    let scratch = tempfile::tempdir().unwrap();
    let _hub = HubProcess::dev_as_given(&scratch.path().join(".agentcom"), scratch.path(), &[]).await;
    let results = scratch.path().join(".tour");
    std::fs::create_dir_all(&results).unwrap();
    let mut script = String::from("set +e\n");
    for (i, command) in commands.iter().enumerate() {
        let out = results.join(i.to_string());
        let out = out.display();
        script.push_str(&format!("{{ {command}\n}} > {out}.out 2> {out}.err\necho $? > {out}.rc\n"));
    }
    let bin_dir = binary("hubctl").parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut bash = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(scratch.path())
        .env("PATH", path)
        .env_remove("AGENTCOM_HUB")
        .env_remove("AGENTCOM_TOKEN")
        .env_remove("AGENTCOM_TOKEN_FILE")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(240);
    while bash.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the tour did not finish within 4 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut failures = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let read = |ext: &str| std::fs::read_to_string(results.join(format!("{i}.{ext}"))).unwrap_or_default();
        let ran = Ran { rc: read("rc").trim().parse().unwrap_or(-1), stdout: read("out"), stderr: read("err") };
        let check = checks.iter().find(|(known, _)| *known == key(command)).unwrap().1;
        if let Err(why) = check(&ran, scratch.path()) {
            failures.push(format!("{}\n  {why}\n  stdout: {}\n  stderr: {}", key(command), ran.stdout, ran.stderr));
        }
    }
    assert!(failures.is_empty(), "README tour commands that did not do what it says:\n{}", failures.join("\n"));
}
