//! Service work and service status, between the wire contract and the domain.

use agentcom_proto::v1 as pb;

use super::{shell_from_pb, shell_into_pb};
use crate::domain::{Error, Probe, ProbeCheck, ServiceRestart, ServiceState, ServiceStatus, ServiceWork};

fn opt<T: PartialEq + Default>(value: T) -> Option<T> {
    (value != T::default()).then_some(value)
}

pub fn work_from_pb(service: pb::ServiceWork) -> Result<ServiceWork, Error> {
    let run = service.run.ok_or_else(|| Error::invalid("work.service.run", "is required (argv or script)"))?;
    let restart = service.restart.unwrap_or_default();
    let never = match restart.policy.as_str() {
        "" | "on-failure" => false,
        "never" => true,
        other => {
            return Err(Error::invalid("work.service.restart.policy", format!("{other:?} is not on-failure or never")));
        }
    };
    Ok(ServiceWork {
        run: shell_from_pb(run, "work.service.run")?,
        ports: service.ports,
        readiness: service.readiness.map(|p| probe_from_pb(p, "work.service.readiness")).transpose()?,
        liveness: service.liveness.map(|p| probe_from_pb(p, "work.service.liveness")).transpose()?,
        restart: ServiceRestart {
            never,
            limit: opt(restart.limit),
            backoff_base_ms: opt(restart.backoff_base_ms),
            backoff_max_ms: opt(restart.backoff_max_ms),
        },
    })
}

fn probe_from_pb(probe: pb::Probe, field: &'static str) -> Result<Probe, Error> {
    use pb::probe::Check;
    let check = match probe.check {
        Some(Check::Http(http)) => ProbeCheck::Http { port: opt(http.port), path: http.path },
        Some(Check::Tcp(port)) => ProbeCheck::Tcp { port: opt(port) },
        Some(Check::Command(line)) => ProbeCheck::Command(line),
        None => return Err(Error::invalid(field, "needs http, tcp or command")),
    };
    Ok(Probe {
        check,
        start_period_ms: opt(probe.start_period_ms),
        interval_ms: opt(probe.interval_ms),
        timeout_ms: opt(probe.timeout_ms),
        failure_threshold: opt(probe.failure_threshold),
    })
}

pub fn work_into_pb(service: ServiceWork) -> pb::ServiceWork {
    pb::ServiceWork {
        run: Some(shell_into_pb(service.run)),
        ports: service.ports,
        readiness: service.readiness.map(probe_into_pb),
        liveness: service.liveness.map(probe_into_pb),
        restart: Some(pb::ServiceRestart {
            policy: if service.restart.never { "never" } else { "on-failure" }.to_owned(),
            limit: service.restart.limit.unwrap_or(0),
            backoff_base_ms: service.restart.backoff_base_ms.unwrap_or(0),
            backoff_max_ms: service.restart.backoff_max_ms.unwrap_or(0),
        }),
    }
}

fn probe_into_pb(probe: Probe) -> pb::Probe {
    use pb::probe::Check;
    let check = match probe.check {
        ProbeCheck::Http { port, path } => Check::Http(pb::HttpProbe { port: port.unwrap_or_default(), path }),
        ProbeCheck::Tcp { port } => Check::Tcp(port.unwrap_or_default()),
        ProbeCheck::Command(line) => Check::Command(line),
    };
    pb::Probe {
        check: Some(check),
        start_period_ms: probe.start_period_ms.unwrap_or(0),
        interval_ms: probe.interval_ms.unwrap_or(0),
        timeout_ms: probe.timeout_ms.unwrap_or(0),
        failure_threshold: probe.failure_threshold.unwrap_or(0),
    }
}

pub fn status_from_pb(status: pb::ServiceStatus) -> Result<ServiceStatus, Error> {
    let state = ServiceState::parse(&status.state)
        .ok_or_else(|| Error::invalid("service.state", format!("{:?} is not a service state", status.state)))?;
    let ports = status
        .ports
        .into_iter()
        .map(|(name, port)| {
            u16::try_from(port)
                .map(|port| (name, port))
                .map_err(|_| Error::invalid("service.ports", format!("{port} is not a port")))
        })
        .collect::<Result<_, _>>()?;
    Ok(ServiceStatus {
        state,
        ports,
        restarts: status.restarts,
        evidence: super::clip_to(status.evidence, 2048),
        started_unix_ms: status.started_unix_ms,
        ready_unix_ms: opt(status.ready_unix_ms),
    })
}

