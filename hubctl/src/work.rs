//! What `hubctl` says of work that proves itself: `--verify` flags as verification steps, and
//! for `hubctl get`, the verification report, the agent's rounds and the workspace.

use serde_json::Value;

/// One `--verify` as the JSON API takes it (`agentcom_types::json::verify_flag`).
pub(crate) fn parse_verify(s: &str) -> Result<Value, String> {
    agentcom_types::json::verify_flag(s)
}

/// Steps `hubctl get` lists; `--json` has them all.
const STEPS_SHOWN: usize = 40;

/// One agent step in a line: `write_file answer.txt: 14 bytes back (1200 in / 40 out tokens)`.
pub(crate) fn step_line(step: &Value) -> String {
    let summary = step["summary"].as_str().unwrap_or("");
    let target = if summary.is_empty() { String::new() } else { format!(" {summary}") };
    let failed = if step["ok"] == false { ", an error" } else { "" };
    let (input, output) = (step["input_tokens"].as_u64().unwrap_or(0), step["output_tokens"].as_u64().unwrap_or(0));
    let tokens = if input + output > 0 { format!(" ({input} in / {output} out tokens)") } else { String::new() };
    format!("{}{target}: {} bytes back{failed}{tokens}", step["tool"].as_str().unwrap_or("?"), step["result_bytes"])
}

/// Agent rounds, steps and the workspace, for `hubctl get`: a line per round, the steps, then
/// where the change went.
pub(crate) fn work_lines(task: &Value) -> Vec<String> {
    let outcome = &task["outcome"];
    let mut lines = Vec::new();
    for round in outcome["rounds"].as_array().into_iter().flatten() {
        let failed: Vec<&str> = round["failed"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let failed = if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) };
        let changed = round["diff_stat"].as_str().and_then(|s| s.lines().last()).unwrap_or("").trim().to_owned();
        let cost = round["cost_micros"].as_u64().map(|c| format!(", ${:.4}", c as f64 / 1e6)).unwrap_or_default();
        lines.push(format!(
            "round {}:   {}{failed}; {}; {} in / {} out tokens{cost}",
            round["number"],
            round["verdict"].as_str().unwrap_or("?"),
            if changed.is_empty() { "no changes" } else { &changed },
            round["input_tokens"],
            round["output_tokens"],
        ));
    }
    let steps = outcome["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (n, step) in steps.iter().enumerate().take(STEPS_SHOWN) {
        lines.push(format!("  step {:>3}, round {}: {}", n + 1, step["round"], step_line(step)));
    }
    if steps.len() > STEPS_SHOWN {
        lines.push(format!("  ... {} more steps (--json shows them all)", steps.len() - STEPS_SHOWN));
    }
    let workspace = &outcome["workspace"];
    if let Some(repository) = workspace["repository"].as_str() {
        let base: String = workspace["base"].as_str().unwrap_or("").chars().take(12).collect();
        let changed = workspace["diff_stat"].as_str().and_then(|s| s.lines().last()).unwrap_or("").trim().to_owned();
        let place = match (workspace["branch"].as_str(), workspace["commit"].as_str(), workspace["kept_at"].as_str()) {
            (Some(branch), Some(commit), _) => {
                format!("committed on {branch} ({})", commit.chars().take(12).collect::<String>())
            }
            (_, _, Some(kept)) => format!("kept at {kept}"),
            _ => "nothing committed".to_owned(),
        };
        let changed = if changed.is_empty() { "no changes".to_owned() } else { changed };
        let pushed = match (workspace["pushed_to"].as_str(), workspace["push_error"].as_str()) {
            (Some(to), _) => format!("; pushed to {to}"),
            (_, Some(why)) => format!("; NOT pushed: {}", why.lines().next().unwrap_or(why)),
            _ => String::new(),
        };
        lines.push(format!("workspace: {repository} at {base}: {changed}; {place}{pushed}"));
    }
    lines
}

