//! The protocol doubles against the official Python clients (`ollama`, `anthropic`, `openai`,
//! versions pinned in `integration/clients/requirements.txt`): proof that they speak the real
//! wire formats, since the tests that use them trust that.
//!
//! Needs a Python with those clients: `AGENTCOM_PYTHON`, else `target/pyclients/bin/python`,
//! which `scripts/test` (the README's test command) makes. Without either the test fails and
//! says how to get one: it never passes without having run.

#![allow(clippy::disallowed_methods)] // Tests start the real tools.

use std::path::Path;

use agentcom_integration::chat_doubles::{ChatDouble, Fault};
use agentcom_integration::ollama::{FakeModel, OllamaDouble};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_clients_stream_from_the_doubles() {
    let made = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyclients/bin/python");
    let python = std::env::var_os("AGENTCOM_PYTHON").map(std::path::PathBuf::from).unwrap_or(made);
    assert!(
        python.exists(),
        "{} is missing: this test checks the doubles with the official Python clients. Run `scripts/test` \
         (it makes target/pyclients with integration/clients/requirements.txt), or set AGENTCOM_PYTHON to a python \
         that has them",
        python.display()
    );
    let ollama = OllamaDouble::start(vec![FakeModel::new("llama3.2:3b", 1, "llama", "3.2B")]).await;
    ollama.load("llama3.2:3b", 1);
    let anthropic = ChatDouble::anthropic().await;
    anthropic.faults(vec![Fault::RateLimited { retry_after_s: 1 }]);
    let openai = ChatDouble::openai().await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/check_doubles.py");
    let urls = [ollama.url.clone(), anthropic.url.clone(), openai.url.clone()];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).args(urls).output().expect("running the python check")
    })
    .await
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the official clients failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout, "ollama: ok\nanthropic: ok\nopenai: ok\n");
    assert_eq!(anthropic.requests().len(), 2, "the client retried the 429 by itself");
}
