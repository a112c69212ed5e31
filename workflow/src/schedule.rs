//! `on: {schedule: "*/15 * * * *"}`: when a scheduled workflow runs. Cron patterns are
//! croner's (POSIX/Vixie cron, five fields or six with seconds first, read in UTC), not
//! hand-parsed.
//!
//! A schedule fires for the latest slot that has come and is after the last one it fired for,
//! so a hub that was down across several slots runs once when it starts, not once per slot.

use std::str::FromStr;

use chrono::{DateTime, Utc};

/// A parsed cron pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    cron: croner::Cron,
    pattern: String,
}

impl Schedule {
    /// A cron pattern in UTC: five fields (minute hour day-of-month month day-of-week), or six
    /// with a leading seconds field.
    pub fn parse(pattern: &str) -> Result<Schedule, String> {
        if !matches!(pattern.split_whitespace().count(), 5 | 6) {
            return Err(format!(
                "{pattern:?}: a schedule is five fields (minute hour day-of-month month day-of-week), or six with seconds first"
            ));
        }
        let cron = croner::Cron::from_str(pattern).map_err(|err| format!("{pattern:?}: {err}"))?;
        Ok(Schedule { cron, pattern: pattern.to_owned() })
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The slot to run now, if one is due: the latest at or before `now_ms` and after `last_ms`.
    pub fn due(&self, last_ms: i64, now_ms: i64) -> Option<i64> {
        let now = DateTime::<Utc>::from_timestamp_millis(now_ms)?;
        let slot = self.cron.find_previous_occurrence(&now, true).ok()?.timestamp_millis();
        (slot > last_ms).then_some(slot)
    }

    /// The first slot after `after_ms`.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
        Some(self.cron.find_next_occurrence(&after, false).ok()?.timestamp_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: i64 = 60_000;
    /// 2026-12-07T12:00:00Z.
    const NOON: i64 = 1_796_644_800_000;

    #[test]
    fn a_slot_is_due_once_and_missed_slots_run_once() {
        let every_15 = Schedule::parse("*/15 * * * *").unwrap();
        assert_eq!(every_15.next_after(NOON), Some(NOON + 15 * MINUTE));
        assert_eq!(every_15.due(NOON, NOON + 14 * MINUTE), None, "nothing due before the next slot");
        assert_eq!(every_15.due(NOON, NOON + 15 * MINUTE), Some(NOON + 15 * MINUTE), "due on the slot");
        let last = NOON + 15 * MINUTE;
        assert_eq!(every_15.due(last, last + MINUTE), None, "not twice for one slot");
        // Down across two slots (12:30 and 12:45): one run, for the latest.
        assert_eq!(every_15.due(last, NOON + 50 * MINUTE), Some(NOON + 45 * MINUTE));
    }

    #[test]
    fn a_bad_pattern_says_why() {
        assert!(Schedule::parse("*/15 * * *").unwrap_err().contains("five fields"));
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("0 9 * * MON-FRI").is_ok());
        let every_2s = Schedule::parse("*/2 * * * * *").unwrap();
        assert_eq!(every_2s.next_after(NOON), Some(NOON + 2_000), "six fields: seconds first");
    }
}
