//! A real model server for the tests: llama.cpp's, from llama-cpp-python, with Gemma 3 270M
//! (Q4_K_M), both from PyPI, run as users run it: `python -m llama_cpp.server --model M
//! --chat_format gemma` and otherwise its defaults (one generation at a time, a second request
//! interrupting the first, no usage in streams).
//!
//! `scripts/llama-server.sh setup` makes the virtualenv and the model (building the wheel once
//! into a cache outside the clone); [`LlamaServer::start`] runs that first when they are missing,
//! so the README's test command needs nothing else. `AGENTCOM_LLAMA_PYTHON` and
//! `AGENTCOM_LLAMA_MODEL` point elsewhere.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to start answering.
const START_PATIENCE: Duration = Duration::from_secs(120);

/// The interpreter and the model file, set up once per test binary.
fn installed() -> (PathBuf, PathBuf) {
    static SETUP: Mutex<Option<(PathBuf, PathBuf)>> = Mutex::new(None);
    let mut setup = SETUP.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = setup.as_ref() {
        return found.clone();
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let from_env = std::env::var_os("AGENTCOM_LLAMA_PYTHON").zip(std::env::var_os("AGENTCOM_LLAMA_MODEL"));
    let (python, model) = match from_env {
        Some((python, model)) => (PathBuf::from(python), PathBuf::from(model)),
        None => {
            let venv = root.join("target/llama-venv");
            (venv.join("bin/python"), venv.join("gemma3-270m-q4_k_m.gguf"))
        }
    };
    if !python.exists() || !model.exists() {
        eprintln!("setting up llama.cpp's server: scripts/llama-server.sh setup (the first build takes minutes)");
        let status = Command::new("bash")
            .arg(root.join("scripts/llama-server.sh"))
            .arg("setup")
            .status()
            .expect("running scripts/llama-server.sh");
        assert!(
            status.success() && python.exists() && model.exists(),
            "these tests need llama.cpp's server: `scripts/llama-server.sh setup` failed ({status}); it needs \
             python3 with venv, a C++ compiler and the package registry"
        );
    }
    *setup = Some((python.clone(), model.clone()));
    (python, model)
}

/// One running server on a loopback port; killed when dropped.
pub struct LlamaServer {
    /// `http://127.0.0.1:PORT/v1`, as a sidecar takes it.
    pub url: String,
    pub port: u16,
    /// The model's id, as `GET /v1/models` lists it.
    pub model: String,
    chat_format: String,
    /// More of the server's flags.
    extra: Vec<String>,
    child: Option<Child>,
}

impl LlamaServer {
    /// Starts a server with `chat_format` (`gemma`; `chatml-function-calling` for tools) on a
    /// free port, and waits until it answers.
    pub async fn start(chat_format: &str) -> LlamaServer {
        LlamaServer::start_with(chat_format, &[]).await
    }

    /// [`LlamaServer::start`] with more of the server's flags (`--seed N` makes its sampling
    /// repeat from one run to the next).
    pub async fn start_with(chat_format: &str, extra: &[&str]) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut server = LlamaServer {
            url: format!("http://127.0.0.1:{port}/v1"),
            port,
            model: String::new(),
            chat_format: chat_format.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.restart().await;
        server
    }

    /// Starts it again on the same port (after [`LlamaServer::kill`]).
    pub async fn restart(&mut self) {
        let (python, model) = tokio::task::spawn_blocking(installed).await.expect("setup");
        let child = Command::new(python)
            .args(["-m", "llama_cpp.server", "--host", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .arg("--model")
            .arg(&model)
            .args(["--chat_format", &self.chat_format])
            .args(&self.extra)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting llama.cpp's server");
        self.child = Some(child);
        agentcom_process::install_crypto_provider();
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let listed = client.get(format!("{}/models", self.url)).send().await;
            if let Ok(response) = listed
                && let Ok(list) = response.json::<serde_json::Value>().await
                && let Some(id) = list["data"][0]["id"].as_str()
            {
                self.model = id.to_owned();
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("llama.cpp's server exited at start: {status}");
            }
            assert!(started.elapsed() < START_PATIENCE, "llama.cpp's server did not answer within {START_PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kill -9`: the server dies in the middle of whatever it does.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One chat as a client sends it directly (not streamed): the reply's text and the server's
    /// own counts (prompt, completion).
    pub async fn chat(&self, body: serde_json::Value) -> (String, u64, u64) {
        agentcom_process::install_crypto_provider();
        let client = reqwest::Client::new();
        let response = client.post(format!("{}/chat/completions", self.url)).json(&body).send().await.expect("a chat");
        let reply: serde_json::Value = response.json().await.expect("a JSON reply");
        let text = reply["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
        let usage = &reply["usage"];
        (text, usage["prompt_tokens"].as_u64().unwrap_or(0), usage["completion_tokens"].as_u64().unwrap_or(0))
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
