//! What the hub knows about machines besides their agents: each host's resource reports with a
//! bounded history, and the registry of LLM endpoints with their models.
//!
//! **Architecture Invariant:** pure data and rules. The core owns these values and decides when
//! to persist; nothing here does I/O or reads the clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use agentcom_types::fleet::{
    AgentDetail, AgentView, Cordon, Disk, Endpoint, EndpointKind, Gpu, GpuProcess, HostView, Model, Owner, Resources,
    Sample, endpoint_id, is_cloud, without_password,
};

/// How much history a host keeps: one hour, and never more than this many samples whatever
/// the report interval.
pub const HISTORY_WINDOW_MS: i64 = 3_600_000;
pub const HISTORY_MAX_SAMPLES: usize = 720;

/// A host's latest report and its recent history.
#[derive(Debug, Default)]
pub struct Host {
    pub latest: Option<Box<Resources>>,
    pub history: VecDeque<Sample>,
}

impl Host {
    /// Keeps `report` as the latest and adds it to the history, dropping samples older than the
    /// window or beyond the cap. A report older than the latest (reordered) only joins history.
    pub fn record(&mut self, report: Resources) {
        let sample = Sample::of(&report);
        let newest = self.latest.as_ref().map_or(i64::MIN, |r| r.at_unix_ms);
        if report.at_unix_ms >= newest {
            self.latest = Some(Box::new(report));
        }
        let at = self.history.partition_point(|s| s.at_unix_ms <= sample.at_unix_ms);
        self.history.insert(at, sample);
        let horizon = self.history.back().map_or(0, |s| s.at_unix_ms) - HISTORY_WINDOW_MS;
        while self.history.front().is_some_and(|s| s.at_unix_ms < horizon) || self.history.len() > HISTORY_MAX_SAMPLES {
            self.history.pop_front();
        }
    }
}

/// What changed in the registry, for the core to persist.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub put: Vec<String>,
    pub removed: Vec<String>,
}

/// Every known endpoint, by id, and which endpoints offer each model (so placement looks only
/// at those).
#[derive(Debug, Default)]
pub struct Registry {
    endpoints: BTreeMap<String, Endpoint>,
    /// Model name -> ids of the endpoints that list it.
    by_model: BTreeMap<String, BTreeSet<String>>,
    /// Claude API endpoints, which serve their models by name, listed or not.
    cloud: BTreeSet<String>,
    /// Sidecar id -> how many of its endpoints are healthy (those with any).
    healthy_by_owner: BTreeMap<String, u32>,
}

impl Registry {
    pub fn get(&self, id: &str) -> Option<&Endpoint> {
        self.endpoints.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    /// Loads or replaces one endpoint; true when it differs from what was there (apart from the
    /// time of its check).
    pub fn put(&mut self, endpoint: Endpoint) -> bool {
        let changed = self.endpoints.get(&endpoint.id).is_none_or(|old| !old.same_as(&endpoint));
        self.unindex(&endpoint.id);
        for model in &endpoint.models {
            self.by_model.entry(model.name.clone()).or_default().insert(endpoint.id.clone());
        }
        if endpoint.kind == EndpointKind::Anthropic {
            self.cloud.insert(endpoint.id.clone());
        }
        if let (Owner::Sidecar(owner), true) = (&endpoint.owner, endpoint.healthy) {
            *self.healthy_by_owner.entry(owner.clone()).or_default() += 1;
        }
        self.endpoints.insert(endpoint.id.clone(), endpoint);
        changed
    }

    /// The sidecar has a healthy endpoint (of any model).
    pub fn has_healthy(&self, sidecar_id: &str) -> bool {
        self.healthy_by_owner.contains_key(sidecar_id)
    }

    /// The endpoints that can serve `model`, in id order: those that list it, and the Claude API
    /// for a `claude-…` name it does not list.
    pub fn offering<'a, 'b>(&'a self, model: &'b str) -> impl Iterator<Item = &'a Endpoint> + use<'a, 'b> {
        let listed = self.by_model.get(model);
        let by_name = self.cloud.iter().filter(move |_| model.starts_with("claude-"));
        let by_name = by_name.filter(move |id| !listed.is_some_and(|ids| ids.contains(*id)));
        listed.into_iter().flatten().chain(by_name).filter_map(|id| self.endpoints.get(id))
    }

