//! What the sidecar can run, behind one trait: a [`Runner`] takes an [`Assignment`] (domain
//! types, never protobuf) and runs it to an [`Outcome`], reporting on the way through a [`Sink`].
//!
//! `shell` runs processes, `llm` streams a chat from this sidecar's LLM endpoints; the agent
//! runner is the next one. The link picks the
//! runner by the work's capability and advertises the capabilities of the runners it has.
//!
//! In detail:
//!
//! `runners`: what the sidecar can run, behind the `Runner` trait: an `Assignment` (domain types)
//! in, an `Outcome` out, progress through a `Sink`. The link picks the runner by the work's
//! capability and advertises the capabilities of the runners it has; work it has no runner for
//! fails at once, saying so. `ShellRunner` is the first.

pub mod agent;
pub mod claude;
pub mod context;
pub mod llm;
mod llm_tools;
pub mod service;
pub mod shell;
pub mod tools;

use std::sync::Arc;
use std::time::Duration;

use agentcom_types::domain::{AgentStep, Environment, Outcome, Stream, Verdict, Work};
use tokio_util::sync::CancellationToken;

use crate::contain;
use crate::job::{Attempt, Runner, Running, Sink};

/// The runners a sidecar has, found by the capability a task's work needs, and the verifier
/// that checks the work of tasks with verification steps.
#[derive(Clone, Default)]
pub struct Runners {
    runners: Vec<Arc<dyn Runner>>,
    verifier: Option<Arc<crate::verify::Verifier>>,
    workspaces: Option<Arc<crate::workspace::Workspaces>>,
    users: Option<Arc<crate::users::Users>>,
}

impl Runners {
    pub fn with(mut self, runner: impl Runner) -> Runners {
        self.runners.push(Arc::new(runner));
        self
    }

    /// A runner also used elsewhere (the LLM runner, which judges `llm_judge` steps too).
    pub fn with_shared(mut self, runner: Arc<dyn Runner>) -> Runners {
        self.runners.push(runner);
        self
    }

    /// Verifies work with `verifier` (without one, work with verification steps fails).
    pub fn verifying_with(mut self, verifier: crate::verify::Verifier) -> Runners {
        self.verifier = Some(Arc::new(verifier));
        self
    }

    /// Runs shell work that names a repository in a workspace of `workspaces` (without them,
    /// such work fails).
    /// With `--run-as-range`: each attempt holds a uid of its own from start to end (its work,
    /// its verification, its workspace).
    pub fn with_users(mut self, users: Option<Arc<crate::users::Users>>) -> Runners {
        self.users = users;
        self
    }

    pub fn with_workspaces(mut self, workspaces: Arc<crate::workspace::Workspaces>) -> Runners {
        self.workspaces = Some(workspaces);
        self
    }

    /// The repositories work may run in here, as the hub is told them.
    pub fn repositories(&self) -> Vec<String> {
        self.workspaces.as_ref().map(|w| w.advertised()).unwrap_or_default()
    }

    /// What this sidecar says it can run.
    pub fn capabilities(&self) -> Vec<String> {
        self.runners.iter().flat_map(|r| r.advertises()).collect()
    }

    /// Runs `assignment` on the runner for its work, or fails it at once if there is none.
    /// Shell work that names a repository runs in a workspace made for it (see
    /// [`crate::workspace`]), which is described, committed and removed afterwards. Work that
    /// ran well and has verification steps is verified (see [`crate::verify`]). Both reports go
    /// in the outcome.
    pub fn run(&self, attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let Some(users) = &self.users else { return self.run_as_lent(attempt, sink, cancel) };
        let lease = match users.lend(&attempt.key) {
            Ok(lease) => lease,
            Err(error) => return Box::pin(async move { failed_to_start(error) }),
        };
        let running = self.run_as_lent(attempt, sink, cancel);
        Box::pin(async move {
            let outcome = running.await;
            drop(lease);
            outcome
        })
    }

