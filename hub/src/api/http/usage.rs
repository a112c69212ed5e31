//! `GET /api/v1/usage`: what the gateway's keys spent, from the ledger the core stores
//! (`crate::usage`): every day, key and model, or summed `?by=key`, `?by=model` or `?by=day`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::json;

use super::HttpState;
use super::dto::UsageDto;
use crate::api::ApiError;
use crate::usage::{Row, Spend};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UsageQuery {
    by: Option<String>,
}

/// What rows are summed by.
#[derive(Clone, Copy, Debug, PartialEq)]
enum By {
    /// Each day, key and model.
    Row,
    Key,
    Model,
    Day,
}

/// A day, key and model, each `None` where rows are summed over it.
type Group = (Option<String>, Option<String>, Option<String>);

/// The rows summed by `by`: the fields not grouped by are `None`. Sorted by what they are
/// grouped by.
fn group(rows: Vec<(Row, Spend)>, by: By) -> Vec<(Group, Spend)> {
    let mut sums: BTreeMap<Group, Spend> = BTreeMap::new();
    for (row, spend) in rows {
        let key = match by {
            By::Row => (Some(row.day), Some(row.key), Some(row.model)),
            By::Key => (None, Some(row.key), None),
            By::Model => (None, None, Some(row.model)),
            By::Day => (Some(row.day), None, None),
        };
        sums.entry(key).or_default().add(spend);
    }
    sums.into_iter().collect()
}

pub(super) async fn usage(
    State(state): State<HttpState>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|err| ApiError::invalid(err.body_text()))?;
    let by = match query.by.as_deref() {
        None | Some("") => By::Row,
        Some("key") => By::Key,
        Some("model") => By::Model,
        Some("day") => By::Day,
        Some(other) => return Err(ApiError::invalid(format!("by={other}: one of key, model, day"))),
    };
    let rows = state.hub.usage().await?;
    let names: BTreeMap<String, String> = state.tokens.list().into_iter().map(|t| (t.id, t.name)).collect();
    let rows: Vec<UsageDto> = group(rows, by)
        .into_iter()
        .map(|((day, key, model), spend)| UsageDto::of(day, key.map(|k| (names.get(&k).cloned(), k)), model, spend))
        .collect();
    Ok(Json(json!({ "usage": rows })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_by_what_is_asked() {
        let row = |day: &str, key: &str, model: &str| Row { day: day.into(), key: key.into(), model: model.into() };
        let one = Spend { requests: 1, input_tokens: 10, output_tokens: 2, cost_micros: 5 };
        let rows = vec![(row("d1", "a", "m1"), one), (row("d1", "b", "m1"), one), (row("d2", "a", "m2"), one)];
        let by_key = group(rows.clone(), By::Key);
        assert_eq!(by_key.len(), 2);
        let ((_, key, _), spend) = &by_key[0];
        assert_eq!((key.as_deref(), spend.requests, spend.cost_micros), (Some("a"), 2, 10));
        assert!(by_key.iter().all(|((day, _, model), _)| day.is_none() && model.is_none()));
        let by_model = group(rows.clone(), By::Model);
        assert_eq!((by_model[0].0.2.as_deref(), by_model[0].1.requests), (Some("m1"), 2));
        assert_eq!(group(rows.clone(), By::Day).len(), 2);
        assert_eq!(group(rows, By::Row).len(), 3);
    }
}