    pub fn remove(&mut self, id: &str) -> Option<Endpoint> {
        self.unindex(id);
        self.endpoints.remove(id)
    }

    fn unindex(&mut self, id: &str) {
        let Some(old) = self.endpoints.get(id) else { return };
        for model in &old.models {
            if let Some(ids) = self.by_model.get_mut(&model.name) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_model.remove(&model.name);
                }
            }
        }
        self.cloud.remove(id);
        if let (Owner::Sidecar(owner), true) = (&old.owner, old.healthy)
            && let Some(count) = self.healthy_by_owner.get_mut(owner)
        {
            *count -= 1;
            if *count == 0 {
                self.healthy_by_owner.remove(owner);
            }
        }
    }

    /// A sidecar's full inventory: its endpoints become exactly `reported`.
    pub fn replace_owned(&mut self, sidecar_id: &str, reported: Vec<Endpoint>) -> Changes {
        let owner = Owner::Sidecar(sidecar_id.to_owned());
        let mut changes = Changes::default();
        let keep: Vec<String> = reported.iter().map(|e| e.id.clone()).collect();
        let gone: Vec<String> = self
            .endpoints
            .values()
            .filter(|e| e.owner == owner && !keep.contains(&e.id))
            .map(|e| e.id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
            changes.removed.push(id);
        }
        for endpoint in reported {
            let id = endpoint.id.clone();
            if self.put(endpoint) {
                changes.put.push(id);
            }
        }
        changes
    }
}

/// Why the hub may not probe `url` itself, if it may not: its host (or `host:port`) must be on
/// the allowlist, so a registered URL cannot turn the hub into a proxy to arbitrary hosts.
pub fn check_allowed(url: &str, allow: &[String]) -> Result<(), String> {
    let (host, port) = host_port(url)?;
    let with_port = format!("{host}:{port}");
    if allow.iter().any(|a| a.eq_ignore_ascii_case(&host) || a.eq_ignore_ascii_case(&with_port)) {
        return Ok(());
    }
    Err(format!(
        "the hub does not probe {with_port}: it is not on its endpoint allowlist (`agentcom-hub serve --allow-endpoint {with_port}`)"
    ))
}

