//! Changes, as the write-ahead log holds them: each `Op` prepared into its stored form once
//! (for the log and for redb alike), and a group commit's changes as one tagged,
//! length-prefixed payload.

use prost::Message;

use super::{Error, Tier, encode_cordon, encode_endpoint, encode_task, pb};
use crate::store::Op;

/// A change in its stored form, ready for the log and for redb.
pub(in crate::store) enum Prepared {
    PutTask {
        key: u128,
        bytes: Vec<u8>,
    },
    PutOutput {
        key: u128,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// A task's output is in files (`blobs`), written and synced before this is logged.
    OutputInFiles {
        key: u128,
    },
    DropOutput {
        key: u128,
    },
    DeleteTask {
        key: u128,
    },
    PutToken {
        hash: String,
        value: String,
    },
    DeleteToken {
        hash: String,
    },
    PutAudit {
        key: u128,
        bytes: Vec<u8>,
    },
    PutFleet {
        key: String,
        value: Vec<u8>,
    },
    DeleteFleet {
        key: String,
    },
    /// A workflow run's record (sequence 0) or one of its events (1..).
    PutWorkflow {
        key: (u128, u32),
        bytes: Vec<u8>,
    },
}

/// Each change in its stored form. A task's output never goes into its record: a record that
/// holds some has it split off as the task's output (`PutOutput`), stored in chunks apart.
pub(in crate::store) fn prepare(ops: Vec<Op>) -> Vec<Prepared> {
    let mut prepared = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::PutTask(mut task) => {
                let key = u128::from(task.id.0);
                if let Some(outcome) = &mut task.outcome
                    && !(outcome.stdout.is_empty() && outcome.stderr.is_empty())
                {
                    let (stdout, stderr) = (std::mem::take(&mut outcome.stdout), std::mem::take(&mut outcome.stderr));
                    prepared.push(Prepared::PutOutput { key, stdout, stderr });
                }
                prepared.push(Prepared::PutTask { key, bytes: encode_task(*task) });
            }
            op => prepared.push(prepare_one(op)),
        }
    }
    prepared
}

fn prepare_one(op: Op) -> Prepared {
    use crate::store::{
        ALIAS_PREFIX, CORDON_PREFIX, ENDPOINT_PREFIX, HOOK_PREFIX, IDENTITY_PREFIX, JOIN_PREFIX, MEMORY_PREFIX,
        SCHEDULE_PREFIX, USAGE_PREFIX, VERDICTS_PREFIX,
    };
    match op {
        Op::PutTask(task) => Prepared::PutTask { key: u128::from(task.id.0), bytes: encode_task(*task) },
        Op::PutOutput { id, stdout, stderr } => Prepared::PutOutput { key: u128::from(id.0), stdout, stderr },
        Op::DropOutput(id) => Prepared::DropOutput { key: u128::from(id.0) },
        Op::DeleteTask(id) => Prepared::DeleteTask { key: u128::from(id.0) },
        Op::PutToken { hash, value } => Prepared::PutToken { hash, value },
        Op::DeleteToken { hash } => Prepared::DeleteToken { hash },
        Op::PutAudit(entry) => Prepared::PutAudit { key: u128::from(entry.id), bytes: super::encode_audit(&entry) },
        Op::PutJoinGrant(grant) => {
            Prepared::PutFleet { key: format!("{JOIN_PREFIX}{}", grant.id), value: super::encode_join_grant(&grant) }
        }
        Op::DeleteJoinGrant { id } => Prepared::DeleteFleet { key: format!("{JOIN_PREFIX}{id}") },
        Op::PutIdentity(identity) => Prepared::PutFleet {
            key: format!("{IDENTITY_PREFIX}{}", identity.sidecar_id),
            value: super::encode_identity(&identity),
        },
        Op::PutCordon { sidecar_id, cordon } => {
            Prepared::PutFleet { key: format!("{CORDON_PREFIX}{sidecar_id}"), value: encode_cordon(&cordon) }
        }
        Op::DeleteCordon { sidecar_id } => Prepared::DeleteFleet { key: format!("{CORDON_PREFIX}{sidecar_id}") },
        Op::PutEndpoint(endpoint) => {
            Prepared::PutFleet { key: format!("{ENDPOINT_PREFIX}{}", endpoint.id), value: encode_endpoint(&endpoint) }
        }
        Op::DeleteEndpoint { id } => Prepared::DeleteFleet { key: format!("{ENDPOINT_PREFIX}{id}") },
        Op::PutHook(hook) => Prepared::PutFleet {
            key: format!("{HOOK_PREFIX}{}", hook.name),
            value: super::workflow::encode_hook(&hook),
        },
        Op::DeleteHook { name } => Prepared::DeleteFleet { key: format!("{HOOK_PREFIX}{name}") },
        Op::PutScheduled(scheduled) => Prepared::PutFleet {
            key: format!("{SCHEDULE_PREFIX}{}", scheduled.name),
            value: super::workflow::encode_scheduled(&scheduled),
        },
        Op::DeleteScheduled { name } => Prepared::DeleteFleet { key: format!("{SCHEDULE_PREFIX}{name}") },
        Op::PutMemory(memory) => Prepared::PutFleet {
            key: format!("{MEMORY_PREFIX}{}", memory.workflow),
            value: super::workflow::encode_memory(&memory),
        },
        Op::PutRun(run) => {
            Prepared::PutWorkflow { key: (u128::from(run.id), 0), bytes: super::workflow::encode_run(&run) }
        }
        Op::PutRunEvent { run, seq, event } => {
            Prepared::PutWorkflow { key: (u128::from(run), seq), bytes: super::workflow::encode_event(&event) }
        }
        Op::PutAlias { name, models } => {
            Prepared::PutFleet { key: format!("{ALIAS_PREFIX}{name}"), value: models.join("\n").into_bytes() }
        }
        Op::DeleteAlias { name } => Prepared::DeleteFleet { key: format!("{ALIAS_PREFIX}{name}") },
        Op::PutUsage { row, spend } => Prepared::PutFleet {
            key: format!("{USAGE_PREFIX}{}/{}/{}", row.day, row.key, row.model),
            value: spend.encode().into_bytes(),
        },
        Op::PutVerdicts { model, kind, tier, tally } => Prepared::PutFleet {
            key: format!("{VERDICTS_PREFIX}{kind}/{}/{model}", tier.as_str()),
            value: pb::Tally { passed: tally.passed, failed: tally.failed }.encode_to_vec(),
        },
    }
}

