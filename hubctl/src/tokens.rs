//! Admin tokens and the audit log: `hubctl tokens create|ls|revoke` and `hubctl audit`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Client, age, print_json, table};

#[derive(Subcommand)]
pub(crate) enum TokensCommand {
    /// Make a token with a role; its secret is printed once (the hub keeps only its hash).
    Create {
        /// admin (everything), operator (drain, dead letters, endpoints, backups), submitter
        /// (submit and cancel), viewer (read only: the API, /metrics, the dashboard), inference
        /// (the gateway's model APIs only: /v1/chat/completions, /v1/messages, /api/chat, ...).
        #[arg(long)]
        role: String,
        /// What it is for, as `tokens ls` shows it.
        #[arg(long, default_value = "")]
        name: String,
        /// Write a token file (mode 0600) instead of printing the secret: the token and the hub
        /// CA's fingerprint, which `hubctl --token-file FILE` pins.
        #[arg(long, value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
    /// List the tokens the hub accepts (never their secrets).
    Ls,
    /// Refuse a token from its next request on.
    Revoke { id: String },
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

fn created(token: &Value) -> String {
    match token["created_unix_ms"].as_i64() {
        Some(ms) => age(Some(ms)),
        None => "bootstrap".to_owned(),
    }
}

pub(crate) async fn tokens(client: &Client, command: TokensCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = match &command {
        TokensCommand::Create { role, name, .. } => {
            let body = json!({ "role": role, "name": name });
            client.call(reqwest::Method::POST, "/api/v1/tokens", Some(body)).await?
        }
        TokensCommand::Ls => client.call(reqwest::Method::GET, "/api/v1/tokens", None).await?,
        TokensCommand::Revoke { id } => {
            client.call(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"), None).await?
        }
    };
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        TokensCommand::Create { out, .. } => {
            let token = &response["token"];
            let secret = text(&response["secret"]);
            match out {
                Some(path) => {
                    let file = agentcom_link::token_file::TokenFile { token: secret, ca: client.ca };
                    agentcom_link::pki::write_private(&path, &file.render())?;
                    eprintln!("wrote {} (mode 0600)", path.display());
                }
                // The secret alone on stdout, so `hubctl tokens create ... > viewer.token` keeps it.
                None => println!("{secret}"),
            }
            eprintln!(
                "made {} ({}): keep the secret above, it is not shown again",
                text(&token["id"]),
                text(&token["role"])
            );
        }
        TokensCommand::Ls => {
            let rows = response["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| vec![text(&t["id"]), text(&t["role"]), text(&t["name"]), created(t)])
                .collect();
            table(&["ID", "ROLE", "NAME", "CREATED"], rows);
        }
        TokensCommand::Revoke { id } => println!("{id} revoked"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn audit(client: &Client, limit: usize, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = client.call(reqwest::Method::GET, &format!("/api/v1/audit?limit={limit}"), None).await?;
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = response["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let at = age(e["at_unix_ms"].as_i64());
            vec![at, text(&e["actor"]), text(&e["role"]), text(&e["action"]), text(&e["target"]), text(&e["detail"])]
        })
        .collect();
    table(&["WHEN", "BY", "ROLE", "ACTION", "TARGET", "DETAIL"], rows);
    Ok(ExitCode::SUCCESS)
}
