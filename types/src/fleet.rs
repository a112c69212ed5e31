//! The fleet as plain data: a machine's resource reading, the LLM endpoints and models it
//! offers, and the views the hub answers with (agents, hosts).
//!
//! **Architecture Invariant:** data and pure rules only; nothing here does I/O or reads a clock.
//! The sidecar fills these in, `wire` carries them, the hub keeps and shows them.

use sha2::Digest;

use crate::agent::{AgentState, Transition};
use crate::domain::{TaskId, UnixMs};

/// One resource reading of a machine, as its sidecar took it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    /// When the reading was taken, in milliseconds since the Unix epoch.
    pub at_unix_ms: i64,
    /// Overall CPU usage, 0 to 100.
    pub cpu_percent: f64,
    /// Usage of each logical core, 0 to 100.
    pub cpu_per_core_percent: Vec<f32>,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub memory_total_bytes: u64,
    /// Total less available (what the kernel could not hand out without swapping).
    pub memory_used_bytes: u64,
    pub memory_available_bytes: u64,
    /// Real file systems, one per mount point, sorted by mount point.
    pub disks: Vec<Disk>,
    pub gpus: Vec<Gpu>,
    /// True when `gpus` are synthetic (the sidecar runs with GPU simulation on).
    pub gpus_simulated: bool,
}

/// Space on one mounted file system.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Disk {
    pub mount: String,
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// One GPU. A metric the device does not support (or that could not be read) is `None`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Gpu {
    /// NVML's device index.
    pub index: u32,
    pub name: String,
    pub uuid: String,
    /// Share of the last sample period with a kernel running, 0 to 100.
    pub utilization_percent: Option<u32>,
    /// Share of the last sample period with device memory being read or written, 0 to 100.
    pub memory_utilization_percent: Option<u32>,
    pub memory_used_bytes: Option<u64>,
    pub memory_total_bytes: Option<u64>,
    pub temperature_celsius: Option<u32>,
    pub power_milliwatts: Option<u32>,
    /// Processes with a compute context on this GPU.
    pub processes: Vec<GpuProcess>,
}

/// A process with a compute context on a GPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    /// `None` where the driver does not account memory per process.
    pub used_memory_bytes: Option<u64>,
}

/// A report reduced to what a history chart needs: 40 bytes, so an hour of 15-second reports
/// costs about 10 KiB per host.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    pub at_unix_ms: UnixMs,
    pub cpu_percent: f32,
    pub load1: f32,
    pub memory_used_bytes: u64,
    /// Mean utilization over the host's GPUs that report it.
    pub gpu_utilization_percent: Option<f32>,
    pub gpu_memory_used_bytes: u64,
}

impl Sample {
    pub fn of(report: &Resources) -> Sample {
        let utilizations: Vec<u32> = report.gpus.iter().filter_map(|g| g.utilization_percent).collect();
        let gpu_utilization_percent = (!utilizations.is_empty())
            .then(|| utilizations.iter().map(|&u| u as f32).sum::<f32>() / utilizations.len() as f32);
        Sample {
            at_unix_ms: report.at_unix_ms,
            cpu_percent: report.cpu_percent as f32,
            load1: report.load1 as f32,
            memory_used_bytes: report.memory_used_bytes,
            gpu_utilization_percent,
            gpu_memory_used_bytes: report.gpus.iter().filter_map(|g| g.memory_used_bytes).sum(),
        }
    }
}

/// One model an endpoint offers, as a probe found it; `loaded` means warm.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    pub name: String,
    pub size_bytes: u64,
    pub family: String,
    pub parameter_size: String,
    pub quantization: String,
    /// In memory now (warm).
    pub loaded: bool,
    pub size_vram_bytes: u64,
    pub expires_unix_ms: Option<i64>,
}

impl Model {
    /// A model known by name only (configured, not probed).
    pub fn named(name: impl Into<String>) -> Model {
        Model { name: name.into(), ..Model::default() }
    }

