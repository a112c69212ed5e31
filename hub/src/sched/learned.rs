//! What the hub learns from finished requests: load times and speeds per model and sidecar, and
//! how many requests each local endpoint serves at once.

use std::collections::HashMap;

use crate::domain::Tier;

/// What the hub has observed of a model on a sidecar.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Of cold loads (Ollama's `load_duration`).
    pub load_ms: Option<f64>,
    pub tokens_per_s: Option<f64>,
}

/// Load times and speeds per (sidecar, model), as exponentially weighted moving averages, and
/// the parallelism of each endpoint that does not say its own.
#[derive(Clone, Debug, Default)]
pub struct Learned {
    /// Sidecar -> model -> what was observed (looked up by `&str`, without allocating).
    by: HashMap<String, HashMap<String, Observed>>,
    /// Endpoint -> how it has been seen to serve requests side by side.
    at_once: HashMap<String, Concurrency>,
    /// (model, kind of work, tier) -> the verdicts of its verified results.
    verdicts: HashMap<(String, &'static str, &'static str), Tally>,
}

/// Verdicts of verified results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

/// The prior a pass rate starts from, as if this many results had passed and failed: a model
/// never seen is taken to pass 3 times in 4.
pub const PRIOR_PASSES: f64 = 3.0;
pub const PRIOR_FAILS: f64 = 1.0;

impl Tally {
    /// The pass rate, the prior included.
    pub fn pass_rate(&self) -> f64 {
        (self.passed as f64 + PRIOR_PASSES) / ((self.passed + self.failed) as f64 + PRIOR_PASSES + PRIOR_FAILS)
    }
}

/// Weight of the newest observation.
pub const EWMA_ALPHA: f64 = 0.3;

/// A first token this much later than an endpoint's usual one (besides three times as late)
/// means the request queued behind others. Queueing behind a reply costs that reply's rest,
/// seconds for a real model, so the line sits well above prompt-processing noise.
pub const QUEUED_AFTER_MS: f64 = 250.0;

/// How an endpoint has served requests side by side.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Concurrency {
    /// From the request to its first token, model load left out, when nothing else was in
    /// flight there (EWMA): the endpoint's unqueued first token.
    pub alone_ttft_ms: Option<f64>,
    /// The most requests seen running at once (a request that started at once beside `n`
    /// others shows `n + 1`), lowered when one queued beside fewer.
    pub at_once: Option<u32>,
    /// A reply there was cut short while other requests were in flight: the server interrupts a
    /// generation for the next request (llama.cpp's server does by default), so it runs one
    /// at a time and takes no second request while one runs.
    pub interrupts: bool,
}

impl Learned {
    pub fn get(&self, sidecar_id: &str, model: &str) -> Observed {
        self.by.get(sidecar_id).and_then(|models| models.get(model)).copied().unwrap_or_default()
    }

    /// Records a finished request: its load time (`None` or 0 when the model was warm) and speed.
    pub fn observe(&mut self, sidecar_id: &str, model: &str, load_ms: Option<u64>, tokens_per_s: Option<f64>) {
        let entry = self.by.entry(sidecar_id.to_owned()).or_default().entry(model.to_owned()).or_default();
        if let Some(load) = load_ms.filter(|ms| *ms > 0) {
            entry.load_ms = blend(entry.load_ms, load as f64);
        }
        if let Some(rate) = tokens_per_s.filter(|r| r.is_finite() && *r > 0.0) {
            entry.tokens_per_s = blend(entry.tokens_per_s, rate);
        }
    }

    /// Counts a verified result of `model` on work of `kind` at `tier`.
    pub fn observe_verdict(&mut self, model: &str, kind: &'static str, tier: Tier, passed: bool) {
        let tally = self.verdicts.entry((model.to_owned(), kind, tier.as_str())).or_default();
        if passed {
            tally.passed += 1;
        } else {
            tally.failed += 1;
        }
    }

    /// Whether any verdict has been counted.
    pub fn has_verdicts(&self) -> bool {
        !self.verdicts.is_empty()
    }

