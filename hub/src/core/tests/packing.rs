//! Settled tasks are kept packed (`kept`): every read and change of one still works.

use super::*;

fn finished_twice(hub: &mut Harness) -> (TaskId, TaskId) {
    hub.join("s1", 1, Vec::new());
    let mut spec = shell();
    spec.limits.max_attempts = 1;
    spec.retry.retry_on_exit_codes = vec![75];
    spec.idempotency_key = Some("the-key".into());
    let dead = hub.submit(spec);
    hub.finish("s1", dead, 1, 75);
    hub.now += 1; // Ids order by time.
    let mut labelled = shell();
    labelled.labels.insert("workflow_run".into(), "R1".into());
    let done = hub.submit(labelled);
    hub.finish("s1", done, 1, 0);
    (dead, done)
}

#[test]
fn a_settled_task_is_packed_and_read_listed_watched_and_found_by_its_key() {
    let mut hub = Harness::new();
    let (dead, done) = finished_twice(&mut hub);
    assert!(hub.state.tasks.is_packed(&dead) && hub.state.tasks.is_packed(&done));
    let task = hub.task(done);
    assert_eq!((task.state, task.attempt), (TaskState::Succeeded, 1));
    let listed = hub.ask(|reply| Event::List { state: None, before: None, label: None, limit: 10, reply });
    assert_eq!(listed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![done, dead], "newest first");
    let dead_only = hub.ask(|reply| Event::List {
        state: Some(TaskState::DeadLettered),
        before: None,
        label: None,
        limit: 10,
        reply,
    });
    assert_eq!(dead_only.iter().map(|t| t.id).collect::<Vec<_>>(), vec![dead]);
    let label = Some(Box::new(("workflow_run".to_owned(), "R1".to_owned())));
    let of_run = hub.ask(|reply| Event::List { state: None, before: None, label, limit: 10, reply });
    assert_eq!(of_run.iter().map(|t| t.id).collect::<Vec<_>>(), vec![done], "only the labelled one");
    match hub.ask(|reply| Event::Watch { id: done, reply }) {
        Ok(WatchReply::Final(task)) => assert_eq!(task.state, TaskState::Succeeded),
        _ => panic!("a settled task is watched as final"),
    }
    // Its idempotency key still answers with it.
    let mut again = shell();
    again.limits.max_attempts = 1;
    again.retry.retry_on_exit_codes = vec![75];
    again.idempotency_key = Some("the-key".into());
    let submitted = hub.ask(|reply| Event::Submit { spec: Box::new(again), reply }).unwrap();
    assert!(submitted.existing && submitted.task.id == dead);
    let stats = hub.ask(|reply| Event::Stats { reply });
    assert_eq!((stats.tasks, stats.dead_lettered), (2, 1));
    assert!(hub.state.tasks.is_packed(&dead), "reads leave it packed");
}

#[test]
fn a_packed_task_refuses_a_cancel_and_goes_round_again_when_retried() {
    let mut hub = Harness::new();
    let (dead, done) = finished_twice(&mut hub);
    let refused = hub.ask(|reply| Event::Cancel { id: done, reason: String::new(), reply });
    assert!(matches!(refused, Err(Error::AlreadyFinal { .. })));
    assert!(hub.state.tasks.is_packed(&done), "a refused cancel does not unpack it");

    let retried = hub.ask(|reply| Event::RetryDeadLetter { id: dead, reply }).unwrap();
    assert_eq!(retried.state, TaskState::Queued);
    assert!(!hub.state.tasks.is_packed(&dead));
    assert_eq!(hub.assigned("s1").last(), Some(&(dead, 2)));
    hub.finish("s1", dead, 2, 0);
    assert_eq!(hub.task(dead).state, TaskState::Succeeded);
    assert!(hub.state.tasks.is_packed(&dead), "settled again, packed again");
}

#[test]
fn retention_drops_a_packed_tasks_output_and_later_the_task() {
    let mut hub = Harness::new();
    hub.state.config.retain_output = std::time::Duration::from_secs(60);
    hub.state.config.retain_tasks = std::time::Duration::from_secs(600);
    hub.join("s1", 1, Vec::new());
    let id = hub.submit(shell());
    let outcome = Outcome { exit: Exit::Code(0), stdout: b"out".to_vec(), stdout_total_bytes: 3, ..Outcome::empty() };
    hub.report("s1", FromSidecar::Finished { task_id: id, lease_generation: 1, outcome: Box::new(outcome) });
    assert!(hub.state.tasks.is_packed(&id));
    hub.tick_at(hub.now + 61_000);
    let task = hub.task(id);
    assert!(task.outcome.unwrap().output_dropped_unix_ms.is_some());
    assert!(hub.state.tasks.is_packed(&id), "packed again after the change");
    hub.tick_at(hub.now + 600_000);
    assert!(hub.ask(|reply| Event::Get { id, reply }).is_none(), "gone past --retain-tasks");
}