    /// `warm` when loaded in memory, else `cold`.
    pub fn warmth(&self) -> &'static str {
        if self.loaded { "warm" } else { "cold" }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointKind {
    Ollama,
    Anthropic,
    Openai,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Ollama => "ollama",
            EndpointKind::Anthropic => "anthropic",
            EndpointKind::Openai => "openai",
        }
    }

    pub fn parse(s: &str) -> Option<EndpointKind> {
        match s {
            "ollama" => Some(EndpointKind::Ollama),
            "anthropic" => Some(EndpointKind::Anthropic),
            "openai" => Some(EndpointKind::Openai),
            _ => None,
        }
    }
}

/// Who probes an endpoint: the sidecar on its machine, or the hub itself (added by an admin,
/// and only if its host is allowlisted).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Sidecar(String),
    Hub,
}

/// An LLM endpoint and what its last check found.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    pub kind: EndpointKind,
    pub owner: Owner,
    pub healthy: bool,
    pub version: String,
    /// Why the last check failed.
    pub error: Option<String>,
    pub models: Vec<Model>,
    pub checked_unix_ms: UnixMs,
    /// Requests it runs at once, as configured where it is probed (Ollama's
    /// `OLLAMA_NUM_PARALLEL`, `agentcom-sidecar run --ollama-parallel`); 0: not said, taken as 1
    /// for a local server.
    pub parallel: u32,
}

impl Endpoint {
    /// An endpoint with its id derived from its owner and URL.
    pub fn new(owner: Owner, url: String, kind: EndpointKind) -> Endpoint {
        Endpoint {
            id: endpoint_id(&owner, &url),
            url,
            kind,
            owner,
            healthy: false,
            version: String::new(),
            error: None,
            models: Vec::new(),
            checked_unix_ms: 0,
            parallel: 0,
        }
    }

    /// Equal apart from when it was checked: a change worth persisting and announcing.
    pub fn same_as(&self, other: &Endpoint) -> bool {
        Endpoint { checked_unix_ms: 0, ..self.clone() } == Endpoint { checked_unix_ms: 0, ..other.clone() }
    }
}

/// Whether an endpoint sends work off the machines you run: the Claude API always, an
/// OpenAI-compatible server unless its host is loopback, a private or tailnet address
/// (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7), `localhost`, a single-label name, or
/// a name under `.local`, `.internal`, `.lan` or `.ts.net`; never Ollama, which runs beside its
/// sidecar. `local_only` work goes only where this is false.
pub fn is_cloud(endpoint: &Endpoint) -> bool {
    match endpoint.kind {
        EndpointKind::Ollama => false,
        EndpointKind::Anthropic => true,
        EndpointKind::Openai => !is_private_host(&endpoint.url),
    }
}

fn is_private_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(host, _)| host),
    }
    .to_ascii_lowercase();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return match ip {
            std::net::IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                v4.is_loopback() || v4.is_private() || (a == 100 && (64..128).contains(&b))
            }
            std::net::IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
        };
    }
    host == "localhost"
        || !host.contains('.')
        || [".local", ".internal", ".lan", ".ts.net", ".localhost"].iter().any(|suffix| host.ends_with(suffix))
}

/// The stable id of an endpoint: its owner and URL, hashed short enough to type.
pub fn endpoint_id(owner: &Owner, url: &str) -> String {
    let owner = match owner {
        Owner::Sidecar(id) => id.as_str(),
        Owner::Hub => "",
    };
    let digest = sha2::Sha256::digest(format!("{owner}\n{url}").as_bytes());
    format!("ep-{}", &hex::encode(digest)[..12])
}

/// A sidecar taking no new work, since when, and when what still runs on it is requeued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cordon {
    pub since_unix_ms: UnixMs,
    pub deadline_unix_ms: Option<UnixMs>,
}

/// An agent as the hub shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentView {
    pub id: String,
    pub sidecar_id: String,
    pub hostname: String,
    pub state: AgentState,
    pub task_id: Option<TaskId>,
    pub state_since_unix_ms: UnixMs,
    pub last_seen_unix_ms: UnixMs,
    pub capabilities: Vec<String>,
    pub tags: Vec<String>,
    pub version: String,
    /// Working, with no output, tokens or progress for the hub's stall time.
    pub stalled: bool,
    pub last_activity_unix_ms: UnixMs,
    pub cordoned: bool,
}

