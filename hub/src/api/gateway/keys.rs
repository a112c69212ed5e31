//! A key's limits at the gateway (`auth::KeyLimits`): the models it may ask for, its budgets
//! against what the ledger says it spent (`usage`), and its requests and tokens per minute,
//! counted here over a sliding minute. Each refusal says which limit and, for a rate or a
//! budget, when to come back (`retry-after`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Datelike;

use super::{Kind, Refusal};
use crate::auth::KeyLimits;
use crate::usage::Spend;

const MINUTE: Duration = Duration::from_secs(60);

/// Requests and tokens of each key over the last minute.
#[derive(Clone, Default)]
pub struct Meters {
    windows: Arc<Mutex<HashMap<String, Window>>>,
}

#[derive(Default)]
struct Window {
    requests: VecDeque<Instant>,
    tokens: VecDeque<(Instant, u64)>,
}

impl Window {
    fn forget_before(&mut self, now: Instant) {
        while self.requests.front().is_some_and(|at| now.duration_since(*at) >= MINUTE) {
            self.requests.pop_front();
        }
        while self.tokens.front().is_some_and(|(at, _)| now.duration_since(*at) >= MINUTE) {
            self.tokens.pop_front();
        }
    }
}

/// Whole seconds until `at` is a minute old (at least 1).
fn seconds_until_minute_old(at: Instant, now: Instant) -> u64 {
    MINUTE.saturating_sub(now.duration_since(at)).as_secs_f64().ceil().max(1.0) as u64
}

fn rate_limited(message: String, retry_after: u64) -> Refusal {
    Refusal { retry_after: Some(retry_after), ..Refusal::new(Kind::RateLimited, message) }
}

impl Meters {
    /// Admits one request of `key` under its rates, counting it; or says when to retry.
    pub fn admit(&self, key: &str, limits: &KeyLimits, now: Instant) -> Result<(), Refusal> {
        if limits.rpm.is_none() && limits.tpm.is_none() {
            return Ok(());
        }
        let mut windows = self.windows.lock().expect("meters lock poisoned");
        let window = windows.entry(key.to_owned()).or_default();
        window.forget_before(now);
        if let Some(rpm) = limits.rpm
            && window.requests.len() >= rpm as usize
        {
            let wait = seconds_until_minute_old(window.requests[window.requests.len() - rpm as usize], now);
            return Err(rate_limited(
                format!("this key is over its rate of {rpm} requests per minute; retry in {wait} s"),
                wait,
            ));
        }
        if let Some(tpm) = limits.tpm {
            let used: u64 = window.tokens.iter().map(|(_, n)| n).sum();
            if used >= tpm {
                // Room comes back as the oldest counts age out.
                let mut left = used;
                let at = window.tokens.iter().find(|(_, n)| {
                    left -= n;
                    left < tpm
                });
                let wait = at.map_or(60, |(at, _)| seconds_until_minute_old(*at, now));
                return Err(rate_limited(
                    format!(
                        "this key is over its {tpm} tokens per minute ({used} in the last minute); retry in {wait} s"
                    ),
                    wait,
                ));
            }
        }
        window.requests.push_back(now);
        Ok(())
    }

    /// Counts the tokens a request of `key` read and wrote, once it has ended.
    pub fn used(&self, key: &str, tokens: u64, now: Instant) {
        let mut windows = self.windows.lock().expect("meters lock poisoned");
        if let Some(window) = windows.get_mut(key) {
            window.tokens.push_back((now, tokens));
        }
    }
}

/// Refuses a model the key may not ask for, naming those it may.
pub(super) fn check_model(limits: &KeyLimits, model: &str) -> Result<(), Refusal> {
    if limits.models.is_empty() || limits.models.iter().any(|m| m == model) {
        return Ok(());
    }
    Err(Refusal::new(
        Kind::Forbidden,
        format!("this key may not use model {model:?}; it may use: {}", limits.models.join(", ")),
    ))
}

