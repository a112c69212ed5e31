//! `service:` steps: what their fields mean once filled, as the submit format's `service` takes
//! it. A step's probes are written as one line each:
//!
//! - `http [PORT] PATH`: `GET PATH` on the named port (the first without one) answers 2xx or 3xx;
//! - `tcp [PORT]`: a connect to the named port (the first without one);
//! - `command LINE`: the shell line exits 0;
//! - empty: no probe (a `ready:` that fills to nothing makes the service ready once started).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::task::ServiceStep;

/// The `probe:` keys a step may set, and the `restart:` keys.
pub const PROBE_KEYS: [&str; 4] = ["start_period", "interval", "timeout", "failure_threshold"];
pub const RESTART_KEYS: [&str; 4] = ["policy", "limit", "backoff", "backoff_max"];

/// A probe line, read: the submit format's probe (without its timing), or `None` for an empty
/// line.
pub fn probe(line: &str) -> Result<Option<Value>, String> {
    let line = line.trim();
    if line.is_empty() {
        return Ok(None);
    }
    let (kind, rest) = line.split_once(char::is_whitespace).map_or((line, ""), |(k, r)| (k, r.trim()));
    let words: Vec<&str> = rest.split_whitespace().collect();
    let probe = match (kind, words.as_slice()) {
        ("http", [path]) if path.starts_with('/') => json!({"http": {"port": "", "path": path}}),
        ("http", [port, path]) if path.starts_with('/') => json!({"http": {"port": port, "path": path}}),
        ("tcp", []) => json!({"tcp": ""}),
        ("tcp", [port]) => json!({"tcp": port}),
        ("command", [_, ..]) => json!({"command": rest}),
        _ => {
            return Err(format!(
                "{line:?} is not a probe (write http [PORT] /PATH, tcp [PORT] or command LINE, or leave it empty)"
            ));
        }
    };
    Ok(Some(probe))
}

/// The submit format's `service` for a step, its templates filled by `fill(field, template)`.
pub fn body(service: &ServiceStep, fill: &dyn Fn(&str, &str) -> Result<String, String>) -> Result<Value, String> {
    let mut made = Map::new();
    made.insert("script".into(), json!(fill("service", &service.run)?));
    let mut ports = Vec::new();
    for template in &service.ports {
        let filled = fill("ports", template)?;
        ports
            .extend(filled.split(|c: char| c == ',' || c.is_whitespace()).filter(|p| !p.is_empty()).map(str::to_owned));
    }
    made.insert("ports".into(), json!(ports));
    let timing = timing(&service.probe, fill)?;
    for (field, line) in [("readiness", &service.ready), ("liveness", &service.alive)] {
        let Some(line) = line else { continue };
        let name = if field == "readiness" { "ready" } else { "alive" };
        if let Some(mut probe) = probe(&fill(name, line)?).map_err(|err| format!("{name}: {err}"))? {
            for (key, value) in &timing {
                probe[key] = value.clone();
            }
            made.insert(field.into(), probe);
        }
    }
    if !service.restart.is_empty() {
        made.insert("restart".into(), restart(&service.restart, fill)?);
    }
    Ok(Value::Object(made))
}

/// `probe:` as the submit format's timing fields.
fn timing(
    probe: &BTreeMap<String, String>,
    fill: &dyn Fn(&str, &str) -> Result<String, String>,
) -> Result<Map<String, Value>, String> {
    let mut timing = Map::new();
    for (key, template) in probe {
        let text = fill("probe", template)?;
        let value = match key.as_str() {
            "failure_threshold" => json!(number(&text).map_err(|err| format!("probe.{key}: {err}"))?),
            _ => json!(millis(&text).map_err(|err| format!("probe.{key}: {err}"))?),
        };
        timing.insert(format!("{key}{}", if key == "failure_threshold" { "" } else { "_ms" }), value);
    }
    Ok(timing)
}

