//! Workflow runs and their events in the stored format (`WorkflowRun`, `WorkflowEvent`).

use prost::Message;
use serde_json::{Map, Value};
use ulid::Ulid;

use agentcom_workflow::run::{Ended, StepKey};

use super::{id_bytes, id_from_bytes, pb};
use crate::store::workflows::{Hook, Memory, RunEvent, RunEventKind, Scheduled, StoredRun};

pub(in crate::store) fn encode_run(run: &StoredRun) -> Vec<u8> {
    pb::WorkflowRun {
        name: run.name.clone(),
        source: run.source.clone(),
        inputs_json: run.inputs.to_string(),
        created_unix_ms: run.created_unix_ms,
        trigger: run.trigger.clone(),
        state: run.state.clone(),
        ended_unix_ms: run.ended_unix_ms,
        delivery: run.delivery.clone().unwrap_or_default(),
        slot_unix_ms: run.slot_unix_ms,
        given_json: Value::Object(run.given.clone()).to_string(),
    }
    .encode_to_vec()
}

pub(in crate::store) fn decode_run(id: Ulid, bytes: &[u8]) -> Result<StoredRun, String> {
    let record = pb::WorkflowRun::decode(bytes).map_err(|err| err.to_string())?;
    Ok(StoredRun {
        id,
        name: record.name,
        source: record.source,
        inputs: json(&record.inputs_json, "inputs")?,
        created_unix_ms: record.created_unix_ms,
        trigger: record.trigger,
        state: record.state,
        ended_unix_ms: record.ended_unix_ms,
        delivery: Some(record.delivery).filter(|d| !d.is_empty()),
        slot_unix_ms: record.slot_unix_ms,
        given: match record.given_json.as_str() {
            "" => Map::new(),
            text => match json(text, "given")? {
                Value::Object(given) => given,
                _ => return Err("a workflow run's given values are not an object".to_owned()),
            },
        },
    })
}

pub(in crate::store) fn encode_hook(hook: &Hook) -> Vec<u8> {
    pb::WorkflowHook {
        source: hook.source.clone(),
        secret: hook.secret.clone(),
        created_unix_ms: hook.created_unix_ms,
        created_by: hook.created_by.clone(),
    }
    .encode_to_vec()
}

pub(in crate::store) fn decode_hook(name: &str, bytes: &[u8]) -> Result<Hook, String> {
    let record = pb::WorkflowHook::decode(bytes).map_err(|err| err.to_string())?;
    if record.secret.len() < 16 {
        return Err(format!("hook {name}: a secret of {} bytes", record.secret.len()));
    }
    Ok(Hook {
        name: name.to_owned(),
        source: record.source,
        secret: record.secret,
        created_unix_ms: record.created_unix_ms,
        created_by: record.created_by,
    })
}

pub(in crate::store) fn encode_scheduled(scheduled: &Scheduled) -> Vec<u8> {
    pb::ScheduledWorkflow {
        source: scheduled.source.clone(),
        added_unix_ms: scheduled.added_unix_ms,
        last_slot_unix_ms: scheduled.last_slot_unix_ms,
    }
    .encode_to_vec()
}

pub(in crate::store) fn decode_scheduled(name: &str, bytes: &[u8]) -> Result<Scheduled, String> {
    let record = pb::ScheduledWorkflow::decode(bytes).map_err(|err| err.to_string())?;
    Ok(Scheduled {
        name: name.to_owned(),
        source: record.source,
        added_unix_ms: record.added_unix_ms,
        last_slot_unix_ms: record.last_slot_unix_ms,
    })
}

pub(in crate::store) fn encode_memory(memory: &Memory) -> Vec<u8> {
    pb::WorkflowMemory {
        values_json: Value::Object(memory.values.clone()).to_string(),
        last_run: memory.last_run.map(|r| r.to_string()).unwrap_or_default(),
        last_outputs_json: Value::Object(memory.last_outputs.clone()).to_string(),
        updated_unix_ms: memory.updated_unix_ms,
    }
    .encode_to_vec()
}

pub(in crate::store) fn decode_memory(workflow: &str, bytes: &[u8]) -> Result<Memory, String> {
    let record = pb::WorkflowMemory::decode(bytes).map_err(|err| err.to_string())?;
    let object = |text: &str, what| match json(text, what)? {
        Value::Object(map) => Ok(map),
        _ => Err(format!("a workflow's memory {what} is not an object")),
    };
    let last_run = match record.last_run.as_str() {
        "" => None,
        id => Some(id.parse().map_err(|_| format!("a workflow's memory names run {id:?}"))?),
    };
    Ok(Memory {
        workflow: workflow.to_owned(),
        values: object(&record.values_json, "values")?,
        last_run,
        last_outputs: object(&record.last_outputs_json, "outputs")?,
        updated_unix_ms: record.updated_unix_ms,
    })
}

fn json(text: &str, what: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|err| format!("a workflow record's {what} is not JSON: {err}"))
}

pub(in crate::store) fn encode_event(event: &RunEvent) -> Vec<u8> {
    use pb::workflow_event::Kind;
    let kind = match &event.kind {
        RunEventKind::Start => Kind::Start(true),
        RunEventKind::Cancel => Kind::Cancel(true),
        RunEventKind::Retry => Kind::Retry(true),
        RunEventKind::Ended { key, ended, task_id } => Kind::Ended(pb::StepEnded {
            step: key.step.clone(),
            round: key.round,
            item: key.item.map(|i| i as u32),
            succeeded: ended.succeeded,
            exit_code: ended.exit_code,
            output: ended.output.clone(),
            outputs_json: Value::Object(ended.outputs.clone()).to_string(),
            verdict: ended.verdict.clone(),
            usage_json: ended.usage.to_string(),
            reason: ended.reason.clone(),
            task_id: task_id.map(id_bytes).unwrap_or_default(),
        }),
    };
    pb::WorkflowEvent { at_unix_ms: event.at_unix_ms, kind: Some(kind) }.encode_to_vec()
}

pub(in crate::store) fn decode_event(bytes: &[u8]) -> Result<RunEvent, String> {
    use pb::workflow_event::Kind;
    let record = pb::WorkflowEvent::decode(bytes).map_err(|err| err.to_string())?;
    let kind = match record.kind.ok_or("a workflow event of no kind")? {
        Kind::Start(_) => RunEventKind::Start,
        Kind::Cancel(_) => RunEventKind::Cancel,
        Kind::Retry(_) => RunEventKind::Retry,
        Kind::Ended(ended) => {
            let Value::Object(outputs) = json(&ended.outputs_json, "outputs")? else {
                return Err("a workflow step's outputs are not an object".to_owned());
            };
            let task_id = if ended.task_id.is_empty() { None } else { Some(id_from_bytes(&ended.task_id)?) };
            RunEventKind::Ended {
                key: StepKey { step: ended.step, round: ended.round, item: ended.item.map(|i| i as usize) },
                ended: Box::new(Ended {
                    succeeded: ended.succeeded,
                    exit_code: ended.exit_code,
                    output: ended.output,
                    outputs,
                    verdict: ended.verdict,
                    usage: json(&ended.usage_json, "usage")?,
                    reason: ended.reason,
                }),
                task_id,
            }
        }
    };
    Ok(RunEvent { at_unix_ms: record.at_unix_ms, kind })
}
