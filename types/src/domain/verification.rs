//! The checks work must pass, and what the sidecar found when it ran them.

/// A check the sidecar runs after the work, in its working directory, that the work must pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    /// A path, relative to the working directory and inside it, exists.
    FileExists(String),
    /// The command exits 0 (within `timeout_ms`, 0: the default), in the shell sandbox.
    CommandSucceeds { argv: Vec<String>, timeout_ms: u64 },
    /// A test command exits 0; its summary line is kept.
    TestPasses { argv: Vec<String>, timeout_ms: u64 },
    /// The working directory is a git work tree with nothing uncommitted.
    GitClean,
    /// The work's output (stdout; an LLM's reply) contains the text, or matches the regex.
    OutputContains(Pattern),
    /// A GET of the URL (loopback only) answers 2xx.
    HttpOk(String),
    /// A model judges the result against the task's success criteria; runs after the other
    /// steps, and only when they all passed. `model` empty: the sidecar's choice.
    LlmJudge { model: String },
}

impl Verification {
    /// The step's kind, as the API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Verification::FileExists(_) => "file_exists",
            Verification::CommandSucceeds { .. } => "command_succeeds",
            Verification::TestPasses { .. } => "test_passes",
            Verification::GitClean => "git_clean",
            Verification::OutputContains(_) => "output_contains",
            Verification::HttpOk(_) => "http_ok",
            Verification::LlmJudge { .. } => "llm_judge",
        }
    }
}

/// What `output_contains` looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pattern {
    Text(String),
    Regex(String),
}

/// How the verification of an attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationReport {
    pub verdict: Verdict,
    /// Every step, in the order run.
    pub steps: Vec<StepReport>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every step passed.
    Passed,
    /// A step failed.
    Failed,
    /// Some steps could not be run (the work was stopped part way): what ran is reported.
    Partial,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Passed => "passed",
            Verdict::Failed => "failed",
            Verdict::Partial => "partial",
        }
    }

    pub fn parse(text: &str) -> Option<Verdict> {
        match text {
            "passed" => Some(Verdict::Passed),
            "failed" => Some(Verdict::Failed),
            "partial" => Some(Verdict::Partial),
            _ => None,
        }
    }
}

/// One step of a verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepReport {
    /// `file_exists`, `command_succeeds`, ... ([`Verification::kind`]).
    pub kind: String,
    /// What it checked: the path, the command line, the pattern, the URL.
    pub target: String,
    pub passed: bool,
    pub duration_ms: u64,
    /// Why it passed or failed: an output tail, a message (capped).
    pub evidence: String,
    /// `test_passes`: the test runner's summary line, when one was found.
    pub summary: Option<String>,
}
