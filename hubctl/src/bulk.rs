//! `hubctl submit --from-file`: many submits on one gRPC stream, each acknowledged once durable.
//!
//! Lines are sent as fast as the hub's window allows; acknowledgements come back in any order
//! and are printed in line order (`LINE ID`, or JSON lines with `--json`). Progress goes to
//! stderr once a second, and a summary at the end.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use agentcom_proto::v1 as pb;
use anyhow::Context;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

enum Outcome {
    Acknowledged { task_id: String, existing: bool },
    Refused(String),
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<(u64, String)>> {
    let reader: Box<dyn BufRead> = if path == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ))
    };
    let mut lines = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if !line.trim().is_empty() {
            lines.push((index as u64 + 1, line));
        }
    }
    Ok(lines)
}

/// A JSON error as said of one line of the file: serde's "at line 1 column C" would contradict
/// the file's line number in front of it, so only the column stays.
fn in_line(message: &str) -> String {
    match message.rsplit_once(" at line 1 column ") {
        Some((what, column)) if !column.is_empty() && column.chars().all(|c| c.is_ascii_digit()) => {
            format!("{what} (column {column})")
        }
        _ => message.to_owned(),
    }
}

pub(crate) async fn submit_file(client: &crate::Client, path: &Path, json_out: bool) -> anyhow::Result<ExitCode> {
    let lines = read_lines(path)?;
    let total = lines.len();
    let mut results: BTreeMap<u64, Outcome> = BTreeMap::new();
    let mut specs = Vec::with_capacity(total);
    for (line, text) in lines {
        match agentcom_types::json::spec_from_json(&text) {
            Ok(spec) => specs.push(pb::SubmitStreamRequest { sequence: line, spec: Some(spec) }),
            Err(err) => {
                results.insert(line, Outcome::Refused(in_line(&err.0)));
            }
        }
    }
    let all_lines: Vec<u64> = specs.iter().map(|r| r.sequence).chain(results.keys().copied()).collect();

    let (hub, token) = (&client.base, &client.token);
    let channel = agentcom_link::connect::channel(client.dialer.clone())
        .await
        .map_err(|err| anyhow::anyhow!("cannot reach the hub at {hub}: {}", agentcom_link::error_chain(&err)))?;
    let mut client = pb::admin_client::AdminClient::new(channel);
    let (tx, rx) = mpsc::channel(1024);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().context("a malformed token")?);
    let sending = tokio::spawn(async move {
        for spec in specs {
            if tx.send(spec).await.is_err() {
                return;
            }
        }
    });
    let mut acks =
        client.submit_stream(request).await.map_err(|status| anyhow::anyhow!("{}", status.message()))?.into_inner();

    let started = Instant::now();
    let mut printer = InOrder::new(all_lines, json_out);
    printer.flush(&results)?;
    let mut last_report = Instant::now();
    let mut acknowledged = 0usize;
    while let Some(ack) =
        acks.message().await.map_err(|status| anyhow::anyhow!("the stream broke: {}", status.message()))?
    {
        let outcome = if ack.error_code.is_empty() {
            acknowledged += 1;
            Outcome::Acknowledged { task_id: ack.task_id, existing: ack.existing }
        } else {
            Outcome::Refused(format!("{} ({})", ack.error_message, ack.error_code))
        };
        results.insert(ack.sequence, outcome);
        printer.flush(&results)?;
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            eprintln!("[hubctl: {} of {total} answered, {acknowledged} durable]", results.len());
        }
        if results.len() == total {
            break;
        }
    }
    let _ = sending.await;
    let refused: Vec<(&u64, &String)> = results
        .iter()
        .filter_map(|(line, outcome)| match outcome {
            Outcome::Refused(message) => Some((line, message)),
            Outcome::Acknowledged { .. } => None,
        })
        .collect();
    for (line, message) in &refused {
        eprintln!("line {line}: {message}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let missing = total - results.len();
    eprintln!(
        "[hubctl: {acknowledged} of {total} submitted durably in {seconds:.2} s ({:.0}/s); {} refused{}]",
        acknowledged as f64 / seconds.max(1e-9),
        refused.len(),
        if missing > 0 { format!(", {missing} unanswered") } else { String::new() }
    );
    Ok(if refused.is_empty() && missing == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Prints results in line order as soon as every earlier line has its answer.
struct InOrder {
    lines: Vec<u64>,
    next: usize,
    json: bool,
}

impl InOrder {
    fn new(mut lines: Vec<u64>, json: bool) -> InOrder {
        lines.sort_unstable();
        InOrder { lines, next: 0, json }
    }

    fn flush(&mut self, results: &BTreeMap<u64, Outcome>) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        while let Some(line) = self.lines.get(self.next) {
            let Some(outcome) = results.get(line) else { break };
            match (outcome, self.json) {
                (Outcome::Acknowledged { task_id, existing }, true) => {
                    writeln!(out, "{}", json!({ "line": line, "id": task_id, "existing": existing }))?
                }
                (Outcome::Acknowledged { task_id, .. }, false) => writeln!(out, "{line} {task_id}")?,
                (Outcome::Refused(message), true) => writeln!(out, "{}", json!({ "line": line, "error": message }))?,
                (Outcome::Refused(_), false) => {}
            }
            self.next += 1;
        }
        out.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod line_tests {
    #[test]
    fn a_json_error_names_the_column_of_its_line_only() {
        assert_eq!(
            super::in_line("missing field `command` at line 1 column 37"),
            "missing field `command` (column 37)"
        );
        assert_eq!(super::in_line("no work given"), "no work given");
    }
}