    fn run_as_lent(&self, mut attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let needed = attempt.assignment.spec.work.capability();
        let Some(runner) = self.runners.iter().find(|r| r.capability() == needed).cloned() else {
            let have: Vec<&str> = self.runners.iter().map(|r| r.capability()).collect();
            let have = have.join(", ");
            let error = format!("this sidecar cannot run {needed} work (it runs: {have})");
            return Box::pin(async move { failed_to_start(error) });
        };
        let spec = &attempt.assignment.spec;
        let (repository, branch) = match &spec.work {
            Work::Agent(agent) if !agent.repository.is_empty() => (agent.repository.clone(), agent.branch.clone()),
            _ => (spec.context.repository.clone(), spec.context.branch.clone()),
        };
        let agent = matches!(spec.work, Work::Agent(_));
        let in_workspace = !repository.is_empty() && !matches!(spec.work, Work::Llm(_));
        let environment = spec.context.environment;
        if spec.verification.is_empty() && !in_workspace {
            return runner.run(attempt, sink, cancel);
        }
        let (verifier, workspaces) = (self.verifier.clone(), self.workspaces.clone());
        Box::pin(async move {
            let mut workspace = None;
            if in_workspace {
                let Some(workspaces) = &workspaces else {
                    return failed_to_start("this sidecar has no workspaces for work in a repository".into());
                };
                let opened = match environment {
                    Environment::Workspace => workspaces.open(&attempt.key, &repository, &branch).await,
                    Environment::Keep | Environment::Fresh => {
                        workspaces.environment(&repository, &branch, environment == Environment::Fresh).await
                    }
                };
                match opened {
                    Ok(opened) => {
                        if let Err(error) = run_inside(&mut attempt, &opened.dir) {
                            return failed_to_start(error);
                        }
                        workspace = Some(opened);
                    }
                    Err(error) => return failed_to_start(format!("workspace: {error}")),
                }
            }
            let job = verification_job(&attempt);
            let (task_id, title) = (attempt.key.task_id.clone(), attempt.assignment.spec.name.clone());
            let fix_rounds = match &attempt.assignment.spec.work {
                Work::Agent(work) => work.fix_rounds.unwrap_or(agentcom_types::domain::DEFAULT_FIX_ROUNDS),
                Work::Llm(work) => work.fix_rounds.unwrap_or(0),
                Work::Shell(_) | Work::Service(_) => 0,
            };
            // Work that goes in rounds: agent work, and LLM work that may fix its reply.
            let in_rounds = agent || (fix_rounds > 0 && matches!(attempt.assignment.spec.work, Work::Llm(_)));
            let goal = match &attempt.assignment.spec.work {
                Work::Agent(work) => work.goal.clone(),
                _ => String::new(),
            };
            let (mut rounds, mut used) = (Vec::new(), Used::default());
            let (mut shift, mut transcripts) = ((0u64, 0u64), (Vec::new(), Vec::new()));
            let mut steps = Vec::new();
            let mut feedback: Option<String> = None;
            let limits = attempt.assignment.spec.limits.clone();
            let started = std::time::Instant::now();
            let mut outcome = loop {
                let number = rounds.len() as u32 + 1;
                let before = match (&workspace, &workspaces) {
                    (Some(opened), Some(workspaces)) if agent => workspaces.snapshot(opened).await.ok(),
                    _ => None,
                };
                // Each round's output follows the rounds before it in the task's streams.
                let shifted: Arc<dyn Sink> =
                    Arc::new(Shifted { inner: sink.clone(), round: number, stdout: shift.0, stderr: shift.1 });
                let mut outcome = runner.run(attempt.clone(), shifted, cancel.clone()).await;
                if in_rounds && !agent {
                    // LLM work: each reply streams after the last; the result is the last one.
                    shift.0 += outcome.stdout_total_bytes;
                }
                if agent {
                    shift = (shift.0 + outcome.stdout_total_bytes, shift.1 + outcome.stderr_total_bytes);
                    transcripts.0.extend_from_slice(&outcome.stdout);
                    transcripts.1.extend_from_slice(&outcome.stderr);
                    let room = agentcom_types::domain::MAX_STEPS.saturating_sub(steps.len());
                    steps.extend(outcome.steps.drain(..).take(room).map(|s| AgentStep { round: number, ..s }));
                }
                if !job.steps.is_empty() && crate::verify::ran_well(&outcome) && !cancel.is_cancelled() {
                    match &verifier {
                        Some(verifier) => {
                            sink.verifying();
                            let span = crate::spans::child(attempt.assignment.trace.as_ref(), "verify");
                            // A reply that repeats the feedback it was given does not pass by it.
                            let checked = match &feedback {
                                Some(feedback) => crate::verify::without_echo(&outcome.stdout, feedback),
                                None => outcome.stdout.clone(),
                            };
                            let report = verifier.check(&job, &checked, &cancel).await;
                            if let Some(mut span) = span {
                                span.set("agentcom.verification.verdict", report.verdict.as_str());
                                span.set("agentcom.verification.steps", report.steps.len() as i64);
                                span.set("agentcom.round", i64::from(number));
                                span.end();
                            }
                            outcome.verification = Some(report);
                        }
                        None => outcome.error = Some("this sidecar cannot verify work".to_owned()),
                    }
                }
                if !in_rounds {
                    break outcome;
                }
                let diff_stat = match (&workspace, &workspaces) {
                    (Some(opened), Some(workspaces)) => workspaces.changes_since(opened, before.as_deref()).await,
                    _ => String::new(),
                };
                used.add(&outcome);
                rounds.push(round(number, &outcome, diff_stat));
                let passed = outcome.verification.as_ref().is_none_or(|r| r.verdict == Verdict::Passed);
                let stop = passed || !crate::verify::ran_well(&outcome) || cancel.is_cancelled();
                if stop || number > fix_rounds || used.spent(&limits, started.elapsed()) {
                    if !stop && fix_rounds > 0 {
                        // The fix rounds, the budget or the time are spent: the report is
                        // partial, the work kept.
                        if let Some(report) = &mut outcome.verification {
                            report.verdict = Verdict::Partial;
                        }
                    }
                    break outcome;
                }
                match (&mut attempt.assignment.spec.work, &outcome.verification) {
                    (Work::Agent(work), Some(report)) => {
                        work.goal = fix_goal(&goal, report, number);
                        feedback = Some(work.goal.clone());
                    }
                    (Work::Llm(work), Some(report)) => {
                        feedback = Some(fix_reply(work, &outcome.stdout, report));
                        // Between the replies, a note on stderr says why it is asked again.
                        let failed: Vec<String> = report
                            .steps
                            .iter()
                            .filter(|s| !s.passed)
                            .map(|s| format!("{} {}", s.kind, s.target))
                            .collect();
                        let note =
                            format!("[round {}: the reply failed {}; asked again]\n", number + 1, failed.join(", "));
                        sink.output(Stream::Stderr, shift.1, note.as_bytes());
                        shift.1 += note.len() as u64;
                        transcripts.1.extend_from_slice(note.as_bytes());
                    }
                    _ => {}
                }
            };
            if in_rounds {
                used.write_to(&mut outcome.usage);
                outcome.rounds = rounds;
                if !agent {
                    (outcome.stderr_total_bytes, outcome.stderr) = (shift.1, std::mem::take(&mut transcripts.1));
                }
            }
            if agent {
                outcome.steps = steps;
                // The output of every round, up to the task's cap.
                let cap = usize::try_from(attempt.assignment.spec.limits.max_output_bytes).unwrap_or(usize::MAX);
                (outcome.stdout_total_bytes, outcome.stderr_total_bytes) = shift;
                transcripts.0.truncate(cap);
                transcripts.1.truncate(cap);
                (outcome.stdout, outcome.stderr) = transcripts;
            }
            // A kept environment stays as the work left it; only an agent's changes there are
            // committed, on `agentcom/RUN` for a step of a workflow run.
            let described = environment == Environment::Workspace || agent;
            if let (Some(opened), Some(workspaces), true) = (workspace, &workspaces, described) {
                let passed = outcome.verification.as_ref().is_none_or(|r| r.verdict == Verdict::Passed);
                let succeeded = crate::verify::ran_well(&outcome) && passed && !cancel.is_cancelled();
                let name = match environment {
                    Environment::Workspace => &task_id,
                    _ => attempt.assignment.spec.labels.get("workflow_run").unwrap_or(&task_id),
                };
                outcome.workspace = Some(workspaces.close(opened, name, &title, succeeded).await);
            }
            outcome
        })
    }
}