/// A stored usage row: `rest` is the key past `usage/` (`DAY/KEY/MODEL`).
pub(in crate::store) fn decode_usage(
    rest: &str,
    value: &[u8],
) -> Result<(crate::usage::Row, crate::usage::Spend), String> {
    let mut parts = rest.splitn(3, '/');
    let (day, key, model) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if day.len() != 10 || key.is_empty() || model.is_empty() {
        return Err(format!("{rest:?} is not DAY/KEY/MODEL"));
    }
    let value = std::str::from_utf8(value).map_err(|err| err.to_string())?;
    let row = crate::usage::Row { day: day.to_owned(), key: key.to_owned(), model: model.to_owned() };
    Ok((row, crate::usage::Spend::decode(value)?))
}

/// Stored verdicts: `rest` is the key past `verdicts/` (`KIND/TIER/MODEL`).
pub(in crate::store) fn decode_verdicts(
    rest: &str,
    value: &[u8],
) -> Result<(String, &'static str, Tier, crate::sched::Tally), String> {
    let mut parts = rest.splitn(3, '/');
    let (kind, tier, model) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let kind = match kind {
        "shell" => "shell",
        "llm" => "llm",
        "agent" => "agent",
        other => return Err(format!("{other:?} is not a kind of work")),
    };
    let tier: Tier = tier.parse().map_err(|err: Error| err.to_string())?;
    if model.is_empty() {
        return Err("no model".to_owned());
    }
    let tally = pb::Tally::decode(value).map_err(|err| err.to_string())?;
    Ok((model.to_owned(), kind, tier, crate::sched::Tally { passed: tally.passed, failed: tally.failed }))
}

const TAG_PUT_TASK: u8 = 1;
const TAG_DELETE_TASK: u8 = 2;
const TAG_PUT_TOKEN: u8 = 3;
const TAG_PUT_FLEET: u8 = 4;
const TAG_DELETE_FLEET: u8 = 5;
const TAG_DELETE_TOKEN: u8 = 6;
const TAG_PUT_AUDIT: u8 = 7;
const TAG_PUT_OUTPUT: u8 = 8;
const TAG_DROP_OUTPUT: u8 = 9;
const TAG_OUTPUT_IN_FILES: u8 = 10;
const TAG_PUT_WORKFLOW: u8 = 11;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The size of [`encode_ops`]'s payload, without making it.
pub(in crate::store) fn encoded_len(ops: &[Prepared]) -> usize {
    ops.iter()
        .map(|op| match op {
            Prepared::PutTask { bytes, .. } | Prepared::PutAudit { bytes, .. } => 1 + 16 + 4 + bytes.len(),
            Prepared::PutOutput { stdout, stderr, .. } => 1 + 16 + 4 + stdout.len() + 4 + stderr.len(),
            Prepared::DropOutput { .. } | Prepared::DeleteTask { .. } | Prepared::OutputInFiles { .. } => 1 + 16,
            Prepared::PutToken { hash, value } => 1 + 4 + hash.len() + 4 + value.len(),
            Prepared::DeleteToken { hash } => 1 + 4 + hash.len(),
            Prepared::PutFleet { key, value } => 1 + 4 + key.len() + 4 + value.len(),
            Prepared::DeleteFleet { key } => 1 + 4 + key.len(),
            Prepared::PutWorkflow { bytes, .. } => 1 + 16 + 4 + 4 + bytes.len(),
        })
        .sum()
}