fn restart(
    restart: &BTreeMap<String, String>,
    fill: &dyn Fn(&str, &str) -> Result<String, String>,
) -> Result<Value, String> {
    let mut made = Map::new();
    for (key, template) in restart {
        let text = fill("restart", template)?;
        let (name, value) = match key.as_str() {
            "policy" => ("policy", json!(text.trim())),
            "limit" => ("limit", json!(number(&text).map_err(|err| format!("restart.limit: {err}"))?)),
            "backoff" => ("backoff_base_ms", json!(millis(&text).map_err(|err| format!("restart.backoff: {err}"))?)),
            _ => ("backoff_max_ms", json!(millis(&text).map_err(|err| format!("restart.backoff_max: {err}"))?)),
        };
        made.insert(name.into(), value);
    }
    Ok(Value::Object(made))
}

/// `500ms`, `10s`, `2m`; a bare number is seconds.
pub fn millis(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let ms = match text.parse::<u64>() {
        Ok(seconds) => seconds.saturating_mul(1000),
        Err(_) => humantime::parse_duration(text).map_err(|err| format!("{text:?}: {err}"))?.as_millis() as u64,
    };
    if ms == 0 {
        return Err(format!("{text:?}: must be more than 0"));
    }
    Ok(ms)
}

fn number(text: &str) -> Result<u32, String> {
    text.trim().parse::<u32>().map_err(|_| format!("{:?} is not a whole number", text.trim()))
}

/// Whether a string is a template (has a `{{` or `{%`): only those wait for a run to be read.
pub fn is_template(text: &str) -> bool {
    text.contains("{{") || text.contains("{%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_read_as_the_submit_formats_probes() {
        assert_eq!(probe("http web /healthz"), Ok(Some(json!({"http": {"port": "web", "path": "/healthz"}}))));
        assert_eq!(probe(" http /  "), Ok(Some(json!({"http": {"port": "", "path": "/"}}))));
        assert_eq!(probe("tcp"), Ok(Some(json!({"tcp": ""}))));
        assert_eq!(probe("tcp admin"), Ok(Some(json!({"tcp": "admin"}))));
        assert_eq!(probe("command curl -fs localhost:$PORT"), Ok(Some(json!({"command": "curl -fs localhost:$PORT"}))));
        assert_eq!(probe(""), Ok(None));
        for bad in ["http web healthz", "udp 53", "tcp a b", "command", "http"] {
            assert!(probe(bad).unwrap_err().contains("is not a probe"), "{bad}");
        }
    }

    #[test]
    fn a_service_step_fills_into_the_submit_formats_service() {
        let step = ServiceStep {
            run: "exec {{ item.run }}".into(),
            ports: vec!["{{ item.ports | join(',') }}".into(), "metrics".into()],
            ready: Some("http {{ item.port }} /healthz".into()),
            alive: Some("".into()),
            probe: BTreeMap::from([("interval".into(), "500ms".into()), ("failure_threshold".into(), "4".into())]),
            restart: BTreeMap::from([("policy".into(), "never".into())]),
        };
        let fill = |_: &str, template: &str| -> Result<String, String> {
            Ok(template
                .replace("{{ item.run }}", "python3 web.py")
                .replace("{{ item.ports | join(',') }}", "web,admin")
                .replace("{{ item.port }}", "web"))
        };
        let made = body(&step, &fill).unwrap();
        assert_eq!(
            made,
            json!({
                "script": "exec python3 web.py",
                "ports": ["web", "admin", "metrics"],
                "readiness": {"http": {"port": "web", "path": "/healthz"}, "interval_ms": 500, "failure_threshold": 4},
                "restart": {"policy": "never"}
            })
        );
        let bad = ServiceStep { probe: BTreeMap::from([("interval".into(), "soon".into())]), ..step.clone() };
        assert!(body(&bad, &fill).unwrap_err().starts_with("probe.interval: "));
        let bad = ServiceStep { ready: Some("ping".into()), ..step };
        assert!(body(&bad, &fill).unwrap_err().starts_with("ready: "));
        assert_eq!(millis("90"), Ok(90_000));
        assert!(millis("0s").is_err());
    }
}