/// A sink for one round: its output goes after what the rounds before wrote, its steps are
/// numbered with the round.
struct Shifted {
    inner: Arc<dyn Sink>,
    round: u32,
    stdout: u64,
    stderr: u64,
}

impl Sink for Shifted {
    fn started(&self, pid: u32) {
        self.inner.started(pid);
    }

    fn output(&self, stream: Stream, offset: u64, data: &[u8]) {
        let base = if stream == Stream::Stdout { self.stdout } else { self.stderr };
        self.inner.output(stream, base + offset, data);
    }

    fn progress(&self, blocked: bool, message: &str) {
        self.inner.progress(blocked, message);
    }

    fn verifying(&self) {
        self.inner.verifying();
    }

    fn step(&self, step: &AgentStep) {
        self.inner.step(&AgentStep { round: self.round, ..step.clone() });
    }

    fn service(&self, status: &agentcom_types::domain::ServiceStatus) {
        self.inner.service(status);
    }
}

/// Tokens and cost of every round of agent work together.
#[derive(Default)]
struct Used {
    /// The usage of the latest round that had one: provider, endpoint and model.
    last: Option<agentcom_types::domain::Usage>,
    estimated: bool,
    input: u64,
    output: u64,
    cached: u64,
    cache_write: u64,
    cost: Option<u64>,
}