/// One agent with its recent transitions, oldest first.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentDetail {
    pub agent: AgentView,
    pub history: Vec<Transition>,
}

/// A machine as the hub sees it: one per sidecar.
#[derive(Clone, Debug, PartialEq)]
pub struct HostView {
    pub id: String,
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub version: String,
    pub online: bool,
    pub last_seen_unix_ms: UnixMs,
    pub cordon: Option<Cordon>,
    pub agents: usize,
    /// How the sidecar contains task processes (empty when it never said).
    pub containment: String,
    pub resources: Option<Resources>,
    /// Oldest first; only for a single host.
    pub history: Option<Vec<Sample>>,
}

/// Where the passwords of the URLs in `text` are: the byte range of `PASSWORD` in every
/// `scheme://user:PASSWORD@host` (a password may hold `@`: it runs to the authority's last one).
/// The one rule for what the hub shows of endpoint URLs and errors, and what a sidecar scrubs
/// from its logs and masks in what a task sends back.
pub fn url_password_spans(text: &str) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    static USERINFO: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let userinfo = USERINFO
        .get_or_init(|| regex::Regex::new(r"://[^/?#\s:@]*:([^/?#\s]+)@").expect("the userinfo pattern compiles"));
    userinfo.captures_iter(text).filter_map(|c| c.get(1)).map(|m| m.range())
}

/// `text` with the password of every URL in it replaced by `with`.
pub fn replace_url_passwords(text: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for span in url_password_spans(text) {
        out.push_str(&text[from..span.start]);
        out.push_str(with);
        from = span.end;
    }
    out.push_str(&text[from..]);
    out
}

/// `text` with the password of every URL in it shown as `****`, for what the hub shows of
/// endpoint URLs and errors: an endpoint's id still comes from the whole URL, so two endpoints
/// that differ only in their password stay apart.
pub fn without_password(text: &str) -> String {
    replace_url_passwords(text, "****")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked_and_nothing_else_changes() {
        assert_eq!(without_password("http://127.0.0.1:11434"), "http://127.0.0.1:11434");
        assert_eq!(without_password("https://bob:hunter2@ollama.lan:443/v1"), "https://bob:****@ollama.lan:443/v1");
        assert_eq!(without_password("https://token@host/x"), "https://token@host/x", "a user alone is not a secret");
        assert_eq!(without_password("http://u:p@ss@h:1/x"), "http://u:****@h:1/x", "to the authority's last @");
        assert_eq!(
            without_password("error sending request for url (http://u:p4ss@h:1/api/tags): refused; retry http://h:2/"),
            "error sending request for url (http://u:****@h:1/api/tags): refused; retry http://h:2/"
        );
        assert_eq!(without_password("no url here: a:b@c"), "no url here: a:b@c");
        assert_eq!(without_password("http://u:@h"), "http://u:@h");
        assert_eq!(replace_url_passwords("a https://x:y@h b", "[redacted]"), "a https://x:[redacted]@h b");
    }

    #[test]
    fn a_sample_averages_gpu_utilization_over_gpus_that_report_it() {
        let gpu =
            |u: Option<u32>, m: Option<u64>| Gpu { utilization_percent: u, memory_used_bytes: m, ..Gpu::default() };
        let r = Resources {
            gpus: vec![gpu(Some(30), Some(10)), gpu(None, None), gpu(Some(90), Some(5))],
            at_unix_ms: 1,
            ..Resources::default()
        };
        let sample = Sample::of(&r);
        assert_eq!(sample.gpu_utilization_percent, Some(60.0));
        assert_eq!(sample.gpu_memory_used_bytes, 15);
        assert_eq!(Sample::of(&Resources::default()).gpu_utilization_percent, None);
    }

    #[test]
    fn cloud_endpoints_are_the_claude_api_and_public_openai_compatible_hosts() {
        let at = |kind, url: &str| is_cloud(&Endpoint::new(Owner::Hub, url.to_owned(), kind));
        assert!(at(EndpointKind::Anthropic, "https://api.anthropic.com"));
        assert!(!at(EndpointKind::Ollama, "http://gpu-1.example.com:11434"), "Ollama is always local");
        for public in [
            "https://api.openai.com/v1",
            "https://user:key@api.together.xyz/v1",
            "http://8.8.8.8/v1",
            "http://[2001:db8::1]:8000/v1",
        ] {
            assert!(at(EndpointKind::Openai, public), "{public}");
        }
        for private in [
            "http://127.0.0.1:8000/v1",
            "http://10.1.2.3/v1",
            "http://172.20.0.5:8000/v1",
            "http://192.168.1.9/v1",
            "http://100.101.102.103:8000/v1",
            "http://[::1]:8000/v1",
            "http://[fd00::5]/v1",
            "http://localhost:8000/v1",
            "http://vllm:8000/v1",
            "http://gpu-1.tailnet-abc.ts.net:8000/v1",
            "http://box.local/v1",
        ] {
            assert!(!at(EndpointKind::Openai, private), "{private}");
        }
    }

    #[test]
    fn endpoint_ids_are_stable_and_tell_owners_apart() {
        let url = "http://127.0.0.1:11434";
        assert_eq!(endpoint_id(&Owner::Hub, url), endpoint_id(&Owner::Hub, url));
        assert_ne!(endpoint_id(&Owner::Hub, url), endpoint_id(&Owner::Sidecar("s".into()), url));
        assert!(endpoint_id(&Owner::Hub, url).starts_with("ep-") && endpoint_id(&Owner::Hub, url).len() == 15);
    }
}