/// The payload of one log record: the changes of one group commit, tagged and length-prefixed.
pub(in crate::store) fn encode_ops(ops: &[Prepared]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(ops));
    for op in ops {
        match op {
            Prepared::PutOutput { key, stdout, stderr } => {
                out.push(TAG_PUT_OUTPUT);
                out.extend_from_slice(&key.to_le_bytes());
                put_bytes(&mut out, stdout);
                put_bytes(&mut out, stderr);
            }
            Prepared::DropOutput { key } => {
                out.push(TAG_DROP_OUTPUT);
                out.extend_from_slice(&key.to_le_bytes());
            }
            Prepared::OutputInFiles { key } => {
                out.push(TAG_OUTPUT_IN_FILES);
                out.extend_from_slice(&key.to_le_bytes());
            }
            Prepared::PutTask { key, bytes } => {
                out.push(TAG_PUT_TASK);
                out.extend_from_slice(&key.to_le_bytes());
                put_bytes(&mut out, bytes);
            }
            Prepared::DeleteTask { key } => {
                out.push(TAG_DELETE_TASK);
                out.extend_from_slice(&key.to_le_bytes());
            }
            Prepared::PutToken { hash, value } => {
                out.push(TAG_PUT_TOKEN);
                put_bytes(&mut out, hash.as_bytes());
                put_bytes(&mut out, value.as_bytes());
            }
            Prepared::DeleteToken { hash } => {
                out.push(TAG_DELETE_TOKEN);
                put_bytes(&mut out, hash.as_bytes());
            }
            Prepared::PutAudit { key, bytes } => {
                out.push(TAG_PUT_AUDIT);
                out.extend_from_slice(&key.to_le_bytes());
                put_bytes(&mut out, bytes);
            }
            Prepared::PutFleet { key, value } => {
                out.push(TAG_PUT_FLEET);
                put_bytes(&mut out, key.as_bytes());
                put_bytes(&mut out, value);
            }
            Prepared::DeleteFleet { key } => {
                out.push(TAG_DELETE_FLEET);
                put_bytes(&mut out, key.as_bytes());
            }
            Prepared::PutWorkflow { key: (run, seq), bytes } => {
                out.push(TAG_PUT_WORKFLOW);
                out.extend_from_slice(&run.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                put_bytes(&mut out, bytes);
            }
        }
    }
    out
}

/// `None` if the payload is not a sequence of whole changes.
pub(in crate::store) fn decode_ops(mut payload: &[u8]) -> Option<Vec<Prepared>> {
    fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (input.get(..n)?, input.get(n..)?);
        *input = rest;
        Some(head)
    }
    fn take_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(take(input, 4)?.try_into().ok()?) as usize;
        take(input, len)
    }
    let mut ops = Vec::new();
    while !payload.is_empty() {
        let tag = take(&mut payload, 1)?[0];
        let op = match tag {
            TAG_PUT_TASK => {
                let key = u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?);
                Prepared::PutTask { key, bytes: take_bytes(&mut payload)?.to_vec() }
            }
            TAG_PUT_OUTPUT => {
                let key = u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?);
                let stdout = take_bytes(&mut payload)?.to_vec();
                Prepared::PutOutput { key, stdout, stderr: take_bytes(&mut payload)?.to_vec() }
            }
            TAG_DROP_OUTPUT => {
                Prepared::DropOutput { key: u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?) }
            }
            TAG_OUTPUT_IN_FILES => {
                Prepared::OutputInFiles { key: u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?) }
            }
            TAG_DELETE_TASK => {
                Prepared::DeleteTask { key: u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?) }
            }
            TAG_PUT_TOKEN => {
                let hash = String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()?;
                let value = String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()?;
                Prepared::PutToken { hash, value }
            }
            TAG_DELETE_TOKEN => {
                Prepared::DeleteToken { hash: String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()? }
            }
            TAG_PUT_AUDIT => {
                let key = u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?);
                Prepared::PutAudit { key, bytes: take_bytes(&mut payload)?.to_vec() }
            }
            TAG_PUT_FLEET => {
                let key = String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()?;
                Prepared::PutFleet { key, value: take_bytes(&mut payload)?.to_vec() }
            }
            TAG_DELETE_FLEET => {
                Prepared::DeleteFleet { key: String::from_utf8(take_bytes(&mut payload)?.to_vec()).ok()? }
            }
            TAG_PUT_WORKFLOW => {
                let run = u128::from_le_bytes(take(&mut payload, 16)?.try_into().ok()?);
                let seq = u32::from_le_bytes(take(&mut payload, 4)?.try_into().ok()?);
                Prepared::PutWorkflow { key: (run, seq), bytes: take_bytes(&mut payload)?.to_vec() }
            }
            _ => return None,
        };
        ops.push(op);
    }
    Some(ops)
}