impl Used {
    /// Whether another round would go past the task's budget (tokens, cost) or its time, all
    /// rounds together: what was used so far reached it.
    fn spent(&self, limits: &agentcom_types::domain::Limits, elapsed: std::time::Duration) -> bool {
        let tokens = self.input + self.output + self.cached + self.cache_write;
        limits.max_tokens.is_some_and(|max| tokens >= max)
            || limits.max_cost_micros.is_some_and(|max| self.cost.is_some_and(|cost| cost >= max))
            || limits.timeout_ms.is_some_and(|max| elapsed.as_millis() as u64 >= max)
    }

    fn add(&mut self, outcome: &Outcome) {
        let Some(usage) = &outcome.usage else { return };
        self.last = Some(usage.clone());
        self.estimated |= usage.estimated;
        self.input += usage.input_tokens;
        self.output += usage.output_tokens;
        self.cached += usage.cached_input_tokens;
        self.cache_write += usage.cache_write_tokens;
        if let Some(cost) = usage.cost_micros {
            self.cost = Some(self.cost.unwrap_or(0) + cost);
        }
    }

    /// Every round's usage summed into the outcome's, which a last round that never reached
    /// its model (an endpoint down) lacks: the latest round's then stands for it.
    fn write_to(self, usage: &mut Option<agentcom_types::domain::Usage>) {
        if usage.is_none() {
            usage.clone_from(&self.last);
        }
        let Some(usage) = usage else { return };
        usage.estimated |= self.estimated;
        usage.input_tokens = self.input;
        usage.output_tokens = self.output;
        usage.cached_input_tokens = self.cached;
        usage.cache_write_tokens = self.cache_write;
        usage.cost_micros = self.cost;
    }
}