/// Refuses a key that has spent its daily or monthly budget (`day` and `month`: what the ledger
/// says it spent this UTC day and month), saying when the budget starts again.
pub(super) fn check_budget(limits: &KeyLimits, (day, month): (Spend, Spend), now_ms: i64) -> Result<(), Refusal> {
    let now = chrono::DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let until = |next: Option<chrono::NaiveDate>| {
        let start = next.and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc().timestamp_millis());
        start.map_or(3600, |start| ((start - now_ms).max(1000) / 1000) as u64)
    };
    let dollars = |micros: u64| micros as f64 / 1e6;
    if let Some(budget) = limits.daily_budget_usd
        && dollars(day.cost_micros) >= budget
    {
        let wait = until(now.date_naive().succ_opt());
        return Err(Refusal {
            retry_after: Some(wait),
            ..Refusal::new(
                Kind::RateLimited,
                format!(
                    "this key has spent its daily budget: ${:.4} of ${budget:.2} today (UTC); it starts again in {wait} s",
                    dollars(day.cost_micros)
                ),
            )
        });
    }
    if let Some(budget) = limits.monthly_budget_usd
        && dollars(month.cost_micros) >= budget
    {
        let first = now.date_naive().with_day(1);
        let next = first.and_then(|d| d.checked_add_months(chrono::Months::new(1)));
        let wait = until(next);
        return Err(Refusal {
            retry_after: Some(wait),
            ..Refusal::new(
                Kind::RateLimited,
                format!(
                    "this key has spent its monthly budget: ${:.4} of ${budget:.2} this month (UTC); it starts again in {wait} s",
                    dollars(month.cost_micros)
                ),
            )
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_over_a_sliding_minute() {
        let meters = Meters::default();
        let limits = KeyLimits { rpm: Some(2), tpm: Some(100), ..KeyLimits::default() };
        let start = Instant::now();
        assert!(meters.admit("k", &limits, start).is_ok());
        assert!(meters.admit("k", &limits, start + Duration::from_secs(10)).is_ok());
        let refused = meters.admit("k", &limits, start + Duration::from_secs(20)).unwrap_err();
        assert_eq!((refused.kind, refused.retry_after), (Kind::RateLimited, Some(40)));
        assert!(refused.message.contains("2 requests per minute"), "{}", refused.message);
        assert!(meters.admit("other", &limits, start + Duration::from_secs(20)).is_ok(), "keys are apart");
        // A minute after the first, there is room again; then tokens run out.
        assert!(meters.admit("k", &limits, start + Duration::from_secs(60)).is_ok());
        meters.used("k", 120, start + Duration::from_secs(61));
        let refused = meters.admit("k", &limits, start + Duration::from_secs(71)).unwrap_err();
        assert!(refused.message.contains("100 tokens per minute (120"), "{}", refused.message);
        assert_eq!(refused.retry_after, Some(50));
        assert!(meters.admit("k", &limits, start + Duration::from_secs(121)).is_ok());
    }

    #[test]
    fn models_and_budgets_refuse_with_the_reason() {
        let limits = KeyLimits { models: vec!["a".into()], ..KeyLimits::default() };
        assert!(check_model(&limits, "a").is_ok());
        let refused = check_model(&limits, "b").unwrap_err();
        assert_eq!(refused.kind, Kind::Forbidden);
        assert!(refused.message.contains("may use: a"));

        let now = 1_796_731_200_000; // 2026-12-08T12:00:00Z
        let spend = |micros| Spend { cost_micros: micros, ..Spend::default() };
        let (nothing, five) = (spend(0), spend(5_000_000));
        let daily = KeyLimits { daily_budget_usd: Some(1.0), ..KeyLimits::default() };
        assert!(check_budget(&daily, (spend(999_999), five), now).is_ok());
        let refused = check_budget(&daily, (spend(1_000_000), five), now).unwrap_err();
        assert_eq!((refused.kind, refused.retry_after), (Kind::RateLimited, Some(12 * 3600)));
        assert!(check_budget(&daily, (nothing, five), now).is_ok(), "earlier days' spend");
        let monthly = KeyLimits { monthly_budget_usd: Some(2.0), ..KeyLimits::default() };
        let refused = check_budget(&monthly, (nothing, spend(2_100_000)), now).unwrap_err();
        assert!(refused.message.contains("monthly budget"), "{}", refused.message);
        assert_eq!(refused.retry_after, Some((23 * 24 + 12) * 3600), "until 2027-01-01");
    }
}
