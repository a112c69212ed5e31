//! `hubctl dlq`: the dead-letter queue: list, show, retry, purge.

use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use crate::{Client, print_json, show};

#[derive(Subcommand)]
pub(crate) enum DlqCommand {
    /// List dead-lettered tasks, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one dead-lettered task, with its reason and last output.
    Show { id: String },
    /// Requeue a dead-lettered task with a fresh set of attempts.
    Retry { id: String },
    /// Delete dead-lettered tasks (all, or those dead-lettered longer ago than --older-than).
    Purge {
        /// For example 7d or 12h.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
}

pub(crate) async fn dlq(client: &Client, command: DlqCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = match command {
        DlqCommand::List { limit } => {
            client.call(reqwest::Method::GET, &format!("/api/v1/dlq?limit={limit}"), None).await?
        }
        DlqCommand::Show { id } => client.call(reqwest::Method::GET, &format!("/api/v1/dlq/{id}"), None).await?,
        DlqCommand::Retry { id } => {
            client.call(reqwest::Method::POST, &format!("/api/v1/dlq/{id}/retry"), None).await?
        }
        DlqCommand::Purge { older_than } => {
            let path = match older_than {
                Some(age) => format!("/api/v1/dlq?older_than_ms={}", age.as_millis().max(1)),
                None => "/api/v1/dlq".to_owned(),
            };
            client.call(reqwest::Method::DELETE, &path, None).await?
        }
    };
    if json_out {
        print_json(&response);
    } else if response["tasks"].is_array() {
        show::print_task_table(&response);
    } else if response["task"].is_object() {
        show::print_task(&response["task"]);
    } else {
        println!("purged {} dead-lettered tasks", response["purged"]);
    }
    Ok(ExitCode::SUCCESS)
}