/// One round of agent work as the result lists it.
fn round(number: u32, outcome: &Outcome, diff_stat: String) -> agentcom_types::domain::Round {
    let (verdict, failed) = match &outcome.verification {
        _ if !crate::verify::ran_well(outcome) => {
            let why = outcome.error.clone().unwrap_or_else(|| format!("the work ended with {:?}", outcome.exit));
            ("failed".to_owned(), vec![why])
        }
        Some(report) => (
            report.verdict.as_str().to_owned(),
            report.steps.iter().filter(|s| !s.passed).map(|s| format!("{} {}", s.kind, s.target)).collect(),
        ),
        None => ("passed".to_owned(), Vec::new()),
    };
    let usage = outcome.usage.as_ref();
    agentcom_types::domain::Round {
        number,
        verdict,
        failed,
        diff_stat,
        input_tokens: usage.map_or(0, |u| u.input_tokens),
        output_tokens: usage.map_or(0, |u| u.output_tokens),
        cost_micros: usage.and_then(|u| u.cost_micros),
    }
}

/// The goal of a fix round: the original goal, and what failed last time with its evidence.
fn fix_goal(goal: &str, report: &agentcom_types::domain::VerificationReport, round: u32) -> String {
    let failed = failed_steps(report);
    format!(
        "Your work on the goal below (round {round}) did not pass its checks. Fix the work in this \
         directory so that they pass.\n\nGoal: {goal}\n\nWhat failed:\n{failed}"
    )
}

/// The failed steps of a report with their evidence, a few lines each, for the model.
fn failed_steps(report: &agentcom_types::domain::VerificationReport) -> String {
    report.steps.iter().filter(|s| !s.passed).map(|s| format!("- {} {}:\n{}\n", s.kind, s.target, s.evidence)).collect()
}

/// LLM work's next round: the conversation so far, the reply that failed, and what failed with
/// its evidence, asking for a reply that passes.
/// Returns the feedback it asked with, whose echo the next round's checks ignore.
fn fix_reply(
    work: &mut agentcom_types::domain::LlmWork,
    reply: &[u8],
    report: &agentcom_types::domain::VerificationReport,
) -> String {
    use agentcom_types::domain::{ChatMessage, ChatRole};
    work.messages = work.turns();
    work.prompt.clear();
    work.messages.push(ChatMessage::new(ChatRole::Assistant, String::from_utf8_lossy(reply).into_owned()));
    let failed = failed_steps(report);
    let feedback = format!(
        "Your reply did not pass its checks. Answer again, in full, so that it passes.\n\nWhat failed:\n{failed}"
    );
    work.messages.push(ChatMessage::new(ChatRole::User, feedback.clone()));
    feedback
}

/// Points work at its workspace: shell work's `cwd`, if it names one, is taken inside it (and
/// may not climb out); agent work gets the directory.
fn run_inside(attempt: &mut Attempt, dir: &std::path::Path) -> Result<(), String> {
    if matches!(attempt.assignment.spec.work, Work::Agent(_)) {
        attempt.workspace = Some(dir.to_owned());
        return Ok(());
    }
    let work = match &mut attempt.assignment.spec.work {
        Work::Shell(work) => work,
        Work::Service(service) => &mut service.run,
        _ => return Ok(()),
    };
    let inside = match work.cwd.as_deref() {
        None | Some("") => dir.to_owned(),
        Some(cwd) => {
            let relative = std::path::Path::new(cwd);
            if relative.is_absolute() || relative.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(format!("cwd {cwd:?} must be a path inside the repository's workspace"));
            }
            dir.join(relative)
        }
    };
    work.cwd = Some(inside.to_string_lossy().into_owned());
    Ok(())
}