/// The verification report, for `hubctl get`: the verdict, then a line per step with its
/// evidence indented under it.
pub(crate) fn verification_lines(task: &Value) -> Vec<String> {
    let report = &task["outcome"]["verification"];
    let Some(steps) = report["steps"].as_array() else { return Vec::new() };
    let passed = steps.iter().filter(|s| s["passed"] == true).count();
    let verdict = report["verdict"].as_str().unwrap_or("?");
    let mut lines = vec![format!("verified:  {verdict} ({passed} of {} steps passed)", steps.len())];
    for step in steps {
        let mark = if step["passed"] == true { "pass" } else { "FAIL" };
        let kind = step["kind"].as_str().unwrap_or("?");
        let target = step["target"].as_str().unwrap_or("");
        lines.push(format!("  {mark}  {kind} {target} ({} ms)", step["duration_ms"]));
        if let Some(summary) = step["summary"].as_str() {
            lines.push(format!("        {summary}"));
        }
        if step["passed"] != true {
            lines.extend(step["evidence"].as_str().unwrap_or("").lines().map(|l| format!("        {l}")));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn verify_flags_become_verification_steps() {
        let step = |s: &str| parse_verify(s).unwrap();
        assert_eq!(step("file_exists=out.txt"), json!({"file_exists": "out.txt"}));
        assert_eq!(
            step("command_succeeds=test -s out.txt"),
            json!({"command_succeeds": {"argv": ["test", "-s", "out.txt"]}})
        );
        assert_eq!(
            step(r#"test_passes=sh -c 'cargo test --quiet' """#),
            json!({"test_passes": {"argv": ["sh", "-c", "cargo test --quiet", ""]}})
        );
        assert_eq!(step("git_clean"), json!("git_clean"));
        assert_eq!(step("output_contains=all done"), json!({"output_contains": {"text": "all done"}}));
        assert_eq!(step(r"output_matches=^ok \d+"), json!({"output_contains": {"regex": r"^ok \d+"}}));
        assert_eq!(step("http_ok=http://127.0.0.1:8080/health"), json!({"http_ok": "http://127.0.0.1:8080/health"}));
        assert_eq!(step("llm_judge"), json!({"llm_judge": {"model": ""}}));
        assert_eq!(step("llm_judge=qwen2.5:7b"), json!({"llm_judge": {"model": "qwen2.5:7b"}}));
        for bad in ["file_exists", "file_exists=", "git_clean=x", "nope=1", "command_succeeds=sh -c 'x"] {
            assert!(parse_verify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_rounds_and_the_workspace_are_shown_a_line_each() {
        let task = json!({"outcome": {
            "rounds": [
                {"number": 1, "verdict": "failed", "failed": ["test_passes sh check.sh"], "diff_stat": " answer.txt | 2 +-\n 1 file changed, 1 insertion(+), 1 deletion(-)\n", "input_tokens": 100, "output_tokens": 20, "cost_micros": 10000},
                {"number": 2, "verdict": "passed", "failed": [], "diff_stat": "", "input_tokens": 90, "output_tokens": 15, "cost_micros": null}
            ],
            "steps": [
                {"round": 1, "tool": "read_file", "summary": "check.sh", "result_bytes": 130, "ok": true, "input_tokens": 100, "output_tokens": 20},
                {"round": 2, "tool": "run_command", "summary": "", "result_bytes": 9, "ok": false, "input_tokens": 0, "output_tokens": 0}
            ],
            "workspace": {"repository": "/srv/repos/app", "base": "164fffa82caf283e98", "branch": "agentcom/01M8", "commit": "9c1d07aa11bb22cc", "diff_stat": " answer.txt | 2 +-\n 1 file changed", "kept_at": null, "pushed_to": "/srv/repos/app"}
        }});
        assert_eq!(
            work_lines(&task),
            vec![
                "round 1:   failed (test_passes sh check.sh); 1 file changed, 1 insertion(+), 1 deletion(-); 100 in / 20 out tokens, $0.0100",
                "round 2:   passed; no changes; 90 in / 15 out tokens",
                "  step   1, round 1: read_file check.sh: 130 bytes back (100 in / 20 out tokens)",
                "  step   2, round 2: run_command: 9 bytes back, an error",
                "workspace: /srv/repos/app at 164fffa82caf: 1 file changed; committed on agentcom/01M8 (9c1d07aa11bb); pushed to /srv/repos/app",
            ]
        );
    }

    #[test]
    fn the_verification_report_shows_each_step_and_why_it_failed() {
        let task = json!({"outcome": {"verification": {"verdict": "failed", "steps": [
            {"kind": "file_exists", "target": "out.txt", "passed": true, "duration_ms": 0, "evidence": "out.txt exists (a file)"},
            {"kind": "test_passes", "target": "cargo test", "passed": false, "duration_ms": 812,
             "evidence": "exit code 101; output:\ntest it ... FAILED", "summary": "test result: FAILED. 0 passed; 1 failed"}
        ]}}});
        assert_eq!(
            verification_lines(&task),
            vec![
                "verified:  failed (1 of 2 steps passed)",
                "  pass  file_exists out.txt (0 ms)",
                "  FAIL  test_passes cargo test (812 ms)",
                "        test result: FAILED. 0 passed; 1 failed",
                "        exit code 101; output:",
                "        test it ... FAILED",
            ]
        );
        assert!(verification_lines(&json!({"outcome": {}})).is_empty());
    }
}
