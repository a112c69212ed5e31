//! Logging for the binaries (`agentcom-hub`, `agentcom-sidecar`): human lines on a terminal,
//! one JSON object per line otherwise (`--log-format`), filtered by `RUST_LOG`, and redacted at
//! the source: every line passes through [`Redactor`] on its way to stderr, so no secret the
//! process knows of, and nothing shaped like one, is written.
//!
//! What is redacted: AgentCom tokens (`agentcom_ROLE_...`, join tokens `acj_...`), Anthropic and
//! OpenAI-style keys (`sk-...`), the credentials of `Authorization` headers (`Bearer ...`), the
//! password of a URL (`scheme://user:password@host`), and every value registered with
//! [`redact`]: provider keys and the values of `--secret` files, as the sidecar reads them.

use std::io::{IsTerminal, Write};
use std::sync::{OnceLock, RwLock};

use regex::Regex;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, else text.
    #[default]
    Auto,
    Text,
    Json,
}

impl LogFormat {
    /// `--log-format` as the arguments give it (read before clap runs: logging starts first), else
    /// `AGENTCOM_LOG_FORMAT`, else `auto`. An unknown value is left for clap to refuse.
    pub fn from_args() -> LogFormat {
        let args: Vec<String> = std::env::args().collect();
        let given = args.iter().enumerate().find_map(|(i, arg)| match arg.strip_prefix("--log-format") {
            Some("") => args.get(i + 1).cloned(),
            Some(rest) => rest.strip_prefix('=').map(str::to_owned),
            None => None,
        });
        let given = given.or_else(|| std::env::var("AGENTCOM_LOG_FORMAT").ok());
        given.and_then(|g| <LogFormat as clap::ValueEnum>::from_str(&g, true).ok()).unwrap_or_default()
    }
}

/// What stands in for a secret.
pub const REDACTED: &str = "[redacted]";

/// Values shorter than this are not registered (they would match too much).
const MIN_SECRET_LEN: usize = 6;

/// The secrets a process knows of, and the shapes of those it does not.
pub struct Redactor {
    values: RwLock<Vec<String>>,
    shapes: Regex,
}

