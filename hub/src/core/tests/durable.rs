//! A result is shown only once the commit holding it returns, and its sidecar is told then.

use super::*;

#[test]
fn an_end_is_shown_only_once_durable_and_the_sidecar_hears_when_its_result_is_stored() {
    let mut h = Harness::new();
    h.join("s1", 1, vec![]);
    let id = h.submit(shell());
    let (_, generation) = h.assigned("s1")[0];
    let session = h.sessions["s1"].0;
    let outcome = || {
        let outcome =
            Outcome { exit: Exit::Code(0), stdout: b"out".to_vec(), stdout_total_bytes: 3, ..Outcome::empty() };
        FromSidecar::Finished { task_id: id, lease_generation: generation, outcome: Box::new(outcome) }
    };
    // The result arrives; its commit is held back.
    let finished = Event::FromSidecar { sidecar_id: "s1".into(), session, message: outcome() };
    h.state.handle(finished, h.now);
    let Taken { writes, .. } = h.take();
    let [(ops, ticket)] = <[_; 1]>::try_from(writes).ok().expect("one write");
    match &ops[..] {
        [store::Op::PutOutput { stdout, .. }, store::Op::PutTask(record)] => {
            assert_eq!(stdout, b"out");
            assert!(record.outcome.as_ref().unwrap().stdout.is_empty(), "the record holds no output");
            assert_eq!(record.state, TaskState::Succeeded);
        }
        other => panic!("unexpected ops: {}", other.len()),
    }
    assert!(!h.task(id).state.is_terminal(), "not shown ended before the commit returns");
    let listed = h.ask(|reply| Event::List { state: None, before: None, label: None, limit: 10, reply });
    assert!(!listed[0].state.is_terminal(), "nor listed ended");

    // The commit fails: still not shown ended, and the sidecar is not told it is stored.
    let failed = Arc::new(store::Error::WriterGone);
    h.state.handle(Event::Committed { tickets: vec![ticket], result: Err(failed) }, h.now);
    let Taken { sends, fault, .. } = h.take();
    assert!(matches!(fault, Some(Some(_))));
    assert!(sends.iter().all(|(_, m)| !matches!(m, ToSidecar::Stored { .. })));
    assert!(!h.task(id).state.is_terminal());
    let refused = h.ask(|reply| Event::Submit { spec: Box::new(shell()), reply });
    assert!(matches!(refused, Err(Error::StorageFault(_))), "no submit is taken while storage fails");

    // Storage works again: the sidecar is made to open a new session, and sends the result
    // again in it: stored, shown, acknowledged.
    h.state.handle(Event::Committed { tickets: Vec::new(), result: Ok(()) }, h.now);
    let Taken { fault, .. } = h.take();
    assert_eq!(fault, Some(None));
    assert!(h.state.sidecars["s1"].outbox.is_none(), "its session was ended");
    h.join("s1", 1, vec![RunningTask { task_id: id, lease_generation: generation, agent_id: String::new() }]);
    h.report("s1", outcome());
    assert_eq!(h.task(id).state, TaskState::Succeeded);
    let stored = h.sent["s1"].iter().filter(|m| matches!(m, ToSidecar::Stored { task_id, lease_generation } if *task_id == id && *lease_generation == generation));
    assert_eq!(stored.count(), 1);
    // A heartbeat that still lists it (the acknowledgement is on its way) is no stale message.
    h.report(
        "s1",
        FromSidecar::Heartbeat {
            sent_unix_ms: 0,
            running: vec![RunningTask { task_id: id, lease_generation: generation, agent_id: String::new() }],
        },
    );
    assert!(h.cancels("s1").is_empty());
}