pub fn status_into_pb(status: ServiceStatus) -> pb::ServiceStatus {
    pb::ServiceStatus {
        state: status.state.as_str().to_owned(),
        ports: status.ports.into_iter().map(|(name, port)| (name, u32::from(port))).collect(),
        restarts: status.restarts,
        evidence: status.evidence,
        started_unix_ms: status.started_unix_ms,
        ready_unix_ms: status.ready_unix_ms.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{SpecDefaults, TaskSpec, Work};
    use crate::wire::{spec_from_pb, spec_to_pb};

    fn service_spec(work: ServiceWork) -> TaskSpec {
        let mut spec = TaskSpec::shell(vec!["true".into()], &SpecDefaults::default());
        spec.work = Work::Service(Box::new(work));
        spec
    }

    #[test]
    fn service_work_survives_the_round_trip_through_protobuf() {
        let spec = service_spec(ServiceWork::example());
        assert_eq!(spec_from_pb(spec_to_pb(&spec), &SpecDefaults::default()), Ok(spec));
        let mut never = ServiceWork::example();
        never.readiness =
            Some(Probe { check: ProbeCheck::Command("test -e ready".into()), ..never.liveness.clone().unwrap() });
        never.liveness = Some(Probe { check: ProbeCheck::Tcp { port: None }, ..never.liveness.unwrap() });
        never.restart = ServiceRestart { never: true, ..ServiceRestart::default() };
        let spec = service_spec(never);
        assert_eq!(spec_from_pb(spec_to_pb(&spec), &SpecDefaults::default()), Ok(spec));
        let status = ServiceStatus {
            state: ServiceState::Unhealthy,
            ports: [("web".to_owned(), 8080)].into(),
            restarts: 1,
            evidence: "GET /healthz: 503".into(),
            started_unix_ms: 3,
            ready_unix_ms: None,
        };
        assert_eq!(status_from_pb(status_into_pb(status.clone())), Ok(status));
        let bad = pb::ServiceStatus { state: "sleeping".into(), ..Default::default() };
        assert_eq!(status_from_pb(bad).unwrap_err().field, "service.state");
    }

    /// The submit body's `service` as users write it, and what it is refused for.
    #[test]
    fn the_submit_bodys_service_reads_and_bad_services_are_refused_with_their_field() {
        let submit = |body: serde_json::Value| -> Result<TaskSpec, String> {
            crate::json::task_spec_from_value(body, &SpecDefaults::default()).map_err(|e| e.0)
        };
        let spec = submit(serde_json::json!({"service": {
            "script": "python3 app.py", "ports": ["web", "admin"],
            "readiness": {"http": {"port": "web", "path": "/healthz"}, "interval_ms": 500},
            "liveness": {"tcp": "admin"},
            "restart": {"policy": "never"}
        }}))
        .unwrap();
        let Work::Service(work) = spec.work else { panic!("not a service") };
        assert_eq!(work.ports, ["web", "admin"]);
        assert_eq!(
            work.readiness.unwrap().check,
            ProbeCheck::Http { port: Some("web".into()), path: "/healthz".into() }
        );
        assert_eq!(work.liveness.unwrap().check, ProbeCheck::Tcp { port: Some("admin".into()) });
        assert!(work.restart.never);
        for (body, field) in [
            (serde_json::json!({"service": {"ports": ["web"]}}), "work.service.run"),
            (serde_json::json!({"service": {"script": "x", "ports": ["a b"]}}), "work.service.ports"),
            (serde_json::json!({"service": {"script": "x", "ports": ["web", "WEB"]}}), "work.service.ports"),
            (serde_json::json!({"service": {"script": "x", "readiness": {"tcp": ""}}}), "work.service.readiness"),
            (
                serde_json::json!({"service": {"script": "x", "ports": ["web"], "liveness": {"tcp": "db"}}}),
                "work.service.liveness",
            ),
            (
                serde_json::json!({"service": {"script": "x", "ports": ["web"], "readiness": {"http": {"path": "healthz"}}}}),
                "work.service.readiness",
            ),
            (
                serde_json::json!({"service": {"script": "x", "restart": {"policy": "always"}}}),
                "work.service.restart.policy",
            ),
            (serde_json::json!({"service": {"script": "x"}, "verification": [{"file_exists": "a"}]}), "verification"),
        ] {
            let err = submit(body.clone()).unwrap_err();
            assert!(err.contains(&format!("{field}:")) || err.contains(&format!("{field} ")), "{body}: {err}");
        }
        let both = submit(serde_json::json!({"service": {"script": "x", "readiness": {"tcp": "", "command": "true"}}}));
        assert!(both.unwrap_err().contains("exactly one of http, tcp, command"));
    }
}