impl Redactor {
    fn new() -> Redactor {
        let shapes = Regex::new(concat!(
            r"\bagentcom_(?:admin|operator|submitter|viewer|join)_[0-9a-f]{16,}",
            r"|\bacj_[0-9a-f]{12}_[0-9a-f]{48}_[0-9a-f]{32}",
            r"|\bsk-[A-Za-z0-9_\-]{20,}",
            r"|\b(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}",
            r"|\b(?i:x-api-key)\W{1,3}[A-Za-z0-9._\-]{8,}",
        ))
        .expect("the secret shapes compile");
        Redactor { values: RwLock::new(Vec::new()), shapes }
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut text = self.shapes.replace_all(text, REDACTED).into_owned();
        text = agentcom_types::fleet::replace_url_passwords(&text, REDACTED);
        for value in self.values.read().expect("redactor lock").iter() {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), REDACTED);
            }
        }
        text
    }

    /// `bytes` with every registered secret value, and every token or key shape, overwritten by
    /// `*` of the same length (so byte offsets into a stream stay right); `None` if there was
    /// nothing to mask. For what leaves the sidecar: output, error text, evidence, diffs.
    pub fn mask(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let values = self.values.read().expect("redactor lock");
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for value in values.iter() {
            let needle = value.as_bytes();
            let mut from = 0;
            while let Some(at) = find(&bytes[from..], needle) {
                spans.push((from + at, from + at + needle.len()));
                from += at + needle.len();
            }
        }
        drop(values);
        let text = String::from_utf8_lossy(bytes);
        if let std::borrow::Cow::Borrowed(text) = text {
            // Shapes are matched in valid UTF-8 only (where their byte offsets are the text's).
            spans.extend(self.shapes.find_iter(text).map(|m| (m.start(), m.end())));
            spans.extend(agentcom_types::fleet::url_password_spans(text).map(|r| (r.start, r.end)));
        }
        if spans.is_empty() {
            return None;
        }
        let mut masked = bytes.to_vec();
        for (start, end) in spans {
            masked[start..end].fill(b'*');
        }
        Some(masked)
    }

    /// [`Redactor::mask`] of a string, in place.
    pub fn mask_string(&self, text: &mut String) {
        if let Some(masked) = self.mask(text.as_bytes()) {
            *text = String::from_utf8_lossy(&masked).into_owned();
        }
    }

    fn add(&self, secret: &str) {
        let secret = secret.trim();
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        let mut values = self.values.write().expect("redactor lock");
        if !values.iter().any(|v| v == secret) {
            values.push(secret.to_owned());
            // Longest first, so a secret that holds another is replaced whole.
            values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The process's redactor.
pub fn redactor() -> &'static Redactor {
    static REDACTOR: OnceLock<Redactor> = OnceLock::new();
    REDACTOR.get_or_init(Redactor::new)
}

/// Registers a secret value: no log line will carry it.
pub fn redact(secret: &str) {
    redactor().add(secret);
}

/// A writer that scrubs each line (the fmt layer writes one event per call) before stderr.
struct Scrubbing;

impl Write for Scrubbing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let text = if is_json() { lift_task_id(&text) } else { text };
        std::io::stderr().lock().write_all(redactor().scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A JSON line logged inside a task's span (`"span":{"name":"task","task_id":...}`) with the
/// task's id also at the top, where queries look for it (`.task_id`), unless the event named one.
fn lift_task_id(line: &str) -> std::borrow::Cow<'_, str> {
    const SPAN: &str = ",\"span\":{";
    let Some(at) = line.find(SPAN) else { return line.into() };
    let (top, span) = line.split_at(at);
    if top.contains("\"task_id\":") {
        return line.into();
    }
    let Some(start) = span.find("\"task_id\":\"").map(|i| i + "\"task_id\":\"".len()) else { return line.into() };
    let Some(len) = span[start..].find('"') else { return line.into() };
    format!("{top},\"task_id\":\"{}\"{span}", &span[start..start + len]).into()
}

/// Whether log lines are JSON (set once logging starts).
static JSON: OnceLock<bool> = OnceLock::new();

/// Whether this process logs JSON: what it says for people (a banner) then goes in the log.
pub fn is_json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// Starts logging to stderr in `format`, every line scrubbed.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let _ = JSON.set(json);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| Scrubbing);
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_what_looks_like_them_are_scrubbed() {
        let redactor = Redactor::new();
        redactor.add("hunter2-canary-value");
        redactor.add("abc"); // too short to register
        let token = format!("agentcom_admin_{}", "ab12".repeat(12));
        let line = format!(
            "token {token}; key sk-ant-api03-AbCdEf123456; authorization: Bearer eyJhbGciOi.x-y_z; \
             x-api-key: k3y-4bcdefgh; url https://bob:s3cr3t@git.example.com/repo.git; \
             output hunter2-canary-value; abc stays"
        );
        let scrubbed = redactor.scrub(&line);
        for secret in [token.as_str(), "sk-ant-api03", "eyJhbGciOi", "k3y-4bcdefgh", "s3cr3t", "hunter2"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("https://bob:[redacted]@git.example.com/repo.git"), "{scrubbed}");
        assert!(scrubbed.contains("abc stays"), "{scrubbed}");
        assert_eq!(redactor.scrub("nothing secret here"), "nothing secret here");
        // Words that merely contain a shape's start are left alone.
        let plain = "disk-usage-report-for-the-whole-fleet, task-0123456789abcdefghij";
        assert_eq!(redactor.scrub(plain), plain);
    }

    #[test]
    fn a_tasks_id_is_lifted_to_the_top_of_its_lines() {
        let inside = r#"{"level":"INFO","message":"made a workspace","target":"x","span":{"task_id":"01M8","name":"task"},"spans":[]}"#;
        assert_eq!(
            lift_task_id(inside),
            r#"{"level":"INFO","message":"made a workspace","target":"x","task_id":"01M8","span":{"task_id":"01M8","name":"task"},"spans":[]}"#
        );
        let named = r#"{"message":"m","task_id":"01M8","span":{"task_id":"01M8","name":"task"}}"#;
        assert_eq!(lift_task_id(named), named, "an event that names it keeps its own");
        let outside = r#"{"message":"hub listening","target":"x"}"#;
        assert_eq!(lift_task_id(outside), outside);
    }

    #[test]
    fn masking_keeps_the_length_and_finds_every_occurrence() {
        let redactor = Redactor::new();
        redactor.add("hunter2-canary-value");
        let out = b"a hunter2-canary-value b hunter2-canary-value sk-ant-api03-AbCdEf123456 \xff end";
        let masked = redactor.mask(out).unwrap();
        assert_eq!(masked.len(), out.len());
        let text = String::from_utf8_lossy(&masked);
        assert!(!text.contains("hunter2") && text.contains("a ******************** b ********************"), "{text}");
        // Not valid UTF-8: the values are masked, the shapes are not looked for.
        assert!(text.contains("sk-ant-api03"), "{text}");
        assert_eq!(redactor.mask(b"plain"), None);
        let mut error = "cannot open hunter2-canary-value".to_owned();
        redactor.mask_string(&mut error);
        assert_eq!(error, "cannot open ********************");
        let mut url = "cannot reach http://agent:pa55word@10.0.0.2:11434/api/tags".to_owned();
        redactor.mask_string(&mut url);
        assert_eq!(url, "cannot reach http://agent:********@10.0.0.2:11434/api/tags", "a URL's password, not its user");
    }
}
