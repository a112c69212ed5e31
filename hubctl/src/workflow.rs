//! `hubctl workflow`: workflows. `validate` checks a workflow file here, without a hub.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;

use crate::print_json;

#[derive(Subcommand)]
pub(crate) enum WorkflowCommand {
    /// Check a workflow file (YAML or JSON): prints every problem as FILE:LINE:COLUMN: step ID:
    /// what is wrong, and exits 1 if there is any.
    Validate { file: PathBuf },
}

/// Runs what needs no hub.
pub(crate) fn offline(command: &WorkflowCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    match command {
        WorkflowCommand::Validate { file } => validate(file, json_out),
    }
}

fn validate(file: &Path, json_out: bool) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    match agentcom_workflow::file::load(&text) {
        Ok(definition) => {
            let steps = definition.workflow.steps.len();
            if json_out {
                print_json(&json!({ "valid": true, "name": definition.workflow.name, "steps": steps }));
            } else {
                eprintln!("{}: workflow {:?}, {steps} steps: valid", file.display(), definition.workflow.name);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(problems) => {
            if json_out {
                let problems: Vec<_> = problems
                    .iter()
                    .map(|p| json!({ "line": p.line, "column": p.column, "step": p.step, "message": p.message }))
                    .collect();
                print_json(&json!({ "valid": false, "problems": problems }));
            } else {
                for problem in &problems {
                    println!("{}:{problem}", file.display());
                }
                eprintln!("{}: {} problem(s)", file.display(), problems.len());
            }
            Ok(ExitCode::from(1))
        }
    }
}
