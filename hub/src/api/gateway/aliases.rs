//! Model aliases: a name the gateway's callers may ask for that means the first of a list of
//! models the fleet serves (`hubctl models alias fast qwen2.5:7b llama3.2:3b`), and the fallback,
//! the alias named `*`: what a model nowhere in the fleet means instead of a 404. An alias
//! shadows a model of the same name. Kept by the hub (`Op::PutAlias`, `alias/NAME` in the `fleet`
//! table), loaded at start, and set through `PUT /api/v1/models/aliases/{name}` (an operator).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use axum::Extension;
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::http::HttpState;
use crate::api::{ApiError, ErrorCode, audited};
use crate::auth::Caller;
use crate::store::Op;

/// The alias a model nowhere in the fleet falls back to.
pub(super) const FALLBACK: &str = "*";
/// Most models one alias lists.
const MAX_MODELS: usize = 16;

/// The aliases, shared by the requests that read them and the API that sets them.
#[derive(Clone, Default)]
pub struct Aliases {
    by_name: Arc<RwLock<BTreeMap<String, Vec<String>>>>,
}

impl Aliases {
    pub fn load(stored: Vec<(String, Vec<String>)>) -> Aliases {
        Aliases { by_name: Arc::new(RwLock::new(stored.into_iter().collect())) }
    }

    pub fn list(&self) -> Vec<(String, Vec<String>)> {
        self.by_name.read().expect("aliases lock poisoned").iter().map(|(n, m)| (n.clone(), m.clone())).collect()
    }

    /// The models to try for `requested`, in order (see [`candidates`]).
    pub fn candidates(&self, requested: &str, served: impl Fn(&str) -> bool) -> Vec<String> {
        candidates(&self.by_name.read().expect("aliases lock poisoned"), requested, served)
    }
}

/// The models the fleet serves that `requested` may be answered by, in order: an alias's
/// models, else the model itself; none of them served, the fallback's. Empty: nothing serves it.
pub(super) fn candidates(
    aliases: &BTreeMap<String, Vec<String>>,
    requested: &str,
    served: impl Fn(&str) -> bool,
) -> Vec<String> {
    let named = aliases.get(requested).cloned().unwrap_or_else(|| vec![requested.to_owned()]);
    let found: Vec<String> = named.into_iter().filter(|m| served(m)).collect();
    if !found.is_empty() {
        return found;
    }
    aliases.get(FALLBACK).into_iter().flatten().filter(|m| served(m)).cloned().collect()
}

/// Why an alias cannot be: a bad name, no models, too many, or a name that is not one.
fn check(name: &str, models: &[String]) -> Result<(), String> {
    let bad = |s: &str| s.is_empty() || s.len() > 256 || s.chars().any(char::is_control);
    if bad(name) {
        return Err(format!("{name:?} is not an alias name (1 to 256 characters, no control characters)"));
    }
    if models.is_empty() || models.len() > MAX_MODELS {
        return Err(format!("an alias lists 1 to {MAX_MODELS} models"));
    }
    if let Some(model) = models.iter().find(|m| bad(m)) {
        return Err(format!("{model:?} is not a model name"));
    }
    if models.iter().any(|m| m == name) {
        return Err(format!("alias {name} cannot list itself"));
    }
    Ok(())
}

fn listing(name: &str, models: &[String]) -> Value {
    json!({ "name": name, "models": models })
}

/// `GET /api/v1/models/aliases`.
pub(crate) async fn list(State(state): State<HttpState>) -> Json<Value> {
    let aliases: Vec<Value> = state.aliases.list().iter().map(|(name, models)| listing(name, models)).collect();
    Json(json!({ "aliases": aliases }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PutBody {
    models: Vec<String>,
}

/// `PUT /api/v1/models/aliases/{name}` `{"models": [...]}`: made, or replaced; durable before
/// it answers.
pub(crate) async fn put(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
    body: Result<Json<PutBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(crate::api::http::body_error)?;
    let models: Vec<String> = body.models.into_iter().map(|m| m.trim().to_owned()).collect();
    check(&name, &models).map_err(ApiError::invalid)?;
    state.hub.persist(vec![Op::PutAlias { name: name.clone(), models: models.clone() }]).await?;
    state.aliases.by_name.write().expect("aliases lock poisoned").insert(name.clone(), models.clone());
    audited(&state.hub, caller.as_deref(), "alias.put", &name, models.join(", ")).await?;
    Ok(Json(listing(&name, &models)))
}

/// `DELETE /api/v1/models/aliases/{name}`.
pub(crate) async fn delete(
    State(state): State<HttpState>,
    Path(name): Path<String>,
    caller: Option<Extension<Caller>>,
) -> Result<Json<Value>, ApiError> {
    let Some(models) = state.aliases.by_name.read().expect("aliases lock poisoned").get(&name).cloned() else {
        return Err(ApiError::new(ErrorCode::NotFound, format!("no alias {name}")));
    };
    state.hub.persist(vec![Op::DeleteAlias { name: name.clone() }]).await?;
    state.aliases.by_name.write().expect("aliases lock poisoned").remove(&name);
    audited(&state.hub, caller.as_deref(), "alias.delete", &name, String::new()).await?;
    Ok(Json(listing(&name, &models)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_means_its_first_served_models_and_the_fallback_the_rest() {
        let aliases: BTreeMap<String, Vec<String>> = [
            ("fast".to_owned(), vec!["qwen2.5:7b".to_owned(), "llama3.2:3b".to_owned()]),
            (FALLBACK.to_owned(), vec!["llama3.2:3b".to_owned()]),
        ]
        .into();
        let served = |m: &str| m == "llama3.2:3b" || m == "gemma3:270m";
        assert_eq!(candidates(&aliases, "fast", served), ["llama3.2:3b"]);
        assert_eq!(candidates(&aliases, "gemma3:270m", served), ["gemma3:270m"], "a model is itself");
        assert_eq!(candidates(&aliases, "gpt-5", served), ["llama3.2:3b"], "nowhere: the fallback");
        let everywhere = |_: &str| true;
        assert_eq!(candidates(&aliases, "fast", everywhere), ["qwen2.5:7b", "llama3.2:3b"], "in order");
        assert!(candidates(&BTreeMap::new(), "gpt-5", served).is_empty());
        assert!(check("fast", &["a".into()]).is_ok());
        assert!(check("fast", &[]).is_err() && check("", &["a".into()]).is_err());
        assert!(check("loop", &["loop".into()]).is_err());
    }
}