/// Whether `repository` is on an allowlist (`--repo-allow`): a local path at or under an
/// allowed one, or a URL under an allowed prefix, compared by whole path segments after `.` and
/// `..` segments and repeated or trailing slashes are resolved. The sidecar resolves symbolic
/// links of local paths before it asks; the hub, which cannot, asks with the paths as given.
pub fn repository_allowed(allow: &[String], repository: &str) -> bool {
    let repository = normal_segments(repository);
    if repository.is_empty() {
        return false;
    }
    allow.iter().any(|allowed| {
        let allowed = normal_segments(allowed);
        !allowed.is_empty() && repository.len() >= allowed.len() && repository[..allowed.len()] == allowed[..]
    })
}

/// A path or URL as segments: a URL's scheme and host are its first segment, `.` goes and `..`
/// takes the one before it.
fn normal_segments(text: &str) -> Vec<&str> {
    let (head, path) = match text.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
            (Some((scheme, host)), path)
        }
        None => (None, text),
    };
    let mut segments: Vec<&str> = Vec::new();
    if let Some((scheme, host)) = head {
        segments.push(scheme);
        segments.push(host);
    } else if text.starts_with('/') {
        segments.push("/");
    }
    let floor = segments.len();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.len() > floor {
                    segments.pop();
                }
            }
            segment => segments.push(segment),
        }
    }
    if segments.len() == floor && head.is_none() && floor == 0 {
        return Vec::new();
    }
    segments
}

#[cfg(test)]
mod repository_tests {
    use super::repository_allowed;

    #[test]
    fn repositories_match_their_allowlist_by_whole_segments() {
        let allow = vec!["/srv/repos".to_owned(), "https://git.example.com/team/".to_owned()];
        assert!(repository_allowed(&allow, "/srv/repos"));
        assert!(repository_allowed(&allow, "/srv/repos/app"));
        assert!(repository_allowed(&allow, "/srv/repos//app/"));
        assert!(repository_allowed(&allow, "https://git.example.com/team/app.git"));
        assert!(!repository_allowed(&allow, "/srv/repos-other/app"), "a prefix of a segment is not enough");
        assert!(!repository_allowed(&allow, "/srv/repos/../etc"), "`..` leaves the allowed tree");
        assert!(!repository_allowed(&allow, "/srv"));
        assert!(!repository_allowed(&allow, "https://git.example.com/other/app"));
        assert!(!repository_allowed(&allow, "https://git.example.com.evil/team/app"));
        assert!(!repository_allowed(&allow, ""));
        assert!(!repository_allowed(&[], "/srv/repos/app"));
        assert!(repository_allowed(&["/".to_owned()], "/anything"), "an allowlist of / allows every local path");
    }
}