/// What verifying an attempt needs of its assignment: the steps, and for shell work its
/// working directory and environment (the steps' commands get the same).
fn verification_job(attempt: &Attempt) -> crate::verify::Job {
    let spec = &attempt.assignment.spec;
    let (cwd, mut env, secret_env) = match &spec.work {
        Work::Shell(work) => (
            work.cwd.as_ref().map(Into::into),
            work.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            work.secret_env.clone(),
        ),
        // Agent work is checked in its workspace.
        _ => (attempt.workspace.clone(), Vec::new(), Vec::new()),
    };
    env.push(("AGENTCOM_ATTEMPT".to_owned(), attempt.assignment.attempt.to_string()));
    env.sort();
    let asked = match &spec.work {
        Work::Shell(work) => match &work.command {
            agentcom_types::domain::ShellCommand::Argv(argv) => format!("run: {}", argv.join(" ")),
            agentcom_types::domain::ShellCommand::Script(script) => format!("run: {script}"),
        },
        Work::Llm(llm) => llm.prompt.clone(),
        Work::Agent(agent) => agent.goal.clone(),
        // Refused at submit: a service's probes are its checks.
        Work::Service(_) => String::new(),
    };
    let asked = if spec.name.is_empty() { asked } else { format!("{} ({asked})", spec.name) };
    crate::verify::Job {
        asked,
        criteria: spec.success_criteria.clone(),
        judge: attempt.assignment.judge.clone(),
        task_id: attempt.assignment.task_id,
        steps: spec.verification.clone(),
        key: attempt.key.clone(),
        cwd,
        env,
        secret_env,
        limits: contain::Limits { max_memory_bytes: spec.limits.max_memory_bytes, max_pids: spec.limits.max_pids },
        trace: attempt.assignment.trace,
    }
}

/// The outcome of work that never ran.
pub fn failed_to_start(error: String) -> Outcome {
    Outcome { error: Some(error), ..Outcome::empty() }
}

/// Shell work: one process tree per attempt, contained (see `contain`).
pub struct ShellRunner {
    pub settings: shell::Settings,
}

impl ShellRunner {
    /// The job an assignment of shell work is, or why it is not one.
    fn job(attempt: &Attempt) -> Result<shell::ShellJob, String> {
        let Work::Shell(work) = &attempt.assignment.spec.work else {
            return Err(format!("{} work is not shell work", attempt.assignment.spec.work.capability()));
        };
        let program = match &work.command {
            agentcom_types::domain::ShellCommand::Argv(argv) => shell::Program::Argv(argv.clone()),
            agentcom_types::domain::ShellCommand::Script(script) => shell::Program::Script(script.clone()),
        };
        let limits = &attempt.assignment.spec.limits;
        let mut env: Vec<(String, String)> = work.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        // The task id and lease generation come as the containment marks (see `contain`).
        env.push(("AGENTCOM_ATTEMPT".to_owned(), attempt.assignment.attempt.to_string()));
        env.sort();
        Ok(shell::ShellJob {
            key: attempt.key.clone(),
            program,
            cwd: work.cwd.as_ref().map(Into::into),
            env,
            secret_env: work.secret_env.clone(),
            timeout: limits.timeout_ms.map(Duration::from_millis),
            max_output_bytes: usize::try_from(limits.max_output_bytes).unwrap_or(usize::MAX),
            limits: contain::Limits { max_memory_bytes: limits.max_memory_bytes, max_pids: limits.max_pids },
        })
    }
}

impl Runner for ShellRunner {
    fn capability(&self) -> &'static str {
        "shell"
    }

    fn run(&self, attempt: Attempt, sink: Arc<dyn Sink>, cancel: CancellationToken) -> Running {
        let settings = self.settings.clone();
        Box::pin(async move {
            match ShellRunner::job(&attempt) {
                Ok(job) => shell::run(&job, &settings, sink, cancel).await,
                Err(error) => failed_to_start(error),
            }
        })
    }
}
