//! What the gateway's keys have spent: requests, tokens and cost per UTC day, key and model (a
//! ledger the core keeps and stores, `Op::PutUsage`, a row a put of its totals), and what the
//! budgets and `GET /api/v1/usage` read of it. Pure.

use std::collections::BTreeMap;

/// The totals of one day, key and model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Millionths of a dollar, from the hub's price table (0 for a model it has no price for).
    pub cost_micros: u64,
}

impl Spend {
    pub fn add(&mut self, other: Spend) {
        self.requests += other.requests;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_micros += other.cost_micros;
    }

    /// The stored value: the four totals, space-separated.
    pub fn encode(&self) -> String {
        format!("{} {} {} {}", self.requests, self.input_tokens, self.output_tokens, self.cost_micros)
    }

    pub fn decode(value: &str) -> Result<Spend, String> {
        let numbers: Vec<u64> = value
            .split(' ')
            .map(|n| n.parse().map_err(|_| format!("{n:?} is not a count")))
            .collect::<Result<_, _>>()?;
        match numbers[..] {
            [requests, input_tokens, output_tokens, cost_micros] => {
                Ok(Spend { requests, input_tokens, output_tokens, cost_micros })
            }
            _ => Err(format!("{value:?} is not four counts")),
        }
    }
}

/// A row's key: the UTC day (`2026-12-08`), the token id, the model.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub day: String,
    pub key: String,
    pub model: String,
}

/// The UTC day of a time, as rows name it.
pub fn day_of(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms).unwrap_or_default().format("%Y-%m-%d").to_string()
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ledger {
    rows: BTreeMap<Row, Spend>,
}

impl Ledger {
    pub fn seed(rows: Vec<(Row, Spend)>) -> Ledger {
        Ledger { rows: rows.into_iter().collect() }
    }

    /// Adds `spend` to its row; the row's new totals, to store.
    pub fn add(&mut self, row: Row, spend: Spend) -> (Row, Spend) {
        let totals = self.rows.entry(row.clone()).or_default();
        totals.add(spend);
        (row, *totals)
    }

    pub fn rows(&self) -> impl Iterator<Item = (&Row, &Spend)> {
        self.rows.iter()
    }

    /// What `key` spent on `day` and in that day's month.
    pub fn spent(&self, key: &str, day: &str) -> (Spend, Spend) {
        let month = &day[..day.len().min(7)];
        let (mut on_day, mut in_month) = (Spend::default(), Spend::default());
        for (row, spend) in self.rows.iter().filter(|(row, _)| row.key == key && row.day.starts_with(month)) {
            in_month.add(*spend);
            if row.day == day {
                on_day.add(*spend);
            }
        }
        (on_day, in_month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(day: &str, key: &str, model: &str) -> Row {
        Row { day: day.into(), key: key.into(), model: model.into() }
    }

    #[test]
    fn spend_adds_up_by_day_and_month_and_round_trips() {
        let mut ledger = Ledger::default();
        let one = Spend { requests: 1, input_tokens: 10, output_tokens: 5, cost_micros: 300 };
        ledger.add(row("2026-12-07", "tok-a", "m1"), one);
        ledger.add(row("2026-12-08", "tok-a", "m1"), one);
        let (_, totals) = ledger.add(row("2026-12-08", "tok-a", "m2"), one);
        assert_eq!(totals, one);
        ledger.add(row("2026-11-30", "tok-a", "m1"), one);
        ledger.add(row("2026-12-08", "tok-b", "m1"), one);
        let (day, month) = ledger.spent("tok-a", "2026-12-08");
        assert_eq!((day.requests, day.cost_micros, month.requests, month.cost_micros), (2, 600, 3, 900));
        assert_eq!(Spend::decode(&totals.encode()), Ok(totals));
        assert!(Spend::decode("1 2 x 4").is_err() && Spend::decode("1 2 3").is_err());
        assert_eq!(day_of(1_796_688_000_000), "2026-12-08");
    }
}
