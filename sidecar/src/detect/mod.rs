//! Detection: what a repository needs to run, read from its files by fixed rules (as Nixpacks
//! and buildpacks do), written as a plan: its stacks and package managers, the commands that set
//! it up, the services to start with their ports and health checks, the databases and caches it
//! expects, and the environment it reads. `agentcom-sidecar detect PATH` prints it as JSON.
//!
//! Every entry says where it came from (`source`: `rules` here; a model's proposal, for what the
//! rules cannot tell, says `model`) and what it was read from (`evidence`: a file, a line). The
//! same files always give the same plan. Nothing here runs anything from the repository.

mod rules;
mod scan;
#[cfg(test)]
mod tests;

use std::path::Path;

use serde::Serialize;

/// What a repository needs to run.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Plan {
    /// The repository's directory, as given.
    pub root: String,
    /// Languages and their package managers.
    pub stacks: Vec<Stack>,
    /// Commands that set the repository up, in order, run in its root.
    pub install: Vec<Step>,
    /// Long-running commands to start, each with its ports and health check.
    pub services: Vec<Service>,
    /// Databases, caches and brokers it expects beside it (from compose files and the
    /// environment's examples).
    pub dependencies: Vec<Dependency>,
    /// Variables its environment example names.
    pub env: Vec<EnvVar>,
    /// The rules found no service they trust: a model should propose one.
    pub needs_model: bool,
    /// What the rules saw and did not use, in words.
    pub notes: Vec<String>,
}

/// Where an entry of a plan came from.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Rules,
    Model,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Stack {
    /// `python`, `node`, `rust`, `go`, `make`, `procfile`.
    pub name: &'static str,
    /// `pip`, `uv`, `poetry`, `npm`, `pnpm`, `yarn`, `cargo`, `go`, `make`; none for a Procfile.
    pub manager: Option<&'static str>,
    pub evidence: String,
}

/// A command run once, to set the repository up.
#[derive(Debug, Serialize, PartialEq)]
pub struct Step {
    /// A shell line (`sh -c`).
    pub run: String,
    pub source: Source,
    pub evidence: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Service {
    /// `web`, `worker`, ...: a Procfile's process type, or `web` for a language's entry point.
    pub name: String,
    /// A shell line (`sh -c`); `$PORT` and `$PORT_<NAME>` are the ports the sidecar gives it.
    pub run: String,
    /// Named ports it listens on (the first is also `PORT`); none for a worker.
    pub ports: Vec<String>,
    /// The variable its code reads its port from, when that is not `PORT` (`APP_PORT`): set it
    /// to the first port too.
    pub port_env: Option<String>,
    /// How to tell it is ready; none for a service without ports.
    pub health: Option<Health>,
    pub source: Source,
    pub evidence: String,
}

/// A readiness check of a service.
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Health {
    /// `GET path` on the named port answers 2xx.
    Http { port: String, path: String, evidence: String },
    /// A connection to the named port opens (no health route was found).
    Tcp { port: String },
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Dependency {
    /// `postgres`, `mysql`, `redis`, `mongodb`, `rabbitmq`, `memcached`.
    pub kind: &'static str,
    /// The image a compose file names, if one does.
    pub image: Option<String>,
    pub evidence: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct EnvVar {
    pub name: String,
    /// The example's value (left out for a secret).
    pub example: Option<String>,
    /// Its name says it is a secret (a key, token, password): give it through `secret_env`.
    pub secret: bool,
    pub evidence: String,
}

/// Reads the repository at `root` and makes its plan. An unreadable file is a note, not an error;
/// a root that is not a directory is an error.
pub fn detect(root: &Path) -> anyhow::Result<Plan> {
    anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
    let repo = scan::Repo::read(root);
    let mut plan = Plan { root: root.display().to_string(), ..Plan::default() };
    rules::apply(&repo, &mut plan);
    plan.needs_model = plan.services.is_empty();
    if plan.needs_model {
        plan.notes.push("the rules found no service to start".to_owned());
    }
    Ok(plan)
}
