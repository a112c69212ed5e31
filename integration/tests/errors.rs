//! Errors that say the fix, against real processes: a scheme that does not match the hub, a
//! backup of a data directory whose hub is on another port, a bad line of `--from-file`.

#![allow(clippy::disallowed_methods)] // Tests start the real binaries.

use std::path::Path;
use std::process::{Command, Output};

use agentcom_integration::HubProcess;
use agentcom_integration::process::binary;

fn hubctl(args: &[&str], token_file: &Path) -> Output {
    Command::new(binary("hubctl"))
        .args(args)
        .arg("--token-file")
        .arg(token_file)
        .env_remove("AGENTCOM_HUB")
        .env_remove("AGENTCOM_TOKEN")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheme_that_does_not_match_the_hub_names_the_one_that_does() {
    let dir = tempfile::tempdir().unwrap();
    let tls = HubProcess::serve_tls(&dir.path().join("tls"), &[]).await;
    let plain = HubProcess::serve(&dir.path().join("plain"), &[]).await;

    // http:// to a hub that serves TLS.
    let http = tls.url.replacen("https://", "http://", 1);
    let out = hubctl(&["--hub", &http, "list"], &tls.data_dir.join("admin.token"));
    let said = stderr(&out);
    assert!(!out.status.success());
    assert!(said.contains("the hub answered in TLS") && said.contains(&format!("--hub {}", tls.url)), "{said}");

    // https:// to a plaintext hub, with a pin (so hubctl tries TLS), and without one.
    let https = plain.url.replacen("http://", "https://", 1);
    let pin = "ab".repeat(32);
    let out = hubctl(&["--hub", &https, "--ca-fingerprint", &pin, "list"], &plain.data_dir.join("admin.token"));
    let said = stderr(&out);
    assert!(said.contains("does not speak TLS") && said.contains(&format!("--hub {}", plain.url)), "{said}");
    let out = hubctl(&["--hub", &https, "list"], &plain.data_dir.join("admin.token"));
    let said = stderr(&out);
    assert!(said.contains("asks for TLS") && said.contains(&plain.url), "{said}");
    assert!(!said.contains("serves TLS"), "it does not: {said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_goes_through_the_hub_of_its_data_directory_on_whatever_port() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    assert!(!hub.url.ends_with(":7420"), "the test hub is on a port of its own");
    let out = Command::new(binary("agentcom-hub"))
        .args(["backup", "--data-dir"])
        .arg(&hub.data_dir)
        .env_remove("AGENTCOM_HUB")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("through the running hub"), "{}", stderr(&out));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(Path::new(&path).exists(), "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_of_a_bulk_file_is_named_by_its_line_and_column_only() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubProcess::serve(&dir.path().join("hub"), &[]).await;
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(&file, "{\"shell\": {\"argv\": [\"true\"]}}\n{\"shell\": {\"argv\": [\"true\"]}, \"nope\": 1}\n")
        .unwrap();
    let out = hubctl(
        &["--hub", &hub.url, "submit", "--from-file", file.to_str().unwrap()],
        &hub.data_dir.join("admin.token"),
    );
    let said = stderr(&out);
    assert!(said.contains("line 2: unknown field `nope`") && said.contains("(column"), "{said}");
    assert!(!said.contains("at line 1"), "{said}");
}
