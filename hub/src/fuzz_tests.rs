//! Fuzzing every inbound decoder and validator with `proptest` (stable Rust has no `cargo fuzz`):
//! the JSON submit body, protobuf specs and stored task records. Each property is "no panic, and
//! what is accepted is valid"; the generators mix raw bytes with structured input built from the
//! real field names, so the checks reach past the first parse error. Cases are bounded, so CI
//! runs them in seconds; a failure proptest finds is kept in `proptest-regressions/` and replayed
//! first on every later run.

use agentcom_proto::v1 as pb;
use proptest::prelude::*;
use prost::Message;
use serde_json::{Map, Value};

use crate::domain::SpecDefaults;
use agentcom_types::wire as convert;

/// Field names of the submit body, at every level, so generated objects look like real ones.
const KEYS: &[&str] = &[
    "shell",
    "llm",
    "agent",
    "argv",
    "script",
    "cwd",
    "env",
    "secret_env",
    "prompt",
    "system",
    "model",
    "max_tokens",
    "goal",
    "repository",
    "branch",
    "name",
    "idempotency_key",
    "priority",
    "tier",
    "context",
    "files",
    "notes",
    "success_criteria",
    "verification",
    "file_exists",
    "command_succeeds",
    "test_passes",
    "git_clean",
    "timeout_ms",
    "limits",
    "deadline_unix_ms",
    "max_attempts",
    "max_cost_micros",
    "max_output_bytes",
    "max_memory_bytes",
    "max_pids",
    "placement",
    "tags",
    "host",
    "depends_on",
    "labels",
    "retry",
    "backoff_base_ms",
    "backoff_max_ms",
    "retry_on_exit_codes",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e20f64..1e20).prop_map(Value::from),
        prop_oneof![
            Just("high".to_owned()),
            Just("complex".to_owned()),
            Just("01ARZ3NDEKTSV4RRFFQ69G5FAV".to_owned()),
            ".{0,40}"
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|fields| {
                Value::Object(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect::<Map<_, _>>())
            }),
        ]
    })
}

fn check_json(text: &str) {
    if let Ok(spec) = agentcom_types::json::spec_from_json(text)
        && let Ok(spec) = convert::spec_from_pb(spec, &SpecDefaults::default())
    {
        // Whatever conversion accepts has passed validation and survives the trip to storage.
        spec.validate().expect("an accepted spec is valid");
        let back = convert::spec_from_pb(convert::spec_to_pb(&spec), &SpecDefaults::default());
        assert_eq!(back.as_ref(), Ok(&spec), "a spec changes on its way through protobuf");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn json_submit_bodies_never_panic(value in json_value()) {
        check_json(&value.to_string());
    }

    #[test]
    fn json_text_never_panics(text in ".{0,300}") {
        check_json(&text);
    }

    #[test]
    fn protobuf_specs_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(spec) = pb::TaskSpec::decode(bytes.as_slice())
            && let Ok(spec) = convert::spec_from_pb(spec, &SpecDefaults::default())
        {
            spec.validate().expect("an accepted spec is valid");
        }
    }

    /// Tasks as the contract carries them (and format 1 of storage stored them).
    #[test]
    fn wire_task_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(task) = pb::Task::decode(bytes.as_slice()) {
            let _ = convert::task_from_pb(task);
        }
    }
}

#[test]
fn valid_bodies_pass_the_json_check() {
    // The check itself can tell valid from invalid: a real body goes all the way through.
    let body = r#"{"shell":{"argv":["echo","hi"],"secret_env":["TOKEN"]},"limits":{"timeout_ms":5},"priority":"high"}"#;
    let spec = agentcom_types::json::spec_from_json(body).unwrap();
    assert!(convert::spec_from_pb(spec, &SpecDefaults::default()).is_ok());
    check_json(body);
}
