//! Headless Chromium driven over the Chrome DevTools Protocol, for the dashboard's browser test:
//! one page, JavaScript evaluated in it, bounded waits for a condition, screenshots, and every
//! console error and uncaught exception it reports.
//!
//! Chromium comes from Debian's `chromium` package (`.ci/run` installs it); `CHROMIUM` names
//! another binary.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A browser with one page.
pub struct Browser {
    child: tokio::process::Child,
    _profile: tempfile::TempDir,
    outgoing: mpsc::UnboundedSender<String>,
    pending: Pending,
    next_id: AtomicU64,
    /// Console errors and uncaught exceptions, as text.
    errors: Arc<Mutex<Vec<String>>>,
    /// Every console message, for diagnosis.
    console: Arc<Mutex<Vec<String>>>,
}

/// The Chromium binary: `CHROMIUM`, else the first of the usual names on the PATH.
pub fn chromium() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(path.into());
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"] {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

fn describe_exception(params: &Value) -> String {
    let details = &params["exceptionDetails"];
    let description = details["exception"]["description"].as_str().or(details["text"].as_str()).unwrap_or("?");
    format!("uncaught: {description} at {}:{}", details["url"].as_str().unwrap_or(""), details["lineNumber"])
}

impl Browser {
    /// Starts headless Chromium at `width` x `height` and attaches to its page.
    pub async fn launch(width: u32, height: u32) -> anyhow::Result<Browser> {
        let binary = chromium().context(
            "no Chromium found: install Debian's `chromium` (apt-get install chromium) or set CHROMIUM to its binary",
        )?;
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(&binary)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let browser_ws = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(at) = line.find("ws://") {
                    return Ok::<_, anyhow::Error>(line[at..].trim().to_owned());
                }
            }
            bail!("Chromium exited before it listened for DevTools")
        })
        .await
        .context("Chromium did not start within 30 s")??;
        // Keep draining its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let port = browser_ws.trim_start_matches("ws://").split(['/', ':']).nth(1).context("DevTools port")?.to_owned();
        let targets: Value = reqwest::get(format!("http://127.0.0.1:{port}/json/list")).await?.json().await?;
        let page_ws = targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .ok_or_else(|| anyhow!("no page target in {targets}"))?
            .to_owned();
        let (socket, _) = tokio_tungstenite::connect_async(page_ws.as_str()).await.context("DevTools WebSocket")?;
        let (mut write, mut read) = socket.split();
        let (outgoing, mut to_send) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = to_send.recv().await {
                if write.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let console: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (pending, errors, console) = (pending.clone(), errors.clone(), console.clone());
            tokio::spawn(async move {
                while let Some(Ok(message)) = read.next().await {
                    let Message::Text(text) = message else { continue };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else { continue };
                    if let Some(id) = value["id"].as_u64() {
                        if let Some(reply) = pending.lock().expect("pending").remove(&id) {
                            let result = match value.get("error") {
                                Some(error) => Err(error.to_string()),
                                None => Ok(value["result"].clone()),
                            };
                            let _ = reply.send(result);
                        }
                        continue;
                    }
                    let params = &value["params"];
                    match value["method"].as_str() {
                        Some("Runtime.consoleAPICalled") => {
                            let args: Vec<String> = params["args"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .map(|v| {
                                            v["value"]
                                                .as_str()
                                                .map(str::to_owned)
                                                .unwrap_or_else(|| v["description"].as_str().unwrap_or("").to_owned())
                                        })
                                        .collect()
                                })
                                .unwrap_or_default();
                            let line =
                                format!("console.{}: {}", params["type"].as_str().unwrap_or("?"), args.join(" "));
                            if params["type"] == "error" || params["type"] == "assert" {
                                errors.lock().expect("errors").push(line.clone());
                            }
                            console.lock().expect("console").push(line);
                        }
                        Some("Runtime.exceptionThrown") => {
                            errors.lock().expect("errors").push(describe_exception(params))
                        }
                        Some("Log.entryAdded") if params["entry"]["level"] == "error" => {
                            let entry = &params["entry"];
                            let line = format!(
                                "log: {} {}",
                                entry["text"].as_str().unwrap_or(""),
                                entry["url"].as_str().unwrap_or("")
                            );
                            errors.lock().expect("errors").push(line);
                        }
                        _ => {}
                    }
                }
            });
        }
        let browser =
            Browser { child, _profile: profile, outgoing, pending, next_id: AtomicU64::new(1), errors, console };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({})).await?;
        }
        browser.viewport(width, height).await?;
        Ok(browser)
    }

    /// One DevTools command and its result.
    pub async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, result) = oneshot::channel();
        self.pending.lock().expect("pending").insert(id, reply);
        self.outgoing
            .send(json!({ "id": id, "method": method, "params": params }).to_string())
            .map_err(|_| anyhow!("the DevTools connection is closed"))?;
        let result = tokio::time::timeout(Duration::from_secs(30), result)
            .await
            .with_context(|| format!("{method} had no answer in 30 s"))?
            .map_err(|_| anyhow!("the DevTools connection closed during {method}"))?;
        result.map_err(|error| anyhow!("{method}: {error}"))
    }

    pub async fn viewport(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let params = json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600 });
        self.call("Emulation.setDeviceMetricsOverride", params).await?;
        Ok(())
    }

    /// `light` or `dark`, as `prefers-color-scheme` reports it.
    pub async fn color_scheme(&self, scheme: &str) -> anyhow::Result<()> {
        let features = json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] });
        self.call("Emulation.setEmulatedMedia", features).await?;
        Ok(())
    }

    /// Loads `url` and waits for its `load` event.
    pub async fn navigate(&self, url: &str) -> anyhow::Result<()> {
        self.call("Page.navigate", json!({ "url": url })).await?;
        self.wait_for("document.readyState === 'complete'", Duration::from_secs(30)).await
    }

    /// Evaluates `expression` in the page (awaiting a promise), returning its value as JSON.
    pub async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        let params = json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params).await?;
        if let Some(details) = result.get("exceptionDetails") {
            bail!("{expression}: {}", describe_exception(&json!({ "exceptionDetails": details })));
        }
        Ok(result["result"]["value"].clone())
    }

    /// Waits, at most `patience`, for `condition` (a JavaScript expression) to be true.
    pub async fn wait_for(&self, condition: &str, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            // A navigation in progress may refuse an evaluation: try again.
            if let Ok(Value::Bool(true)) = self.eval(&format!("Boolean({condition})")).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let body = self.eval("document.body ? document.body.innerText.slice(0, 2000) : ''").await;
                bail!("waited {patience:?} for `{condition}`; the page shows: {body:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes a PNG of the page as shown to `path`.
    pub async fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" })).await?;
        let data = shot["data"].as_str().context("screenshot data")?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Console errors and uncaught exceptions so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().expect("errors").clone()
    }

    pub fn console(&self) -> Vec<String> {
        self.console.lock().expect("console").clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