    /// Verdicts counted before (stored), taken as they are.
    pub fn seed_verdicts(&mut self, verdicts: Vec<(String, &'static str, Tier, Tally)>) {
        for (model, kind, tier, tally) in verdicts {
            self.verdicts.insert((model, kind, tier.as_str()), tally);
        }
    }

    /// Every (model, kind, tier) with verdicts, in that order.
    pub fn verdicts(&self) -> Vec<(String, &'static str, &'static str, Tally)> {
        let mut all: Vec<_> = self.verdicts.iter().map(|((m, k, t), tally)| (m.clone(), *k, *t, *tally)).collect();
        all.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        all
    }

    /// The verdicts of `model` on work of `kind` at `tier`.
    pub fn tally(&self, model: &str, kind: &'static str, tier: Tier) -> Tally {
        self.verdicts.get(&(model.to_owned(), kind, tier.as_str())).copied().unwrap_or_default()
    }

    /// The pass rate of `model` on work of `kind` at `tier`, the prior included.
    pub fn pass_rate(&self, model: &str, kind: &'static str, tier: Tier) -> f64 {
        self.verdicts.get(&(model.to_owned(), kind, tier.as_str())).copied().unwrap_or_default().pass_rate()
    }

    /// How many requests the endpoint has been seen to serve at once; `None` until a request
    /// placed beside others has shown it.
    pub fn parallel(&self, endpoint_id: &str) -> Option<u32> {
        let learned = self.at_once.get(endpoint_id)?;
        if learned.interrupts { Some(1) } else { learned.at_once }
    }

    /// Records a reply cut short (`truncated`) on an endpoint while `others` requests were in
    /// flight there: it interrupts one generation for another, so from now on it is given one
    /// request at a time. Cut short alone says nothing of that (the server may have stopped).
    pub fn observe_truncation(&mut self, endpoint_id: &str, others: u32) {
        if others > 0 {
            let entry = self.at_once.entry(endpoint_id.to_owned()).or_default();
            entry.interrupts = true;
            entry.at_once = Some(1);
        }
    }

    pub fn concurrency(&self, endpoint_id: &str) -> Concurrency {
        self.at_once.get(endpoint_id).copied().unwrap_or_default()
    }

    /// Records a finished request's first token on an endpoint, placed while `beside` other
    /// requests were in flight there. Alone, it sets the endpoint's usual first token. Beside
    /// others, a first token near the usual one shows the endpoint ran them all at once; one
    /// far later shows it queued, so it runs no more than `beside` at once.
    pub fn observe_concurrency(&mut self, endpoint_id: &str, beside: u32, ttft_ms: u64, load_ms: Option<u64>) {
        let first_token = ttft_ms.saturating_sub(load_ms.unwrap_or(0)) as f64;
        let entry = self.at_once.entry(endpoint_id.to_owned()).or_default();
        if entry.interrupts {
            return; // An on-time first token there may have cut another reply short.
        }
        if beside == 0 {
            entry.alone_ttft_ms = blend(entry.alone_ttft_ms, first_token);
            return;
        }
        let Some(alone) = entry.alone_ttft_ms else { return };
        let queued = first_token > 3.0 * alone + QUEUED_AFTER_MS;
        entry.at_once = Some(match (queued, entry.at_once) {
            (false, at_once) => at_once.unwrap_or(1).max(beside.saturating_add(1)).min(MAX_PARALLEL),
            (true, Some(at_once)) => at_once.min(beside).max(1),
            (true, None) => beside.clamp(1, MAX_PARALLEL),
        });
    }
}

/// The most requests an endpoint is taken to run at once (as `--ollama-parallel` allows).
pub const MAX_PARALLEL: u32 = 1_024;

fn blend(old: Option<f64>, new: f64) -> Option<f64> {
    Some(old.map_or(new, |old| old + EWMA_ALPHA * (new - old)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_is_learned_from_first_tokens_beside_others() {
        let mut learned = Learned::default();
        // Nothing to judge by until a request ran alone there.
        learned.observe_concurrency("e", 2, 40, None);
        assert_eq!(learned.parallel("e"), None);
        learned.observe_concurrency("e", 0, 40, None);
        learned.observe_concurrency("e", 0, 1_040, Some(1_000)); // A cold load is left out.
        assert_eq!(learned.concurrency("e").alone_ttft_ms, Some(40.0));
        assert_eq!(learned.parallel("e"), None, "alone says nothing of parallelism");
        // Beside three others with its first token on time: four at once.
        learned.observe_concurrency("e", 3, 60, None);
        assert_eq!(learned.parallel("e"), Some(4));
        // Beside one other, on time: no lower.
        learned.observe_concurrency("e", 1, 45, None);
        assert_eq!(learned.parallel("e"), Some(4));
        // Beside two others it queued (seconds late): at most two at once.
        learned.observe_concurrency("e", 2, 4_000, None);
        assert_eq!(learned.parallel("e"), Some(2));
        // Queueing beside more than it is known to run says nothing new.
        learned.observe_concurrency("e", 5, 9_000, None);
        assert_eq!(learned.parallel("e"), Some(2));
        // Late but within the noise line (3x + 250 ms = 370 ms) is not queueing.
        learned.observe_concurrency("e", 2, 360, None);
        assert_eq!(learned.parallel("e"), Some(3));
        // Endpoints are learned apart.
        assert_eq!(learned.parallel("other"), None);
        // A reply cut short while another was in flight: one at a time, whatever comes later.
        learned.observe_truncation("other", 0);
        assert_eq!(learned.parallel("other"), None, "cut short alone says nothing of parallelism");
        learned.observe_truncation("e", 1);
        assert_eq!((learned.parallel("e"), learned.concurrency("e").interrupts), (Some(1), true));
        learned.observe_concurrency("e", 3, 40, None);
        assert_eq!(learned.parallel("e"), Some(1), "an on-time first token beside others may have interrupted them");
    }

    #[test]
    fn a_server_that_queues_from_the_first_request_beside_another_runs_one() {
        let mut learned = Learned::default();
        learned.observe_concurrency("e", 0, 30, None);
        learned.observe_concurrency("e", 1, 5_000, None);
        assert_eq!(learned.parallel("e"), Some(1));
    }

    #[test]
    fn loads_and_speeds_are_averaged_per_sidecar_and_model() {
        let mut learned = Learned::default();
        learned.observe("s", "m", Some(1_000), Some(10.0));
        learned.observe("s", "m", Some(0), Some(20.0)); // Warm: no load to learn.
        let observed = learned.get("s", "m");
        assert_eq!(observed.load_ms, Some(1_000.0));
        assert!((observed.tokens_per_s.unwrap() - 13.0).abs() < 1e-9);
        assert_eq!(learned.get("s", "other"), Observed::default());
    }
}
