//! Workflow runs and their events in the stored format (`WorkflowRun`, `WorkflowEvent`).

use prost::Message;
use serde_json::Value;
use ulid::Ulid;

use agentcom_workflow::run::{Ended, StepKey};

use super::{id_bytes, id_from_bytes, pb};
use crate::store::workflows::{RunEvent, RunEventKind, StoredRun};

pub(in crate::store) fn encode_run(run: &StoredRun) -> Vec<u8> {
    pb::WorkflowRun {
        name: run.name.clone(),
        source: run.source.clone(),
        inputs_json: run.inputs.to_string(),
        created_unix_ms: run.created_unix_ms,
        trigger: run.trigger.clone(),
        state: run.state.clone(),
        ended_unix_ms: run.ended_unix_ms,
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
