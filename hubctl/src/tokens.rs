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
        #[command(flatten)]
        limits: KeyLimits,
    },
    /// List the tokens the hub accepts (never their secrets).
    Ls,
    /// Refuse a token from its next request on.
    Revoke { id: String },
}

/// A gateway key's limits (docs/gateway.md); each one left out is no limit.
#[derive(clap::Args, Default)]
pub(crate) struct KeyLimits {
    /// Requests per minute at the gateway.
    #[arg(long, value_name = "N")]
    rpm: Option<u32>,
    /// Tokens (read and written) per minute at the gateway.
    #[arg(long, value_name = "N")]
    tpm: Option<u64>,
    /// Dollars it may spend per UTC day (priced by the hub's price table).
    #[arg(long, value_name = "USD")]
    daily_budget: Option<f64>,
    /// Dollars it may spend per UTC month.
    #[arg(long, value_name = "USD")]
    monthly_budget: Option<f64>,
    /// The only models (or aliases) it may ask for, comma-separated.
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    models: Vec<String>,
    /// Never sent to a cloud provider: only models of the fleet's own servers.
    #[arg(long)]
    local_only: bool,
    /// Keep the prompts and replies of its requests (not stored otherwise).
    #[arg(long)]
    store: bool,
}

impl KeyLimits {
    fn json(&self) -> Value {
        let mut limits = serde_json::Map::new();
        let mut put = |name: &str, value: Value| {
            if !value.is_null() && value != json!(false) && value != json!([]) {
                limits.insert(name.to_owned(), value);
            }
        };
        put("rpm", json!(self.rpm));
        put("tpm", json!(self.tpm));
        put("daily_budget_usd", json!(self.daily_budget));
        put("monthly_budget_usd", json!(self.monthly_budget));
        put("models", json!(self.models));
        put("local_only", json!(self.local_only));
        put("store", json!(self.store));
        Value::Object(limits)
    }
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
        TokensCommand::Create { role, name, limits, .. } => {
            let body = json!({ "role": role, "name": name, "limits": limits.json() });
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
                .map(|t| vec![text(&t["id"]), text(&t["role"]), text(&t["name"]), created(t), limits(&t["limits"])])
                .collect();
            table(&["ID", "ROLE", "NAME", "CREATED", "LIMITS"], rows);
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

/// A key's limits in a few words (`rpm 60, $5/day, local only`).
fn limits(limits: &Value) -> String {
    let mut words = Vec::new();
    if let Some(n) = limits["rpm"].as_u64() {
        words.push(format!("rpm {n}"));
    }
    if let Some(n) = limits["tpm"].as_u64() {
        words.push(format!("tpm {n}"));
    }
    if let Some(usd) = limits["daily_budget_usd"].as_f64() {
        words.push(format!("${usd}/day"));
    }
    if let Some(usd) = limits["monthly_budget_usd"].as_f64() {
        words.push(format!("${usd}/month"));
    }
    if let Some(models) = limits["models"].as_array() {
        let models: Vec<&str> = models.iter().filter_map(Value::as_str).collect();
        words.push(format!("models {}", models.join(",")));
    }
    if limits["local_only"] == true {
        words.push("local only".into());
    }
    if limits["store"] == true {
        words.push("stores prompts".into());
    }
    if words.is_empty() { "-".into() } else { words.join(", ") }
}

/// `hubctl usage [--by key|model|day]`: what the gateway's keys spent.
pub(crate) async fn usage(client: &Client, by: Option<&str>, json_out: bool) -> anyhow::Result<ExitCode> {
    let path = match by {
        Some(by) => format!("/api/v1/usage?by={by}"),
        None => "/api/v1/usage".to_owned(),
    };
    let response = client.call(reqwest::Method::GET, &path, None).await?;
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = response["usage"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|u| {
            let key = match (u["key"].as_str(), u["key_name"].as_str()) {
                (Some(key), Some(name)) if !name.is_empty() => format!("{key} ({name})"),
                (Some(key), _) => key.to_owned(),
                (None, _) => "-".into(),
            };
            let or_dash = |v: &Value| v.as_str().unwrap_or("-").to_owned();
            let count = |v: &Value| v.as_u64().unwrap_or(0).to_string();
            let cost = format!("${:.4}", u["cost_usd"].as_f64().unwrap_or(0.0));
            vec![
                or_dash(&u["day"]),
                key,
                or_dash(&u["model"]),
                count(&u["requests"]),
                count(&u["input_tokens"]),
                count(&u["output_tokens"]),
                cost,
            ]
        })
        .collect();
    if rows.is_empty() {
        eprintln!("no gateway usage recorded yet");
        return Ok(ExitCode::SUCCESS);
    }
    table(&["DAY", "KEY", "MODEL", "REQUESTS", "INPUT", "OUTPUT", "COST"], rows);
    Ok(ExitCode::SUCCESS)
}
