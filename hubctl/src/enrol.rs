//! Enrolment: `hubctl join-token create|ls|revoke` and `hubctl sidecars ls|revoke`.

use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{Value, json};

use crate::{Client, age, print_json, table, until};

#[derive(Subcommand)]
pub(crate) enum JoinTokenCommand {
    /// Make a join token; it is printed once (the hub keeps only its hash). It carries the
    /// hub CA's fingerprint, so the machine it enrols trusts this hub and no other.
    Create {
        /// Sidecars it may enrol.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// How long it may be used (e.g. 30m, 1h, 7d).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// A tag bound to every sidecar it enrols (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Print the one line to run on the new machine instead of the token alone.
        #[arg(long)]
        print_install: bool,
        /// The hub URL the new machine reaches (https://HOST:7420 or quic://HOST:7421), for
        /// --print-install [default: the one hubctl uses].
        #[arg(long, value_name = "URL")]
        install_hub: Option<String>,
    },
    /// List join tokens (never their secrets): uses, expiry, tags.
    Ls,
    /// Refuse a join token from now on (sidecars it enrolled stay).
    Revoke { id: String },
}

#[derive(Subcommand)]
pub(crate) enum SidecarsCommand {
    /// Enrolled sidecars: id, host, tags, connected or revoked.
    Ls,
    /// Revoke a sidecar's identity: its stream is closed at once and it cannot connect again;
    /// the tasks it held are retried elsewhere once their leases lapse.
    Revoke { id: String },
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or("").to_owned()
}

fn tags(value: &Value) -> String {
    let tags: Vec<String> = value.as_array().into_iter().flatten().map(text).collect();
    if tags.is_empty() { "-".to_owned() } else { tags.join(",") }
}

/// The install line for a new machine, with the values it needs.
fn install_line(hub: &str, token: &str, tags: &[String]) -> String {
    // The token goes in on standard input (printf is the shell's own: no process shows it).
    let mut line = format!("printf '%s\\n' '{token}' | sudo ./install-sidecar.sh --hub {hub} --join-file -");
    for tag in tags {
        line.push_str(&format!(" --tag {tag}"));
    }
    line
}

pub(crate) async fn join_tokens(
    client: &Client,
    command: JoinTokenCommand,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let response = match &command {
        JoinTokenCommand::Create { uses, ttl, tags, .. } => {
            let body = json!({ "uses": uses, "ttl_seconds": ttl.as_secs().max(1), "tags": tags });
            client.call(reqwest::Method::POST, "/api/v1/join-tokens", Some(body)).await?
        }
        JoinTokenCommand::Ls => client.call(reqwest::Method::GET, "/api/v1/join-tokens", None).await?,
        JoinTokenCommand::Revoke { id } => {
            client.call(reqwest::Method::DELETE, &format!("/api/v1/join-tokens/{id}"), None).await?
        }
    };
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        JoinTokenCommand::Create { print_install, install_hub, tags, .. } => {
            let token = text(&response["token"]);
            let made = &response["join_token"];
            if print_install {
                let hub = install_hub.unwrap_or_else(|| client.base.clone());
                println!("{}", install_line(&hub, &token, &tags));
            } else {
                // The token alone on stdout, for scripts.
                println!("{token}");
            }
            eprintln!(
                "join token {} enrols {} sidecar(s), expiring {}; it is not shown again",
                text(&made["id"]),
                made["uses"],
                until(made["expires_unix_ms"].as_i64()),
            );
        }
        JoinTokenCommand::Ls => {
            let rows = response["join_tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        text(&t["id"]),
                        format!("{}/{}", t["used"], t["uses"]),
                        text(&t["state"]),
                        until(t["expires_unix_ms"].as_i64()),
                        tags(&t["tags"]),
                    ]
                })
                .collect();
            table(&["ID", "USED", "STATE", "EXPIRES", "TAGS"], rows);
        }
        JoinTokenCommand::Revoke { id } => println!("join token {id} revoked"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn sidecars(client: &Client, command: SidecarsCommand, json_out: bool) -> anyhow::Result<ExitCode> {
    let response = match &command {
        SidecarsCommand::Ls => client.call(reqwest::Method::GET, "/api/v1/sidecars", None).await?,
        SidecarsCommand::Revoke { id } => {
            client.call(reqwest::Method::POST, &format!("/api/v1/sidecars/{id}/revoke"), None).await?
        }
    };
    if json_out {
        print_json(&response);
        return Ok(ExitCode::SUCCESS);
    }
    match command {
        SidecarsCommand::Ls => {
            let rows = response["sidecars"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let state = if s["revoked_unix_ms"].is_i64() {
                        format!("revoked {}", age(s["revoked_unix_ms"].as_i64()))
                    } else if s["connected"].as_bool() == Some(true) {
                        "connected".to_owned()
                    } else {
                        "offline".to_owned()
                    };
                    vec![
                        text(&s["id"]),
                        text(&s["hostname"]),
                        tags(&s["tags"]),
                        state,
                        age(s["enrolled_unix_ms"].as_i64()),
                    ]
                })
                .collect();
            table(&["ID", "HOST", "TAGS", "STATE", "ENROLLED"], rows);
        }
        SidecarsCommand::Revoke { id } => {
            println!("{id} revoked: its stream is closed and it cannot reconnect");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_line_carries_the_hub_the_token_and_the_tags() {
        let line = install_line("https://hub:7420", "acj_x", &["gpu".into(), "zone=eu".into()]);
        assert_eq!(
            line,
            "printf '%s\\n' 'acj_x' | sudo ./install-sidecar.sh --hub https://hub:7420 --join-file - --tag gpu --tag zone=eu"
        );
    }
}