/// The host and port of an `http://` or `https://` URL, or why it is not one.
pub fn host_port(url: &str) -> Result<(String, u16), String> {
    let uri: http::Uri = url.parse().map_err(|err| format!("endpoint url {url:?} is not a URL: {err}"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(format!("endpoint url {url:?} must start with http:// or https://")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("endpoint url {url:?} has no host"))?;
    Ok((host.trim_matches(['[', ']']).to_ascii_lowercase(), uri.port_u16().unwrap_or(default_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(at: i64, cpu: f64) -> Resources {
        Resources { at_unix_ms: at, cpu_percent: cpu, memory_used_bytes: 7, ..Resources::default() }
    }

    #[test]
    fn history_keeps_an_hour_and_the_latest_report() {
        let mut host = Host::default();
        for n in 0..400 {
            host.record(report(n * 15_000, n as f64 % 100.0));
        }
        assert_eq!(host.latest.as_ref().unwrap().at_unix_ms, 399 * 15_000);
        assert_eq!(host.history.len(), 241, "one hour at 15 s, both ends included");
        assert_eq!(host.history.front().unwrap().at_unix_ms, 399 * 15_000 - HISTORY_WINDOW_MS);
    }

    #[test]
    fn history_is_capped_whatever_the_interval_and_stays_ordered() {
        let mut host = Host::default();
        for n in 0..2000 {
            host.record(report(n * 100, 1.0));
        }
        host.record(report(1_000, 2.0)); // Late and reordered: history only.
        assert_eq!(host.history.len(), HISTORY_MAX_SAMPLES);
        assert_eq!(host.latest.as_ref().unwrap().at_unix_ms, 1999 * 100);
        assert!(host.history.iter().zip(host.history.iter().skip(1)).all(|(a, b)| a.at_unix_ms <= b.at_unix_ms));
    }

    fn endpoint(owner: Owner, url: &str, models: &[&str]) -> Endpoint {
        Endpoint {
            id: endpoint_id(&owner, url),
            url: url.to_owned(),
            kind: EndpointKind::Ollama,
            owner,
            healthy: true,
            version: "0.12.6".into(),
            error: None,
            models: models.iter().map(|m| Model { name: (*m).into(), ..Model::default() }).collect(),
            checked_unix_ms: 1,
            parallel: 0,
        }
    }

    #[test]
    fn a_sidecars_inventory_replaces_only_its_own_endpoints_and_reports_real_changes() {
        let mut registry = Registry::default();
        let s1 = Owner::Sidecar("s1".into());
        let admin = endpoint(Owner::Hub, "http://10.0.0.9:11434", &["x"]);
        registry.put(admin.clone());
        let a = endpoint(s1.clone(), "http://127.0.0.1:11434", &["llama3.2:3b"]);
        let b = endpoint(s1.clone(), "http://127.0.0.1:11435", &[]);
        let changes = registry.replace_owned("s1", vec![a.clone(), b.clone()]);
        assert_eq!(changes.put.len(), 2);
        // The same inventory checked later: nothing to persist.
        let later = Endpoint { checked_unix_ms: 99, ..a.clone() };
        assert_eq!(registry.replace_owned("s1", vec![later, b.clone()]), Changes::default());
        // A model loads on one, the other goes away.
        let mut warm = a.clone();
        warm.models[0].loaded = true;
        let changes = registry.replace_owned("s1", vec![warm]);
        assert_eq!(changes, Changes { put: vec![a.id.clone()], removed: vec![b.id.clone()] });
        assert!(registry.get(&admin.id).is_some(), "other owners are untouched");
        assert_eq!(registry.iter().count(), 2);
    }

    #[test]
    fn the_registry_knows_which_endpoints_offer_a_model() {
        let mut registry = Registry::default();
        let a = endpoint(Owner::Sidecar("a".into()), "http://a:11434", &["m1", "m2"]);
        let b = endpoint(Owner::Sidecar("b".into()), "http://b:11434", &["m2"]);
        let mut claude = endpoint(Owner::Sidecar("c".into()), "https://api.anthropic.com", &["claude-haiku-4-5"]);
        claude.kind = EndpointKind::Anthropic;
        for e in [a.clone(), b.clone(), claude.clone()] {
            registry.put(e);
        }
        fn ids(registry: &Registry, model: &str) -> Vec<String> {
            registry.offering(model).map(|e| e.id.clone()).collect()
        }
        let mut both = vec![a.id.clone(), b.id.clone()];
        both.sort();
        assert_eq!(ids(&registry, "m2"), both);
        assert_eq!(ids(&registry, "claude-haiku-4-5"), vec![claude.id.clone()], "listed once");
        assert_eq!(ids(&registry, "claude-opus-4-1"), vec![claude.id.clone()], "by name");
        // A new inventory replaces the index too.
        registry.replace_owned("a", vec![endpoint(Owner::Sidecar("a".into()), "http://a:11434", &["m3"])]);
        assert_eq!(ids(&registry, "m1"), Vec::<String>::new());
        assert_eq!(ids(&registry, "m2"), vec![b.id.clone()]);
        assert_eq!(ids(&registry, "m3"), vec![a.id.clone()]);
        registry.remove(&b.id);
        assert!(ids(&registry, "m2").is_empty());
    }

    #[test]
    fn the_hub_probes_only_allowlisted_hosts() {
        let allow = vec!["gpu-1.tailnet".to_owned(), "10.0.0.5:11434".to_owned()];
        assert!(check_allowed("http://gpu-1.tailnet:11434", &allow).is_ok());
        assert!(check_allowed("http://GPU-1.tailnet:8080/", &allow).is_ok());
        assert!(check_allowed("http://10.0.0.5:11434", &allow).is_ok());
        let refused = check_allowed("http://10.0.0.5:11435", &allow).unwrap_err();
        assert!(refused.contains("--allow-endpoint 10.0.0.5:11435"), "{refused}");
        assert!(check_allowed("http://169.254.169.254/latest", &allow).is_err());
        assert!(check_allowed("http://127.0.0.1:11434", &[]).is_err(), "empty by default");
        assert!(check_allowed("ftp://gpu-1.tailnet", &allow).unwrap_err().contains("http://"));
        assert!(check_allowed("not a url", &allow).is_err());
        assert_eq!(host_port("https://[::1]/v1").unwrap(), ("::1".to_owned(), 443));
    }
}
